package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
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

func databaseURL(c *cli.Context, cfg *config.Config) (string, error) {
	u := c.String("database-url")
	if u == "" {
		u = cfg.Postgres.URL
	}
	if u == "" {
		return "", &exitError{code: 1, msg: "no PostgreSQL URL: set postgres { url = ... } in the rules file, --database-url or DATABASE_URL"}
	}
	// A URL that does not parse never will: fail now rather than retry.
	// pgx's message masks the password.
	if _, err := pgx.ParseConfig(u); err != nil {
		return "", &exitError{code: 1, msg: "invalid PostgreSQL URL: " + err.Error()}
	}
	return u, nil
}

// redisClient connects to Redis as the rules file's redis block says:
// standalone (url, overridden by --redis-url/REDIS_URL), cluster or
// sentinel. No error message ever echoes a URL or a password.
func redisClient(c *cli.Context, cfg *config.Config) (redis.UniversalClient, error) {
	rc := cfg.Redis
	if u := c.String("redis-url"); u != "" && rc.Mode != config.RedisStandalone && rc.Mode != "" {
		return nil, &exitError{code: 1, msg: fmt.Sprintf("--redis-url (REDIS_URL) is for a standalone Redis, and the rules file says mode = %q: give the nodes in redis { addresses }", rc.Mode)}
	}
	tlsFiles := tlsFiles{ca: first(c.String("redis-ca-file"), rc.CAFile), cert: first(c.String("redis-cert-file"), rc.CertFile), key: first(c.String("redis-key-file"), rc.KeyFile)}
	switch rc.Mode {
	case config.RedisCluster, config.RedisSentinel:
		var tc *tls.Config
		if rc.TLS {
			tc = &tls.Config{}
		}
		if err := tlsFiles.apply(tc); err != nil {
			return nil, &exitError{code: 1, msg: err.Error()}
		}
		if rc.Mode == config.RedisCluster {
			return redis.NewClusterClient(&redis.ClusterOptions{
				Addrs: rc.Addresses, Username: rc.Username, Password: rc.Password, TLSConfig: tc,
				// go-redis reloads the slot map on MOVED/ASK only, or on
				// this timer (60s by default): after a master dies, writes
				// to its slots would fail until then.
				ClusterStateReloadInterval: 2 * time.Second,
			}), nil
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: rc.MasterName, SentinelAddrs: rc.Addresses,
			SentinelUsername: rc.SentinelUsername, SentinelPassword: rc.SentinelPassword,
			Username: rc.Username, Password: rc.Password, DB: rc.DB, TLSConfig: tc,
		}), nil
	}
	u := first(c.String("redis-url"), rc.URL)
	if u == "" {
		return nil, &exitError{code: 1, msg: "no Redis URL: set redis { url = ... } in the rules file, --redis-url or REDIS_URL"}
	}
	opts, err := redis.ParseURL(u)
	if err != nil {
		// The URL may hold a password: name the problem, not the URL.
		return nil, &exitError{code: 1, msg: "invalid Redis URL: use redis://[user:password@]host:port/db or rediss:// for TLS"}
	}
	if err := tlsFiles.apply(opts.TLSConfig); err != nil {
		return nil, &exitError{code: 1, msg: err.Error()}
	}
	return redis.NewClient(opts), nil
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// tlsFiles are the PEM files of a Redis TLS connection.
type tlsFiles struct{ ca, cert, key string }

// apply loads the files into tc, which is nil when TLS is off (rediss://
// or tls = true turn it on).
func (f tlsFiles) apply(tc *tls.Config) error {
	if f.ca == "" && f.cert == "" && f.key == "" {
		return nil
	}
	if tc == nil {
		return errors.New("a Redis CA, certificate or key file needs TLS: a rediss:// URL, or tls = true in the redis block")
	}
	tc.MinVersion = tls.VersionTLS12
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return fmt.Errorf("the Redis CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("the Redis CA file %s has no PEM certificate in it", f.ca)
		}
		tc.RootCAs = pool
	}
	if (f.cert == "") != (f.key == "") {
		return errors.New("a Redis client certificate and its key go together (--redis-cert-file and --redis-key-file)")
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return fmt.Errorf("the Redis client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return nil
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

// stack is what run, setup and replay apply with: the Redis client, the
// writer and the journal.
type stack struct {
	redis   redis.UniversalClient
	writer  *writer.Writer
	journal *journal.Journal
}

func (s *stack) close() {
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
			MaxBytes: c.Int64("journal-max-bytes"),
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

// defaultListen keeps the metrics, health and pprof endpoints on loopback
// unless asked otherwise.
const defaultListen = "127.0.0.1:9716"

func (e *env) daemon(c *cli.Context, s *stack, dryRun bool, m *metrics.Metrics) (*daemon.Daemon, error) {
	opts := daemon.Options{
		Metrics:           m,
		Config:            e.cfg,
		DatabaseURL:       e.dbURL,
		DryRun:            dryRun,
		KeyCap:            c.Int("key-cap"),
		MaxQueuedBytes:    c.Int64("max-queued-bytes"),
		StatusInterval:    c.Duration("status-interval"),
		HeartbeatInterval: c.Duration("heartbeat-interval"),
		DrainTimeout:      c.Duration("drain-timeout"),
		FormatDiagnostics: e.parser.FormatDiagnostics,
		Failpoint:         failpoint(os.Getenv("CACHESYNC_FAILPOINT")),
		Logger:            e.log,
	}
	if dryRun {
		opts.Applier = &jsonLines{out: os.Stdout}
	} else {
		opts.Applier, opts.Journal, opts.Cache = s.writer, s.journal, daemon.NewRedisCacheState(s.redis)
		opts.Health = s.writer
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

// journalFlags are the flags of the commands that write the journal.
func journalFlags() []cli.Flag {
	return []cli.Flag{
		dataDirFlag(),
		&cli.DurationFlag{Name: "journal-max-age", Value: journal.DefaultMaxAge, EnvVars: []string{"CACHESYNC_JOURNAL_MAX_AGE"}, Usage: "keep journaled batches this long (replay reaches back this far)"},
		&cli.Int64Flag{Name: "journal-max-bytes", Value: journal.DefaultMaxBytes, EnvVars: []string{"CACHESYNC_JOURNAL_MAX_BYTES"}, Usage: "keep at most this many bytes of journal"},
	}
}

// allowEvictionFlag downgrades the refusal of a Redis whose maxmemory
// policy may evict cachesync's bookkeeping keys to a warning.
func allowEvictionFlag() cli.Flag {
	return &cli.BoolFlag{Name: "allow-eviction", EnvVars: []string{"CACHESYNC_ALLOW_EVICTION"},
		Usage: "start even if Redis's maxmemory-policy may evict tag sets, guards or version keys (stale reads after an eviction; see docs/operations.md)"}
}

func dataDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "data-dir", EnvVars: []string{"CACHESYNC_DATA_DIR"}, Usage: "local state: the replay journal (default: .cachesync beside the rules file)"}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "set up the publication and slot if missing, then stream changes into Redis",
		Flags: flags(append(journalFlags(),
			databaseURLFlag(), redisURLFlag(), allowEvictionFlag(),
			&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"CACHESYNC_DRY_RUN"}, Usage: "print operations as JSON lines instead of applying them (streams from a temporary slot)"},
			&cli.IntFlag{Name: "key-cap", Value: mapping.DefaultKeyCap, EnvVars: []string{"CACHESYNC_KEY_CAP"}, Usage: "distinct keys per rule and transaction above which the rule's key space is flushed instead"},
			&cli.Int64Flag{Name: "max-queued-bytes", Value: daemon.DefaultMaxQueuedBytes, EnvVars: []string{"CACHESYNC_MAX_QUEUED_BYTES"}, Usage: "row data the pipeline may hold while Redis is slow (reading from PostgreSQL waits beyond it); a transaction's refresh values past a quarter of it delete their keys instead"},
			&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_STATUS_INTERVAL"}, Usage: "longest time between standby status updates"},
			&cli.DurationFlag{Name: "heartbeat-interval", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_HEARTBEAT_INTERVAL"}, Usage: "how often to write a heartbeat message into the WAL (0: never); keeps the slot moving on an idle database"},
			&cli.DurationFlag{Name: "drain-timeout", Value: 10 * time.Second, EnvVars: []string{"CACHESYNC_DRAIN_TIMEOUT"}, Usage: "on SIGTERM, how long to keep applying what was received"},
			&cli.StringFlag{Name: "listen", Value: defaultListen, EnvVars: []string{"CACHESYNC_LISTEN"}, Usage: "serve /metrics, /healthz, /readyz and /debug/pprof/ on this address (loopback by default; \"\" turns it off)"},
		)...),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			s := &stack{}
			m := metrics.New()
			if !c.Bool("dry-run") {
				if s, err = e.stack(c, true, m); err != nil {
					return err
				}
			}
			defer s.close()
			redisUp := func() bool { return true }
			if s.writer != nil {
				m.Registry().MustRegister(metrics.WriterCollector(s.writer.Stats))
				redisUp = func() bool { return !s.writer.Stats().Failing }
			}
			d, err := e.daemon(c, s, c.Bool("dry-run"), m)
			if err != nil {
				return err
			}
			ctx, stop := context.WithCancel(c.Context)
			defer stop()
			if addr := c.String("listen"); addr != "" {
				served, err := metrics.Serve(ctx, addr, m.Handler(redisUp), e.log)
				if err != nil {
					return &exitError{code: 1, msg: "cachesync run: " + err.Error()}
				}
				defer served()
				defer stop()
			}
			e.log.Info().Str("config", e.cfg.Filename).Int("rules", len(e.cfg.Rules)).Str("slot", e.cfg.Postgres.Slot).Msg("starting")
			if os.Getenv("GOMEMLIMIT") == "" {
				limit := daemon.MemoryLimit(c.Int64("max-queued-bytes"))
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

// failpoint returns a hook that acts at the named point of the pipeline,
// for fault tests. CACHESYNC_FAILPOINT=after-apply kills the process with
// SIGKILL there; CACHESYNC_FAILPOINT=stop:before-advance stops it with
// SIGSTOP the first time it gets there, as a frozen host would, so that a
// test can change the world (roll Redis back, take over) at exactly that
// moment and then let it go on (SIGCONT).
func failpoint(name string) func(string) {
	if name == "" {
		return nil
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
			fmt.Fprintf(c.App.Writer, "%s: %s OK\n", e.cfg.Filename, plural(len(e.cfg.Rules), "rule"))
			return nil
		},
	}
}

func setupCommand() *cli.Command {
	return &cli.Command{
		Name:  "setup",
		Usage: "create or update the publication, create the slot and flush the rules' key spaces; idempotent",
		Flags: flags(append(journalFlags(), databaseURLFlag(), redisURLFlag(), allowEvictionFlag())...),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			s, err := e.stack(c, true, nil)
			if err != nil {
				return err
			}
			defer s.close()
			d, err := e.daemon(c, s, false, nil)
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
		Flags: flags(databaseURLFlag(), redisURLFlag(), dataDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.Int64Flag{Name: "warn-retained-bytes", Value: 1 << 30, EnvVars: []string{"CACHESYNC_WARN_RETAINED_BYTES"}, Usage: "warn when the slot retains more WAL than this"}),
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
			cache := cacheStatus(c, e.cfg)
			return printStatus(c.App.Writer, c.Bool("json"), e.cfg, slot, pub, jr, cache, c.Int64("warn-retained-bytes"))
		},
	}
}

// redisConfigured reports whether a command that can do without Redis has
// one to talk to: a URL, or a cluster's or sentinels' addresses.
func redisConfigured(c *cli.Context, cfg *config.Config) bool {
	return c.String("redis-url") != "" || cfg.Redis.URL != "" || len(cfg.Redis.Addresses) > 0
}

// cacheReport is what the cache says: the position its effects are applied
// to (the daemon's marker).
type cacheReport struct {
	AppliedLSN *wal.LSN `json:"applied_lsn,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// cacheStatus reads the applied position from Redis, if one is configured;
// a status never fails because Redis does.
func cacheStatus(c *cli.Context, cfg *config.Config) *cacheReport {
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
	pos, err := daemon.NewRedisCacheState(rc).Applied(ctx, cfg.Postgres.Slot)
	lsn := pos.LSN
	switch {
	case err != nil:
		return &cacheReport{Error: "Redis: " + err.Error()}
	case !pos.OK:
		return &cacheReport{Error: "no applied position (a new or emptied Redis: the next run flushes every key space)"}
	}
	return &cacheReport{AppliedLSN: &lsn}
}

type statusReport struct {
	Cache       *cacheReport          `json:"cache,omitempty"`
	Slot        string                `json:"slot"`
	Exists      bool                  `json:"exists"`
	Info        *replication.SlotInfo `json:"info,omitempty"`
	Publication string                `json:"publication"`
	Tables      []string              `json:"publication_tables"`
	Journal     *journal.Range        `json:"journal,omitempty"`
	Warnings    []string              `json:"warnings,omitempty"`
	Rules       int                   `json:"rules"`
}

func printStatus(w io.Writer, asJSON bool, cfg *config.Config, slot *replication.SlotInfo, pub *replication.Publication, jr *journal.Range, cache *cacheReport, warnRetained int64) error {
	r := statusReport{Slot: cfg.Postgres.Slot, Exists: slot != nil, Info: slot, Publication: cfg.Postgres.Publication, Rules: len(cfg.Rules), Journal: jr, Cache: cache}
	if slot != nil {
		if slot.RetainedBytes > warnRetained {
			r.Warnings = append(r.Warnings, fmt.Sprintf("the slot retains %s of WAL (over %s): is cachesync running and keeping up? Set max_slot_wal_keep_size so a stalled slot cannot fill the disk", bytesString(slot.RetainedBytes), bytesString(warnRetained)))
		}
		if slot.WALStatus == "unreserved" || slot.WALStatus == "lost" {
			r.Warnings = append(r.Warnings, fmt.Sprintf("wal_status is %s: the slot is losing or has lost WAL it needs; cachesync will recreate it and flush every key space", slot.WALStatus))
		}
	}
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
				state = fmt.Sprintf("active (walsender pid %d)", *slot.ActivePID)
			}
		}
		fmt.Fprintf(tw, "state\t%s\n", state)
		fmt.Fprintf(tw, "confirmed LSN\t%s\n", slot.ConfirmedFlushLSN)
		switch {
		case cache == nil:
			fmt.Fprintf(tw, "applied LSN\t(no Redis URL given)\n")
		case cache.AppliedLSN != nil:
			fmt.Fprintf(tw, "applied LSN\t%s (in Redis; ahead of confirmed while the journal catches up)\n", *cache.AppliedLSN)
		default:
			fmt.Fprintf(tw, "applied LSN\tunknown: %s\n", cache.Error)
		}
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
	if jr == nil || jr.Entries == 0 {
		fmt.Fprintf(tw, "journal\tempty or absent\n")
	} else {
		fmt.Fprintf(tw, "journal\t%s (%s) .. %s (%s), %s\n", jr.OldestLSN, jr.OldestTime.Format(time.RFC3339), jr.NewestLSN, jr.NewestTime.Format(time.RFC3339), bytesString(jr.Bytes))
	}
	for _, warning := range r.Warnings {
		fmt.Fprintf(tw, "WARNING\t%s\n", warning)
	}
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

func replayCommand() *cli.Command {
	return &cli.Command{
		Name:  "replay",
		Usage: "re-apply journaled batches from an LSN or a time (after Redis was restored or restarted empty)",
		Description: "Reads the journal under --data-dir (also while cachesync run is writing it) and applies every batch\n" +
			"from --from LSN or --since TIME to Redis again; a running daemon carries on streaming meanwhile.\n" +
			"When the journal does not reach back that far it refuses: pass --flush to drop every rule's key space instead.",
		Flags: flags(dataDirFlag(), redisURLFlag(),
			&cli.StringFlag{Name: "from", Usage: "LSN to replay from (as PostgreSQL prints it: 0/16B3748)"},
			&cli.TimestampFlag{Name: "since", Layout: time.RFC3339, Usage: "commit time to replay from (RFC 3339)"},
			&cli.BoolFlag{Name: "flush", Usage: "flush every rule's key space instead of replaying"},
		),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, false)
			if err != nil {
				return err
			}
			var from wal.LSN
			if f := c.String("from"); f != "" {
				if from, err = wal.ParseLSN(f); err != nil {
					return &exitError{code: 2, msg: "--from: " + err.Error()}
				}
			}
			var since time.Time
			if t := c.Timestamp("since"); t != nil {
				since = *t
			}
			if !c.Bool("flush") && ((c.String("from") == "") == since.IsZero()) {
				return &exitError{code: 2, msg: "give exactly one of --from LSN and --since TIME, or --flush"}
			}
			s, err := e.stack(c, false, nil)
			if err != nil {
				return err
			}
			defer s.close()
			if c.Bool("flush") {
				m, err := mapping.New(e.cfg.Rules, mapping.Options{})
				if err != nil {
					return err
				}
				if err := s.writer.Apply(c.Context, []mapping.Batch{{Ops: m.FlushAll(mapping.ReasonCacheReset)}}); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "flushed the key spaces of %d rules\n", len(e.cfg.Rules))
				return nil
			}
			dir := journalDir(c, e.cfg)
			// Replayed changes are guarded in the history they were
			// streamed in, like the daemon's own, so that none overwrites
			// a newer value the daemon wrote.
			state, ok, err := journal.ReadState(dir)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync replay: " + err.Error()}
			}
			if ok {
				s.writer.SetHistory(keyspace.History(state.SystemID, state.Timeline))
			}
			n, err := daemon.Replay(c.Context, dirReplayer(dir), s.writer, from, since)
			if errors.Is(err, journal.ErrNotCovered) {
				return &exitError{code: 1, msg: fmt.Sprintf("cachesync replay: %v\nNothing was applied. To heal the cache anyway, run cachesync replay --flush (drops every rule's key space).", err)}
			}
			if err != nil {
				return &exitError{code: 1, msg: "cachesync replay: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "replayed %d batches from %s\n", n, dir)
			return nil
		},
	}
}

// dirReplayer replays a journal directory without locking it.
type dirReplayer string

func (d dirReplayer) Replay(ctx context.Context, from wal.LSN, since time.Time, fn func(mapping.Batch) error) error {
	return journal.ReplayDir(ctx, string(d), from, since, fn)
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
			parts, err := replication.RemovePartitionTruncateTriggers(c.Context, conn)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync teardown: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "partition truncate triggers: %d dropped\n", len(parts))
			if redisConfigured(c, e.cfg) {
				rc, err := redisClient(c, e.cfg)
				if err != nil {
					return err
				}
				defer rc.Close()
				if err := daemon.NewRedisCacheState(rc).Forget(c.Context, e.cfg.Postgres.Slot); err != nil {
					e.log.Warn().Err(err).Msg("could not remove the applied position from Redis")
				}
			}
			return nil
		},
	}
}

// plural is "1 rule", "2 rules".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
