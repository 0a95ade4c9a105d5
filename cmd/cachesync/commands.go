package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/writer"
)

func newLogger(c *cli.Context) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.String("log-level"))
	if err != nil {
		return zerolog.Nop(), &exitError{code: 2, msg: fmt.Sprintf("--log-level %q: use debug, info, warn or error", c.String("log-level"))}
	}
	var out io.Writer = os.Stderr
	switch c.String("log-format") {
	case "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}
	default:
		return zerolog.Nop(), &exitError{code: 2, msg: fmt.Sprintf("--log-format %q: use json or console", c.String("log-format"))}
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), nil
}

// loadConfig parses the rules file and prints every diagnostic on failure.
func loadConfig(c *cli.Context) (*config.Config, *config.Parser, error) {
	p := config.NewParser()
	cfg, diags := p.Load(c.String("config"))
	if diags.HasErrors() {
		return nil, nil, &exitError{code: 1, msg: strings.TrimRight(p.FormatDiagnostics(diags), "\n")}
	}
	return cfg, p, nil
}

func databaseURL(c *cli.Context, cfg *config.Config) (string, error) {
	if u := c.String("database-url"); u != "" {
		return u, nil
	}
	if cfg.Postgres.URL != "" {
		return cfg.Postgres.URL, nil
	}
	return "", &exitError{code: 1, msg: "no PostgreSQL URL: set postgres { url = ... } in the rules file, --database-url or DATABASE_URL"}
}

func redisClient(c *cli.Context, cfg *config.Config) (*redis.Client, error) {
	u := c.String("redis-url")
	if u == "" {
		u = cfg.Redis.URL
	}
	if u == "" {
		return nil, &exitError{code: 1, msg: "no Redis URL: set redis { url = ... } in the rules file, --redis-url or REDIS_URL"}
	}
	opts, err := redis.ParseURL(u)
	if err != nil {
		// The URL may hold a password: name the problem, not the URL.
		return nil, &exitError{code: 1, msg: "invalid Redis URL: use redis://[user:password@]host:port/db or rediss:// for TLS"}
	}
	return redis.NewClient(opts), nil
}

// connectPG opens a normal (catalog) connection; a failure is an exit error.
func connectPG(c *cli.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(c.Context, url)
	if err != nil {
		return nil, &exitError{code: 1, msg: fmt.Sprintf("connect to PostgreSQL: %v", err)}
	}
	return conn, nil
}

type env struct {
	cfg    *config.Config
	parser *config.Parser
	log    zerolog.Logger
	dbURL  string
}

func setupEnv(c *cli.Context, needDB bool) (*env, error) {
	log, err := newLogger(c)
	if err != nil {
		return nil, err
	}
	cfg, p, err := loadConfig(c)
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, parser: p, log: log}
	if needDB {
		if e.dbURL, err = databaseURL(c, cfg); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *env) daemon(applier daemon.Applier, marker daemon.Marker, c *cli.Context, dryRun bool) (*daemon.Daemon, error) {
	return daemon.New(daemon.Options{
		Config:            e.cfg,
		DatabaseURL:       e.dbURL,
		Applier:           applier,
		Marker:            marker,
		DryRun:            dryRun,
		KeyCap:            c.Int("key-cap"),
		StatusInterval:    c.Duration("status-interval"),
		DrainTimeout:      c.Duration("drain-timeout"),
		FormatDiagnostics: e.parser.FormatDiagnostics,
		Failpoint:         failpoint(os.Getenv("CACHESYNC_FAILPOINT")),
		Logger:            e.log,
	})
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "set up the publication and slot if missing, then stream changes into Redis",
		Flags: flags(
			databaseURLFlag(), redisURLFlag(),
			&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"CACHESYNC_DRY_RUN"}, Usage: "print operations as JSON lines instead of applying them (streams from a temporary slot)"},
			&cli.IntFlag{Name: "key-cap", Value: mapping.DefaultKeyCap, EnvVars: []string{"CACHESYNC_KEY_CAP"}, Usage: "distinct keys per rule and transaction above which the rule's key space is flushed instead"},
			&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_STATUS_INTERVAL"}, Usage: "longest time between standby status updates"},
			&cli.DurationFlag{Name: "drain-timeout", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_DRAIN_TIMEOUT"}, Usage: "on SIGTERM, how long to keep applying what was received"},
		),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			var d *daemon.Daemon
			if c.Bool("dry-run") {
				d, err = e.daemon(&jsonLines{out: os.Stdout}, nil, c, true)
			} else {
				var rc *redis.Client
				if rc, err = redisClient(c, e.cfg); err != nil {
					return err
				}
				defer rc.Close()
				d, err = e.daemon(writer.New(rc, writer.Options{Logger: e.log}), daemon.RedisMarker{Client: rc}, c, false)
			}
			if err != nil {
				return err
			}
			e.log.Info().Str("config", e.cfg.Filename).Int("rules", len(e.cfg.Rules)).Str("slot", e.cfg.Postgres.Slot).Msg("starting")
			if err := d.Run(c.Context); err != nil {
				return &exitError{code: 1, msg: "cachesync run: " + err.Error()}
			}
			return nil
		},
	}
}

// failpoint returns a hook that kills the process with SIGKILL at the named
// point of the pipeline, for crash tests (CACHESYNC_FAILPOINT=after-apply).
func failpoint(name string) func(string) {
	if name == "" {
		return nil
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
			}{b.XID, b.CommitLSN.String(), b.EndLSN.String(), b.CommitTime, op, string(op.Value)}
			if err := enc.Encode(line); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateCommand() *cli.Command {
	return &cli.Command{
		Name:      "validate",
		Usage:     "check the rules file; with --database-url also tables, columns and replica identity",
		Flags:     flags(databaseURLFlag()),
		ArgsUsage: " ",
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, false)
			if err != nil {
				return err
			}
			if u := c.String("database-url"); u != "" {
				conn, err := connectPG(c, u)
				if err != nil {
					return err
				}
				defer conn.Close(context.WithoutCancel(c.Context))
				diags, err := replication.Preflight(c.Context, conn, e.cfg.Rules, replication.PreflightOptions{})
				if err != nil {
					return err
				}
				if diags.HasErrors() {
					return &exitError{code: 1, msg: strings.TrimRight(e.parser.FormatDiagnostics(diags), "\n")}
				}
			}
			fmt.Fprintf(c.App.Writer, "%s: %d rules OK\n", e.cfg.Filename, len(e.cfg.Rules))
			return nil
		},
	}
}

func setupCommand() *cli.Command {
	return &cli.Command{
		Name:  "setup",
		Usage: "create or update the publication, create the slot and flush the rules' key spaces; idempotent",
		Flags: flags(databaseURLFlag(), redisURLFlag()),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			rc, err := redisClient(c, e.cfg)
			if err != nil {
				return err
			}
			defer rc.Close()
			d, err := e.daemon(writer.New(rc, writer.Options{Logger: e.log}), daemon.RedisMarker{Client: rc}, c, false)
			if err != nil {
				return err
			}
			if err := d.Setup(c.Context); err != nil {
				return &exitError{code: 1, msg: "cachesync setup: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "publication %q and slot %q are ready\n", e.cfg.Postgres.Publication, e.cfg.Postgres.Slot)
			return nil
		},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the slot: confirmed LSN, lag, retained WAL, activity",
		Flags: flags(databaseURLFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
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
			return printStatus(c.App.Writer, c.Bool("json"), e.cfg, slot, pub)
		},
	}
}

type statusReport struct {
	Slot        string                `json:"slot"`
	Exists      bool                  `json:"exists"`
	Info        *replication.SlotInfo `json:"info,omitempty"`
	Publication string                `json:"publication"`
	Tables      []string              `json:"publication_tables"`
	Rules       int                   `json:"rules"`
}

func printStatus(w io.Writer, asJSON bool, cfg *config.Config, slot *replication.SlotInfo, pub *replication.Publication) error {
	r := statusReport{Slot: cfg.Postgres.Slot, Exists: slot != nil, Info: slot, Publication: cfg.Postgres.Publication, Rules: len(cfg.Rules)}
	if pub != nil {
		r.Tables = pub.Tables
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "slot\t%s\n", r.Slot)
	if slot == nil {
		fmt.Fprintf(tw, "state\tmissing (cachesync setup or run creates it)\n")
	} else {
		state := "inactive"
		if slot.Active {
			state = "active"
			if slot.ActivePID != nil {
				state = fmt.Sprintf("active (pid %d)", *slot.ActivePID)
			}
		}
		fmt.Fprintf(tw, "state\t%s\n", state)
		fmt.Fprintf(tw, "confirmed LSN\t%s\n", slot.ConfirmedFlushLSN)
		fmt.Fprintf(tw, "current WAL LSN\t%s\n", slot.CurrentLSN)
		fmt.Fprintf(tw, "lag\t%s\n", bytesString(slot.LagBytes))
		fmt.Fprintf(tw, "retained WAL\t%s (restart LSN %s)\n", bytesString(slot.RetainedBytes), slot.RestartLSN)
		fmt.Fprintf(tw, "wal_status\t%s\n", slot.WALStatus)
	}
	if pub == nil {
		fmt.Fprintf(tw, "publication\t%s (missing)\n", r.Publication)
	} else {
		fmt.Fprintf(tw, "publication\t%s: %s\n", r.Publication, strings.Join(pub.Tables, ", "))
	}
	fmt.Fprintf(tw, "rules\t%d\n", r.Rules)
	return tw.Flush()
}

func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func teardownCommand() *cli.Command {
	return &cli.Command{
		Name:  "teardown",
		Usage: "drop the slot and the publication (stop cachesync first)",
		Flags: flags(databaseURLFlag(), redisURLFlag()),
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
			dropped, err := replication.DropSlot(c.Context, conn, e.cfg.Postgres.Slot)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync teardown: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "slot %q: %s\n", e.cfg.Postgres.Slot, map[bool]string{true: "dropped", false: "absent"}[dropped])
			dropped, err = replication.DropPublication(c.Context, conn, e.cfg.Postgres.Publication)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync teardown: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "publication %q: %s\n", e.cfg.Postgres.Publication, map[bool]string{true: "dropped", false: "absent"}[dropped])
			if c.String("redis-url") != "" || e.cfg.Redis.URL != "" {
				rc, err := redisClient(c, e.cfg)
				if err != nil {
					return err
				}
				defer rc.Close()
				if err := (daemon.RedisMarker{Client: rc}).Delete(c.Context, e.cfg.Postgres.Slot); err != nil {
					e.log.Warn().Err(err).Msg("could not remove the slot marker from Redis")
				}
			}
			return nil
		},
	}
}
