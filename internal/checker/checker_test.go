package checker

import (
	"context"
	"maps"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestNines(t *testing.T) {
	for _, c := range []struct {
		checked, stale uint64
		want           float64
		ok             bool
	}{
		{0, 0, 0, false},   // nothing checked: no series
		{1000, 0, 9, true}, // nothing stale: the cap
		{1000, 1, 3, true}, // one in a thousand
		{100, 10, 1, true}, // one in ten
		{10, 10, 0, true},  // all stale
		{2e9, 1, 9, true},  // beyond the cap
	} {
		got, ok := Nines(c.checked, c.stale)
		if ok != c.ok || math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Nines(%d, %d) = %v, %v; want %v, %v", c.checked, c.stale, got, ok, c.want, c.ok)
		}
	}
}

// results reads cachesync_consistency_checks_total by rule/result.
func results(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "cachesync_consistency_checks_total" {
			continue
		}
		for _, m := range f.Metric {
			var rule, result string
			for _, l := range m.Label {
				switch l.GetName() {
				case "rule":
					rule = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			out[rule+"/"+result] = m.Counter.GetValue()
		}
	}
	return out
}

// TestCheckOutcomes drives the checker on a real Redis with explicit
// clocks: every outcome of a sampled effect, the re-check before a mismatch
// counts, and a later effect re-targeting a sample.
func TestCheckOutcomes(t *testing.T) {
	rdb := testenv.Redis(t).Client(t)
	ctx := context.Background()
	p := t.Name() + ":"
	m := metrics.New()
	c := New(Options{Rate: 1, Window: time.Second, Redis: rdb, Metrics: m.Consistency(), Logger: zerolog.Nop()})
	commit := time.Now().Add(-time.Minute)
	set := func(k, v string) {
		if err := rdb.Set(ctx, p+k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// What Redis holds after the effects below (some "lost").
	set("set-ok", "v1")
	set("set-wrong", "v0")   // the refresh was lost
	set("del-refilled", "x") // filled again after the change
	rdb.Set(ctx, keyspace.StampKey(p+"del-refilled"), commit.Add(time.Second).UnixMilli(), 0)
	set("del-old", "x") // the delete was lost
	rdb.Set(ctx, keyspace.StampKey(p+"del-old"), commit.Add(-time.Second).UnixMilli(), 0)
	set("del-nostamp", "x")   // filled by someone without a stamp
	set("unset-present", "x") // a refresh unset was lost
	set("retarget", "v2")     // v1, then v2 applied
	op := func(kind mapping.OpKind, rule, key, value string) mapping.Op {
		return mapping.Op{Kind: kind, Rule: rule, Key: p + key, Value: []byte(value)}
	}
	c.Applied([]mapping.Batch{{CommitTime: commit, Ops: []mapping.Op{
		op(mapping.OpSet, "r", "set-ok", "v1"),
		op(mapping.OpSet, "r", "set-wrong", "v1"),
		op(mapping.OpSet, "r", "set-missing", "v1"),
		op(mapping.OpDelete, "i", "del-gone", ""),
		op(mapping.OpDelete, "i", "del-refilled", ""),
		op(mapping.OpDelete, "i", "del-old", ""),
		op(mapping.OpDelete, "i", "del-nostamp", ""),
		op(mapping.OpUnset, "r", "unset-present", ""),
		op(mapping.OpSet, "r", "retarget", "v1"),
		op(mapping.OpBumpVersion, "i", "ns", ""), // not sampled
	}}})
	c.Applied([]mapping.Batch{{CommitTime: commit, Ops: []mapping.Op{op(mapping.OpSet, "r", "retarget", "v2")}}})
	if n := len(c.pending); n != 9 {
		t.Fatalf("%d samples pending, want 9", n)
	}
	now := time.Now()
	// Before the window: nothing is due.
	if n, err := c.checkRound(ctx, now); err != nil || n != 0 {
		t.Fatalf("checked %d (%v) before the window", n, err)
	}
	// One window later: the consistent ones count; the mismatches wait for
	// their re-check.
	if _, err := c.checkRound(ctx, now.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	got := results(t, m.Registry())
	want := map[string]float64{"r/consistent": 2, "i/consistent": 2, "i/unverifiable": 1}
	if !maps.Equal(got, want) {
		t.Fatalf("after one window: %v, want %v", got, want)
	}
	// The lost refresh is written meanwhile (a late writer): consistent.
	set("set-wrong", "v1")
	if _, err := c.checkRound(ctx, now.Add(4*time.Second)); err != nil {
		t.Fatal(err)
	}
	got = results(t, m.Registry())
	want = map[string]float64{"r/consistent": 3, "i/consistent": 2, "i/unverifiable": 1, "r/stale": 2, "i/stale": 1}
	if !maps.Equal(got, want) {
		t.Fatalf("after the re-check: %v, want %v", got, want)
	}
	if len(c.pending) != 0 {
		t.Fatalf("%d samples still pending", len(c.pending))
	}
	c.publishNines(now.Add(4 * time.Second))
}

// retargetHook runs fn once, while the first pipeline it sees is in flight.
type retargetHook struct{ fn func() }

func (h *retargetHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *retargetHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *retargetHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if fn := h.fn; fn != nil {
			h.fn = nil
			fn()
		}
		return err
	}
}

// TestRetargetedWhileChecking: an effect applied to a sampled key while the
// sample's read is in flight re-targets it; the sample is checked against the
// new effect a window later instead of being left pending for ever (which
// held cachesync_consistency_samples_pending above 0 after a busy workload).
func TestRetargetedWhileChecking(t *testing.T) {
	rdb := testenv.Redis(t).Client(t)
	ctx := context.Background()
	key := t.Name() + ":k"
	m := metrics.New()
	c := New(Options{Rate: 1, Window: time.Second, Redis: rdb, Metrics: m.Consistency(), Logger: zerolog.Nop()})
	commit := time.Now().Add(-time.Minute)
	apply := func(v string) {
		c.Applied([]mapping.Batch{{CommitTime: commit, Ops: []mapping.Op{{Kind: mapping.OpSet, Rule: "r", Key: key, Value: []byte(v)}}}})
	}
	if err := rdb.Set(ctx, key, "v2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	apply("v1")
	rdb.AddHook(&retargetHook{fn: func() { apply("v2") }})
	// The check of v1 is due a window after it was applied; v2 is applied
	// while Redis answers it.
	if n, err := c.checkRound(ctx, time.Now().Add(2*time.Second)); err != nil || n != 1 {
		t.Fatalf("checked %d (%v), want the one sample", n, err)
	}
	if got := results(t, m.Registry()); len(got) != 0 {
		t.Fatalf("the re-targeted sample was judged against its old effect: %v", got)
	}
	// A window after v2 was applied: checked, and consistent.
	if _, err := c.checkRound(ctx, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, want := results(t, m.Registry()), map[string]float64{"r/consistent": 1}; !maps.Equal(got, want) {
		t.Fatalf("after the re-targeted sample's window: %v, want %v", got, want)
	}
	if len(c.pending) != 0 || len(c.order) != 0 {
		t.Fatalf("%d samples pending, %d queued; want none", len(c.pending), len(c.order))
	}
}
