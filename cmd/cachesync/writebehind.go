package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/writebehind"
)

// writeBehind drains a write_behind block's stream: package writebehind's
// Run with the process's Redis client and a PostgreSQL connection of its
// own (which holds the stream's lock).
func (e *env) writeBehind(s *stack, m *metrics.Metrics) daemon.WriteBehindFunc {
	fp := failpoint(os.Getenv("CACHESYNC_FAILPOINT"))
	return func(ctx context.Context, wb *config.WriteBehind, fence func() error) error {
		return writebehind.Run(ctx, writebehind.Options{
			Spec: wb, Redis: s.redis, Fence: fence, Failpoint: fp, Logger: e.log,
			Observer: m.WriteBehindObserver(),
			Connect: func(ctx context.Context) (*pgx.Conn, error) {
				cfg, err := pgx.ParseConfig(e.dbURL)
				if err != nil {
					return nil, err
				}
				cfg.RuntimeParams["application_name"] = "cachesync write-behind"
				return pgx.ConnectConfig(ctx, cfg)
			},
		})
	}
}

func writeBehindCommand() *cli.Command {
	return &cli.Command{
		Name:  "write-behind",
		Usage: "drain only the write_behind streams into PostgreSQL (run does it too, on its active instance)",
		Flags: flags(databaseURLFlag(), redisURLFlag(),
			&cli.StringFlag{Name: "listen", Value: defaultListen, EnvVars: []string{"CACHESYNC_LISTEN"}, Usage: "serve /metrics, /healthz and /readyz on this address (loopback by default; \"\" turns it off)"},
		),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			if len(e.cfg.WriteBehinds) == 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("cachesync write-behind: %s has no write_behind block: add one (docs/rules.md#write_behind-blocks)", e.cfg.Filename)}
			}
			if err := e.preflightWriteBehind(c.Context); err != nil {
				return err
			}
			m := metrics.New()
			s, err := e.stack(c, false, m)
			if err != nil {
				return err
			}
			defer s.close()
			m.Registry().MustRegister(metrics.WriteBehindCollector(s.redis, e.cfg.WriteBehinds))
			ctx, stop := context.WithCancel(c.Context)
			defer stop()
			if addr := c.String("listen"); addr != "" {
				health := metrics.HandlerOptions{}
				served, err := metrics.Serve(ctx, addr, m.Handler(health), health.Paths(), e.log)
				if err != nil {
					return &exitError{code: 1, msg: "cachesync write-behind: " + err.Error()}
				}
				defer served()
				defer stop()
			}
			m.SetState(metrics.StateStreaming, "")
			run := e.writeBehind(s, m)
			g, gctx := errgroup.WithContext(ctx)
			for _, wb := range e.cfg.WriteBehinds {
				g.Go(func() error { return run(gctx, wb, nil) })
			}
			if err := g.Wait(); err != nil && ctx.Err() == nil {
				return &exitError{code: 1, msg: "cachesync write-behind: " + err.Error()}
			}
			e.log.Info().Msg("stopped")
			return nil
		},
	}
}

// preflightWriteBehind checks the write_behind blocks against the database
// before draining, as run's preflight does.
func (e *env) preflightWriteBehind(ctx context.Context) error {
	conn, err := replication.Connect(ctx, e.dbURL)
	if err != nil {
		return &exitError{code: 1, msg: "cachesync write-behind: " + err.Error()}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	diags, err := conn.Preflight(ctx, nil, replication.PreflightOptions{WriteBehinds: e.cfg.WriteBehinds})
	if err != nil {
		return &exitError{code: 1, msg: "cachesync write-behind: " + err.Error()}
	}
	if diags.HasErrors() {
		return &exitError{code: 1, msg: strings.TrimRight(e.parser.FormatDiagnostics(diags), "\n")}
	}
	if len(diags) > 0 {
		e.log.Warn().Str("findings", e.parser.FormatDiagnostics(diags)).Msg("preflight findings")
	}
	return nil
}
