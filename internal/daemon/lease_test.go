package daemon

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/replication"
)

func TestLeaseFor(t *testing.T) {
	for _, c := range []struct{ wst, want time.Duration }{
		{0, noTimeoutLease},
		{time.Second, minLease},
		{minLease, minLease},
		{10 * time.Second, 10 * time.Second},
		{time.Minute, time.Minute},
	} {
		if got := leaseFor(c.wst); got != c.want {
			t.Errorf("leaseFor(%s) = %s, want %s", c.wst, got, c.want)
		}
	}
}

func TestLockAppName(t *testing.T) {
	for _, d := range []time.Duration{minLease, 10 * time.Second, time.Minute, 1500 * time.Millisecond} {
		name := lockAppName(d)
		if len(name) > 63 {
			t.Errorf("%q is longer than application_name keeps (63 bytes)", name)
		}
		if got, ok := parseLockAppName(name); !ok || got != d {
			t.Errorf("parseLockAppName(%q) = %s, %v; want %s", name, got, ok, d)
		}
	}
	for _, name := range []string{"", "cachesync", "psql", "cachesync lock lease=", "cachesync lock lease=10s", "cachesync lock lease=-5ms", "cachesync lock lease=0ms", "cachesync lock lease=x1ms"} {
		if got, ok := parseLockAppName(name); ok {
			t.Errorf("parseLockAppName(%q) = %s, true; want no lease", name, got)
		}
	}
}

func TestTakeoverVerdict(t *testing.T) {
	changed := time.Now()
	holder := func(app, state string, idle time.Duration) replication.LockHolder {
		return replication.LockHolder{PID: 42, ApplicationName: app, State: state, StateChange: &changed, Idle: idle}
	}
	ours := lockAppName(10 * time.Second)
	hidden := holder(ours, "", time.Hour)
	hidden.StateChange = nil
	for _, c := range []struct {
		name       string
		h          replication.LockHolder
		slotActive bool
		take       bool
		why        string
	}{
		{"expired lease, slot free", holder(ours, "idle", 11*time.Second), false, true, "has not renewed its lease for 11s (lease 10s) and the slot has no walsender"},
		{"expired lease, walsender still there", holder(ours, "idle", 11*time.Second), true, false, "waiting for wal_sender_timeout"},
		{"renewed within the lease", holder(ours, "idle", 9*time.Second), false, false, "renewed its lease 9s ago"},
		{"exactly the lease", holder(ours, "idle", 10*time.Second), false, false, "renewed its lease"},
		{"the holder's lease, not ours", holder(lockAppName(time.Minute), "idle", 30*time.Second), false, false, "lease 1m0s"},
		{"older cachesync without a lease", holder("cachesync", "idle", time.Hour), false, false, "renews no lease"},
		{"another client", holder("psql", "idle", time.Hour), false, false, "renews no lease"},
		{"activity hidden from this role", hidden, false, false, "same role"},
		{"busy holder", holder(ours, "active", time.Hour), false, false, "is active"},
	} {
		t.Run(c.name, func(t *testing.T) {
			take, why := takeoverVerdict(c.h, c.slotActive)
			if take != c.take || !strings.Contains(why, c.why) {
				t.Errorf("takeoverVerdict = %v, %q; want %v, containing %q", take, why, c.take, c.why)
			}
		})
	}
}

func TestLeaseCheck(t *testing.T) {
	l := newLease(nil, 10*time.Second, time.Now())
	if err := l.check(); err != nil {
		t.Fatalf("a lease just taken: %v", err)
	}
	l.until.Store(0) // the last renewal ran out
	err := l.check()
	if !errors.Is(err, errLockLost) || !errors.Is(err, replication.ErrSlotActive) {
		t.Fatalf("an expired lease: %v; want errLockLost, which stands by as ErrSlotActive", err)
	}
}
