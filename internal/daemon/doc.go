// Package daemon wires the pipeline of `cachesync run` and `cachesync setup`:
//
//	replication.Stream ─events─▶ mapping.Mapper ─batches─▶ apply stage (visibility gate, Applier, applied position)
//	    ▲                                                          │ groups
//	    └────────────── Stream.Confirm(end LSN) ◀── journal stage (Journal.Append, fsync)
//
// It owns no resource: PostgreSQL is replication's (replication.Conn for
// catalog queries, the instance lock, logical messages and snapshots;
// replication.ReplConn for IDENTIFY_SYSTEM, slot creation and the Stream),
// Redis is the writer's (Applier, and CacheState for the applied position
// and the other bookkeeping keys). The package imports neither driver.
//
// # Sessions
//
// Daemon keeps what outlives replication sessions: options, the mapper,
// metrics, the logger and whether it stands by. Daemon.Run prepares once
// (preflight, the cache check) and then runs sessions until its context
// ends, reconnecting after a failed one with jittered backoff (1s doubling
// to Options.MaxBackoff, 30s; internal/backoff). ErrConfig (the rules do not
// fit the database) and ErrFatal (the journal's disk failed) end Run
// instead; ErrSlotActive (another instance holds the lock or the slot) makes
// the instance passive, retrying every Options.StandbyRetry (~2s, jittered).
//
// A session is a session value, created by Daemon.session under the
// instance lock (Daemon.withLock) and dropped with it: the stream, the
// lease, the visibility gate, the budgets, the journal queue, the applied
// mark and the partition trees, so nothing of a failed session leaks into
// the next. session.streamSession opens a normal and a replication
// connection, recovers the slot and the cache (session.ensureSlot), opens a
// third connection for the visibility gate, and runs session.pipeline.
//
// # The pipeline's goroutines
//
// session.pipeline runs the goroutines below (the stream, mapper, apply,
// journal and monitor always; a backfill runner with a backfill = true
// rule, a write-behind worker per write_behind block and the consistency
// checker with --verify-rate > 0) in one errgroup, joined by bounded
// channels; budgets (budget.go) bound what the items hold:
//
//   - the stream (replication.Stream.Run), the only user of the replication
//     connection; it sends to eventQueue (4096 events) and acquires each
//     event's size from the event budget (a quarter of
//     Options.MaxQueuedBytes) before sending it;
//   - the mapper (session.mapEvents), which feeds mapping.Mapper one change
//     at a time, releases each event's bytes once mapped, and sends batches
//     to batchQueue (256 batches) after acquiring their operations
//     (queuedOps, 64K, released after apply) and their bytes (the batch
//     budget, half of Options.MaxQueuedBytes, released once journaled); the
//     transaction being mapped holds its refresh values in the remaining
//     quarter (mapping.Options.TxnValueBytes); it notes each commit with
//     effects to the visibility gate as it queues it;
//   - the visibility gate (visibilityGate.run, not in dry runs), which sends
//     pg_current_snapshot() on a connection of its own as soon as a commit
//     is noted, one query at a time, each answer serving every commit noted
//     before the query went out; it stops with the apply stage;
//   - the apply stage (session.applyBatches), which takes whatever batches
//     are waiting, up to groupMaxTxn (512) transactions or groupMaxOps (8192)
//     operations, groups the run of them that the visibility gate's latest
//     answer covers (session.clearedRun), and commits each group
//     (session.commitGroup): the
//     visibility gate, the fence, Applier.Apply, then session.advance; it
//     hands the group to journalQueue (16 groups) and, between groups,
//     compares the cache's position with the one last written
//     (session.verifyCache, every Options.CacheCheckInterval);
//   - the journal stage (session.journalGroups), which does each applied
//     group's bookkeeping (session.groupApplied: metrics, the checker's
//     sample) off the apply path, appends and fsyncs every group queued
//     meanwhile, checks the fence, and only then calls Stream.Confirm with
//     the last end LSN;
//   - the monitor (session.monitor, not in dry runs), which owns the
//     catalog connection while streaming: heartbeats every
//     Options.HeartbeatInterval, slot and journal figures every
//     Options.StatusInterval, partition trees every
//     Options.PartitionCheckInterval (session.checkPartitions);
//   - the backfill runner (session.runBackfills, backfill.go; only when a
//     rule has refresh { backfill = true }, not in dry runs), which every
//     Options.BackfillCheckInterval runs Options.Backfill for each such rule
//     whose key space was flushed or never filled, one at a time, on a
//     PostgreSQL connection of its own and under the session's fence.
//
// Beside the pipeline, lease.hold renews the instance lock (lease.go). Each
// budget is released only by stages after its producer, so none waits for
// itself, and an item larger than its budget passes alone. If one stage
// fails the others stop, and nothing unapplied is confirmed. A graceful stop
// stops reading, drains what was received within Options.DrainTimeout, and
// sends the last confirmed position (Stream.Finish); a lost lease stops at
// once (the hard context) and confirms nothing more.
//
// # Applied position
//
// After Apply, session.advance swaps the cache's applied position
// (CacheState.Advance, compare-and-set with the servers that answered) from
// the mark last written to the group's end. An Applier that can send that
// swap in the same round trip as the group's last effects, after them
// (applyAdvancer: writer.Writer.ApplyAdvance), does both at once
// (session.applyAdvance) unless Options.AdvanceApart, which any failpoint
// sets so that fault tests can stop between the two. When the cache holds something
// else, session.settle heals it (session.cacheReset: a flush, or per
// on_redis_reset a replay of the journal once the groups on their way to it
// are in it, session.journalSync), applies the group in flight again, and
// swaps from what the cache holds: a recorded position always has every
// effect up to it. The recovery's bookkeeping commands are retried by
// CacheState.Retry until they succeed, the fence refuses or the session
// ends.
//
// # Fence
//
// session.fence (the lease's check) is consulted before each group's apply,
// each swap of the applied position, each flush, heal or bookkeeping write
// and each confirm: once the last renewal was sent more than ¾ lease ago,
// the session ends with errLockLost and the instance stands by. A passive
// instance terminates a holder idle for longer than its lease when the slot
// has no walsender (takeoverVerdict).
//
// # Recovery
//
// What a start does about the slot and the cache is decided by planSlot
// and planCache (plan.go, pure) and executed by session.ensureSlot
// (recovery.go), under the lock, in this order: IDENTIFY_SYSTEM (the
// writer learns the WAL history for its guards, HistoryRecorder), the slot
// as read, the partition trees, the publication aligned with the rules
// (alignPublication: only the lock holder changes it), the slot dropped or
// created, the cache's position read, the plan's flush or replay, the
// flushes of rules and partition trees changed since the cache's record
// (flushNewRules, flushPartitionChanges), the new records, the applied
// position (recordRecovered), the journal's coverage and saved state.
// Daemon.Setup (`cachesync setup`) runs the same recovery without
// streaming.
//
// # Dry run
//
// With Options.DryRun the session streams from a temporary slot
// (<slot>_dryrun_<n>, dropped by PostgreSQL when the connection ends) from
// its consistent point, with no lock, no journal, no cache state, no
// visibility gate and no monitor; the apply stage confirms (on that slot)
// what the Applier printed. The publication must exist already.
//
// run --shadow is a dry run whose Applier is package shadow's (it reads
// which keys exist and applies nothing) and whose slot is
// <slot>_shadow_<n> (Options.DryRunLabel).
package daemon
