// Package e2e tests the built cachesync binary against real PostgreSQL and
// Redis servers started by internal/testenv. Each test gets its own database,
// Redis server, rules file and daemon process.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
)

var binary string

// faultBuild is the binary built with -tags faultinject, for the tests that
// drop effects on purpose (faultBinary); built on first use only.
var faultBuild struct {
	once sync.Once
	path string
	err  error
}

// faultBinary returns a cachesync built with -tags faultinject: it drops one
// in CACHESYNC_DROP_EFFECTS refresh sets/unsets and key deletes and lists
// them in CACHESYNC_DROP_EFFECTS_LOG (writer/faultinject.go).
func faultBinary(t *testing.T) string {
	t.Helper()
	faultBuild.once.Do(func() {
		faultBuild.path = binary + "-faultinject"
		out, err := exec.Command("go", "build", "-race", "-tags", "faultinject", "-o", faultBuild.path, "../cmd/cachesync").CombinedOutput()
		if err != nil {
			faultBuild.err = fmt.Errorf("building cachesync with -tags faultinject: %v\n%s", err, out)
		}
	})
	if faultBuild.err != nil {
		t.Fatal(faultBuild.err)
	}
	return faultBuild.path
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cachesync-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "cachesync")
	build := exec.Command("go", "build", "-race", "-o", binary, "../cmd/cachesync")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building cachesync failed:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	// Parallel daemons: each serves its endpoints on a port of its own
	// (the log line "serving ..." names it).
	os.Setenv("CACHESYNC_LISTEN", "127.0.0.1:0")
	testenv.Main(m)
}

// env is one test's world: a database, a Redis server, a rules file.
type env struct {
	t     *testing.T
	dbURL string
	db    *pgx.Conn
	redis *testenv.RedisServer // nil for a cluster or sentinel env
	rdb   redis.UniversalClient
	// redisEnv is how the daemon finds Redis: REDIS_URL for a standalone
	// server; for a cluster or sentinel the rules file's redis block does,
	// and REDIS_URL is emptied.
	redisEnv string
	rules    string
	slot     string
	ctx      context.Context
	logDir   string
}

// setup creates the schema and writes the rules file, with a private
// standalone Redis found through REDIS_URL.
func setup(t *testing.T, schema, rules string) *env {
	t.Helper()
	redis := testenv.StartRedis(t)
	return setupWith(t, schema, "", rules, func(e *env) {
		e.redis, e.rdb, e.redisEnv = redis, redis.Client(t), "REDIS_URL="+redis.URL()
	})
}

// setupWith is setup with the cache chosen by attach, which sets e.rdb and
// e.redisEnv (and e.redis for a standalone server); redisBlock goes into the
// rules file (a cluster's or sentinels' addresses).
func setupWith(t *testing.T, schema, redisBlock, rules string, attach func(e *env)) *env {
	t.Helper()
	t.Parallel()
	e := &env{t: t, dbURL: testenv.Database(t), ctx: context.Background(), logDir: t.TempDir()}
	attach(e)
	conn, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	e.db = conn
	e.exec(schema)
	// Slots are cluster-wide, databases are not: name the slot after the
	// test's database so that parallel tests never share one.
	if err := conn.QueryRow(e.ctx, "SELECT left(current_database(), 63)").Scan(&e.slot); err != nil {
		t.Fatal(err)
	}
	e.rules = filepath.Join(t.TempDir(), "rules.hcl")
	body := fmt.Sprintf("postgres {\n  slot = %q\n  publication = \"cachesync\"\n}\n%s%s", e.slot, redisBlock, rules)
	if err := os.WriteFile(e.rules, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(e.ctx, sql, args...); err != nil {
		e.t.Fatalf("exec %q: %v", sql, err)
	}
}

// daemon is a running cachesync process.
type daemon struct {
	e    *env
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
	err  error
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cli runs a cachesync command to completion and returns its output and exit code.
func (e *env) cli(args ...string) (string, int) {
	e.t.Helper()
	return e.cliEnv(nil, args...)
}

// cliTimeout bounds a command run by cli: a command that should exit but
// runs on (a `run` that should have refused) fails the test, not the suite.
const cliTimeout = 2 * time.Minute

// cliEnv is cli with extra environment variables (later ones win).
func (e *env) cliEnv(extraEnv []string, args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+e.dbURL, e.redisEnv, "CACHESYNC_CONFIG="+e.rules)
	cmd.Env = append(cmd.Env, extraEnv...)
	out, err := cmd.CombinedOutput()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return string(out), code
}

// start runs `cachesync run` with a short status interval.
func (e *env) start(extraEnv ...string) *daemon {
	e.t.Helper()
	return e.startBinary(binary, extraEnv...)
}

// startBinary is start with another build of cachesync.
func (e *env) startBinary(bin string, extraEnv ...string) *daemon {
	e.t.Helper()
	return e.launch(bin, nil, extraEnv)
}

// startArgs is start with more command-line arguments for `cachesync run`
// (the harness's own come first, so these win).
func (e *env) startArgs(args []string, extraEnv ...string) *daemon {
	e.t.Helper()
	return e.launch(binary, args, extraEnv)
}

func (e *env) launch(bin string, args, extraEnv []string) *daemon {
	e.t.Helper()
	return e.launchCommand(bin, append([]string{"run", "--log-level", "debug", "--status-interval", "1s"}, args...), extraEnv)
}

// launchCommand starts a long-running cachesync command (args include the
// command's name) with the test's database, Redis and rules file.
func (e *env) launchCommand(bin string, args, extraEnv []string) *daemon {
	e.t.Helper()
	d := &daemon{e: e, log: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Env = append(os.Environ(), "DATABASE_URL="+e.dbURL, e.redisEnv, "CACHESYNC_CONFIG="+e.rules)
	d.cmd.Env = append(d.cmd.Env, extraEnv...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	e.t.Cleanup(func() {
		d.kill()
		if e.t.Failed() {
			e.t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	return d
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *daemon) kill() {
	if !d.exited() {
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	}
}

// stop sends SIGTERM and returns the exit code.
func (d *daemon) stop() int {
	d.e.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.e.t.Fatalf("daemon did not stop within 30s of SIGTERM\n%s", d.log.String())
	}
	return d.cmd.ProcessState.ExitCode()
}

// waitExit waits for the process to end by itself (a failpoint).
func (d *daemon) waitExit(timeout time.Duration) {
	d.e.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.e.t.Fatalf("daemon still running after %s\n%s", timeout, d.log.String())
	}
}

// currentLSN returns the server's WAL insert position.
func (e *env) currentLSN() wal.LSN {
	e.t.Helper()
	var s string
	if err := e.db.QueryRow(e.ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	l, err := wal.ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// confirmedLSN returns the slot's confirmed_flush_lsn (0 when there is no slot).
func (e *env) confirmedLSN() wal.LSN {
	e.t.Helper()
	var s *string
	err := e.db.QueryRow(e.ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&s)
	if err == pgx.ErrNoRows || s == nil {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := wal.ParseLSN(*s)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// caughtUp waits until the slot confirmed everything committed so far: every
// effect of those transactions is then applied.
func (e *env) caughtUp(d *daemon, timeout time.Duration) {
	e.t.Helper()
	target := e.currentLSN()
	testenv.Eventually(e.t, timeout, "slot confirms "+target.String(), func() (bool, string) {
		if d != nil && d.exited() {
			e.t.Fatalf("daemon exited: %v\n%s", d.err, d.log.String())
		}
		got := e.confirmedLSN()
		return got >= target, "confirmed " + got.String()
	})
}

// waitStreaming waits until the daemon holds the slot.
func (e *env) waitStreaming(d *daemon) {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, "daemon streaming", func() (bool, string) {
		if d.exited() {
			e.t.Fatalf("daemon exited: %v\n%s", d.err, d.log.String())
		}
		var active bool
		err := e.db.QueryRow(e.ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&active)
		return err == nil && active && strings.Contains(d.log.String(), `"streaming"`), fmt.Sprint(err)
	})
}

func (e *env) exists(key string) bool {
	e.t.Helper()
	n, err := e.rdb.Exists(e.ctx, key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return n == 1
}

func (e *env) set(keys ...string) {
	e.t.Helper()
	for _, k := range keys {
		if err := e.rdb.Set(e.ctx, k, "cached", 0).Err(); err != nil {
			e.t.Fatal(err)
		}
	}
}

// gone waits until none of the keys exists.
func (e *env) gone(keys ...string) {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, fmt.Sprintf("keys %v deleted", keys), func() (bool, string) {
		for _, k := range keys {
			if e.exists(k) {
				return false, k + " still exists"
			}
		}
		return true, ""
	})
}

// present asserts the keys exist (not invalidated by mistake).
func (e *env) present(keys ...string) {
	e.t.Helper()
	for _, k := range keys {
		if !e.exists(k) {
			e.t.Errorf("key %s was deleted but nothing invalidated it", k)
		}
	}
}
