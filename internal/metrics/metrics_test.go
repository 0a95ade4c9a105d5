package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/metrics"
)

func TestReadiness(t *testing.T) {
	m := metrics.New()
	redisUp := true
	h := m.Handler(metrics.HandlerOptions{RedisUp: func() bool { return redisUp }})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	for _, tt := range []struct {
		state, detail string
		redisUp       bool
		code          int
		says          string
	}{
		{metrics.StateStarting, "", true, 503, "starting"},
		{metrics.StateStreaming, "", true, 200, "streaming"},
		// A Redis outage keeps the pod ready: unready, it would block
		// node drains through the PodDisruptionBudget.
		{metrics.StateStreaming, "", false, 200, "Redis is failing"},
		{metrics.StateStandby, "", false, 200, "standby"},
		{metrics.StateReconnecting, "connection refused", true, 503, "reconnecting: connection refused"},
		{metrics.StateStopped, "", true, 503, "stopped"},
	} {
		m.SetState(tt.state, tt.detail)
		redisUp = tt.redisUp
		code, body := get("/readyz")
		if code != tt.code || !strings.Contains(body, tt.says) {
			t.Errorf("state %s, redis up %v: /readyz %d %q, want %d saying %q", tt.state, tt.redisUp, code, body, tt.code, tt.says)
		}
		if code, _ := get("/healthz"); code != 200 {
			t.Errorf("/healthz %d in state %s", code, tt.state)
		}
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `cachesync_state{state="stopped"} 1`) {
		t.Errorf("/metrics %d:\n%s", code, body)
	}
}

// TestBackfillMetrics: a rule's backfill counts its rows, shows what
// remains, and is running from its start until it stops, with its
// duration up to then.
func TestBackfillMetrics(t *testing.T) {
	m := metrics.New()
	start := time.Now().Add(-time.Minute)
	m.BackfillStarted("product", start, 1000)
	m.BackfillRows("product", 400, 600)
	m.BackfillRows("product", 600, 0)
	want := func(lines ...string) {
		t.Helper()
		rec := httptest.NewRecorder()
		m.Handler(metrics.HandlerOptions{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		for _, l := range lines {
			if !strings.Contains(rec.Body.String(), l) {
				t.Errorf("/metrics lacks %q:\n%s", l, grepLines(rec.Body.String(), "cachesync_backfill"))
			}
		}
	}
	want(`cachesync_backfill_rows_total{rule="product"} 1000`,
		`cachesync_backfill_remaining_rows{rule="product"} 0`,
		`cachesync_backfill_running{rule="product"} 1`)
	m.BackfillStopped("product", start.Add(90*time.Second), true)
	want(`cachesync_backfill_running{rule="product"} 0`,
		`cachesync_backfill_duration_seconds{rule="product"} 90`)
	// A new run counts on from the same counter.
	m.BackfillStarted("product", time.Now(), 1000)
	m.BackfillRows("product", 10, 990)
	want(`cachesync_backfill_rows_total{rule="product"} 1010`,
		`cachesync_backfill_remaining_rows{rule="product"} 990`,
		`cachesync_backfill_running{rule="product"} 1`)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
