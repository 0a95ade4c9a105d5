package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/internal/checker"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/mapping"
)

// defaultListen keeps the metrics, health and pprof endpoints on loopback
// unless asked otherwise.
const defaultListen = "127.0.0.1:9716"

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "set up the publication and slot if missing, then stream changes into Redis",
		Flags: flags(slices.Concat(append(journalFlags(),
			databaseURLFlag(), redisURLFlag(), allowEvictionFlag(),
			&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"CACHESYNC_DRY_RUN"}, Usage: "print operations as JSON lines instead of applying them (streams from a temporary slot)"},
		), shadowFlags(), []cli.Flag{
			&cli.IntFlag{Name: "key-cap", Value: mapping.DefaultKeyCap, EnvVars: []string{"CACHESYNC_KEY_CAP"}, Usage: "distinct keys per rule and transaction above which the rule's key space is flushed instead"},
			sizeFlag("max-queued-bytes", daemon.DefaultMaxQueuedBytes, "CACHESYNC_MAX_QUEUED_BYTES", "row data the pipeline may hold while Redis is slow (bytes, or a size with a unit: 256MiB, 1GB); reading from PostgreSQL waits beyond it, and a transaction's refresh values past a quarter of it delete their keys instead"),
			&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_STATUS_INTERVAL"}, Usage: "longest time between standby status updates"},
			&cli.DurationFlag{Name: "heartbeat-interval", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_HEARTBEAT_INTERVAL"}, Usage: "how often to write a heartbeat message into the WAL (0: never); keeps the slot moving on an idle database"},
			&cli.DurationFlag{Name: "drain-timeout", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_DRAIN_TIMEOUT"}, Usage: "on SIGTERM, how long to keep applying what was received"},
			&cli.StringFlag{Name: "listen", Value: defaultListen, EnvVars: []string{"CACHESYNC_LISTEN"}, Usage: "serve /metrics, /healthz and /readyz (and /debug/pprof/ with --pprof) on this address (loopback by default; \"\" turns it off)"},
			&cli.BoolFlag{Name: "pprof", EnvVars: []string{"CACHESYNC_PPROF"}, Usage: "also serve the Go runtime profiles under /debug/pprof/ on --listen (never the command line)"},
			&cli.Float64Flag{Name: "verify-rate", Value: checker.DefaultRate, EnvVars: []string{"CACHESYNC_VERIFY_RATE"}, Usage: "fraction of the applied refreshes and invalidations re-checked in Redis after --verify-window (0: off); costs two Redis GETs per sample and no PostgreSQL query"},
			&cli.DurationFlag{Name: "verify-window", Value: checker.DefaultWindow, EnvVars: []string{"CACHESYNC_VERIFY_WINDOW"}, Usage: "how long after its apply a sampled effect is re-checked; a mismatch is checked once more a window later before it counts as stale"},
			&cli.DurationFlag{Name: "stuck-after", Value: metrics.DefaultStuckAfter, EnvVars: []string{"CACHESYNC_STUCK_AFTER"}, Usage: "/healthz answers 503 when nothing was confirmed for this long while WAL is pending and PostgreSQL and Redis answer (0: never); more than three --status-interval"},
		})...),
		Action: func(c *cli.Context) error {
			if err := checkVerify(c.Float64("verify-rate"), c.Duration("verify-window")); err != nil {
				return err
			}
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			health := metrics.HandlerOptions{Pprof: c.Bool("pprof"), StuckAfter: c.Duration("stuck-after")}
			if err := checkStuckAfter(health.StuckAfter, c.Duration("status-interval")); err != nil {
				return err
			}
			s := &stack{}
			m := metrics.New()
			dryRun := c.Bool("dry-run") || c.Bool("shadow")
			if c.Bool("shadow") {
				err = startShadow(c, e, s, m)
			} else if !dryRun {
				s, err = e.stack(c, true, m)
			}
			defer s.close()
			if err != nil {
				return err
			}
			if s.writer != nil {
				m.Registry().MustRegister(metrics.WriterCollector(s.writer.Stats))
				if len(e.cfg.WriteBehinds) > 0 {
					m.Registry().MustRegister(metrics.WriteBehindCollector(s.redis, e.cfg.WriteBehinds))
				}
				health.RedisUp = func() bool { return !s.writer.Stats().Failing }
			}
			d, err := e.daemon(c, s, dryRun, m)
			if err != nil {
				return err
			}
			ctx, stop := context.WithCancel(c.Context)
			defer stop()
			if addr := c.String("listen"); addr != "" {
				served, err := metrics.Serve(ctx, addr, m.Handler(health), health.Paths(), e.log)
				if err != nil {
					return &exitError{code: 1, msg: "cachesync run: " + err.Error()}
				}
				defer served()
				defer stop()
			}
			e.log.Info().Str("config", e.cfg.Filename).Int("rules", len(e.cfg.Rules)).Str("slot", e.cfg.Postgres.Slot).Msg("starting")
			if os.Getenv("GOMEMLIMIT") == "" {
				limit := daemon.MemoryLimit(size(c, "max-queued-bytes"))
				debug.SetMemoryLimit(limit)
				e.log.Debug().Int64("bytes", limit).Msg("Go memory limit set from --max-queued-bytes (GOMEMLIMIT overrides it)")
			}
			if err := d.Run(ctx); err != nil {
				return &exitError{code: 1, msg: "cachesync run: " + err.Error()}
			}
			return nil
		},
	}
}

// checkVerify refuses a --verify-rate that is not a fraction and a
// --verify-window that is not positive.
func checkVerify(rate float64, window time.Duration) error {
	if err := checker.CheckRate(rate); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--verify-rate %v: %v", rate, err)}
	}
	if window <= 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("--verify-window %s: want a positive duration, like 5s", window)}
	}
	return nil
}

// checkStuckAfter refuses a --stuck-after that a PostgreSQL outage could
// outlast while the session still counts as streaming: the stream gives up
// on a silent server only after three status intervals, and until then
// /healthz could take the outage for a stuck pipeline.
func checkStuckAfter(stuckAfter, statusInterval time.Duration) error {
	if stuckAfter < 0 || (stuckAfter > 0 && stuckAfter <= 3*statusInterval) {
		return &exitError{code: 2, msg: fmt.Sprintf("--stuck-after %s: use 0 (never) or more than three --status-interval (%s)", stuckAfter, 3*statusInterval)}
	}
	return nil
}

// failpoint returns a hook that acts at the named point of the pipeline,
// for fault tests. CACHESYNC_FAILPOINT=after-apply kills the process with
// SIGKILL there; CACHESYNC_FAILPOINT=stop:before-advance stops it with
// SIGSTOP the first time it gets there, as a frozen host would, so that a
// test can change the world (roll Redis back, take over) at exactly that
// moment and then let it go on (SIGCONT). CACHESYNC_FAILPOINT=hang:before-apply
// blocks the pipeline goroutine that gets there, for good, while the rest of
// the process (the stream, the endpoints) runs on: a wedged pipeline, for
// the liveness check.
func failpoint(name string) func(string) {
	if name == "" {
		return nil
	}
	if at, ok := strings.CutPrefix(name, "hang:"); ok {
		return func(point string) {
			if point == at {
				fmt.Fprintf(os.Stderr, "cachesync: failpoint %s: hanging the pipeline\n", point)
				select {}
			}
		}
	}
	if at, ok := strings.CutPrefix(name, "stop:"); ok {
		var once sync.Once
		return func(point string) {
			if point == at {
				once.Do(func() {
					fmt.Fprintf(os.Stderr, "cachesync: failpoint %s: stopping the process\n", point)
					stopSelf()
				})
			}
		}
	}
	return func(at string) {
		if at == name {
			fmt.Fprintf(os.Stderr, "cachesync: failpoint %s: killing the process\n", at)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}

// jsonLines is the dry run's applier: one JSON object per operation.
type jsonLines struct {
	out io.Writer
}

func (j *jsonLines) Apply(_ context.Context, batches []mapping.Batch) error {
	enc := json.NewEncoder(j.out)
	for _, b := range batches {
		for _, op := range b.Ops {
			line := struct {
				XID        uint32    `json:"xid"`
				CommitLSN  string    `json:"commit_lsn"`
				EndLSN     string    `json:"end_lsn"`
				CommitTime time.Time `json:"commit_time"`
				mapping.Op
				Value string `json:"value,omitempty"`
				// Durations as a rules file writes them ("1h"), not
				// nanoseconds: these fields hide Op's.
				TTL    string `json:"ttl,omitempty"`
				Jitter string `json:"jitter,omitempty"`
			}{b.XID, b.CommitLSN.String(), b.EndLSN.String(), b.CommitTime, op, string(op.Value), formatDuration(op.TTL), formatDuration(op.Jitter)}
			if err := enc.Encode(line); err != nil {
				return err
			}
		}
	}
	return nil
}

// formatDuration writes d as a rules file would ("1h", "1m30s") rather than
// as Duration.String does ("1h0m0s"); zero is "".
func formatDuration(d time.Duration) string {
	if d == 0 {
		return ""
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
