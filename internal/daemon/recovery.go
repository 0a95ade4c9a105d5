package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// ensureSlot returns the position to stream from, after making the cache
// trustworthy for it. Every way the slot or the cache can lose effects ends
// in a flush or a replay here, before anything streams, and is logged loudly:
//
//   - the slot is missing (dropped, or lost in a failover) or invalidated
//     (wal_status = lost): it is created, and every key space flushed;
//   - the server's system identifier or timeline changed (a restore, a
//     promoted standby): every key space is flushed;
//   - the cache has no applied position (a new or emptied Redis): flush;
//   - the cache's applied position is behind the slot: when this instance's
//     journal reaches the slot, Redis was restored from an older backup, and
//     the journal is replayed from the cache's position (or the key spaces
//     flushed, per on_redis_reset or when the journal does not reach back);
//     otherwise someone advanced the slot past unapplied changes: flush;
//   - the rules differ from those the cache last had applied (a rule added
//     or changed, a table added to the publication): those rules' key
//     spaces are flushed, since nobody invalidated their keys before.
//
// What to do in each case is decided by planSlot and planCache (plan.go,
// pure, one test row per case); ensureSlot reads their inputs and executes
// their plans. It also aligns the publication with the rules, under the
// same lock.
func (s *session) ensureSlot(ctx context.Context, conn *replication.Conn, repl *replication.ReplConn, dbname string) (wal.LSN, error) {
	// The caller holds the instance lock (withLock): only its holder may
	// recover the slot and the cache, so two instances starting at once
	// never both flush or move the cache's position; the slot itself
	// (55006) stays the lock for streaming.
	name := s.opts.Config.Postgres.Slot
	sys, err := repl.IdentifySystem(ctx)
	if err != nil {
		return 0, err
	}
	// Before any flush or replay: the guards written from here on belong
	// to this server's history, and older histories' guards count as
	// absent (a restored or new server's LSNs may lie below them).
	if h, ok := s.opts.Applier.(HistoryRecorder); ok {
		h.SetHistory(keyspace.History(sys.SystemID, sys.Timeline))
	}
	info, err := conn.ReadSlot(ctx, name)
	if err != nil {
		return 0, err
	}
	state, hasState := s.opts.Journal.State()
	slotPlan, err := planSlot(slotInput{Name: name, Slot: info, SystemID: sys.SystemID, Timeline: sys.Timeline, Saved: state, HasSaved: hasState})
	if err != nil {
		return 0, err
	}
	// The partition trees are read before alignPublication installs the
	// truncate triggers: a partition created after this read is a change
	// the monitor sees, and gets its trigger then.
	trees, err := conn.ReadPartitionTrees(ctx, s.mapper.Tables())
	if err != nil {
		return 0, err
	}
	added, err := s.alignPublication(ctx, conn)
	if err != nil {
		return 0, err
	}
	if slotPlan.Drop {
		if _, err := conn.DropSlot(ctx, name); err != nil {
			return 0, err
		}
	}
	if slotPlan.Create {
		lsn, err := replication.CreateSlot(ctx, repl, name, false)
		if err != nil {
			return 0, err
		}
		s.log.Warn().Str("slot", name).Stringer("consistent_point", lsn).Msg("replication slot created")
		if info, err = conn.ReadSlot(ctx, name); err != nil {
			return 0, err
		}
		if info == nil {
			return 0, fmt.Errorf("slot %q vanished right after creation", name)
		}
	}
	if err := replication.CheckSlot(info, dbname); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	start := info.ConfirmedFlushLSN

	// Retried under the lock, like every bookkeeping command of the
	// recovery: a Redis that does not answer (down, or paused for writes,
	// which holds the script that reads the position) must not end the
	// session and hand the slot's recovery to whoever comes next.
	var position writer.Position
	if err := s.retryRedis(ctx, func() (err error) {
		position, err = s.opts.Cache.Applied(ctx, name)
		return err
	}); err != nil {
		return 0, err
	}
	if !position.ServersKnown() {
		s.log.Warn().Msg("Redis refuses INFO to cachesync's user: a restart or failover between a group's apply and its advance that keeps the previous applied position cannot be detected; grant +info (see docs/operations.md, Redis lost effects)")
	}
	journaled := s.opts.Journal.LastLSN()
	plan := planCache(cacheInput{
		Slot: slotPlan, Start: start, Applied: position.LSN, AppliedOK: position.OK,
		Journaled: journaled, Policy: s.opts.Config.Redis.OnReset,
	})
	switch plan.Step {
	case cacheFlushLost:
		s.log.Error().Str("slot", name).Str("cause", plan.Cause).
			Msg("SLOT LOST: changes may have been missed; flushing every rule's key space before streaming")
		err = s.flush(ctx, s.mapper.FlushAll(plan.Reason))
	case cacheFlushNewSlot:
		s.log.Warn().Str("slot", name).Msg("new slot: flushing every rule's key space, since entries cached before it would never be invalidated")
		err = s.flush(ctx, s.mapper.FlushAll(plan.Reason))
	case cacheFlushNoPosition:
		s.log.Warn().Str("slot", name).Msg("the cache holds no applied position (a new or emptied Redis): flushing every rule's key space")
		err = s.flush(ctx, s.mapper.FlushAll(plan.Reason))
	case cacheHeal:
		err = s.heal(ctx, plan.HealFrom, plan.Replay, plan.Cause)
	case cacheFlushAhead:
		s.log.Error().Str("slot", name).Stringer("cache_applied", position.LSN).Stringer("journaled", journaled).Stringer("slot_confirmed", start).
			Msg("SLOT AHEAD: the slot was advanced past what was applied to the cache; flushing every rule's key space")
		err = s.flush(ctx, s.mapper.FlushAll(plan.Reason))
	}
	if err != nil {
		return 0, err
	}
	if plan.FlushChanged {
		if err := s.flushNewRules(ctx, added); err != nil {
			return 0, err
		}
		if err := s.flushPartitionChanges(ctx, trees); err != nil {
			return 0, err
		}
	}
	if err := s.retryRedis(ctx, func() error { return s.opts.Cache.SetRules(ctx, name, s.ruleFingerprints()) }); err != nil {
		return 0, err
	}
	if err := s.retryRedis(ctx, func() error { return s.opts.Cache.SetPartitions(ctx, name, trees) }); err != nil {
		return 0, err
	}
	s.trees = trees
	if err := s.recordRecovered(ctx, position, plan.Mark); err != nil {
		return 0, err
	}
	switch plan.Journal {
	case journalReset:
		err = s.opts.Journal.Reset(start)
	case journalCompleteFrom:
		err = s.opts.Journal.SetCompleteFrom(start)
	}
	if err != nil {
		return 0, err
	}
	s.warnAbandonedSlots(ctx, conn, sys.SystemID+":"+dbname, name)
	if slotPlan.SaveState {
		if err := s.opts.Journal.SaveState(slotPlan.State); err != nil {
			return 0, err
		}
	}
	return start, nil
}

// warnAbandonedSlots looks for slots this cache was streamed from before on
// the same database (the slot was renamed in rules.hcl) that still exist and
// stand idle: PostgreSQL keeps every byte of WAL since their position until
// they are dropped. Each is logged with the command that drops it. A slot
// that no longer exists leaves the record. Failures here are logged only.
func (d *Daemon) warnAbandonedSlots(ctx context.Context, conn *replication.Conn, scope, current string) {
	slots, err := d.opts.Cache.Slots(ctx, scope, current)
	if err != nil {
		d.log.Warn().Err(err).Msg("could not check for abandoned slots")
		return
	}
	for _, other := range slots {
		if other == current {
			continue
		}
		info, err := conn.ReadSlot(ctx, other)
		switch {
		case err != nil:
			d.log.Warn().Err(err).Msg("could not check for abandoned slots")
			return
		case info == nil:
			if err := d.opts.Cache.ForgetSlot(ctx, scope, other); err != nil {
				d.log.Warn().Err(err).Msg("could not update the record of slots")
			}
		case !info.Active:
			d.log.Warn().Str("slot", other).Int64("retained_wal_bytes", info.RetainedBytes).Str("current_slot", current).
				Msg(fmt.Sprintf("ABANDONED SLOT: slot %q was streamed into this cache before and now stands idle, so PostgreSQL keeps WAL for it; if the slot name changed in rules.hcl, drop it: SELECT pg_drop_replication_slot('%s')", other, other))
		}
	}
}

// flushNewRules flushes the key spaces of the rules the cache has not had
// applied in their current form: rules added or changed since the instance
// that streamed last recorded its rules, and the rules of tables just added
// to the publication. Their keys may hold values from before any instance
// invalidated them. Without a record (the first start of a version that
// keeps one), only the added tables' rules are flushed.
func (s *session) flushNewRules(ctx context.Context, addedTables []string) error {
	name := s.opts.Config.Postgres.Slot
	var recorded map[string]string
	var ok bool
	if err := s.retryRedis(ctx, func() (err error) {
		recorded, ok, err = s.opts.Cache.Rules(ctx, name)
		return err
	}); err != nil {
		return err
	}
	changed := changedRules(s.opts.Config.Rules, recorded, ok, addedTables)
	if len(changed) > 0 {
		s.log.Warn().Strs("rules", changed).
			Msg("rules added or changed since the cache was last streamed: flushing their key spaces, since nobody invalidated their keys before")
		if err := s.flush(ctx, s.mapper.FlushRules(changed, mapping.ReasonRules)); err != nil {
			return err
		}
	}
	if len(addedTables) > 0 {
		return s.flush(ctx, s.mapper.FlushTables(addedTables, mapping.ReasonTableAdd))
	}
	return nil
}

// flushPartitionChanges flushes the rules of the tables whose partition tree
// differs from the one recorded by the instance that streamed last: a
// partition attached, detached, dropped or created while no instance
// watched, or after the last one saw the change but before the flush it
// wrote reached the WAL (it records a tree only after that). Without a
// record (the first start of a version that keeps one) nothing is flushed.
func (s *session) flushPartitionChanges(ctx context.Context, trees replication.PartitionTrees) error {
	var recorded replication.PartitionTrees
	var ok bool
	if err := s.retryRedis(ctx, func() (err error) {
		recorded, ok, err = s.opts.Cache.Partitions(ctx, s.opts.Config.Postgres.Slot)
		return err
	}); err != nil || !ok {
		return err
	}
	changed := recorded.Changed(trees)
	if len(changed) == 0 {
		return nil // FlushTables(nil) would flush every rule
	}
	ops := s.mapper.FlushTables(changed, mapping.ReasonPartitions)
	if len(ops) == 0 {
		return nil
	}
	s.log.Warn().Strs("tables", changed).
		Msg("partitions attached, detached, dropped or created since the cache was last streamed (PostgreSQL publishes none of it): flushing these tables' rules")
	return s.flush(ctx, ops)
}

// ruleFingerprints are the rules in force, as CacheState.SetRules records them.
func (d *Daemon) ruleFingerprints() map[string]string {
	out := make(map[string]string, len(d.opts.Config.Rules))
	for _, r := range d.opts.Config.Rules {
		out[r.Name] = r.Fingerprint
	}
	return out
}

// recordRecovered records lsn as the cache's applied position after
// ensureSlot recovered it from what Applied read (read). If the cache
// changed meanwhile (another rollback during the flush or replay), the
// recovery may be lost with it: the session starts over and recovers again.
func (s *session) recordRecovered(ctx context.Context, read writer.Position, lsn wal.LSN) error {
	name := s.opts.Config.Postgres.Slot
	var swapped bool
	var cur writer.Position
	if err := s.retryRedis(ctx, func() (err error) {
		swapped, cur, err = s.opts.Cache.Advance(ctx, name, read, lsn)
		return err
	}); err != nil {
		return err
	}
	if !swapped {
		return fmt.Errorf("the cache's applied position changed while it was being recovered (now %s, ok %v): recovering again", cur.LSN, cur.OK)
	}
	s.mark = cur
	return nil
}

// retryRedis runs a Redis bookkeeping command until it succeeds, the
// lease fences this instance off, or ctx ends.
func (s *session) retryRedis(ctx context.Context, cmd func() error) error {
	return s.opts.Cache.Retry(ctx, s.fence, cmd)
}

// advance records end as the cache's applied position after group was
// applied. When the cache does not hold the position last written, as
// written, it lost effects since (restart, restore, failover): it is healed
// first, group included.
func (s *session) advance(ctx context.Context, end wal.LSN, group []mapping.Batch) error {
	return s.settle(ctx, s.mark, end, group)
}

// settle swaps the cache's applied position from `from` (as read) to `to`.
// Whenever the cache holds something else, it is healed from what it holds
// and group (the group in flight, whose effects are not in the journal
// yet) is applied again, and the swap is tried from there: the position
// recorded always has every effect up to it.
func (s *session) settle(ctx context.Context, from writer.Position, to wal.LSN, group []mapping.Batch) error {
	name := s.opts.Config.Postgres.Slot
	for attempt := 0; ; attempt++ {
		if err := s.fence(); err != nil {
			return err
		}
		swapped, cur, err := s.opts.Cache.Advance(ctx, name, from, to)
		if err == nil && swapped {
			s.mark = cur
			return nil
		}
		if err == nil {
			if err := s.cacheReset(ctx, cur, group); err != nil {
				return err
			}
			from = cur
			continue
		}
		if err := s.opts.Cache.Wait(ctx, attempt); err != nil {
			return err
		}
	}
}

// verifyCache checks, between groups, that the cache still holds the
// position last written, so that a reset is healed within about a second
// even while nothing changes. Markers that merely moved (a restart with
// everything kept, a new master's marker still to write) are recorded
// again as they are: with no group in flight, every effect up to the
// position is behind them.
func (s *session) verifyCache(ctx context.Context) error {
	cur, err := s.opts.Cache.Applied(ctx, s.opts.Config.Postgres.Slot)
	if err != nil || cur.Settled(s.mark) {
		return nil // unreachable Redis: the next check or group retries
	}
	if !cur.SameValues(s.mark) {
		if err := s.cacheReset(ctx, cur, nil); err != nil {
			return err
		}
	}
	return s.settle(ctx, cur, s.mark.LSN, nil)
}

// cacheReset heals a cache that does not hold the position last written
// (s.mark) but cur, then applies group (the group in flight) again: its
// effects may be exactly those the cache lost, and the journal does not
// have them yet.
func (s *session) cacheReset(ctx context.Context, cur writer.Position, group []mapping.Batch) error {
	// An instance that lost its lock sees the new active's position: that
	// is no reset, and nothing here is its to heal.
	if err := s.fence(); err != nil {
		return err
	}
	since := cur.Since(s.mark)
	switch {
	case cur.SameValues(s.mark) && since.OK:
		// Another server answers with the position last written: a
		// restart or a failover that kept it, or a migrated marker.
		// Only the group in flight can be missing.
		if hasOps(group) {
			s.log.Warn().Stringer("applied", since.LSN).Msg("a Redis server holding the applied position changed (restart, failover or resharding) while a group was being applied: applying it again")
		}
	case !since.OK:
		s.metrics.CacheResets.Inc()
		s.log.Error().Stringer("expected", s.mark.LSN).Msg("REDIS RESET: the cache lost its applied position (restarted without persistence, or emptied); flushing every rule's key space")
		if err := s.flush(ctx, s.mapper.FlushAll(mapping.ReasonCacheReset)); err != nil {
			return err
		}
	default:
		s.metrics.CacheResets.Inc()
		if err := s.heal(ctx, since.LSN, s.opts.Config.Redis.OnReset != config.ResetFlush, fmt.Sprintf("REDIS RESET: the cache's applied position went back from %s to %s (restored from a backup, or a failover lost acknowledged writes)", s.mark.LSN, since.LSN)); err != nil {
			return err
		}
	}
	if !hasOps(group) {
		return nil
	}
	return s.opts.Applier.Apply(ctx, group)
}

// hasOps reports whether any batch of group has an operation.
func hasOps(group []mapping.Batch) bool {
	for _, b := range group {
		if len(b.Ops) > 0 {
			return true
		}
	}
	return false
}

// heal re-applies the journal from `from` when replay (on_redis_reset =
// "replay") and the journal reaches back that far, and flushes every key
// space otherwise.
func (s *session) heal(ctx context.Context, from wal.LSN, replay bool, why string) error {
	// Groups applied but still on their way to the journal must be in it
	// before it is replayed.
	if err := s.journalSync(ctx); err != nil {
		return err
	}
	if err := s.fence(); err != nil {
		return err
	}
	if !replay {
		s.log.Error().Str("cause", why).Msg("on_redis_reset = flush: flushing every rule's key space")
		return s.flush(ctx, s.mapper.FlushAll(mapping.ReasonCacheReset))
	}
	n, err := Replay(ctx, s.opts.Journal, s.opts.Applier, from, time.Time{})
	if errors.Is(err, journal.ErrNotCovered) {
		s.log.Error().Str("cause", why).Err(err).Msg("the journal does not reach back far enough to replay: flushing every rule's key space")
		return s.flush(ctx, s.mapper.FlushAll(mapping.ReasonCacheReset))
	}
	if err != nil {
		return err
	}
	s.log.Error().Str("cause", why).Stringer("from", from).Int("batches", n).Msg("replayed the journal into the cache")
	return nil
}

// Replayer is what Replay reads: journal.Journal.
type Replayer interface {
	Replay(ctx context.Context, from wal.LSN, since time.Time, fn func(mapping.Batch) error) error
}

// replayGroupBytes bounds the bytes of a replayed group, as the budgets
// bound the streaming pipeline: journaled write-through values can be wide.
const replayGroupBytes = 32 << 20

// Replay re-applies every journaled batch from `from` (or since `since`)
// through the applier, in order and in groups, and returns how many batches
// it applied.
func Replay(ctx context.Context, j Replayer, a Applier, from wal.LSN, since time.Time) (int, error) {
	var group []mapping.Batch
	ops, n := 0, 0
	var size int64
	apply := func() error {
		if ops > 0 {
			if err := a.Apply(ctx, group); err != nil {
				return err
			}
		}
		n += len(group)
		group, ops, size = group[:0], 0, 0
		return nil
	}
	err := j.Replay(ctx, from, since, func(b mapping.Batch) error {
		group = append(group, b)
		ops += len(b.Ops)
		size += b.Size()
		if len(group) >= groupMaxTxn || ops >= groupMaxOps || size >= replayGroupBytes {
			return apply()
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	return n, apply()
}

// flush applies flush operations and logs them.
func (s *session) flush(ctx context.Context, ops []mapping.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if err := s.fence(); err != nil {
		return err
	}
	for _, op := range ops {
		s.metrics.Flush(op.Rule, op.Reason)
		s.log.Info().Str("rule", op.Rule).Str("reason", op.Reason).Msg("flushing key space")
	}
	return s.opts.Applier.Apply(ctx, []mapping.Batch{{Ops: ops}})
}
