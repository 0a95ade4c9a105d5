package metrics_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// everything returns metrics with every labelled series touched once, so
// that a gather lists every name.
func everything(t *testing.T) (*metrics.Metrics, map[string]bool) {
	t.Helper()
	m := metrics.New()
	m.Registry().MustRegister(metrics.WriterCollector(func() writer.Stats { return writer.Stats{} }))
	m.Change(&wal.Relation{Namespace: "public", Name: "users"}, wal.Insert)
	m.Flush("user", "truncate")
	m.Fallback("user", "tag_wrong_type")
	m.SlotWALStatus("reserved")
	m.Applied(100, time.Now(), time.Now(), time.Now())
	m.GroupOperations.Observe(1)
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	return m, names
}

// TestDashboardQueriesExistingMetrics: every series the Grafana dashboard
// queries is one the daemon exports.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	_, names := everything(t)
	raw, err := os.ReadFile("../../deploy/grafana/cachesync-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	metricName := regexp.MustCompile(`\b(?:cachesync|process|go)_[a-z_]+\b`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			found := metricName.FindAllString(tg.Expr, -1)
			if len(found) == 0 {
				t.Errorf("panel %q: no metric in %q", p.Title, tg.Expr)
			}
			for _, n := range found {
				used[n] = true
				// The cacheaside client's metrics come from the
				// applications: deploy/grafana_test.go checks those.
				if !names[n] && !strings.HasPrefix(n, "cachesync_cacheaside_") {
					t.Errorf("panel %q queries %s, which the daemon does not export", p.Title, n)
				}
			}
		}
	}
	// And the other way round: every cachesync_ metric is on the dashboard.
	for n := range names {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if strings.HasPrefix(n, "cachesync_") && !used[n] && !used[base+"_bucket"] && !used[base] {
			t.Errorf("%s is not on the dashboard", n)
		}
	}
}

func TestReadiness(t *testing.T) {
	m, _ := everything(t)
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
