package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// minPostgresMajor is the oldest PostgreSQL the project supports.
const minPostgresMajor = 15

// serverSettings are the settings of every private server: logical decoding on, room
// for many slots, and durability traded for speed (a test server's data is disposable,
// but synchronous_commit stays on so a committed row survives an immediate shutdown).
var serverSettings = [][2]string{
	{"listen_addresses", "127.0.0.1"},
	{"wal_level", "logical"},
	{"max_replication_slots", "32"},
	{"max_wal_senders", "32"},
	{"fsync", "off"},
	{"synchronous_commit", "on"},
	{"full_page_writes", "off"},
	{"shared_buffers", "64MB"},
	{"max_connections", "200"},
}

// PostgresOptions configures a private server started by StartPostgres.
type PostgresOptions struct {
	// Settings are extra postgresql.conf settings, e.g. "wal_sender_timeout": "10s".
	// They override testenv's defaults.
	Settings map[string]string
	// Files are written into the data directory before the server starts,
	// mode 0600 and owned by the server's OS user: e.g. server.crt and
	// server.key for ssl=on (relative ssl_*_file settings name them).
	Files map[string][]byte
}

// Postgres is a private PostgreSQL server on a loopback port, run from a temporary data
// directory that is removed when the server is shut down.
type Postgres struct {
	bins    *pgBinaries
	runner  *runner
	dir     *tempDir
	root    string // dir.path: data directory and Unix socket
	dataDir string
	logPath string
	port    int
	args    []string

	mu       sync.Mutex
	proc     *process // nil while stopped
	shutDown bool
}

// StartPostgres starts a private PostgreSQL server just for this test (for tests that
// restart or crash the server) and stops it at cleanup.
func StartPostgres(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	p, err := startPostgres(opts, t.Logf)
	return forTest(t, p, err)
}

// URL returns the loopback URL of a database on this server; "" means "postgres", the
// default database.
func (p *Postgres) URL(dbname string) string {
	if dbname == "" {
		dbname = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, url.PathEscape(dbname))
}

// Port returns the server's TCP port on 127.0.0.1. It stays the same across restarts.
func (p *Postgres) Port() int { return p.port }

// Stop stops the server with `pg_ctl stop -m mode`: "smart", "fast" or "immediate" (a
// crash: no shutdown checkpoint, recovery at the next start). Stopping a stopped server
// does nothing.
//
// A fast stop waits for logical walsenders until their client has confirmed all WAL or
// wal_sender_timeout ends them; use "immediate" to cut off a client that does not confirm.
func (p *Postgres) Stop(t testing.TB, mode string) {
	t.Helper()
	if !validStopMode(mode) {
		t.Fatalf("testenv: Postgres.Stop: mode %q: use \"smart\", \"fast\" or \"immediate\"", mode)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.stopLocked(mode, stopTimeout); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Start starts the stopped server again on the same port and data directory.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutDown {
		t.Fatalf("testenv: Postgres.Start on port %d: the server was already shut down at cleanup", p.port)
	}
	if p.proc != nil {
		t.Fatalf("testenv: Postgres.Start on port %d: the server is running; Stop it first", p.port)
	}
	started := time.Now()
	if err := p.startLocked(); err != nil {
		if errors.Is(err, errPortInUse) {
			t.Fatalf("testenv: %v (another process took port %d while the server was stopped)", err, p.port)
		}
		t.Fatalf("testenv: %v", err)
	}
	t.Logf("testenv: PostgreSQL restarted on 127.0.0.1:%d in %s", p.port, durationString(time.Since(started)))
}

// Restart stops the server with the given mode (see Stop) and starts it again.
func (p *Postgres) Restart(t testing.TB, mode string) {
	t.Helper()
	p.Stop(t, mode)
	p.Start(t)
}

// Exec runs sql (one or more statements) in database dbname, or fails the test.
func (p *Postgres) Exec(t testing.TB, dbname, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL(dbname))
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", p.URL(dbname), err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("testenv: exec in database %q: %v\nSQL: %s", dbname, err, sql)
	}
}

// startPostgres initializes a data directory and starts a server on a free port.
func startPostgres(opts PostgresOptions, logf func(format string, args ...any)) (_ *Postgres, err error) {
	bins, err := postgresBinaries()
	if err != nil {
		return nil, err
	}
	run, err := postgresRunner()
	if err != nil {
		return nil, err
	}
	dir, err := newTempDir("pg")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = dir.remove()
		}
	}()
	root := dir.path
	if err := run.chown(root); err != nil {
		return nil, err
	}

	p := &Postgres{
		bins:    bins,
		runner:  run,
		dir:     dir,
		root:    root,
		dataDir: filepath.Join(root, "data"),
	}
	p.logPath = filepath.Join(p.dataDir, "server.log")

	began := time.Now()
	if err := p.initdb(); err != nil {
		return nil, err
	}
	initDuration := time.Since(began)
	if err := p.trustLoopback(); err != nil {
		return nil, err
	}
	for name, content := range opts.Files {
		path := filepath.Join(p.dataDir, name)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			return nil, err
		}
		if err := run.chown(path); err != nil {
			return nil, err
		}
	}

	settings := slices.Clone(serverSettings)
	// A Unix socket path must fit in sockaddr_un (~100 bytes); with a long TMPDIR, do
	// without the socket: tests use TCP and pg_ctl stop uses signals.
	socketDir := root
	if len(root)+len("/.s.PGSQL.65535") > 100 {
		socketDir = ""
	}
	settings = append(settings, [2]string{"unix_socket_directories", socketDir})
	for _, k := range slices.Sorted(maps.Keys(opts.Settings)) {
		settings = append(settings, [2]string{k, opts.Settings[k]})
	}
	p.args = []string{"-D", p.dataDir}
	for _, kv := range settings {
		p.args = append(p.args, "-c", kv[0]+"="+kv[1])
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if err = startOnFreePort(func(port int) error {
		p.port = port
		return p.startLocked()
	}); err != nil {
		return nil, err
	}
	registerServer(p)
	logf("testenv: PostgreSQL %s started on 127.0.0.1:%d in %s (initdb %s, start %s)",
		bins.version, p.port, durationString(time.Since(began)), durationString(initDuration),
		durationString(time.Since(began)-initDuration))
	return p, nil
}

// initdb creates the data directory, with the C.UTF-8 locale where the system has it.
func (p *Postgres) initdb() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var errs []error
	for _, locale := range []string{"C.UTF-8", "C"} {
		out, err := p.runner.run(ctx, p.root, p.bins.initdb,
			"-D", p.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale="+locale,
			"--no-sync", "--no-instructions")
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("initdb --locale=%s: %w\n%s", locale, err, strings.TrimSpace(string(out))))
		if rmErr := os.RemoveAll(p.dataDir); rmErr != nil {
			return errors.Join(append(errs, rmErr)...)
		}
	}
	return errors.Join(errs...)
}

// trustLoopback puts explicit trust lines for 127.0.0.1, ordinary and replication
// connections, at the top of pg_hba.conf, whatever initdb's defaults are.
func (p *Postgres) trustLoopback() error {
	path := filepath.Join(p.dataDir, "pg_hba.conf")
	current, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read pg_hba.conf: %w", err)
	}
	lines := "# testenv: loopback only, no passwords\n" +
		"host all all 127.0.0.1/32 trust\n" +
		"host replication all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(path, append([]byte(lines), current...), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	return nil
}

// startLocked starts the postmaster and waits until it accepts connections.
func (p *Postgres) startLocked() error {
	logStart := fileSize(p.logPath)
	args := append(slices.Clone(p.args), "-p", strconv.Itoa(p.port))
	// SIGQUIT on parent death is PostgreSQL's immediate shutdown: the postmaster takes
	// its backends down with it.
	proc, err := p.runner.startServer(syscall.SIGQUIT, p.root, p.logPath, p.bins.postgres, args...)
	if err != nil {
		return fmt.Errorf("PostgreSQL: %w", err)
	}
	if err := awaitReady(proc, p.ping, "PostgreSQL", fmt.Sprintf("127.0.0.1:%d", p.port), p.logPath, logStart); err != nil {
		return err
	}
	p.proc = proc
	return nil
}

// ping succeeds when this server, not another one that took the port, accepts a
// connection.
func (p *Postgres) ping(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var dataDir string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dataDir); err != nil {
		return err
	}
	if !samePath(dataDir, p.dataDir) {
		return fmt.Errorf("port %d is served by another PostgreSQL (data directory %s): %w", p.port, dataDir, errPortInUse)
	}
	return nil
}

// stopLocked stops the server with pg_ctl, and with signals if pg_ctl fails.
func (p *Postgres) stopLocked(mode string, timeout time.Duration) error {
	proc := p.proc
	if proc == nil {
		return nil
	}
	p.proc = nil
	if proc.exited() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	out, err := p.runner.run(ctx, p.root, p.bins.pgCtl,
		"stop", "-D", p.dataDir, "-m", mode, "-w", "-t", strconv.Itoa(int(timeout.Seconds())))
	if err == nil && proc.waitExit(timeout) {
		return nil
	}
	pgCtlErr := fmt.Errorf("PostgreSQL on port %d: pg_ctl stop -m %s: %v\n%s\n--- tail of %s ---\n%s",
		p.port, mode, err, strings.TrimSpace(string(out)), p.logPath, logTail(p.logPath))
	_ = proc.cmd.Process.Signal(syscall.SIGQUIT) // immediate shutdown
	if proc.waitExit(10 * time.Second) {
		return pgCtlErr
	}
	return errors.Join(pgCtlErr, proc.kill())
}

// shutdown stops the server for good and removes its files.
func (p *Postgres) shutdown() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutDown {
		return nil
	}
	p.shutDown = true
	unregisterServer(p)
	// The data is thrown away, so a fast stop that lingers (a logical walsender waiting
	// for a client's confirmation) is cut short by an immediate one.
	proc := p.proc
	err := p.stopLocked("fast", 15*time.Second)
	if err != nil && proc != nil && proc.exited() {
		err = nil // stopped anyway; a slow fast shutdown is not the test's failure
	}
	return errors.Join(err, p.dir.remove())
}

func validStopMode(mode string) bool {
	return mode == "smart" || mode == "fast" || mode == "immediate"
}

// Database returns the URL (postgres://postgres@127.0.0.1:PORT/DBNAME?sslmode=disable)
// of a fresh, empty database created for this test on a shared PostgreSQL server:
// DATABASE_URL's server when that variable is set (its role must be able to CREATE
// DATABASE and have REPLICATION, and the server must run with wal_level=logical),
// otherwise a private server started once per test process (initdb into a temp dir,
// wal_level=logical) and stopped by Main.
//
// The database name derives from t.Name() (sanitized, lowercase, unique suffix, at most
// 63 bytes). At cleanup the replication slots of the database are dropped (their
// walsenders terminated first) and the database is dropped WITH (FORCE).
func Database(t testing.TB) string {
	t.Helper()
	srv, err := sharedDatabaseServer(t.Logf)
	if err != nil {
		fail(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	name, err := srv.createDatabase(ctx, t.Name())
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		if err := srv.dropDatabase(ctx, name); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return srv.urlFor(name)
}

// databaseServer is where Database creates databases.
type databaseServer struct {
	adminURL string                     // a connection for CREATE/DROP DATABASE
	urlFor   func(dbname string) string // the URL of a database on this server
	source   string                     // "DATABASE_URL" or "private server" for messages
}

// shared is the process-wide database server. Package state, because the server is
// shared by every test of the process and outlives each of them.
var shared struct {
	sync.Mutex
	srv *databaseServer
	err error
}

func sharedDatabaseServer(logf func(format string, args ...any)) (*databaseServer, error) {
	shared.Lock()
	defer shared.Unlock()
	if shared.srv != nil || shared.err != nil {
		return shared.srv, shared.err
	}
	if dsn := os.Getenv("DATABASE_URL"); dsn != "" {
		shared.srv, shared.err = externalDatabaseServer(dsn)
		return shared.srv, shared.err
	}
	if !mainActive.Load() {
		// Not memoized: this is the package's mistake, reported on every call.
		return nil, errors.New("Database starts a PostgreSQL server shared by the package's tests, " +
			"which only testenv.Main stops: add `func TestMain(m *testing.M) { testenv.Main(m) }` to the package")
	}
	p, err := startPostgres(PostgresOptions{}, logf)
	if err != nil {
		shared.err = fmt.Errorf("shared PostgreSQL server: %w", err)
		return nil, shared.err
	}
	shared.srv = &databaseServer{adminURL: p.URL("postgres"), urlFor: p.URL, source: "private server"}
	return shared.srv, nil
}

// externalDatabaseServer checks that DATABASE_URL's server and role can do what the
// tests need, and says how to fix it when they cannot.
func externalDatabaseServer(dsn string) (*databaseServer, error) {
	srv := &databaseServer{adminURL: dsn, source: "DATABASE_URL"}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		base, err := url.Parse(dsn)
		if err != nil {
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
		srv.urlFor = func(dbname string) string {
			u := *base
			u.Path, u.RawPath = "/"+dbname, ""
			return u.String()
		}
	} else {
		// keyword=value form: the last dbname wins.
		srv.urlFor = func(dbname string) string { return dsn + " dbname=" + dbname }
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: connect: %w (unset DATABASE_URL to let testenv start a private server)", err)
	}
	defer conn.Close(context.Background())
	var (
		walLevel, role, version          string
		versionNum                       int
		superuser, createdb, replication bool
	)
	err = conn.QueryRow(ctx, `
		SELECT current_setting('wal_level'), current_setting('server_version'),
		       current_setting('server_version_num')::int, r.rolname,
		       r.rolsuper, r.rolcreatedb, r.rolreplication
		FROM pg_roles r WHERE r.rolname = current_user`,
	).Scan(&walLevel, &version, &versionNum, &role, &superuser, &createdb, &replication)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: inspect server and role: %w", err)
	}
	var problems []string
	if versionNum < minPostgresMajor*10000 {
		problems = append(problems, fmt.Sprintf("server is PostgreSQL %s: use %d or newer", version, minPostgresMajor))
	}
	if walLevel != "logical" {
		problems = append(problems, fmt.Sprintf("wal_level is %s: set wal_level = logical and restart the server", walLevel))
	}
	if !superuser && !createdb {
		problems = append(problems, fmt.Sprintf("role %s cannot create databases: ALTER ROLE %s CREATEDB", role, role))
	}
	if !superuser && !replication {
		problems = append(problems, fmt.Sprintf("role %s lacks REPLICATION: ALTER ROLE %s REPLICATION", role, role))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("DATABASE_URL cannot serve these tests: %s (or unset DATABASE_URL to let testenv start a private server)",
			strings.Join(problems, "; "))
	}
	return srv, nil
}

// createDatabase creates an empty database named after the test.
func (s *databaseServer) createDatabase(ctx context.Context, testName string) (string, error) {
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return "", fmt.Errorf("connect to %s to create a database: %w", s.source, err)
	}
	defer conn.Close(context.Background())
	for attempt := 1; ; attempt++ {
		name := databaseName(testName, randomSuffix())
		// template0 is never modified, so the database is empty whatever template1 holds.
		_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0")
		if err == nil {
			return name, nil
		}
		if pgErrorCode(err) == "42P04" && attempt < 5 { // duplicate_database: draw another suffix
			continue
		}
		return "", fmt.Errorf("create database %q on %s: %w", name, s.source, err)
	}
}

// dropDatabase drops the replication slots of a test database, then the database.
func (s *databaseServer) dropDatabase(ctx context.Context, name string) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(startTimeout)
	}
	err := pollUntil(time.Until(deadline), ctx.Done(), func(ctx context.Context) error {
		return s.tryDropDatabase(ctx, name)
	})
	if err != nil {
		return fmt.Errorf("drop database %q on %s: %w", name, s.source, err)
	}
	return nil
}

// tryDropDatabase makes one attempt; a slot that is still active (its walsender has
// not exited yet) makes it fail, and dropDatabase tries again.
func (s *databaseServer) tryDropDatabase(ctx context.Context, name string) error {
	admin, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())

	var slots, terminated int
	// pg_terminate_backend's timeout (ms) waits for the walsender to exit, which
	// releases the slot.
	err = admin.QueryRow(ctx, `
		SELECT count(*), count(pg_terminate_backend(active_pid, 1000))
		FROM pg_replication_slots WHERE database = $1`, name).Scan(&slots, &terminated)
	if err != nil {
		return fmt.Errorf("terminate walsenders: %w", err)
	}
	if slots > 0 {
		// A logical slot can only be dropped from its own database.
		conn, err := pgx.Connect(ctx, s.urlFor(name))
		if err != nil {
			if pgErrorCode(err) == "3D000" { // invalid_catalog_name: already dropped
				return nil
			}
			return err
		}
		defer conn.Close(context.Background())
		rows, err := conn.Query(ctx, `SELECT slot_name FROM pg_replication_slots WHERE database = current_database()`)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, slot := range names {
			_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
			if err != nil && pgErrorCode(err) != "42704" { // undefined_object: dropped meanwhile
				return fmt.Errorf("drop replication slot %q: %w", slot, err)
			}
		}
		conn.Close(ctx)
	}
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return err
	}
	return nil
}

// databaseName builds a database name from a test name: lowercase letters, digits and
// underscores, starting with a letter, ending in _suffix, at most 63 bytes (PostgreSQL's
// NAMEDATALEN-1).
func databaseName(testName, suffix string) string {
	const maxLen = 63
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "_"):
			b.WriteByte('_')
		}
	}
	base := strings.Trim(b.String(), "_")
	if base == "" || base[0] < 'a' || base[0] > 'z' {
		base = strings.TrimSuffix("t_"+base, "_")
	}
	if limit := maxLen - 1 - len(suffix); len(base) > limit {
		base = strings.TrimRight(base[:limit], "_")
	}
	return base + "_" + suffix
}

// randomSuffix makes database names unique across test processes sharing a server.
func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:])
}

func pgErrorCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// pgBinaries are the PostgreSQL server programs of one installation.
type pgBinaries struct {
	postgres, initdb, pgCtl string
	version                 string // e.g. "15.18"
}

var pgBins struct {
	once sync.Once
	bins *pgBinaries
	err  error
}

func postgresBinaries() (*pgBinaries, error) {
	pgBins.once.Do(func() { pgBins.bins, pgBins.err = findPostgresBinaries() })
	return pgBins.bins, pgBins.err
}

var (
	pgVersionPattern = regexp.MustCompile(`\(PostgreSQL\) (\d+)(\.\d+)?`)
	dirNumberPattern = regexp.MustCompile(`(\d+)[^/]*/bin$`)
)

// findPostgresBinaries looks on PATH first, then in the usual package directories,
// newest first, and takes the first installation of PostgreSQL 15 or newer.
func findPostgresBinaries() (*pgBinaries, error) {
	var dirs []string
	if path, err := exec.LookPath("postgres"); err == nil {
		if resolved, err := filepath.EvalSymlinks(path); err == nil {
			path = resolved
		}
		dirs = append(dirs, filepath.Dir(path))
	}
	for _, pattern := range []string{
		"/usr/lib/postgresql/*/bin",          // Debian, Ubuntu
		"/usr/pgsql-*/bin",                   // PGDG RPMs
		"/opt/homebrew/opt/postgresql@*/bin", // Homebrew, Apple silicon
		"/usr/local/opt/postgresql@*/bin",    // Homebrew, Intel
	} {
		matches, _ := filepath.Glob(pattern)
		slices.SortFunc(matches, func(a, b string) int { return dirNumber(b) - dirNumber(a) })
		dirs = append(dirs, matches...)
	}

	var tooOld []string
	for _, dir := range dirs {
		bins := &pgBinaries{
			postgres: filepath.Join(dir, "postgres"),
			initdb:   lookBeside(dir, "initdb"),
			pgCtl:    lookBeside(dir, "pg_ctl"),
		}
		if !isExecutable(bins.postgres) || bins.initdb == "" || bins.pgCtl == "" {
			continue
		}
		out, err := exec.Command(bins.postgres, "--version").Output()
		if err != nil {
			continue
		}
		m := pgVersionPattern.FindStringSubmatch(string(out))
		if m == nil {
			continue
		}
		major, _ := strconv.Atoi(m[1])
		bins.version = m[1] + m[2]
		if major < minPostgresMajor {
			tooOld = append(tooOld, bins.version+" at "+bins.postgres)
			continue
		}
		return bins, nil
	}
	if len(tooOld) > 0 {
		return nil, &missingBinariesError{fmt.Sprintf(
			"PostgreSQL %d or newer is required, found only %s: run `make deps` (Debian: apt-get install -y postgresql redis-server) or set DATABASE_URL",
			minPostgresMajor, strings.Join(tooOld, ", "))}
	}
	return nil, &missingBinariesError{"PostgreSQL server binaries not found: run `make deps` " +
		"(Debian: apt-get install -y postgresql redis-server) or set DATABASE_URL " +
		"(searched PATH and /usr/lib/postgresql/*/bin for postgres, initdb and pg_ctl)"}
}

// lookBeside finds a program in dir, else on PATH; "" when neither has it.
func lookBeside(dir, name string) string {
	if path := filepath.Join(dir, name); isExecutable(path) {
		return path
	}
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	return ""
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0
}

// dirNumber is the version number in an installation directory, 0 if none.
func dirNumber(dir string) int {
	m := dirNumberPattern.FindStringSubmatch(dir)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// samePath compares two paths after resolving symbolic links (macOS's /tmp is one).
func samePath(a, b string) bool {
	if ra, err := filepath.EvalSymlinks(a); err == nil {
		a = ra
	}
	if rb, err := filepath.EvalSymlinks(b); err == nil {
		b = rb
	}
	return filepath.Clean(a) == filepath.Clean(b)
}

func fileSize(path string) int64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return info.Size()
}

// logSince returns what was appended to a log after offset.
func logSince(path string, offset int64) string {
	data, err := os.ReadFile(path)
	if err != nil || int64(len(data)) < offset {
		return ""
	}
	return string(data[offset:])
}
