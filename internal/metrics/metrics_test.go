package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
