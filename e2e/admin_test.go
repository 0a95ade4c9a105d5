package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestAdminListenerServesNoSecret passes passwords in --database-url and
// --redis-url on the command line, where /debug/pprof/cmdline used to show
// them, and reads every path the listener serves, without and with --pprof:
// no response and no line of the daemon's output carries either password.
func TestAdminListenerServesNoSecret(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		t.Run(fmt.Sprintf("pprof=%v", pprof), func(t *testing.T) {
			const pgSecret, redisSecret = "pg-Adm1n-s3cret", "redis-Adm1n-s3cret"
			e := setup(t, schema, rules)
			// The test server trusts loopback, so the password is not
			// checked; it is on the command line all the same.
			dbURL, err := url.Parse(e.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			dbURL.User = url.UserPassword(dbURL.User.Username(), pgSecret)
			if err := e.rdb.ConfigSet(e.ctx, "requirepass", redisSecret).Err(); err != nil {
				t.Fatal(err)
			}
			e.rdb = redis.NewClient(&redis.Options{Addr: e.redis.Addr(), Password: redisSecret})
			t.Cleanup(func() { e.rdb.Close() })
			args := []string{"--database-url", dbURL.String(), "--redis-url", "redis://:" + redisSecret + "@" + e.redis.Addr() + "/0"}
			if pprof {
				args = append(args, "--pprof")
			}
			d := e.startArgs(args)
			e.waitStreaming(d)
			// It works with these URLs.
			e.set("user:1")
			e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 7, 'Ann')`)
			e.gone("user:1")

			base := "http://" + d.listenAddr()
			debug := http.StatusNotFound
			if pprof {
				debug = http.StatusOK
			}
			paths := map[string]int{
				"/metrics": 200, "/healthz": 200, "/readyz": 200,
				"/debug/pprof/": debug, "/debug/pprof/symbol": debug,
				"/debug/pprof/profile?seconds=1": debug, "/debug/pprof/trace?seconds=1": debug,
				"/debug/pprof/goroutine?debug=2": debug, "/debug/pprof/heap?debug=1": debug,
				"/debug/pprof/cmdline": 404, "/debug/vars": 404, "/": 404,
			}
			if pprof {
				// And every profile the index links to.
				_, index := httpGet(t, base+"/debug/pprof/")
				for _, m := range regexp.MustCompile(`href='([^']+)'`).FindAllStringSubmatch(index, -1) {
					href := m[1]
					switch {
					case strings.HasPrefix(href, "cmdline"):
						paths["/debug/pprof/"+href] = 404
					case href == "profile" || href == "trace":
						paths["/debug/pprof/"+href+"?seconds=1"] = 200
					default:
						paths["/debug/pprof/"+href] = 200
					}
				}
				if len(paths) < 18 {
					t.Errorf("the pprof index links to too few profiles:\n%s", index)
				}
			}
			for path, want := range paths {
				code, body := httpGet(t, base+path)
				if code != want {
					t.Errorf("GET %s: %d, want %d: %.200s", path, code, want, body)
				}
				for _, secret := range []string{pgSecret, redisSecret} {
					if strings.Contains(body, secret) {
						t.Errorf("GET %s (%d) shows a password: %.300s", path, code, body)
					}
				}
			}
			if code := d.stop(); code != 0 {
				t.Errorf("exit code %d after SIGTERM", code)
			}
			outputs := map[string]string{"the daemon's output": d.log.String()}
			// The commands that report on the same servers (with these
			// servers up: TestSecretsNeverLogged covers them down).
			for _, c := range [][]string{{"status"}, {"status", "--json"}, {"validate"}} {
				urls := args[:4] // --database-url, --redis-url
				if c[0] == "validate" {
					urls = args[:2]
				}
				out, code := e.cli(append(c, urls...)...)
				if code != 0 {
					t.Errorf("cachesync %v: exit %d\n%s", c, code, out)
				}
				outputs[fmt.Sprint("cachesync ", c)] = out
			}
			for what, out := range outputs {
				for _, secret := range []string{pgSecret, redisSecret} {
					if strings.Contains(out, secret) {
						t.Errorf("%s shows a password:\n%s", what, out)
					}
				}
			}
		})
	}
}

// healthz polls /healthz until it answers code, and returns the body.
func (d *daemon) healthz(code int, within time.Duration) string {
	d.e.t.Helper()
	var body string
	testenv.Eventually(d.e.t, within, fmt.Sprintf("/healthz %d", code), func() (bool, string) {
		if d.exited() {
			d.e.t.Fatalf("daemon exited: %v\n%s", d.err, d.log.String())
		}
		var got int
		got, body = httpGet(d.e.t, "http://"+d.listenAddr()+"/healthz")
		return got == code, fmt.Sprint(got, " ", body)
	})
	return body
}

// healthyFor asserts that /healthz answers 200 throughout span: a steady
// state, not an effect to wait for.
func (d *daemon) healthyFor(span time.Duration, during string) {
	d.e.t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for until := time.Now().Add(span); time.Now().Before(until); <-tick.C {
		if code, body := httpGet(d.e.t, "http://"+d.listenAddr()+"/healthz"); code != 200 {
			d.e.t.Fatalf("/healthz %d %q during %s", code, body, during)
		}
		if d.exited() {
			d.e.t.Fatalf("daemon exited: %v\n%s", d.err, d.log.String())
		}
	}
}

// testStuckAfter is the --stuck-after of the health tests: more than three
// --status-interval (the harness's 1s).
const testStuckAfter = 4 * time.Second

// startWatched starts the daemon with --stuck-after testStuckAfter and waits
// until it streams and /healthz answers 200.
func (e *env) startWatched(extraEnv ...string) *daemon {
	e.t.Helper()
	d := e.start(append(extraEnv, "CACHESYNC_STUCK_AFTER="+testStuckAfter.String())...)
	e.waitStreaming(d)
	d.healthz(200, 30*time.Second)
	return d
}

// pendingBehindRedisOutage stops Redis and commits a change, and waits until
// the daemon holds it: WAL pending, Redis failing.
func (d *daemon) pendingBehindRedisOutage() {
	e := d.e
	e.t.Helper()
	e.redis.Stop(e.t)
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 7, 'Ann')`)
	testenv.Eventually(e.t, 30*time.Second, "Redis failing with WAL pending", func() (bool, string) {
		_, ready := httpGet(e.t, "http://"+d.listenAddr()+"/readyz")
		s := d.scrape()
		return strings.Contains(ready, "Redis is failing") && s.value("cachesync_redis_up") == 0 && s.value("cachesync_replication_lag_bytes") > 0,
			fmt.Sprintf("/readyz %q, redis_up %v, lag %v bytes", ready, s.value("cachesync_redis_up"), s.value("cachesync_replication_lag_bytes"))
	})
}

// TestHealthzStuckPipeline wedges the pipeline (a goroutine of it blocks
// for good before applying) while PostgreSQL and Redis answer: /healthz,
// the liveness probe, turns 503 once nothing was confirmed for
// --stuck-after, and /readyz stays 200.
func TestHealthzStuckPipeline(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.startWatched("CACHESYNC_FAILPOINT=hang:before-apply")

	e.set("user:1")
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 7, 'Ann')`)
	testenv.Eventually(t, 30*time.Second, "the pipeline to hang", func() (bool, string) {
		return strings.Contains(d.log.String(), "failpoint before-apply: hanging"), "no failpoint line"
	})
	hung := time.Now()
	body := d.healthz(http.StatusServiceUnavailable, testStuckAfter+30*time.Second)
	if waited := time.Since(hung); waited < testStuckAfter-2*time.Second {
		t.Errorf("/healthz 503 after %s, before --stuck-after %s", waited, testStuckAfter)
	}
	if !strings.Contains(body, "stuck") || !strings.Contains(body, "restart") {
		t.Errorf("/healthz 503 body %q does not say it is stuck and that a restart may help", body)
	}
	if code, body := httpGet(t, "http://"+d.listenAddr()+"/readyz"); code != 200 {
		t.Errorf("/readyz %d %q while the pipeline is stuck, want 200 streaming", code, body)
	}
	if !e.exists("user:1") {
		t.Error("user:1 was deleted: the pipeline did not hang before the apply")
	}
}

// TestHealthzThroughRedisOutage stops Redis with a change pending: /healthz
// stays 200 for well over --stuck-after (a restart would wait for the same
// Redis), and the daemon catches up when Redis is back.
func TestHealthzThroughRedisOutage(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.startWatched()
	d.pendingBehindRedisOutage()
	d.healthyFor(3*testStuckAfter, "a Redis outage")
	e.redis.Start(t)
	e.caughtUp(d, 60*time.Second)
	d.healthz(200, 30*time.Second)
}

// TestStuckAfterOutlastsAPostgreSQLOutage: a --stuck-after that a silent
// PostgreSQL could outlast while the session still counts as streaming
// (three --status-interval) is a usage error, said before connecting.
func TestStuckAfterOutlastsAPostgreSQLOutage(t *testing.T) {
	t.Parallel()
	rules := filepath.Join(t.TempDir(), "rules.hcl")
	if err := os.WriteFile(rules, []byte("postgres {\n  slot = \"s\"\n  publication = \"s\"\n}\nrule \"user\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${row.id}\"] }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, stuck := range []string{"3s", "-1s"} {
		cmd := exec.Command(binary, "run", "--config", rules, "--database-url", "postgres://x@127.0.0.1:1/db", "--redis-url", "redis://127.0.0.1:1/0",
			"--status-interval", "1s", "--stuck-after", stuck)
		out, err := cmd.CombinedOutput()
		exit, ok := err.(*exec.ExitError)
		if !ok || exit.ExitCode() != 2 || !strings.Contains(string(out), "--stuck-after "+stuck+": use 0 (never) or more than three --status-interval (3s)") {
			t.Errorf("run --stuck-after %s --status-interval 1s: %v, want exit 2 saying why:\n%s", stuck, err, out)
		}
	}
}

// TestHealthzThroughPostgresOutage stops PostgreSQL while a change is pending
// (held back by a Redis outage first): /healthz stays 200 for well over
// --stuck-after, /readyz says the instance is reconnecting, and the daemon
// catches up when PostgreSQL is back.
func TestHealthzThroughPostgresOutage(t *testing.T) {
	e, pg := setupPrivate(t, schema, rules)
	d := e.startWatched()
	d.pendingBehindRedisOutage()
	pg.Stop(t, "fast")
	e.redis.Start(t)
	testenv.Eventually(t, 30*time.Second, "/readyz to say reconnecting", func() (bool, string) {
		code, body := httpGet(t, "http://"+d.listenAddr()+"/readyz")
		return code == http.StatusServiceUnavailable && strings.HasPrefix(body, "reconnecting"), fmt.Sprint(code, " ", body)
	})
	d.healthyFor(3*testStuckAfter, "a PostgreSQL outage")
	pg.Start(t)
	e.reconnect()
	e.caughtUp(d, 60*time.Second)
	d.healthz(200, 30*time.Second)
}
