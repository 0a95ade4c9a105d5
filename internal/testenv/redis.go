package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServer is a Redis server for one test: a private redis-server on a loopback
// port, or the server of REDIS_URL.
type RedisServer struct {
	url      string
	addr     string
	external bool // REDIS_URL's server: not ours to stop, flush or restart

	bin     string
	tmp     *tempDir
	dir     string // tmp.path: working directory, removed at shutdown
	logPath string
	port    int
	conf    string   // config file given before the options, "" for none
	args    []string // options after testenv's own (cluster or sentinel mode)

	mu       sync.Mutex
	proc     *process // nil while stopped
	shutDown bool
}

// Redis returns a Redis server for this test: a private redis-server started for this
// test (fresh, empty) unless REDIS_URL is set, in which case that server is used. That
// server is shared and never flushed, so tests keep to keys of their own (a prefix
// from t.Name()); tests that need Stop/Start skip themselves when !r.Controllable().
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	if rawURL := os.Getenv("REDIS_URL"); rawURL != "" {
		opts, err := redis.ParseURL(rawURL)
		if err != nil {
			t.Fatalf("testenv: REDIS_URL: %v (use redis://HOST:PORT/DB, or unset it to start a private redis-server)", err)
		}
		return &RedisServer{url: rawURL, addr: opts.Addr, external: true}
	}
	return StartRedis(t)
}

var sharedRedis struct {
	once   sync.Once
	server *RedisServer
	err    error
}

// SharedRedis returns one Redis server for the whole test process, for code
// that has no testing.TB, such as runnable examples: REDIS_URL's server when
// it is set, else a private redis-server started on first use and stopped by
// Main. Its keys are shared: use names of your own.
func SharedRedis() (*RedisServer, error) {
	sharedRedis.once.Do(func() {
		if rawURL := os.Getenv("REDIS_URL"); rawURL != "" {
			opts, err := redis.ParseURL(rawURL)
			if err != nil {
				sharedRedis.err = fmt.Errorf("testenv: REDIS_URL: %w", err)
				return
			}
			sharedRedis.server = &RedisServer{url: rawURL, addr: opts.Addr, external: true}
			return
		}
		if !mainActive.Load() {
			sharedRedis.err = errors.New("testenv: SharedRedis needs TestMain to call testenv.Main, which stops the server")
			return
		}
		sharedRedis.server, sharedRedis.err = startRedis()
	})
	return sharedRedis.server, sharedRedis.err
}

// StartRedis always starts a private redis-server for this test and stops it at cleanup.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	started := time.Now()
	r, err := startRedis()
	r = forTest(t, r, err)
	t.Logf("testenv: redis-server started on %s in %s", r.addr, durationString(time.Since(started)))
	return r
}

// StartRedisArgs is StartRedis with more redis-server options, given after
// testenv's own so that they win (they are kept across Stop and Start): for
// example "--appendonly", "yes", "--appendfsync", "always" for a server whose
// dataset survives a crash and a restart in the same directory.
func StartRedisArgs(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	started := time.Now()
	r, err := startRedisServer(redisSpec{kind: "redis", args: args})
	r = forTest(t, r, err)
	t.Logf("testenv: redis-server %v started on %s in %s", args, r.addr, durationString(time.Since(started)))
	return r
}

// URL returns the server's URL, redis://127.0.0.1:PORT/0 for a private server.
func (r *RedisServer) URL() string {
	if r.external {
		return r.url
	}
	return fmt.Sprintf("redis://%s/0", r.addr)
}

// Addr returns the server's host:port.
func (r *RedisServer) Addr() string { return r.addr }

// Client returns a client of the server, closed at cleanup. It reconnects by itself
// after Stop and Start.
func (r *RedisServer) Client(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatalf("testenv: redis URL %s: %v", r.URL(), err)
	}
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// Controllable reports whether Stop and Start may be used: true for a private server,
// false for REDIS_URL's.
func (r *RedisServer) Controllable() bool { return !r.external }

// Stop kills the server (SIGKILL, a crash: only a server started with persistence
// options, see StartRedisArgs, keeps its data) and waits until its port refuses
// connections. Stopping a stopped server does nothing.
func (r *RedisServer) Stop(t testing.TB) {
	t.Helper()
	r.mustControl(t, "Stop")
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.stopLocked(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Start starts the stopped server again on the same port and directory: with an empty
// dataset, unless an RDB file saved there (SAVE) or an AOF (StartRedisArgs) brings it back.
func (r *RedisServer) Start(t testing.TB) {
	t.Helper()
	r.mustControl(t, "Start")
	r.startAgain(t, "RedisServer.Start", nil)
}

// startAgain starts a stopped server on its port and directory, with args
// instead of its arguments when args is not nil; method names the caller in
// the failures.
func (r *RedisServer) startAgain(t testing.TB, method string, args []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutDown {
		t.Fatalf("testenv: %s on %s: the server was already shut down at cleanup", method, r.addr)
	}
	if r.proc != nil {
		t.Fatalf("testenv: %s on %s: the server is running; stop it first", method, r.addr)
	}
	if args != nil {
		r.args = args
	}
	if err := r.startLocked(); err != nil {
		if errors.Is(err, errPortInUse) {
			t.Fatalf("testenv: %v (another process took the port while the server was stopped)", err)
		}
		t.Fatalf("testenv: %v", err)
	}
}

func (r *RedisServer) mustControl(t testing.TB, method string) {
	t.Helper()
	if r.external {
		t.Fatalf("testenv: RedisServer.%s: the REDIS_URL server is not testenv's to control; "+
			"skip the test when !r.Controllable()", method)
	}
}

func startRedis() (*RedisServer, error) {
	return startRedisServer(redisSpec{kind: "redis"})
}

// redisSpec describes a private redis-server that is not a plain one: a cluster node
// or a sentinel.
type redisSpec struct {
	kind string // of its temp dir, testenv-KIND-*
	// confName and confText, when confName is set, are a config file written into the
	// temp dir and given to redis-server before the options (sentinels need one).
	confName, confText string
	args               []string // options after testenv's own
	// onFreePort runs start on a free port, retrying on errPortInUse; startOnFreePort
	// when nil.
	onFreePort func(start func(port int) error) error
}

// startRedisServer starts a private redis-server in a new temp dir and registers it,
// so that Main stops it.
func startRedisServer(spec redisSpec) (_ *RedisServer, err error) {
	bin, err := redisBinary()
	if err != nil {
		return nil, err
	}
	tmp, err := newTempDir(spec.kind)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = tmp.remove()
		}
	}()
	r := &RedisServer{bin: bin, tmp: tmp, dir: tmp.path, logPath: filepath.Join(tmp.path, "redis.log"), args: spec.args}
	if spec.confName != "" {
		r.conf = filepath.Join(tmp.path, spec.confName)
		if err := os.WriteFile(r.conf, []byte(spec.confText), 0o600); err != nil {
			return nil, fmt.Errorf("write %s config: %w", spec.kind, err)
		}
	}
	onFreePort := spec.onFreePort
	if onFreePort == nil {
		onFreePort = startOnFreePort
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if err = onFreePort(func(port int) error {
		r.port = port
		r.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		return r.startLocked()
	}); err != nil {
		return nil, err
	}
	registerServer(r)
	return r, nil
}

// startLocked starts redis-server and waits until it answers.
func (r *RedisServer) startLocked() error {
	logStart := fileSize(r.logPath)
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--protected-mode", "no",
	)
	args = append(args, r.args...)
	proc, err := currentUserRunner.startServer(syscall.SIGKILL, r.dir, r.logPath, r.bin, args...)
	if err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	pid := proc.cmd.Process.Pid
	ping := func(ctx context.Context) error { return r.ping(ctx, pid) }
	if err := awaitReady(proc, ping, "redis-server", r.addr, r.logPath, logStart); err != nil {
		return err
	}
	r.proc = proc
	return nil
}

// ping succeeds when the redis-server with process id pid, not another server that
// took the port, answers.
func (r *RedisServer) ping(ctx context.Context, pid int) error {
	client := redis.NewClient(&redis.Options{
		Addr:         r.addr,
		MaxRetries:   -1,
		DialTimeout:  time.Second,
		ReadTimeout:  500 * time.Millisecond, // go-redis does not abort a read when ctx is canceled
		WriteTimeout: 500 * time.Millisecond,
	})
	defer client.Close()
	info, err := client.Info(ctx, "server").Result()
	if err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid)
	for line := range strings.Lines(info) {
		if strings.TrimSpace(line) == want {
			return nil
		}
	}
	return fmt.Errorf("%s is served by another redis-server: %w", r.addr, errPortInUse)
}

// stopLocked kills the server and waits until the port refuses connections.
func (r *RedisServer) stopLocked() error {
	proc := r.proc
	if proc == nil {
		return nil
	}
	r.proc = nil
	if err := proc.kill(); err != nil {
		return fmt.Errorf("redis-server on %s: %w", r.addr, err)
	}
	err := pollUntil(stopTimeout, nil, func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", r.addr)
		if err != nil {
			return nil
		}
		_ = conn.Close()
		return errors.New("port still accepts connections")
	})
	if err != nil {
		return fmt.Errorf("redis-server on %s was killed: %w", r.addr, err)
	}
	return nil
}

// shutdown stops the server for good and removes its files.
func (r *RedisServer) shutdown() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutDown {
		return nil
	}
	r.shutDown = true
	unregisterServer(r)
	return errors.Join(r.stopLocked(), r.tmp.remove())
}

// redisBinary finds redis-server on PATH or in the usual package directories.
func redisBinary() (string, error) {
	if path, err := exec.LookPath("redis-server"); err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/opt/homebrew/bin"} {
		if path := filepath.Join(dir, "redis-server"); isExecutable(path) {
			return path, nil
		}
	}
	return "", &missingBinariesError{"redis-server not found: run `make deps` " +
		"(Debian: apt-get install -y postgresql redis-server) or set REDIS_URL"}
}

// signal sends sig to the running server.
func (r *RedisServer) signal(t testing.TB, what string, sig syscall.Signal) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || r.proc.exited() {
		t.Fatalf("testenv: %s %s: the server is not running", what, r.addr)
	}
	if err := r.proc.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("testenv: %s %s: %v", what, r.addr, err)
	}
}
