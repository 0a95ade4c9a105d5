package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/wal"
)

func TestLiveVerdict(t *testing.T) {
	const stuckAfter = 5 * time.Minute
	streaming := func(p progress) progress {
		p.state, p.redisUp, p.stuckAfter = StateStreaming, true, stuckAfter
		return p
	}
	// stuck is a pipeline that would be stuck, but for what edit changes.
	stuck := func(edit func(*progress)) progress {
		p := streaming(progress{confirmed: 100, received: 200, serverEnd: 200, idle: time.Hour})
		edit(&p)
		return p
	}
	for _, tt := range []struct {
		name string
		p    progress
		live bool
		says string
	}{
		{"progressing with work pending", streaming(progress{confirmed: 100, received: 200, serverEnd: 300, idle: time.Second}), true, "progressing"},
		{"stuck with WAL received", streaming(progress{confirmed: 100, received: 200, idle: stuckAfter}), false, "stuck: nothing confirmed for 5m0s"},
		{"stuck with the server's WAL end ahead", streaming(progress{confirmed: 100, received: 100, serverEnd: 300, idle: time.Hour}), false, "server WAL end 0/12C"},
		{"idle: everything confirmed", streaming(progress{confirmed: 300, received: 200, serverEnd: 300, idle: time.Hour}), true, "everything received is confirmed"},
		{"nothing known yet", streaming(progress{idle: time.Hour}), true, "everything received is confirmed"},
		{"stuck as built below", stuck(func(*progress) {}), false, "stuck"},
		{"Redis outage", stuck(func(p *progress) { p.redisUp = false }), true, "Redis is failing"},
		{"PostgreSQL outage: reconnecting", stuck(func(p *progress) { p.state = StateReconnecting }), true, "ok: reconnecting"},
		{"standby", stuck(func(p *progress) { p.state = StateStandby }), true, "ok: standby"},
		{"starting", stuck(func(p *progress) { p.state = StateStarting }), true, "ok: starting"},
		{"check off", stuck(func(p *progress) { p.stuckAfter = 0 }), true, "ok"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			live, why := tt.p.live()
			if live != tt.live || !strings.Contains(why, tt.says) {
				t.Errorf("%+v: live %v %q, want %v saying %q", tt.p, live, why, tt.live, tt.says)
			}
		})
	}
}

// TestLivenessClock: what restarts the idle clock (a confirmation, entering
// a state, a Redis outage seen) and what does not (a confirmation that does
// not move the position).
func TestLivenessClock(t *testing.T) {
	m := New()
	received, serverEnd := wal.LSN(500), wal.LSN(600)
	m.Positions(func() (wal.LSN, wal.LSN) { return received, serverEnd })
	m.SetState(StateStreaming, "")
	redisUp := true
	up := func() bool { return redisUp }
	const stuckAfter = time.Hour // minutes of margin for a slow test machine
	t0 := time.Now()
	check := func(at time.Duration, want bool) {
		t.Helper()
		if live, why := m.liveness(up, stuckAfter, t0.Add(at)); live != want {
			t.Errorf("at +%s: live %v (%s), want %v", at, live, why, want)
		}
	}
	check(59*time.Minute, true)
	check(61*time.Minute, false) // nothing confirmed since streaming began
	m.Confirmed(400, t0.Add(100*time.Minute))
	check(159*time.Minute, true)
	m.Confirmed(400, t0.Add(150*time.Minute)) // the same position: no progress
	check(161*time.Minute, false)
	redisUp = false
	check(200*time.Minute, true) // the outage, seen now
	redisUp = true
	check(259*time.Minute, true) // counted from the last time it was seen
	check(261*time.Minute, false)
	m.WaitingForPostgres(t0.Add(300 * time.Minute)) // commits held invisible
	check(359*time.Minute, true)
	check(361*time.Minute, false)
	m.Confirmed(600, t0.Add(400*time.Minute))
	received = 600
	check(10*time.Hour, true) // caught up
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		h := New().Handler(HandlerOptions{Pprof: pprof})
		get := func(path string) int {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			return rec.Code
		}
		want := http.StatusNotFound
		if pprof {
			want = http.StatusOK
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine", "/debug/pprof/symbol"} {
			if code := get(path); code != want {
				t.Errorf("pprof %v: %s %d, want %d", pprof, path, code, want)
			}
		}
		for _, path := range []string{"/debug/pprof/cmdline", "/debug/vars"} {
			if code := get(path); code != http.StatusNotFound {
				t.Errorf("pprof %v: %s %d, want 404", pprof, path, code)
			}
		}
	}
}
