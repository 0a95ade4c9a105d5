package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/cachesync/cachesync/backfill"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/backoff"
	"github.com/cachesync/cachesync/writer"
)

// BackfillState is a rule's backfill as its checkpoint (writer.Checkpoint)
// tells it, against the rule's flush counter.
type BackfillState string

// The states of a rule's backfill.
const (
	// BackfillNever: no checkpoint; the key space was never filled.
	BackfillNever BackfillState = "never"
	// BackfillFlushed: the checkpoint is of a key space flushed since (its
	// flush count is not the counter's); the fill is gone with it.
	BackfillFlushed BackfillState = "flushed"
	// BackfillPartial: the last run loaded only the rows of a --where.
	BackfillPartial BackfillState = "partial"
	// BackfillRunning: started and not finished: running, or stopped by a
	// failure or a restart (the next run resumes it).
	BackfillRunning BackfillState = "running"
	// BackfillFinished: every row loaded since the last flush.
	BackfillFinished BackfillState = "finished"
)

// BackfillStateOf is the state of a rule's backfill whose checkpoint is cp
// (ok false: none) while the rule's flush counter holds flushes.
func BackfillStateOf(cp writer.Checkpoint, ok bool, flushes string) BackfillState {
	switch {
	case !ok:
		return BackfillNever
	case cp.Flushes != flushes:
		return BackfillFlushed
	case cp.Where != "":
		return BackfillPartial
	case cp.Finished.IsZero():
		return BackfillRunning
	}
	return BackfillFinished
}

// Due reports whether the automatic backfill runs (or resumes) the rule:
// every state but finished.
func (s BackfillState) Due() bool { return s != BackfillFinished }

// BackfillFunc runs or resumes the backfill of rule on a PostgreSQL
// connection of its own until every row is loaded (nil), it fails, fence
// refuses (the instance lock was lost), stop is closed (after the current
// chunk: backfill.ErrStopped) or ctx ends (at once). It calls progress
// after each chunk. cmd/cachesync wires package backfill's Run, with the
// daemon's writer.
type BackfillFunc func(ctx context.Context, rule *config.Rule, fence func() error, stop <-chan struct{}, progress func(backfill.Progress)) error

// backfillRunner is the session's sixth goroutine when a rule has
// refresh { backfill = true }: every Options.BackfillCheckInterval it reads
// each such rule's checkpoint and flush counter, and runs or resumes the
// backfill of every rule due (BackfillState.Due), one rule at a time, so
// that every flush (slot created or lost, a Redis reset, rules changed,
// TRUNCATE, key cap) is followed by a fill. It runs only under the lease
// (the session's fence is checked before every write to Redis). A failure
// is logged and the rule retried with backoff; only a lost lease ends the
// session. A graceful stop lets the chunk in flight finish.
type backfillRunner struct {
	s     *session
	rules []*config.Rule
	// hard ends a run at once (the pipeline's context); stop, closed
	// when the session stops gracefully, after its current chunk.
	hard context.Context
	stop <-chan struct{}
	// retries and notBefore hold each failing rule's consecutive failures
	// and when it may run again.
	retries   map[string]int
	notBefore map[string]time.Time
	wait      backoff.Exponential
}

// backfillRules returns the rules with backfill = true.
func (d *Daemon) backfillRules() []*config.Rule {
	var out []*config.Rule
	for _, r := range d.opts.Config.Rules {
		if r.Refresh != nil && r.Refresh.Backfill {
			out = append(out, r)
		}
	}
	return out
}

// runBackfills is the backfill runner's goroutine (see backfillRunner):
// ctx ends it gracefully, hard at once.
func (s *session) runBackfills(ctx, hard context.Context) error {
	r := &backfillRunner{
		s: s, rules: s.backfillRules(), hard: hard, stop: ctx.Done(),
		retries: map[string]int{}, notBefore: map[string]time.Time{},
		wait: backoff.Exponential{Min: time.Second, Max: s.opts.MaxBackoff},
	}
	tick := time.NewTicker(s.opts.BackfillCheckInterval)
	defer tick.Stop()
	for {
		if err := r.check(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// check runs the backfill of every rule due, one after the other. It
// returns an error only when the lease is lost.
func (r *backfillRunner) check(ctx context.Context) error {
	for _, rule := range r.rules {
		if ctx.Err() != nil {
			return nil
		}
		if time.Now().Before(r.notBefore[rule.Name]) {
			continue
		}
		state, err := r.state(ctx, rule.Name)
		if err != nil {
			// The writer's outage tracker reports Redis; the next
			// check reads again.
			r.s.log.Debug().Err(err).Str("rule", rule.Name).Msg("backfill: cannot read the checkpoint; checking again")
			return nil
		}
		if !state.Due() {
			continue
		}
		err = r.run(rule, state)
		switch {
		case errors.Is(err, errLockLost):
			return err
		case ctx.Err() != nil, errors.Is(err, backfill.ErrStopped):
			return nil
		case err != nil:
			wait := r.wait.Wait(r.retries[rule.Name])
			r.retries[rule.Name]++
			r.notBefore[rule.Name] = time.Now().Add(wait)
			r.s.log.Error().Err(err).Str("rule", rule.Name).Dur("retry_in", wait).Msg("backfill failed; it resumes from its checkpoint")
			r.recordFailure(ctx, rule.Name, err)
		default:
			delete(r.retries, rule.Name)
			delete(r.notBefore, rule.Name)
		}
	}
	return nil
}

// recordFailure puts err in rule's checkpoint, for status, when the
// backfill failed before it could (a table without a primary key): a
// checkpoint without a last key, which the next run starts over from.
func (r *backfillRunner) recordFailure(ctx context.Context, rule string, failure error) {
	cache := r.s.opts.Cache
	cp, ok, err := cache.Checkpoint(ctx, rule)
	if err != nil || (ok && cp.Error != "") {
		return
	}
	if !ok {
		if cp.Flushes, err = cache.FlushCount(ctx, rule); err != nil {
			return
		}
		cp.Started = time.Now().UTC()
	}
	cp.Error = failure.Error()
	if r.s.fence() == nil {
		_ = cache.SetCheckpoint(ctx, rule, cp)
	}
}

// state reads rule's backfill state from the cache.
func (r *backfillRunner) state(ctx context.Context, rule string) (BackfillState, error) {
	cache := r.s.opts.Cache
	flushes, err := cache.FlushCount(ctx, rule)
	if err != nil {
		return "", err
	}
	cp, ok, err := cache.Checkpoint(ctx, rule)
	if err != nil {
		return "", err
	}
	return BackfillStateOf(cp, ok, flushes), nil
}

// run runs or resumes rule's backfill, found in state, to its end.
func (r *backfillRunner) run(rule *config.Rule, state BackfillState) error {
	if err := r.s.fence(); err != nil {
		return err
	}
	m, name := r.s.metrics, rule.Name
	began := time.Now()
	r.s.log.Info().Str("rule", name).Str("was", string(state)).Msg("backfill: loading the table's rows into the rule's keys")
	m.BackfillStarted(name, began, 0)
	var last backfill.Progress
	err := r.s.opts.Backfill(r.hard, rule, r.s.fence, r.stop, func(p backfill.Progress) {
		m.BackfillRows(name, max(0, p.Read-last.Read), p.Total-p.Rows)
		last = p
	})
	m.BackfillStopped(name, time.Now(), err == nil)
	return err
}
