// Package testenv gives tests real, throwaway servers: a PostgreSQL with
// wal_level=logical and a redis-server, both on loopback ports.
//
// Environment:
//
//   - DATABASE_URL: use this PostgreSQL server instead of starting one. Its role must
//     be able to CREATE DATABASE and have REPLICATION, and the server must run with
//     wal_level=logical. Every test still gets its own database.
//   - REDIS_URL: use this Redis server instead of starting one per test. testenv never
//     flushes it, so tests must keep to their own keys; Stop and Start are unavailable
//     (see RedisServer.Controllable).
//   - CI: documents that missing server binaries fail the run. testenv never skips a
//     test for lack of binaries, in CI or elsewhere; it fails with the command to run.
//
// Without those variables the servers are started from the binaries on PATH or under
// /usr/lib/postgresql/*/bin; scripts/ensure-servers.sh installs them on Debian/Ubuntu.
//
// Every package that uses testenv declares
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// so that the PostgreSQL server shared by the package's tests is stopped when they end.
// Servers are also tied to the test process by the kernel (Linux parent-death signal), so
// a test binary killed by a timeout or SIGKILL does not leave them running.
//
// Tests wait for an effect on those servers (or on the daemon) with Eventually,
// the one poll-with-deadline helper of the tree.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// startTimeout bounds how long a server may take to accept connections.
	startTimeout = 60 * time.Second
	// stopTimeout bounds a graceful stop before the server is killed.
	stopTimeout = 60 * time.Second
	// pollInterval is how often readiness and shutdown conditions are checked.
	pollInterval = 20 * time.Millisecond
	// portAttempts is how many free ports are tried when another process takes the
	// chosen one between choosing and binding it.
	portAttempts = 5
)

// mainActive is set by Main; the shared PostgreSQL server lives as long as the test
// process, so only Main can stop it and it is not started without Main.
var mainActive atomic.Bool

// Main runs the tests of a package and then stops every server this process started.
// Use: func TestMain(m *testing.M) { testenv.Main(m) }
//
// SIGINT and SIGTERM also stop the servers before the process exits.
func Main(m *testing.M) { os.Exit(run(m)) }

// Tests is Main for a TestMain that checks more once the servers are stopped,
// such as goroutine leaks: its Run runs the tests, stops the servers and
// returns the exit code.
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(testenv.Tests(m)) }
func Tests(m *testing.M) interface{ Run() int } { return tests{m} }

type tests struct{ m *testing.M }

func (t tests) Run() int { return run(t.m) }

// SpawnerFunction is the function of the one goroutine testenv leaves
// running after the servers stopped, on purpose (see spawner): a goroutine
// leak check ignores it.
const SpawnerFunction = "github.com/cachesync/cachesync/internal/testenv.startOnSpawnerThread.func1.1"

func run(m *testing.M) int {
	mainActive.Store(true)
	// go-redis prints every failed dial and sentinel switch to stderr. Tests
	// that stop servers on purpose make hundreds of them, and in CI's log they
	// bury the one line that names a failing test; each test asserts the
	// outcome it cares about instead.
	redis.SetLogger(quietRedis{})

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	testsDone := make(chan struct{})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case sig := <-signals:
			fmt.Fprintf(os.Stderr, "testenv: %v received, stopping test servers\n", sig)
			shutdownAll()
			os.Exit(1)
		case <-testsDone:
		}
	}()

	code := m.Run()

	signal.Stop(signals)
	close(testsDone)
	<-watcherDone

	if errs := shutdownAll(); len(errs) > 0 {
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

// forTest fails the test when a server could not start, and stops it at
// the test's cleanup otherwise.
func forTest[S server](t testing.TB, s S, err error) S {
	t.Helper()
	if err != nil {
		fail(t, err)
	}
	t.Cleanup(func() {
		if err := s.shutdown(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return s
}

// server is anything this process started and must stop before it exits.
type server interface {
	shutdown() error
}

// liveServers holds every server started and not yet shut down, so that Main (or a
// signal) can stop whatever the tests' cleanups did not.
var liveServers = struct {
	sync.Mutex
	set map[server]struct{}
}{set: map[server]struct{}{}}

func registerServer(s server) {
	liveServers.Lock()
	defer liveServers.Unlock()
	liveServers.set[s] = struct{}{}
}

func unregisterServer(s server) {
	liveServers.Lock()
	defer liveServers.Unlock()
	delete(liveServers.set, s)
}

// shutdownAll stops every registered server in parallel and returns the failures.
func shutdownAll() []error {
	liveServers.Lock()
	servers := make([]server, 0, len(liveServers.set))
	for s := range liveServers.set {
		servers = append(servers, s)
	}
	liveServers.Unlock()

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, s := range servers {
		wg.Go(func() {
			if err := s.shutdown(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// spawnRequest asks the spawner goroutine to start a command.
type spawnRequest struct {
	cmd    *exec.Cmd
	result chan error
}

// spawner starts server processes from one OS thread that lives as long as the process.
//
// Linux delivers the parent-death signal when the thread that forked the child exits,
// not when the process does. The Go runtime may end a thread whose goroutine exits while
// locked to it, so a server started from an arbitrary goroutine could be killed in the
// middle of a test. The spawner goroutine locks its thread and never returns, so that
// thread, and with it every server's parent, ends only with the process.
var spawner struct {
	once     sync.Once
	requests chan spawnRequest
}

func startOnSpawnerThread(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.requests = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: see spawner
			for req := range spawner.requests {
				req.result <- req.cmd.Start()
			}
		}()
	})
	result := make(chan error, 1)
	spawner.requests <- spawnRequest{cmd: cmd, result: result}
	return <-result
}

// process is a running server child.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result; read only after done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to timeout for the process to exit.
func (p *process) waitExit(timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		return false
	}
}

// kill sends SIGKILL to the process's group (each server has its own, see
// runner.command; it also holds the server when runuser wraps it) and waits for the
// process to be reaped.
func (p *process) kill() error {
	pid := p.cmd.Process.Pid
	if syscall.Kill(-pid, syscall.SIGKILL) != nil {
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill pid %d: %w", pid, err)
		}
	}
	if !p.waitExit(stopTimeout) {
		return fmt.Errorf("pid %d did not exit %v after SIGKILL", pid, stopTimeout)
	}
	return nil
}

// credentialMode is how a command is made to run as the server user when the test
// process runs as root.
type credentialMode int

const (
	// credSetgroups (the zero value) switches uid and gid and clears
	// supplementary groups.
	_ credentialMode = iota
	// credKeepGroups switches uid and gid only, for user namespaces that deny setgroups.
	credKeepGroups
	// credRunuser wraps the command in `runuser -u USER --`. The parent-death signal then
	// reaches runuser, not the server, so only Main's shutdown stops the server.
	credRunuser
)

// runner starts commands, as the `postgres` OS user when this process is root
// (PostgreSQL refuses to run as root), otherwise as the current user.
type runner struct {
	asUser   string // "" to run as the current user
	uid, gid uint32

	mu   sync.Mutex
	mode credentialMode
}

var (
	pgRunnerOnce sync.Once
	pgRunner     *runner
	pgRunnerErr  error
)

// postgresRunner returns the runner for PostgreSQL commands.
func postgresRunner() (*runner, error) {
	pgRunnerOnce.Do(func() {
		if os.Geteuid() != 0 {
			pgRunner = &runner{}
			return
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			pgRunnerErr = fmt.Errorf("PostgreSQL refuses to run as root and the OS user `postgres` was not found (%w): "+
				"install the postgresql package (it creates the user), create it with `useradd --system postgres`, "+
				"run the tests as a non-root user, or set DATABASE_URL", err)
			return
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err := errors.Join(err1, err2); err != nil {
			pgRunnerErr = fmt.Errorf("OS user postgres: uid %q gid %q: %w", u.Uid, u.Gid, err)
			return
		}
		pgRunner = &runner{asUser: "postgres", uid: uint32(uid), gid: uint32(gid)}
	})
	return pgRunner, pgRunnerErr
}

// currentUserRunner runs commands as this process's user (redis-server runs as root).
var currentUserRunner = &runner{}

// chown gives path to the runner's user, so that it can write there.
func (r *runner) chown(path string) error {
	if r.asUser == "" {
		return nil
	}
	if err := os.Chown(path, int(r.uid), int(r.gid)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, r.asUser, err)
	}
	return nil
}

// command builds a command for the given credential mode. pdeathsig 0 means none.
func (r *runner) command(mode credentialMode, pdeathsig syscall.Signal, dir, bin string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	attr := &syscall.SysProcAttr{Setpgid: true} // own process group: a terminal's Ctrl-C reaches only the test binary, which stops the servers
	switch {
	case r.asUser == "":
		cmd = exec.Command(bin, args...)
	case mode == credRunuser:
		cmd = exec.Command("runuser", append([]string{"-u", r.asUser, "--", bin}, args...)...)
	default:
		cmd = exec.Command(bin, args...)
		attr.Credential = &syscall.Credential{
			Uid:         r.uid,
			Gid:         r.gid,
			NoSetGroups: mode == credKeepGroups,
		}
	}
	if pdeathsig != 0 {
		setParentDeathSignal(attr, pdeathsig)
	}
	cmd.SysProcAttr = attr
	cmd.Dir = dir
	cmd.Env = serverEnv()
	return cmd
}

// start starts a command built by build, falling back to weaker ways of switching user
// when the kernel refuses one (EPERM), and remembers the mode that worked.
func (r *runner) start(build func(credentialMode) *exec.Cmd, start func(*exec.Cmd) error) (*exec.Cmd, error) {
	r.mu.Lock()
	mode := r.mode
	r.mu.Unlock()
	for {
		cmd := build(mode)
		err := start(cmd)
		if err == nil {
			r.mu.Lock()
			r.mode = mode
			r.mu.Unlock()
			return cmd, nil
		}
		if r.asUser == "" || mode == credRunuser || !errors.Is(err, syscall.EPERM) {
			return nil, err
		}
		mode++
		if mode == credRunuser {
			if _, lookErr := exec.LookPath("runuser"); lookErr != nil {
				return nil, fmt.Errorf("%w (switching to OS user %s is not permitted and runuser is not installed)", err, r.asUser)
			}
		}
	}
}

// run runs a short-lived command to completion and returns its combined output.
func (r *runner) run(ctx context.Context, dir, bin string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd, err := r.start(func(mode credentialMode) *exec.Cmd {
		out.Reset()
		cmd := r.command(mode, 0, dir, bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		return cmd
	}, (*exec.Cmd).Start)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waitErr
		err = ctx.Err()
	}
	return out.Bytes(), err
}

// startServer starts a long-running server whose output goes to logPath and which the
// kernel kills with pdeathsig if this process dies.
func (r *runner) startServer(pdeathsig syscall.Signal, dir, logPath, bin string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open server log: %w", err)
	}
	defer logFile.Close() // the child holds its own descriptor
	cmd, err := r.start(func(mode credentialMode) *exec.Cmd {
		cmd := r.command(mode, pdeathsig, dir, bin, args...)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		return cmd
	}, startOnSpawnerThread)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { // ends when the server exits; process.done publishes the result
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// serverEnv is this process's environment without libpq's PG* variables, which would
// otherwise redirect pg_ctl or change server defaults.
func serverEnv() []string {
	env := os.Environ()
	kept := env[:0:0]
	for _, kv := range env {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		kept = append(kept, kv)
	}
	return kept
}

// tempDir is a server's temporary directory. It carries a lock held for as long as this
// process uses it, so that a later test process can remove it when this one died without
// cleaning up (a -timeout panic, SIGKILL): a PostgreSQL data directory is 40 MB.
type tempDir struct {
	path string
	lock *os.File // flock(LOCK_EX) held until remove; close-on-exec, so servers do not inherit it
}

const (
	tempDirPrefix = "testenv-"
	lockFileName  = ".testenv.lock"
	// staleAfter keeps the sweep away from a directory whose creator has not taken its
	// lock yet.
	staleAfter = time.Minute
)

var sweepOnce sync.Once

// newTempDir creates a locked temporary directory named testenv-KIND-*.
func newTempDir(kind string) (*tempDir, error) {
	sweepOnce.Do(sweepStaleTempDirs)
	path, err := os.MkdirTemp("", tempDirPrefix+kind+"-")
	if err != nil {
		return nil, fmt.Errorf("create %s temp dir: %w", kind, err)
	}
	lock, err := os.OpenFile(filepath.Join(path, lockFileName), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		if err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			_ = lock.Close()
		}
	}
	if err != nil {
		_ = os.RemoveAll(path)
		return nil, fmt.Errorf("lock %s temp dir: %w", kind, err)
	}
	return &tempDir{path: path, lock: lock}, nil
}

// remove deletes the directory and releases its lock.
func (d *tempDir) remove() error {
	err := os.RemoveAll(d.path)
	_ = d.lock.Close()
	if err != nil {
		return fmt.Errorf("remove %s: %w", d.path, err)
	}
	return nil
}

// sweepStaleTempDirs removes the directories of test processes that died: their lock is
// free. Directories of running processes, and of other users, stay.
func sweepStaleTempDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempDirPrefix+"*"))
	for _, dir := range dirs {
		info, err := os.Stat(dir)
		if err != nil || !info.IsDir() || time.Since(info.ModTime()) < staleAfter {
			continue
		}
		lock, err := os.Open(filepath.Join(dir, lockFileName))
		if err != nil {
			continue
		}
		if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			_ = os.RemoveAll(dir)
		}
		_ = lock.Close()
	}
}

// freePort returns a loopback TCP port that was free a moment ago. Callers retry with
// another port when binding it fails.
// startOnFreePort runs start on a free loopback port, and on another one
// when a different process took it meanwhile (errPortInUse), up to
// portAttempts times.
func startOnFreePort(start func(port int) error) error {
	return startOnPortOf(freePort, start)
}

// startOnPortOf is startOnFreePort with ports chosen by choose.
func startOnPortOf(choose func() (int, error), start func(port int) error) error {
	for attempt := 1; ; attempt++ {
		port, err := choose()
		if err != nil {
			return err
		}
		err = start(port)
		if err == nil || !errors.Is(err, errPortInUse) {
			return err
		}
		if attempt == portAttempts {
			return fmt.Errorf("no free port after %d attempts: %w", portAttempts, err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// errPortInUse marks a start that failed because another process bound the port.
var errPortInUse = errors.New("port already in use")

// awaitReady waits until a just-started server answers ping. On failure it
// kills the server and says why: the port was taken (errPortInUse, so the
// caller retries another), the server exited, or it never answered, with
// the tail of its log.
func awaitReady(proc *process, ping func(context.Context) error, name, addr, logPath string, logStart int64) error {
	err := pollUntil(startTimeout, proc.done, ping)
	if err == nil {
		return nil
	}
	if !proc.exited() {
		_ = proc.kill()
	}
	if strings.Contains(logSince(logPath, logStart), "Address already in use") {
		return fmt.Errorf("%s on %s: %w", name, addr, errPortInUse)
	}
	if errors.Is(err, errStopped) {
		err = fmt.Errorf("server exited: %v", proc.err)
	}
	return fmt.Errorf("%s did not start on %s: %w\n--- tail of %s ---\n%s", name, addr, err, logPath, logTail(logPath))
}

// logTail returns the last lines of a server log for error messages.
func logTail(path string) string {
	const maxBytes = 4096
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(log: %v)", err)
	}
	offset := max(info.Size()-maxBytes, 0)
	buf, err := io.ReadAll(io.NewSectionReader(f, offset, maxBytes))
	if err != nil {
		return fmt.Sprintf("(log: %v)", err)
	}
	text := string(buf)
	if offset > 0 {
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			text = text[i+1:]
		}
	}
	text = strings.TrimSpace(text)
	if text == "" {
		return "(log is empty)"
	}
	return text
}

// pollUntil calls check every pollInterval until it returns nil, stop closes (a server
// exited: permanent failure), or timeout passes; it returns check's last error on timeout.
// Closing stop also cancels the check in progress.
func pollUntil(timeout time.Duration, stop <-chan struct{}, check func(ctx context.Context) error) error {
	deadline := time.Now().Add(timeout)
	base, cancelBase := context.WithDeadline(context.Background(), deadline)
	defer cancelBase()
	if stop != nil {
		go func() { // ends with pollUntil: base is canceled on return
			select {
			case <-stop:
				cancelBase()
			case <-base.Done():
			}
		}()
	}
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		ctx, cancel := context.WithTimeout(base, 2*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-stop:
			return errStopped
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %v: %w", timeout, err)
		}
		select {
		case <-stop:
			return errStopped
		case <-base.Done():
		case <-ticker.C:
		}
	}
}

// errStopped is returned by pollUntil when the stop channel closed.
var errStopped = errors.New("stopped while waiting")

// missingBinariesError says which server binaries are not installed and how to get them.
type missingBinariesError struct{ msg string }

func (e *missingBinariesError) Error() string { return e.msg }

// fail reports a server that could not be provided. Missing binaries fail the test
// rather than skip it, also (and especially) when CI is set: a test that silently did not
// run is worse than a red build that says what to install.
func fail(t testing.TB, err error) {
	t.Helper()
	var missing *missingBinariesError
	if errors.As(err, &missing) && os.Getenv("CI") != "" {
		t.Fatalf("testenv: %v (CI is set: tests never skip for missing servers)", err)
	}
	t.Fatalf("testenv: %v", err)
}

// durationString rounds d for log lines.
func durationString(d time.Duration) string {
	return d.Round(time.Millisecond).String()
}

// quietRedis drops go-redis's own log lines (see run).
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
