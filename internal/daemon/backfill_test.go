package daemon

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/backfill"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/writer"
)

// TestBackfillStateOf: the automatic backfill runs a rule whose key space
// was never filled, was flushed since its fill, or was filled only in
// part; never one filled completely since its last flush.
func TestBackfillStateOf(t *testing.T) {
	t.Parallel()
	done := time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name    string
		cp      writer.Checkpoint
		ok      bool
		flushes string
		want    BackfillState
	}{
		{"no checkpoint, never flushed", writer.Checkpoint{}, false, "", BackfillNever},
		{"no checkpoint, flushed", writer.Checkpoint{}, false, "3", BackfillNever},
		{"finished", writer.Checkpoint{Flushes: "3", Finished: done}, true, "3", BackfillFinished},
		{"finished before any flush", writer.Checkpoint{Finished: done}, true, "", BackfillFinished},
		{"finished, flushed since", writer.Checkpoint{Flushes: "3", Finished: done}, true, "4", BackfillFlushed},
		{"finished, then Redis emptied and flushed", writer.Checkpoint{Flushes: "3", Finished: done}, true, "1", BackfillFlushed},
		{"unfinished", writer.Checkpoint{Flushes: "3", LastKey: []string{"7"}}, true, "3", BackfillRunning},
		{"unfinished after an error", writer.Checkpoint{Flushes: "3", Error: "Redis down"}, true, "3", BackfillRunning},
		{"unfinished, flushed since", writer.Checkpoint{Flushes: "3"}, true, "4", BackfillFlushed},
		{"a --where run finished", writer.Checkpoint{Flushes: "3", Where: "id < 10", Finished: done}, true, "3", BackfillPartial},
	} {
		got := BackfillStateOf(tt.cp, tt.ok, tt.flushes)
		if got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
		if due := got != BackfillFinished; got.Due() != due {
			t.Errorf("%s: %s.Due() = %v", tt.name, got, got.Due())
		}
	}
}

// backfillCache is the part of CacheState the backfill runner uses, in
// memory.
type backfillCache struct {
	CacheState // nil: the runner uses only the methods below
	mu         sync.Mutex
	flushes    map[string]string
	cps        map[string]writer.Checkpoint
}

func (c *backfillCache) FlushCount(_ context.Context, rule string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes[rule], nil
}

func (c *backfillCache) Checkpoint(_ context.Context, rule string) (writer.Checkpoint, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp, ok := c.cps[rule]
	return cp, ok, nil
}

func (c *backfillCache) SetCheckpoint(_ context.Context, rule string, cp writer.Checkpoint) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cps[rule] = cp
	return nil
}

// finish records rule's backfill finished under the current counter.
func (c *backfillCache) finish(rule string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cps[rule] = writer.Checkpoint{Flushes: c.flushes[rule], Rows: 1, Finished: time.Now()}
}

func backfillSession(cache *backfillCache, fn BackfillFunc, rules ...string) *session {
	cfg := &config.Config{}
	for _, r := range rules {
		cfg.Rules = append(cfg.Rules, &config.Rule{Name: r, Refresh: &config.Refresh{Backfill: true}})
	}
	cfg.Rules = append(cfg.Rules, &config.Rule{Name: "no_backfill", Refresh: &config.Refresh{}})
	d := &Daemon{
		opts: Options{Config: cfg, Cache: cache, Backfill: fn, BackfillCheckInterval: 10 * time.Millisecond, MaxBackoff: time.Second},
		log:  zerolog.Nop(), metrics: metrics.New(),
	}
	return &session{Daemon: d, lease: newLease(nil, time.Minute, time.Now())}
}

// TestBackfillRunner: the runner runs each backfill = true rule that is due,
// never a finished one, retries a failure, ends the session when the lease
// is lost and stops with the session.
func TestBackfillRunner(t *testing.T) {
	t.Parallel()
	cache := &backfillCache{
		flushes: map[string]string{"filled": "5", "never": "2", "failing": "1", "no_backfill": "1"},
		cps:     map[string]writer.Checkpoint{"filled": {Flushes: "5", Finished: time.Now()}},
	}
	calls := make(chan string, 16)
	failed := false
	var fenced func() error // the fence the runs get
	s := backfillSession(cache, func(ctx context.Context, rule *config.Rule, fence func() error, stop <-chan struct{}, progress func(backfill.Progress)) error {
		fenced = fence
		progress(backfill.Progress{Rule: rule.Name, Rows: 1, Read: 1, Total: 1})
		if rule.Name == "failing" && !failed {
			failed = true
			calls <- "failing: failed"
			return errors.New("no primary key")
		}
		cache.finish(rule.Name)
		calls <- rule.Name
		return nil
	}, "filled", "never", "failing")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.runBackfills(ctx, ctx) }()
	next := func() string {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case err := <-done:
			t.Fatalf("the runner ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("no backfill run within 30s")
		}
		return ""
	}
	// One at a time, in rule order; the failure retried after its backoff.
	for _, want := range []string{"never", "failing: failed", "failing"} {
		if got := next(); got != want {
			t.Fatalf("run %q, want %q", got, want)
		}
	}
	// The failure was recorded for status, before the retry finished it.
	if cp, _, _ := cache.Checkpoint(ctx, "failing"); cp.Finished.IsZero() {
		t.Errorf("failing rule's checkpoint after the retry: %+v", cp)
	}

	// A flush makes a finished rule due again; with the lease lost, the
	// runner runs nothing and ends the session, and the fence a run got
	// refuses.
	s.lease.until.Store(0)
	cache.mu.Lock()
	cache.flushes["never"] = "3"
	cache.mu.Unlock()
	select {
	case err := <-done:
		if !errors.Is(err, errLockLost) {
			t.Fatalf("runner ended with %v, want errLockLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the runner goes on without the lease")
	}
	if err := fenced(); !errors.Is(err, errLockLost) {
		t.Errorf("a run's fence with the lease lost: %v, want errLockLost", err)
	}
	close(calls)
	for c := range calls {
		t.Errorf("unexpected run %q", c)
	}
}

// TestBackfillRunnerStops: a graceful stop closes the run's stop channel
// (the run ends after its chunk) and ends the runner without an error.
func TestBackfillRunnerStops(t *testing.T) {
	t.Parallel()
	cache := &backfillCache{flushes: map[string]string{}, cps: map[string]writer.Checkpoint{}}
	running := make(chan struct{})
	s := backfillSession(cache, func(ctx context.Context, rule *config.Rule, fence func() error, stop <-chan struct{}, progress func(backfill.Progress)) error {
		close(running)
		select {
		case <-stop:
			return backfill.ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}, "slow")
	ctx, cancel := context.WithCancel(context.Background())
	hard, stopHard := context.WithCancel(context.Background())
	defer stopHard()
	done := make(chan error, 1)
	go func() { done <- s.runBackfills(ctx, hard) }()
	<-running
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("runner stopped with %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the runner did not stop")
	}
}
