package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// succeeds adapts check for testenv.Eventually: each call gets a second,
// and the last error is the reason a timed-out wait reports.
func succeeds(check func(ctx context.Context) error) func() (bool, string) {
	return func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := check(ctx); err != nil {
			return false, err.Error()
		}
		return true, ""
	}
}

func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatalf("connect %s: %v", dbURL, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// isURL tells a postgres:// URL from a keyword=value DSN (DATABASE_URL may be either).
func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// withParam returns dbURL with one connection parameter set.
func withParam(t *testing.T, dbURL, key, value string) string {
	t.Helper()
	if !isURL(dbURL) {
		return dbURL + " " + key + "=" + value
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("parse %s: %v", dbURL, err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// withDatabase returns dbURL pointing at another database of the same server.
func withDatabase(t *testing.T, dbURL, dbname string) string {
	t.Helper()
	if !isURL(dbURL) {
		return withParam(t, dbURL, "dbname", dbname)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("parse %s: %v", dbURL, err)
	}
	u.Path = "/" + dbname
	return u.String()
}

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestDatabase(t *testing.T) {
	t.Parallel()

	dbURL := testenv.Database(t)
	if os.Getenv("DATABASE_URL") == "" {
		if !regexp.MustCompile(`^postgres://postgres@127\.0\.0\.1:\d+/[a-z][a-z0-9_]*\?sslmode=disable$`).MatchString(dbURL) {
			t.Errorf("Database URL = %q, want postgres://postgres@127.0.0.1:PORT/DBNAME?sslmode=disable", dbURL)
		}
	}
	conn := connect(t, dbURL)

	if n := queryString(t, conn, `SELECT count(*)::text FROM pg_class WHERE relnamespace = 'public'::regnamespace`); n != "0" {
		t.Errorf("fresh database has %s relations in schema public, want 0", n)
	}
	if _, err := conn.Exec(t.Context(), `CREATE TABLE users (id int PRIMARY KEY, email text); INSERT INTO users VALUES (1, 'a@example.com')`); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, conn, `SELECT email FROM users WHERE id = 1`); got != "a@example.com" {
		t.Errorf("email = %q, want a@example.com", got)
	}
	if got := queryString(t, conn, `SHOW wal_level`); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
}

func TestDatabaseIsolation(t *testing.T) {
	t.Parallel()

	urlA, urlB := testenv.Database(t), testenv.Database(t)
	if urlA == urlB {
		t.Fatalf("two Database calls returned the same URL %s", urlA)
	}
	connA, connB := connect(t, urlA), connect(t, urlB)
	if _, err := connA.Exec(t.Context(), `CREATE TABLE only_in_a (id int)`); err != nil {
		t.Fatal(err)
	}
	var visible bool
	if err := connB.QueryRow(t.Context(), `SELECT to_regclass('only_in_a') IS NOT NULL`).Scan(&visible); err != nil {
		t.Fatal(err)
	}
	if visible {
		t.Error("a table created in one test database is visible in another")
	}
}

func TestDatabaseName(t *testing.T) {
	t.Parallel()

	valid := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	for _, tt := range []struct {
		name       string
		wantPrefix string
	}{
		{"Simple", "testdatabasename_simple_"},
		{"Spaces, Ünïcode & punctuation!", "testdatabasename_spaces_n_code_punctuation_"},
		{strings.Repeat("VeryLong", 20), "testdatabasename_verylongverylong"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn := connect(t, testenv.Database(t))
			got := queryString(t, conn, `SELECT current_database()`)
			if len(got) > 63 || !valid.MatchString(got) {
				t.Errorf("database name %q: want [a-z][a-z0-9_]* of at most 63 bytes", got)
			}
			if !strings.HasPrefix(got, tt.wantPrefix) {
				t.Errorf("database name %q: want prefix %q", got, tt.wantPrefix)
			}
		})
	}
}

func TestDatabaseParallel(t *testing.T) {
	t.Parallel()

	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, testenv.Database(t))
			if _, err := conn.Exec(t.Context(), `CREATE TABLE t (id int); INSERT INTO t VALUES (1)`); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDatabaseReplicationConnection(t *testing.T) {
	t.Parallel()

	dbURL := testenv.Database(t)
	dbName := queryString(t, connect(t, dbURL), `SELECT current_database()`)

	repl, err := pgconn.Connect(t.Context(), withParam(t, dbURL, "replication", "database"))
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	t.Cleanup(func() { _ = repl.Close(context.Background()) })

	results, err := repl.Exec(t.Context(), "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 4 {
		t.Fatalf("IDENTIFY_SYSTEM returned %+v, want one row of systemid, timeline, xlogpos, dbname", results)
	}
	if got := string(results[0].Rows[0][3]); got != dbName {
		t.Errorf("IDENTIFY_SYSTEM dbname = %q, want %q", got, dbName)
	}
}

// TestDatabaseCleanupDropsActiveSlot leaves a walsender streaming from a logical slot
// when the test that owns the database ends: cleanup must terminate it, drop the slot
// and drop the database.
func TestDatabaseCleanupDropsActiveSlot(t *testing.T) {
	t.Parallel()

	var (
		dbURL, dbName string
		repl          *pgconn.PgConn
	)
	t.Run("stream", func(t *testing.T) {
		dbURL = testenv.Database(t)
		conn := connect(t, dbURL)
		dbName = queryString(t, conn, `SELECT current_database()`)
		if _, err := conn.Exec(t.Context(), `CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION testenv_pub FOR TABLE items`); err != nil {
			t.Fatal(err)
		}

		var err error
		repl, err = pgconn.Connect(t.Context(), withParam(t, dbURL, "replication", "database"))
		if err != nil {
			t.Fatalf("replication connection: %v", err)
		}
		// Slot names are global to the server; the database name is unique.
		if _, err := repl.Exec(t.Context(), "CREATE_REPLICATION_SLOT "+dbName+" LOGICAL pgoutput").ReadAll(); err != nil {
			t.Fatalf("CREATE_REPLICATION_SLOT: %v", err)
		}
		repl.Frontend().Send(&pgproto3.Query{String: "START_REPLICATION SLOT " + dbName +
			" LOGICAL 0/0 (proto_version '1', publication_names 'testenv_pub')"})
		if err := repl.Frontend().Flush(); err != nil {
			t.Fatalf("START_REPLICATION: %v", err)
		}
		msg, err := repl.ReceiveMessage(t.Context())
		if err != nil {
			t.Fatalf("START_REPLICATION: %v", err)
		}
		if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
			t.Fatalf("START_REPLICATION answered %T, want CopyBothResponse", msg)
		}
		testenv.Eventually(t, 10*time.Second, "slot becomes active", succeeds(func(ctx context.Context) error {
			var active bool
			err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, dbName).Scan(&active)
			if err == nil && !active {
				err = errors.New("slot is not active")
			}
			return err
		}))
		// The replication connection stays open: the subtest's cleanup meets an active slot.
	})
	if t.Failed() {
		return
	}
	defer repl.Close(context.Background())

	admin := connect(t, withDatabase(t, dbURL, "postgres"))
	var databases, slots int
	err := admin.QueryRow(t.Context(), `
		SELECT (SELECT count(*) FROM pg_database WHERE datname = $1),
		       (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)`, dbName).Scan(&databases, &slots)
	if err != nil {
		t.Fatal(err)
	}
	if databases != 0 || slots != 0 {
		t.Errorf("after cleanup: %d databases and %d slots named %q, want none", databases, slots, dbName)
	}
}

func TestStartPostgresRestart(t *testing.T) {
	t.Parallel()

	p := testenv.StartPostgres(t, testenv.PostgresOptions{Settings: map[string]string{"wal_sender_timeout": "10s"}})
	if want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port()); p.URL("") != want {
		t.Errorf("URL(\"\") = %q, want %q", p.URL(""), want)
	}
	conn := connect(t, p.URL("postgres"))
	if got := queryString(t, conn, `SHOW wal_sender_timeout`); got != "10s" {
		t.Errorf("wal_sender_timeout = %q, want 10s (PostgresOptions.Settings)", got)
	}
	if got := queryString(t, conn, `SHOW wal_level`); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
	_ = conn.Close(t.Context())

	p.Exec(t, "postgres", `CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)`)

	p.Restart(t, "immediate") // a crash: recovery replays the committed insert
	conn = connect(t, p.URL("postgres"))
	if got := queryString(t, conn, `SELECT v::text FROM kept`); got != "42" {
		t.Errorf("after immediate restart: v = %q, want 42", got)
	}
	_ = conn.Close(t.Context())

	p.Stop(t, "fast")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if c, err := pgx.Connect(ctx, p.URL("")); err == nil {
		_ = c.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	p.Start(t)
	p.Exec(t, "", `SELECT 1`)
}

func TestRedisStopStart(t *testing.T) {
	t.Parallel()

	r := testenv.Redis(t)
	if !r.Controllable() {
		t.Skip("REDIS_URL's server cannot be stopped")
	}
	client := r.Client(t)
	key := "testenv:" + t.Name()
	if err := client.Set(t.Context(), key, "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	r.Stop(t)
	testenv.Eventually(t, 10*time.Second, "PING fails after Stop", succeeds(func(ctx context.Context) error {
		if client.Ping(ctx).Err() == nil {
			return errors.New("PING still answered")
		}
		return nil
	}))

	r.Start(t)
	testenv.Eventually(t, 10*time.Second, "PING answers after Start", succeeds(func(ctx context.Context) error {
		return client.Ping(ctx).Err()
	}))
	if err := client.Get(t.Context(), key).Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET after restart: err = %v, want redis.Nil (empty dataset)", err)
	}
}

func TestStartRedis(t *testing.T) {
	t.Parallel()

	a, b := testenv.StartRedis(t), testenv.StartRedis(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers on the same address %s", a.Addr())
	}
	if want := "redis://" + a.Addr() + "/0"; a.URL() != want {
		t.Errorf("URL() = %q, want %q", a.URL(), want)
	}
	if !strings.HasPrefix(a.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q, want a loopback address", a.Addr())
	}
	clientA := a.Client(t)
	if err := clientA.Set(t.Context(), "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Client(t).DBSize(t.Context()).Result(); err != nil || n != 0 {
		t.Errorf("second server DBSIZE = %d, %v; want 0 keys", n, err)
	}
}

// TestStartRedisArgs: the options win over testenv's own and last across
// Stop and Start; with an AOF fsynced at every write, what Redis
// acknowledged survives the kill.
func TestStartRedisArgs(t *testing.T) {
	t.Parallel()

	r := testenv.StartRedisArgs(t, "--appendonly", "yes", "--appendfsync", "always")
	client := r.Client(t)
	if err := client.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Stop(t)
	r.Start(t)
	if got, err := client.Get(t.Context(), "k").Result(); err != nil || got != "v" {
		t.Errorf("GET after a kill and a restart = %q, %v; want \"v\" from the AOF", got, err)
	}
	if got := client.ConfigGet(t.Context(), "appendfsync").Val()["appendfsync"]; got != "always" {
		t.Errorf("appendfsync after the restart = %q, want always", got)
	}
}
