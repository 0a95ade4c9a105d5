package main

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the slot: confirmed LSN, lag, retained WAL, activity",
		Flags: flags(databaseURLFlag(), redisURLFlag(), dataDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"},
			sizeFlag("warn-retained-bytes", 1<<30, "CACHESYNC_WARN_RETAINED_BYTES", "warn when the slot retains more WAL than this (bytes, or a size with a unit: 512MiB, 1GB)")),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			conn, err := connectPG(c, e.dbURL)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(c.Context))
			slot, err := replication.ReadSlot(c.Context, conn, e.cfg.Postgres.Slot)
			if err != nil {
				return err
			}
			pub, err := replication.ReadPublication(c.Context, conn, e.cfg.Postgres.Publication)
			if err != nil {
				return err
			}
			var jr *journal.Range
			if r, err := journal.Inspect(journalDir(c, e.cfg)); err == nil {
				jr = &r
			}
			cache := cacheStatus(c, e.cfg, conn)
			return printStatus(c.App.Writer, c.Bool("json"), e.cfg, slot, pub, jr, cache, size(c, "warn-retained-bytes"))
		},
	}
}

// cacheReport is what the cache says: the position its effects are applied
// to (the daemon's marker).
type cacheReport struct {
	AppliedLSN *wal.LSN `json:"applied_lsn,omitempty"`
	Error      string   `json:"error,omitempty"`
	// Backfills are the refresh rules' backfills (statusbackfill.go).
	Backfills      []backfillReport `json:"backfills,omitempty"`
	BackfillsError string           `json:"backfills_error,omitempty"`
	// WriteBehind are the write_behind blocks' backlogs
	// (statuswritebehind.go).
	WriteBehind []writeBehindReport `json:"write_behind,omitempty"`
}

// cacheStatus reads the applied position from Redis, if one is configured;
// a status never fails because Redis does.
func cacheStatus(c *cli.Context, cfg *config.Config, conn *pgx.Conn) *cacheReport {
	if !redisConfigured(c, cfg) {
		return nil
	}
	rc, err := redisClient(c, cfg)
	if err != nil {
		return &cacheReport{Error: err.Error()}
	}
	defer rc.Close()
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
	defer cancel()
	positions := writer.NewPositions(rc)
	pos, err := positions.Applied(ctx, cfg.Postgres.Slot)
	lsn := pos.LSN
	if err != nil {
		return &cacheReport{Error: "Redis: " + err.Error()}
	}
	rep := &cacheReport{AppliedLSN: &lsn}
	if !pos.OK {
		rep = &cacheReport{Error: "no applied position (a new or emptied Redis: the next run flushes every key space)"}
	}
	if rep.Backfills, err = backfillStatus(ctx, positions, cfg.Rules); err != nil {
		rep.BackfillsError = "Redis: " + err.Error()
	}
	rep.WriteBehind = writeBehindStatus(ctx, rc, conn, cfg.WriteBehinds, time.Now())
	return rep
}
