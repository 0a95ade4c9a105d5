// Package checker is the continuous consistency checker of `cachesync run
// --verify-rate` (issue 17): it samples a fraction of the effects the daemon
// applied and, after the window, checks in Redis that each still holds.
//
// A refresh set must have left the value the rule computed from the
// committed row; a refresh unset and an invalidation must have left the key
// absent, or filled again after the change (a fill stamp, keyspace.StampKey,
// newer than the commit). A later effect on a sampled key re-targets the
// sample: it is then checked against the newest change, a window after it.
// A mismatch is re-checked one more window later and only then counts as
// stale. The expected state comes from the WAL the daemon applied, that is
// from the rows as committed, so the checker reads nothing from PostgreSQL;
// its cost is two Redis GETs per sample (four for a mismatch), in one
// pipeline per round.
package checker

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
)

// Results of a check (the result label of cachesync_consistency_checks_total).
const (
	Consistent   = "consistent"
	Stale        = "stale"
	Orphaned     = "orphaned" // a refresh key whose row is gone: `cachesync verify` finds those
	Unverifiable = "unverifiable"
)

// Defaults.
const (
	DefaultRate     = 0.01
	DefaultWindow   = 5 * time.Second
	DefaultQueueCap = 10000
	// Period is the sliding period of the nines gauge.
	Period = 10 * time.Minute
	// buckets split Period; the gauge covers the last Period to one bucket.
	buckets = 10
	// round caps the samples checked in one Redis pipeline.
	round = 500
	// staleLogsPerPeriod caps the stale keys logged per Period.
	staleLogsPerPeriod = 1000
)

// Options configure a Checker.
type Options struct {
	Rate     float64       // fraction of applied effects sampled, in [0, 1]
	Window   time.Duration // W: a change younger than this is in flight
	QueueCap int           // samples waiting at most; beyond, samples are dropped and counted
	Redis    redis.UniversalClient
	Metrics  *metrics.Consistency
	Logger   zerolog.Logger
}

// Checker samples applied effects and re-checks them. Applied never blocks
// (it only takes a mutex for a map lookup per effect); Run does the checks.
type Checker struct {
	opts Options

	mu      sync.Mutex
	pending map[string]*sample // by key
	order   []*sample          // FIFO by queuedDue
	periods map[string]*window // by rule
	logged  int                // stale keys logged in the current bucket run
	logFrom time.Time
}

// sample is one sampled effect: what the key must hold after the window.
type sample struct {
	rule      string
	key       string
	kind      mapping.OpKind
	value     []byte
	commit    time.Time // of the change
	applied   time.Time
	due       time.Time
	queuedDue time.Time // due when put in order
	gen       uint64    // bumped when a later effect re-targets it
	mismatch  bool      // the first check failed: this is the re-check
}

// New returns a Checker; opts.Rate outside [0, 1] is the caller's error.
func New(opts Options) *Checker {
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	if opts.QueueCap <= 0 {
		opts.QueueCap = DefaultQueueCap
	}
	return &Checker{opts: opts, pending: map[string]*sample{}, periods: map[string]*window{}}
}

// sampled are the effects whose outcome is a key's state.
func sampled(k mapping.OpKind) bool {
	return k == mapping.OpSet || k == mapping.OpUnset || k == mapping.OpDelete
}

// Applied is called once Redis acknowledged group: it samples its effects
// and re-targets the samples whose keys it changed again.
func (c *Checker) Applied(group []mapping.Batch) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range group {
		b := &group[i]
		for j := range b.Ops {
			op := &b.Ops[j]
			if op.Kind == mapping.OpFlush {
				c.forgetRule(op.Rule) // its keys are gone, whatever was sampled
				continue
			}
			if !sampled(op.Kind) {
				continue
			}
			if s, ok := c.pending[op.Key]; ok {
				s.target(op, b.CommitTime, now, c.opts.Window)
				continue
			}
			if c.opts.Rate <= 0 || (c.opts.Rate < 1 && rand.Float64() >= c.opts.Rate) {
				continue
			}
			if len(c.pending) >= c.opts.QueueCap {
				c.opts.Metrics.Dropped()
				continue
			}
			s := &sample{rule: op.Rule, key: op.Key}
			s.target(op, b.CommitTime, now, c.opts.Window)
			s.queuedDue = s.due
			c.pending[op.Key] = s
			c.order = append(c.order, s)
		}
	}
	c.opts.Metrics.Pending(len(c.pending))
}

// target makes s expect op's outcome, a window after now.
func (s *sample) target(op *mapping.Op, commit, now time.Time, w time.Duration) {
	s.kind, s.value, s.commit, s.applied = op.Kind, op.Value, commit, now
	s.due = now.Add(w)
	s.mismatch = false
	s.gen++
}

// forgetRule drops the pending samples of rule (its key space was flushed).
func (c *Checker) forgetRule(rule string) {
	for k, s := range c.pending {
		if s.rule == rule {
			delete(c.pending, k)
			s.gen++ // its place in order is skipped
		}
	}
}

// Run checks due samples until ctx ends; it returns nil then. Redis errors
// are logged and the samples checked again on the next round. It starts by
// forgetting the samples of an earlier session: another instance may have
// applied newer effects to their keys since.
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	clear(c.pending)
	c.order = nil
	c.opts.Metrics.Pending(0)
	c.mu.Unlock()
	tick := time.NewTicker(min(c.opts.Window/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for {
			n, err := c.checkRound(ctx, time.Now())
			if err != nil {
				if ctx.Err() == nil {
					c.opts.Logger.Warn().Err(err).Msg("consistency check: Redis did not answer; checking again")
				}
				break
			}
			if n < round {
				break
			}
		}
		c.publishNines(time.Now())
	}
}

// due is a snapshot of a sample to check outside the lock.
type due struct {
	s        *sample
	gen      uint64
	kind     mapping.OpKind
	value    []byte
	commit   time.Time
	applied  time.Time
	mismatch bool
}

// checkRound checks up to round due samples and returns how many.
func (c *Checker) checkRound(ctx context.Context, now time.Time) (int, error) {
	var batch []due
	c.mu.Lock()
	for len(c.order) > 0 && len(batch) < round {
		s := c.order[0]
		if s.queuedDue.After(now) {
			break
		}
		c.order = c.order[1:]
		if c.pending[s.key] != s {
			continue // forgotten (flush)
		}
		if s.due.After(now) { // re-targeted: back in line
			s.queuedDue = s.due
			c.order = append(c.order, s)
			continue
		}
		batch = append(batch, due{s, s.gen, s.kind, s.value, s.commit, s.applied, s.mismatch})
	}
	c.mu.Unlock()
	if len(batch) == 0 {
		return 0, nil
	}
	pipe := c.opts.Redis.Pipeline()
	values := make([]*redis.StringCmd, len(batch))
	stamps := make([]*redis.StringCmd, len(batch))
	for i, d := range batch {
		values[i] = pipe.Get(ctx, d.s.key)
		stamps[i] = pipe.Get(ctx, keyspace.StampKey(d.s.key))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		c.requeue(batch, now)
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, d := range batch {
		result, reason := judge(d, values[i], stamps[i])
		s := d.s
		if c.pending[s.key] != s {
			continue // forgotten (flush) while Redis answered
		}
		if s.gen != d.gen {
			// Re-targeted while Redis answered: back in line for its new
			// due time. It left the order when it was taken for this round,
			// and only the order leads back to a check.
			s.queuedDue = s.due
			c.order = append(c.order, s)
			continue
		}
		if result == Stale && !d.mismatch {
			// In flight, perhaps: once more a window later.
			s.mismatch = true
			s.due = now.Add(c.opts.Window)
			s.queuedDue = s.due
			c.order = append(c.order, s)
			continue
		}
		delete(c.pending, s.key)
		c.record(s.rule, result, now)
		if result == Stale {
			c.logStale(s, reason, now)
		}
	}
	c.opts.Metrics.Pending(len(c.pending))
	return len(batch), nil
}

// requeue puts back samples whose check failed.
func (c *Checker) requeue(batch []due, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range batch {
		if c.pending[d.s.key] == d.s {
			d.s.queuedDue = now
			c.order = append(c.order, d.s)
		}
	}
}

// judge says whether the key's state, value and fill stamp, fits d.
func judge(d due, value, stamp *redis.StringCmd) (result, reason string) {
	v, err := value.Bytes()
	present := err == nil
	if d.kind == mapping.OpSet {
		switch {
		case !present:
			return Stale, "missing: the refresh was not written"
		case string(v) != string(d.value):
			return Stale, "value differs from the committed row's"
		}
		return Consistent, ""
	}
	if !present {
		return Consistent, ""
	}
	if ms, err := stamp.Int64(); err == nil {
		if time.UnixMilli(ms).After(d.commit) {
			return Consistent, "" // filled again, from a load begun after the change
		}
		return Stale, "present, filled from a load begun before the change"
	}
	if d.kind == mapping.OpUnset {
		// Only cachesync writes refresh keys, and a later write would
		// have re-targeted the sample.
		return Stale, "present after its row was deleted or filtered out"
	}
	return Unverifiable, ""
}

// window counts one rule's checks over Period, in buckets.
type window struct {
	start   [buckets]int64 // bucket index (time / bucket length) each slot holds
	checked [buckets]uint64
	stale   [buckets]uint64
}

func (c *Checker) record(rule, result string, now time.Time) {
	c.opts.Metrics.Check(rule, result)
	if result == Unverifiable {
		return
	}
	w := c.periods[rule]
	if w == nil {
		w = &window{}
		c.periods[rule] = w
	}
	idx := now.UnixNano() / int64(Period/buckets)
	slot := idx % buckets
	if w.start[slot] != idx {
		w.start[slot], w.checked[slot], w.stale[slot] = idx, 0, 0
	}
	w.checked[slot]++
	if result == Stale || result == Orphaned {
		w.stale[slot]++
	}
}

// Nines is -log10(stale/checked), capped at 9; 9 when nothing was stale;
// ok is false when nothing was checked.
func Nines(checked, stale uint64) (nines float64, ok bool) {
	if checked == 0 {
		return 0, false
	}
	if stale == 0 {
		return 9, true
	}
	return min(9, -math.Log10(float64(stale)/float64(checked))), true
}

// publishNines sets each rule's gauge from its last Period.
func (c *Checker) publishNines(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := now.UnixNano() / int64(Period/buckets)
	for rule, w := range c.periods {
		var checked, stale uint64
		for i := range buckets {
			if idx-w.start[i] < buckets {
				checked += w.checked[i]
				stale += w.stale[i]
			}
		}
		n, ok := Nines(checked, stale)
		c.opts.Metrics.Nines(rule, n, ok)
	}
}

// logStale logs a stale key, at most staleLogsPerPeriod of them per Period.
func (c *Checker) logStale(s *sample, reason string, now time.Time) {
	if now.Sub(c.logFrom) > Period {
		c.logFrom, c.logged = now, 0
	}
	if c.logged++; c.logged > staleLogsPerPeriod {
		return
	}
	ev := c.opts.Logger.Warn().Str("rule", s.rule).Str("key", s.key).Str("effect", s.kind.String()).Str("reason", reason).
		Dur("since_apply", now.Sub(s.applied))
	if !s.commit.IsZero() {
		ev = ev.Str("age", now.Sub(s.commit).Round(time.Millisecond).String())
	}
	ev.Msg("consistency check: stale key")
}

// CheckRate checks a --verify-rate.
func CheckRate(v float64) error {
	if v < 0 || v > 1 || math.IsNaN(v) {
		return errors.New("want a fraction of the applied effects between 0 (off) and 1 (all), like 0.01")
	}
	return nil
}
