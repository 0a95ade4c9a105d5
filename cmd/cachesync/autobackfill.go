package main

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/backfill"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
)

// autoBackfill is the daemon's backfill of a refresh { backfill = true }
// rule: package backfill's Run on a PostgreSQL connection of its own, with
// the daemon's writer (whose guards carry the stream's WAL history) and
// mapper options.
func (e *env) autoBackfill(c *cli.Context, s *stack) daemon.BackfillFunc {
	mapperOpts := daemon.MapperOptions(c.Int("key-cap"), size(c, "max-queued-bytes"), e.log)
	return func(ctx context.Context, rule *config.Rule, fence func() error, stop <-chan struct{}, progress func(backfill.Progress)) error {
		conn, err := pgx.Connect(ctx, e.dbURL)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		_, err = backfill.Run(ctx, conn, s.writer, backfill.Options{
			Rule: rule, Slot: e.cfg.Postgres.Slot, Mapper: mapperOpts,
			Fence: fence, Stop: stop, OnProgress: progress, Logger: e.log,
			AfterCheckpoint: backfillFailpoint(),
		})
		return err
	}
}
