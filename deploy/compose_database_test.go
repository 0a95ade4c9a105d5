package deploy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
)

// testComposeDatabase runs compose/init.sql as the postgres image would (as
// the superuser, in POSTGRES_DB) on a private PostgreSQL, then checks that
// cachesync, connecting as in the compose file, accepts the database:
// `validate` (REPLICATION, table ownership, replica identity) and `setup`
// (publication, slot, flush).
func testComposeDatabase(t *testing.T, c *cli, df *dockerfile) {
	cf, _ := loadCompose(t)
	dbname := fmt.Sprint(cf.Services["postgres"].Environment["POSTGRES_DB"])
	u, err := url.Parse(fmt.Sprint(cf.Services["cachesync"].Environment["DATABASE_URL"]))
	if err != nil {
		t.Fatalf("compose: cachesync DATABASE_URL: %v", err)
	}
	if got := strings.TrimPrefix(u.Path, "/"); got != dbname {
		t.Fatalf("compose: cachesync connects to database %q, but POSTGRES_DB is %q", got, dbname)
	}
	initSQL, err := os.ReadFile("compose/init.sql")
	if err != nil {
		t.Fatal(err)
	}

	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, "", "CREATE DATABASE "+pgx.Identifier{dbname}.Sanitize())
	pg.Exec(t, dbname, string(initSQL))
	redis := testenv.StartRedis(t)

	// The compose URL with the private server's address (it trusts loopback:
	// the password is not checked).
	u.Host = fmt.Sprintf("127.0.0.1:%d", pg.Port())
	dbURL := u.String()
	out, err := c.run("validate", "--config", rulesFile, "--database-url", dbURL)
	if err != nil {
		t.Fatalf("cachesync validate against compose/init.sql as %s: %v\n%s", u.User.Username(), err, out)
	}
	out, err = c.run("setup", "--config", rulesFile, "--database-url", dbURL, "--redis-url", redis.URL(), "--data-dir", t.TempDir())
	if err != nil {
		t.Fatalf("cachesync setup against compose/init.sql as %s: %v\n%s", u.User.Username(), err, out)
	}
	// Two instances, as the Deployment runs them: the first streams (and
	// invalidates), the second stands by, and both are ready. The first stops
	// within the stop budget; the second takes over.
	budget := c.stopBudget(t)
	image, _ := df.command(t, c)
	active := startRun(t, c, image, dbURL, redis.URL())
	active.waitReady(t, "streaming")
	rdb := redis.Client(t)
	ctx := t.Context()
	if err := rdb.Set(ctx, "user:1", "cached", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, dbname, `INSERT INTO public.users (id, email, org_id, name) VALUES (1, 'a@example.com', 7, 'A')`)
	testenv.Eventually(t, 30*time.Second, "user:1 to be invalidated", func() (bool, string) {
		active.running(t, "user:1 to be invalidated")
		n, err := rdb.Exists(ctx, "user:1").Result()
		return err == nil && n == 0, fmt.Sprintf("EXISTS user:1 = %d, %v\n%s", n, err, active.logText())
	})
	t.Logf("%s streams and invalidated user:1", active.name)
	passive := startRun(t, c, image, dbURL, redis.URL())
	passive.waitReady(t, "standby")
	t.Logf("%s stands by", passive.name)
	for _, r := range []*runProcess{active, passive} {
		if code, _ := r.get(t, "/healthz"); code != 200 {
			t.Errorf("%s: /healthz %d, want 200", r.name, code)
		}
		if code, body := r.get(t, "/metrics"); code != 200 || !strings.Contains(body, "# TYPE") {
			t.Errorf("%s: /metrics %d, want 200 with Prometheus text", r.name, code)
		}
	}
	if took := active.stop(t); took >= budget {
		t.Errorf("%s: stopping took %v, the stop budget of the deployment files is %v", active.name, took, budget)
	}
	passive.waitReady(t, "streaming")
	t.Logf("%s took over", passive.name)
	passive.stop(t)
}

// runProcess is one `cachesync run` started by the test.
type runProcess struct {
	name   string
	cmd    *exec.Cmd
	addr   string
	log    string
	exited chan struct{}
	err    error
}

var runCount int

// startRun starts `cachesync <image...>`, the image's CMD, with the
// repository's rules file for --config and a free loopback port for --listen.
func startRun(t *testing.T, c *cli, image []string, dbURL, redisURL string) *runProcess {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	runCount++
	dir := t.TempDir()
	r := &runProcess{name: fmt.Sprintf("instance %d", runCount), addr: addr, log: filepath.Join(dir, "log"), exited: make(chan struct{})}
	logFile, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	args := slices.Clone(image)
	for i := 1; i < len(args); i++ {
		switch args[i-1] {
		case "--config", "-c":
			args[i] = rulesFile
		case "--listen":
			args[i] = addr
		}
	}
	if !slices.Contains(args, addr) {
		t.Fatalf("the image's CMD %q has no --listen ADDR to probe", image)
	}
	args = append(args, "--log-format", "console")
	r.cmd = exec.Command(c.bin, args...)
	r.cmd.Env = append(cleanEnv(), "DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, "CACHESYNC_DATA_DIR="+filepath.Join(dir, "data"), "NO_COLOR=1")
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		select {
		case <-r.exited:
		default:
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	})
	return r
}

func (r *runProcess) logText() string {
	b, _ := os.ReadFile(r.log)
	return string(b)
}

// get returns the status and body of one of the endpoints (0 when it does not answer).
func (r *runProcess) get(t *testing.T, path string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + r.addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitReady waits until /readyz answers 200 with a body starting with state.
func (r *runProcess) waitReady(t *testing.T, state string) {
	t.Helper()
	what := fmt.Sprintf("%s: /readyz 200 %q", r.name, state)
	testenv.Eventually(t, 60*time.Second, what, func() (bool, string) {
		r.running(t, what)
		code, body := r.get(t, "/readyz")
		return code == 200 && strings.HasPrefix(body, state), fmt.Sprintf("/readyz %d %q\n%s", code, body, r.logText())
	})
}

// stop sends SIGTERM and returns how long the process took to exit 0.
func (r *runProcess) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.exited:
	case <-time.After(time.Minute):
		t.Fatalf("%s: still running a minute after SIGTERM\n%s", r.name, r.logText())
	}
	if r.err != nil {
		t.Errorf("%s: exited after SIGTERM with %v, want 0\n%s", r.name, r.err, r.logText())
	}
	return time.Since(start)
}

// running fails the test, with the process's log, when the process exited
// while the test waits for what: a condition polled with testenv.Eventually
// calls it first, so that a crash fails at once rather than at the timeout.
func (r *runProcess) running(t *testing.T, what string) {
	t.Helper()
	select {
	case <-r.exited:
		t.Fatalf("%s exited (%v) while waiting for %s\n%s", r.name, r.err, what, r.logText())
	default:
	}
}
