package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cachesync/cachesync/internal/testenv"
)

// listenAddr is the address the daemon serves its endpoints on, from its log.
func (d *daemon) listenAddr() string {
	d.e.t.Helper()
	re := regexp.MustCompile(`"addr":"([^"]+)"[^\n]*serving /metrics`)
	var addr string
	testenv.Eventually(d.e.t, 30*time.Second, "the metrics listener", func() (bool, string) {
		m := re.FindStringSubmatch(d.log.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil, "no serving line in the log"
	})
	return addr
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrape is one read of /metrics: series by name and labels.
type scrape map[string][]*dto.Metric

func (d *daemon) scrape() scrape {
	d.e.t.Helper()
	code, body := httpGet(d.e.t, "http://"+d.listenAddr()+"/metrics")
	if code != http.StatusOK {
		d.e.t.Fatalf("/metrics: %d\n%s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		d.e.t.Fatalf("/metrics does not parse: %v", err)
	}
	s := scrape{}
	for name, f := range families {
		s[name] = f.Metric
	}
	return s
}

// value is the value of the series name{labels} (0 when absent).
func (s scrape) value(name string, labels ...string) float64 {
	for _, m := range s[name] {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.Label {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// TestMetricsMoveWithTheWorkload scrapes /metrics before and after a known
// workload and checks that every figure the dashboard shows moved by what the
// workload did; then that /readyz follows Redis.
func TestMetricsMoveWithTheWorkload(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start("CACHESYNC_HEARTBEAT_INTERVAL=200ms", "CACHESYNC_PPROF=true")
	e.waitStreaming(d)
	base := "http://" + d.listenAddr()
	if code, body := httpGet(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	testenv.Eventually(t, 30*time.Second, "/readyz", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		return code == 200 && strings.Contains(body, "streaming"), fmt.Sprint(code, " ", body)
	})
	before := d.scrape()

	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', g % 3, 'n' FROM generate_series(1, 20) g`)
	e.exec(`UPDATE users SET name = 'm' WHERE id <= 5`)
	e.exec(`DELETE FROM users WHERE id = 20`)
	e.exec(`INSERT INTO orders VALUES (1, 7, 10, 'new'), (2, 8, 20, 'new')`)
	e.exec(`INSERT INTO products VALUES (1, 'p', 1.50, true, 'd')`)
	e.exec(`TRUNCATE users`)
	e.caughtUp(d, time.Minute)
	target := float64(e.currentLSN())

	var after scrape
	testenv.Eventually(t, 30*time.Second, "the metrics to reach the workload", func() (bool, string) {
		after = d.scrape()
		ok := after.value("cachesync_confirmed_lsn") >= target &&
			after.value("cachesync_heartbeat_rtt_seconds") > 0 &&
			after.value("cachesync_journal_bytes") > 0 &&
			after.value("cachesync_slot_retained_wal_bytes") > 0
		return ok, fmt.Sprintf("confirmed %v of %v, heartbeat rtt %v, journal %v bytes, retained %v bytes",
			after.value("cachesync_confirmed_lsn"), target, after.value("cachesync_heartbeat_rtt_seconds"),
			after.value("cachesync_journal_bytes"), after.value("cachesync_slot_retained_wal_bytes"))
	})
	delta := func(name string, labels ...string) float64 {
		return after.value(name, labels...) - before.value(name, labels...)
	}
	exact := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cachesync_changes_received_total", []string{"table", "public.users", "kind", "insert"}, 20},
		{"cachesync_changes_received_total", []string{"table", "public.users", "kind", "update"}, 5},
		{"cachesync_changes_received_total", []string{"table", "public.users", "kind", "delete"}, 1},
		{"cachesync_changes_received_total", []string{"table", "public.users", "kind", "truncate"}, 1},
		{"cachesync_changes_received_total", []string{"table", "public.orders", "kind", "insert"}, 2},
		{"cachesync_changes_received_total", []string{"table", "public.products", "kind", "insert"}, 1},
		{"cachesync_keyspace_flushes_total", []string{"rule", "user", "reason", "truncate"}, 1},
		{"cachesync_redis_operations_total", []string{"kind", "bump_version", "result", "applied"}, 2},
		{"cachesync_redis_operations_total", []string{"kind", "set", "result", "applied"}, 1},
		{"cachesync_redis_operations_total", []string{"kind", "flush", "result", "applied"}, 1},
		// Keys are deduplicated per transaction: user:<id> and user:email:<email>
		// per row (an update's images share both), the orgs 0–2 once each.
		{"cachesync_redis_operations_total", []string{"kind", "delete", "result", "applied"}, 2*20 + 2*5 + 2},
		{"cachesync_redis_operations_total", []string{"kind", "delete_tag", "result", "applied"}, 3 + 3 + 1},
	}
	for _, x := range exact {
		if got := delta(x.name, x.labels...); got != x.want {
			t.Errorf("%s%v moved by %v, want %v", x.name, x.labels, got, x.want)
		}
	}
	atLeast := []struct {
		name string
		min  float64
	}{
		// Heartbeats are transactions too.
		{"cachesync_transactions_received_total", 6},
		{"cachesync_apply_group_transactions", 1},
		{"cachesync_apply_group_operations", 1},
		{"cachesync_apply_duration_seconds", 1},
		{"cachesync_visibility_wait_seconds", 1},
		{"cachesync_commit_to_applied_seconds", 1},
	}
	for _, x := range atLeast {
		if got := delta(x.name); got < x.min {
			t.Errorf("%s moved by %v, want at least %v", x.name, got, x.min)
		}
	}
	for _, g := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cachesync_state", []string{"state", "streaming"}, 1},
		{"cachesync_state", []string{"state", "standby"}, 0},
		{"cachesync_redis_up", nil, 1},
		{"cachesync_slot_wal_status", []string{"status", "reserved"}, 1},
	} {
		if got := after.value(g.name, g.labels...); got != g.want {
			t.Errorf("%s%v = %v, want %v", g.name, g.labels, got, g.want)
		}
	}
	if got := after.value("cachesync_applied_lsn"); got < target {
		t.Errorf("cachesync_applied_lsn %v below the confirmed %v", got, target)
	}
	if lag := after.value("cachesync_replication_lag_seconds"); lag > 5 {
		t.Errorf("caught up, yet cachesync_replication_lag_seconds = %v", lag)
	}
	if code, body := httpGet(t, base+"/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}

	// Redis down: still ready (a drain must not wait for Redis) but saying
	// so, redis_up 0, the lag grows; back: streaming again.
	e.redis.Stop(t)
	e.exec(`INSERT INTO users VALUES (100, 'x@x.io', 1, 'x')`)
	testenv.Eventually(t, 30*time.Second, "/readyz to report Redis failing", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		return code == http.StatusOK && strings.Contains(body, "Redis is failing"), fmt.Sprint(code, " ", body)
	})
	testenv.Eventually(t, 30*time.Second, "the lag to grow while Redis is down", func() (bool, string) {
		s := d.scrape()
		return s.value("cachesync_redis_up") == 0 && s.value("cachesync_replication_lag_seconds") > 0.5,
			fmt.Sprintf("redis_up %v, lag %vs", s.value("cachesync_redis_up"), s.value("cachesync_replication_lag_seconds"))
	})
	e.redis.Start(t)
	testenv.Eventually(t, 60*time.Second, "/readyz after Redis returned", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		return code == 200 && body == "streaming\n", fmt.Sprint(code, " ", body)
	})
	if s := d.scrape(); s.value("cachesync_redis_retries_total") == 0 {
		t.Error("cachesync_redis_retries_total did not move during the outage")
	}
}

// TestIdleRedisOutageIsReported stops Redis while no change flows: only the
// daemon's own bookkeeping reaches Redis then, and it alone must make /readyz
// say so and turn cachesync_redis_up down, count its retries, and turn both
// back.
func TestIdleRedisOutageIsReported(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start("CACHESYNC_HEARTBEAT_INTERVAL=0s")
	e.waitStreaming(d)
	base := "http://" + d.listenAddr()
	testenv.Eventually(t, 30*time.Second, "/readyz", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		return code == 200, fmt.Sprint(code, " ", body)
	})
	retries := d.scrape().value("cachesync_redis_retries_total")

	e.redis.Stop(t)
	testenv.Eventually(t, 30*time.Second, "/readyz and redis_up to report Redis failing", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		up := d.scrape().value("cachesync_redis_up")
		return code == http.StatusOK && strings.Contains(body, "Redis is failing") && up == 0, fmt.Sprint(code, " ", body, "redis_up ", up)
	})
	if !strings.Contains(d.log.String(), "Redis is failing") {
		t.Error("the outage was not logged")
	}
	e.redis.Start(t)
	testenv.Eventually(t, 60*time.Second, "/readyz after Redis returned", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		return code == 200 && body == "streaming\n", fmt.Sprint(code, " ", body)
	})
	s := d.scrape()
	if got := s.value("cachesync_redis_retries_total"); got <= retries {
		t.Errorf("cachesync_redis_retries_total %v, %v before the outage", got, retries)
	}
	if s.value("cachesync_redis_up") != 1 {
		t.Error("cachesync_redis_up is not back to 1")
	}
	testenv.Eventually(t, 10*time.Second, "the recovery to be logged", func() (bool, string) {
		return strings.Contains(d.log.String(), "Redis recovered"), "no \"Redis recovered\" line"
	})
}

// TestStageSecondsCoverEveryStage commits transactions one by one and checks
// that cachesync_stage_seconds has observed each of them in every stage of
// the pipeline, from the commit to its confirmation: every millisecond of
// the lag has an owner.
func TestStageSecondsCoverEveryStage(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	before := d.scrape()
	const txns = 5
	for i := 1; i <= txns; i++ {
		e.exec(fmt.Sprintf(`INSERT INTO users VALUES (%d, 'u%d@x.io', 1, 'n')`, i, i))
	}
	e.caughtUp(d, time.Minute)
	stages := []string{"received", "mapped", "visible", "applied", "positioned", "journaled", "confirmed"}
	testenv.Eventually(t, 30*time.Second, "every stage to observe the transactions", func() (bool, string) {
		after := d.scrape()
		var missing []string
		for _, st := range stages {
			want := 1.0 // per group
			if st == "received" || st == "mapped" || st == "visible" {
				want = txns // per transaction
			}
			if got := after.value("cachesync_stage_seconds", "stage", st) - before.value("cachesync_stage_seconds", "stage", st); got < want {
				missing = append(missing, fmt.Sprintf("%s: %v of %v", st, got, want))
			}
		}
		return len(missing) == 0, strings.Join(missing, ", ")
	})
	after := d.scrape()
	for _, m := range after["cachesync_stage_seconds"] {
		if s := m.GetHistogram().GetSampleSum(); s < 0 || s > 60 {
			t.Errorf("cachesync_stage_seconds%v sums to %vs", m.GetLabel(), s)
		}
	}
}
