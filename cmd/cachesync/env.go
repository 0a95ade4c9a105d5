package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/checker"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/shadow"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/mapping"
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
	log := zerolog.New(out).Level(level).With().Timestamp().Logger()
	redis.SetLogger(redisLog{log.With().Str("component", "go-redis").Logger()})
	return log, nil
}

// redisLog sends go-redis's own lines (a dial failing, a pool refilling) to
// the structured log at debug level instead of unstructured stderr: the
// writer's and the daemon's lines already report each outage once.
type redisLog struct{ log zerolog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug().Msgf(format, v...)
}

// loadConfig parses the rules file and prints every diagnostic on failure.
func loadConfig(c *cli.Context) (*config.Config, *config.Parser, error) {
	p := config.NewParser()
	cfg, diags := p.Load(c.String("config"))
	if diags.HasErrors() {
		return nil, nil, &exitError{code: 1, msg: strings.TrimRight(p.FormatDiagnostics(diags), "\n")}
	}
	if len(diags) > 0 {
		// Warnings do not stop anything, but they must be seen.
		fmt.Fprint(c.App.ErrWriter, p.FormatDiagnostics(diags))
	}
	return cfg, p, nil
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

// stack is what run, setup and replay apply with: the Redis client, the
// writer and the journal.
type stack struct {
	redis   redis.UniversalClient
	writer  *writer.Writer
	journal *journal.Journal
	// shadow, for run --shadow, is the dry run's applier instead of JSON
	// lines.
	shadow *shadow.Shadow
}

func (s *stack) close() {
	if s.shadow != nil {
		s.shadow.Close()
	}
	if s.journal != nil {
		s.journal.Close()
	}
	if s.redis != nil {
		s.redis.Close()
	}
}

// journalDir is where the slot's journal lives: --data-dir (default
// .cachesync beside the rules file), one directory per slot.
func journalDir(c *cli.Context, cfg *config.Config) string {
	dir := c.String("data-dir")
	if dir == "" {
		dir = filepath.Join(filepath.Dir(cfg.Filename), ".cachesync")
	}
	return filepath.Join(dir, cfg.Postgres.Slot)
}

// journalRecordTooLarge is the fallback reason of a journal record
// replaced by flushes.
const journalRecordTooLarge = "journal_record_too_large"

// stack opens the Redis client, the writer and, withJournal, the journal.
// m, when set, counts the fallbacks of both.
func (e *env) stack(c *cli.Context, withJournal bool, m *metrics.Metrics) (*stack, error) {
	mapper, err := mapping.New(e.cfg.Rules, mapping.Options{})
	if err != nil {
		return nil, &exitError{code: 1, msg: "cachesync: " + err.Error()}
	}
	// The rules' key spaces: what a fallback flushes.
	keyspaces := map[string]mapping.Keyspace{}
	for _, op := range mapper.FlushAll("") {
		keyspaces[op.Rule] = *op.Keyspace
	}
	rc, err := redisClient(c, e.cfg)
	if err != nil {
		return nil, err
	}
	// Guards of values without a TTL, and tombstones, live as long as the
	// journal keeps changes (at least the default), so that no replay
	// reaches further back than they do.
	tombstoneTTL := max(c.Duration("journal-max-age"), writer.DefaultTombstoneTTL)
	s := &stack{redis: rc, writer: writer.New(rc, writer.Options{
		Logger:       e.log,
		TombstoneTTL: tombstoneTTL,
		Keyspaces:    keyspaces,
		OnFallback: func(f writer.Fallback) {
			if m != nil {
				m.Fallback(f.Rule, f.Reason)
			}
		},
	})}
	if withJournal {
		s.journal, err = journal.Open(journal.Options{
			Dir:      journalDir(c, e.cfg),
			MaxAge:   c.Duration("journal-max-age"),
			MaxBytes: size(c, "journal-max-bytes"),
			Logger:   e.log,
			// A group too large for one record (wide values) is
			// journaled as the flushes of its rules: replay drops
			// what it would have written, and the daemon does not
			// fail on it after every restart.
			Oversized: func(b *mapping.Batch) (mapping.Batch, error) {
				small, err := journal.CoveringFlushes(b, keyspaces, journalRecordTooLarge)
				if err != nil {
					return small, err
				}
				var rules []string
				for _, op := range small.Ops {
					rules = append(rules, op.Rule)
					if m != nil {
						m.Fallback(op.Rule, journalRecordTooLarge)
					}
				}
				e.log.Error().Stringer("end_lsn", b.EndLSN).Int("ops", len(b.Ops)).Strs("rules", rules).Str("reason", journalRecordTooLarge).
					Msg("a transaction is too large for one journal record; journaled as flushes of its rules' key spaces (a replay drops those key spaces instead of re-applying it)")
				return small, nil
			},
		})
		if err != nil {
			rc.Close()
			return nil, &exitError{code: 1, msg: "cachesync: " + err.Error()}
		}
	}
	return s, nil
}

func (e *env) daemon(c *cli.Context, s *stack, dryRun bool, m *metrics.Metrics) (*daemon.Daemon, error) {
	opts := daemon.Options{
		Metrics:           m,
		Config:            e.cfg,
		DatabaseURL:       e.dbURL,
		DryRun:            dryRun,
		KeyCap:            c.Int("key-cap"),
		MaxQueuedBytes:    size(c, "max-queued-bytes"),
		StatusInterval:    c.Duration("status-interval"),
		HeartbeatInterval: c.Duration("heartbeat-interval"),
		DrainTimeout:      c.Duration("drain-timeout"),
		FormatDiagnostics: e.parser.FormatDiagnostics,
		Failpoint:         failpoint(os.Getenv("CACHESYNC_FAILPOINT")),
		Logger:            e.log,
	}
	if dryRun {
		opts.Applier = &jsonLines{out: os.Stdout}
		if s.shadow != nil {
			opts.Applier, opts.DryRunLabel = s.shadow, "shadow"
		}
	} else {
		opts.Applier, opts.Journal, opts.Cache = s.writer, s.journal, s.writer.Positions()
		opts.Backfill = e.autoBackfill(c, s)
		opts.WriteBehind = e.writeBehind(s, m)
		if rate := c.Float64("verify-rate"); rate > 0 && m != nil {
			opts.Checker = checker.New(checker.Options{Rate: rate, Window: c.Duration("verify-window"),
				Redis: s.redis, Metrics: m.Consistency(), Logger: e.log})
		}
		opts.CheckCache = func(ctx context.Context, spaces []mapping.Keyspace) error {
			err := writer.CheckAccess(ctx, s.redis, spaces)
			if err == nil {
				err = writer.CheckEviction(ctx, s.redis, c.Bool("allow-eviction"), e.log)
			}
			if errors.Is(err, writer.ErrNoAccess) || errors.Is(err, writer.ErrEvictionUnsafe) {
				return fmt.Errorf("%w: %w", daemon.ErrConfig, err)
			}
			return err
		}
	}
	return daemon.New(opts)
}
