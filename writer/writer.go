// Package writer applies the operations of committed transactions
// (mapping.Batch) to Redis: pipelined (at most Options.MaxPipeline commands,
// 1000, per server, and Options.MaxPipelineBytes, 8 MiB, of keys and values
// per round trip), through the keyspace/redisops scripts, retried until Redis
// acknowledges them.
//
// Apply returns nil only when Redis acknowledged every operation, so the
// caller may then confirm the batches' end LSN; it never skips an operation.
// Every effect is idempotent or guarded by the commit LSN, so re-applying a
// batch after a crash or a retry is harmless.
//
// # Effects
//
//	OpDelete       UNLINK key and its fill fence (keyspace.FenceKey)
//	OpDeleteTag    DeleteTagScript on keyspace.TagKey(key): the members and the set, atomically;
//	               on a cluster where the members live in other slots, TagDetachScript,
//	               then UNLINK of the members grouped by slot, then the pending set:
//	               for all such tags of a pipeline together, two round trips after it
//	               whatever their number (none when no tag had members)
//	OpBumpVersion  INCR keyspace.VersionKey(key)
//	OpSet          GuardedSetScript: SET key (TTL ± jitter, at least 1s) unless the guard holds the same or a later LSN
//	OpUnset        GuardedUnsetScript: DEL key and leave the LSN in the guard for Options.TombstoneTTL
//	OpFlush        SCAN the rule's key space and drop what matches (see below)
//
// Write-through guards: every guard holds the commit LSN and the WAL history
// (SetHistory) of the last effect on its key, and every guard expires, so
// that none outlives its use (a TRUNCATE, a removed rule, a key never written
// again). A value with a TTL gets a guard that lives Options.GuardTTL longer
// than the value, so that an older change redelivered soon after the value
// expired still cannot write it back. A value without a TTL (op.TTL == 0), and
// an unset's tombstone, get a guard for Options.TombstoneTTL (default 24h, the
// journal's default retention). Older changes that can still arrive are
// redeliveries from the slot's confirmed position (seconds back), journal
// replays (no further back than the journal's retention) and a stalled
// second instance's last group; the bound covers the first two, and a
// change that arrives later than its key's guard lives is not guarded.
//
// A guard of another WAL history counts as absent (keyspace.EncodeGuard): a
// new history (a restore, a promoted standby, another server) starts from a
// flushed cache and its positions may lie below the old ones. Guards are not
// deleted by flushes: they keep a redelivered or stalled older change from
// writing back a value the flush dropped, and expire by themselves.
//
// # Flushes
//
// A flush is not one round trip. It first deletes every fill fence
// (keyspace.FencePattern), so that no application fill in flight lands after
// it, then, for each pattern of the rule's key space:
//
//   - Keys: SCAN MATCH pattern, UNLINK each page.
//   - Tags: SCAN MATCH keyspace.TagKey(pattern) TYPE set, DeleteTagScript on each set found.
//   - Versions: SCAN MATCH keyspace.VersionKey(pattern) TYPE string, INCR each
//     version found (versions are never deleted: a client would fall back to
//     version 0 and could read entries cached at version 0 long ago; a
//     version INCR refuses is reset instead, see Failures), then
//     SCAN MATCH pattern + ":v*", UNLINK each page: that pattern matches every
//     keyspace.VersionedKey of the namespaces, whether pattern is a glob
//     ("orders:customer:*") or a single namespace ("orders:all").
//
// The operations before a flush go out first, then the flush, then the rest:
// the order of the batches is kept. A flush interrupted by an error is run
// again from the start (SCAN cursors do not survive a Redis restart).
//
// Flushes leave guards in place (they expire by themselves), so that no
// change older than the flush can write its value back. A redelivered flush therefore also drops write-through
// values written after it, and their guards keep the redelivered sets from
// writing them again: those keys stay missing until their rows change, a
// cache miss and never an old value.
//
// # Failures
//
// Any error (network, server, script) is retried with exponential backoff and
// full jitter between Options.MinBackoff and Options.MaxBackoff, forever, until
// the context is done, from the first pipeline that was not fully
// acknowledged: the operations before the first failed command of a pipeline
// count as applied. After any error the scripts are loaded (SCRIPT LOAD on
// every master; a cluster replica never runs them) before the next
// attempt, since Redis may have restarted and lost its script
// cache; a command that still fails with NOSCRIPT (SCRIPT FLUSH, a restart the
// client's own retries hid) makes the writer load the scripts and resend the
// rest of its pipeline at once. Resent operations are harmless: deletes and
// guarded scripts are idempotent, and a repeated INCR only retires a
// namespace once more.
//
// Some replies are the same on every retry, and retrying them would wedge
// the pipeline until the slot is invalidated. Nothing may be skipped, so the
// operation is replaced by one at least as strong that Redis accepts,
// before Apply returns (and so before the group is confirmed), with an
// error-level log naming the key, the rule and the reason, and a count
// (Stats.Fallbacks, Options.OnFallback):
//
//	INCR of a version key that is not an integer, would overflow, or is not a string
//	    reset the namespace (delete every fill fence, every entry of the
//	    namespace, then the version key), then flush the rule's key space
//	DeleteTagScript on a tag key that is not a set (its members are unknown)
//	    flush the rule's key space, then delete the tag key
//	a write-through value larger than proto-max-bulk-len (read with CONFIG GET
//	on every master when the scripts are loaded; 512 MiB when refused)
//	    never sent (the server would drop the connection): an unset instead,
//	    which deletes the key and leaves the change's LSN in the guard
//
// A flush that meets a version key it cannot INCR resets that namespace
// the same way. Any other error (connection, LOADING, READONLY, MOVED,
// CLUSTERDOWN, OOM, NOPERM) is retried as described above.
//
// # Redis Cluster
//
// Every single-key command and the guarded scripts are cluster-safe, and
// flushes SCAN every master of a *redis.ClusterClient (a path not yet tested
// against a real cluster). DeleteTagScript needs the members of a tag to share
// the tag set's hash slot there (see redisops.DeleteTagScript). Within one
// pipeline, commands on keys of different cluster nodes run in parallel: only
// effects on the same key keep their order, which is all the operations need.
// A *redis.Ring is not supported: a flush would scan one shard only.
//
// # Bookkeeping
//
// Positions (Writer.Positions) keeps the daemon's bookkeeping in the same
// Redis, on the same client: the applied position (one marker key, or one
// per master on a cluster), the rules and partition trees in force, and the
// slots streamed into the cache. Its commands count with Apply's in Stats
// and the outage's log lines. ApplyAdvance applies a group and advances the
// applied position in one round trip fewer than Apply then
// Positions.Advance: the compare-and-set goes at the end of the group's last
// pipeline, each marker after its server's effects.
package writer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/backoff"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/mapping"
)

// Defaults of Options.
const (
	DefaultMinBackoff  = 50 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
	DefaultMaxPipeline = 1000
	DefaultScanCount   = 1000
	DefaultGuardTTL    = time.Hour
	// DefaultTombstoneTTL is journal.DefaultMaxAge: a replay of the whole
	// journal still finds the guards of the changes it replays.
	DefaultTombstoneTTL = 24 * time.Hour
)

// DefaultMaxPipelineBytes bounds the keys and values of one round trip
// (Options.MaxPipelineBytes): 1000 write-throughs of 1 MB rows would
// otherwise send 1 GB at once, more than a network write timeout or Redis's
// client query buffer (1 GB) may allow, and retried whole on every failure.
const DefaultMaxPipelineBytes = 8 << 20

// minJitteredTTL is the lowest TTL that jitter may bring a value's TTL down
// to (a TTL configured below it is kept as it is).
const minJitteredTTL = time.Second

// ErrInvalidOp reports an operation Apply cannot execute (an unknown kind, a
// flush without a key space). It is a bug in the producer of the batch, not a
// Redis failure, so Apply returns it at once without applying anything.
var ErrInvalidOp = errors.New("invalid operation")

// Options tune a Writer. Zero values take the defaults.
type Options struct {
	// Logger receives one warning when Redis starts failing and one info line
	// when it recovers. The zero Logger discards.
	Logger zerolog.Logger
	// MinBackoff and MaxBackoff bound the wait between retries after a Redis
	// error (defaults 50ms and 5s). The wait doubles per attempt, with full
	// jitter.
	MinBackoff, MaxBackoff time.Duration
	// MaxPipeline is the number of commands per pipeline round trip (default
	// 1000). On a cluster an Apply pipeline holds MaxPipeline times the
	// number of masters (as the applied position's last topology read
	// found), since go-redis splits it into one pipeline per master.
	MaxPipeline int
	// MaxPipelineBytes bounds the bytes of keys and values per round trip
	// (default 8 MiB). A single larger operation goes alone.
	MaxPipelineBytes int
	// ScanCount is the COUNT hint of SCAN during flushes (default 1000).
	ScanCount int
	// GuardTTL is how much longer a write-through guard lives than its
	// value, when the value has a TTL (default 1h). It bounds how late a
	// redelivered change can be and still be recognised as old.
	GuardTTL time.Duration
	// TombstoneTTL is how long the guard of a value without a TTL lives
	// after the value was written, and how long an unset's tombstone lives
	// (default DefaultTombstoneTTL). Set it to the journal's retention or
	// more, so that no replay reaches further back than the guards.
	TombstoneTTL time.Duration
	// Rand returns a uniform random number in [0, n), for TTL and backoff
	// jitter (default math/rand/v2's Int64N).
	Rand func(n int64) int64
	// Keyspaces maps rule names to their key spaces: what a fallback
	// flushes when an operation of the rule can never succeed (see
	// Failures). Without a rule's entry, only the operation's own key or
	// namespace is reset, and the log says so.
	Keyspaces map[string]mapping.Keyspace
	// OnFallback, when set, is called after each fallback (for metrics).
	OnFallback func(Fallback)
}

func (o Options) withDefaults() Options {
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.MaxPipeline <= 0 {
		o.MaxPipeline = DefaultMaxPipeline
	}
	if o.MaxPipelineBytes <= 0 {
		o.MaxPipelineBytes = DefaultMaxPipelineBytes
	}
	if o.ScanCount <= 0 {
		o.ScanCount = DefaultScanCount
	}
	if o.GuardTTL <= 0 {
		o.GuardTTL = DefaultGuardTTL
	}
	if o.TombstoneTTL <= 0 {
		o.TombstoneTTL = DefaultTombstoneTTL
	}
	if o.Rand == nil {
		o.Rand = rand.Int64N
	}
	return o
}

// Writer applies batches of operations to Redis. Apply is safe to call from
// one goroutine at a time; Stats from any goroutine.
type Writer struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // client, when it is a cluster client
	opts    Options
	log     zerolog.Logger
	scripts scripts

	counters counters

	// outage is the Redis outage being retried, if any: Apply's attempts
	// and those of its Positions (reportAttempt).
	outage struct {
		sync.Mutex
		since   time.Time // start of the outage (zero: none)
		retries uint64    // failed attempts in it
	}
	// scriptsMayBeMissing: load the scripts before the next attempt.
	scriptsMayBeMissing atomic.Bool
	// history is the WAL history (keyspace.History) of the batches Apply
	// receives, recorded in every guard: SetHistory.
	history atomic.Pointer[string]
	// maxBulk is the server's proto-max-bulk-len, as last read.
	maxBulk atomic.Int64
	// positions is the bookkeeping on the writer's client (Positions),
	// shared so that the cluster's marker placement is read once a second
	// at most, whoever asks.
	positions *Positions
}

// scripts are the keyspace scripts with their SHA1 digests.
type scripts struct {
	deleteTag, guardedSet, guardedUnset, tagDetach *redis.Script
	backfillSet, backfillUndo, countFlush          *redis.Script
}

// New returns a Writer that applies batches through client: a *redis.Client,
// a failover client or a *redis.ClusterClient.
func New(client redis.UniversalClient, opts Options) *Writer {
	opts = opts.withDefaults()
	w := &Writer{
		client: client,
		opts:   opts,
		log:    opts.Logger.With().Str("component", "writer").Logger(),
		scripts: scripts{
			deleteTag:    redis.NewScript(redisops.DeleteTagScript),
			guardedSet:   redis.NewScript(redisops.GuardedSetScript),
			guardedUnset: redis.NewScript(redisops.GuardedUnsetScript),
			tagDetach:    redis.NewScript(redisops.TagDetachScript),
			backfillSet:  redis.NewScript(redisops.BackfillSetScript),
			backfillUndo: redis.NewScript(redisops.BackfillUndoScript),
			countFlush:   redis.NewScript(redisops.CountFlushScript),
		},
	}
	w.cluster, _ = client.(*redis.ClusterClient)
	w.positions = NewPositions(client)
	w.positions.writer = w
	w.scriptsMayBeMissing.Store(true) // a fresh or restarted Redis has none
	w.maxBulk.Store(defaultMaxBulk)
	return w
}

// SetHistory sets the WAL history (keyspace.History: the server's system
// identifier and timeline) of the batches applied from now on. Guards
// written under another history count as absent, so the first change of a
// new history writes its value whatever LSNs the old history left behind.
// Call it before applying the batches of a streaming session or of a
// journal; the default, "", is a history of its own. Safe for concurrent
// use.
func (w *Writer) SetHistory(history string) { w.history.Store(&history) }

// guardValue is the guards' encoding of lsn in the current history.
func (w *Writer) guardValue(lsn uint64) string {
	var history string
	if h := w.history.Load(); h != nil {
		history = *h
	}
	return keyspace.EncodeGuard(lsn, history)
}

// Apply applies every operation of the batches, in order, and returns nil
// only when Redis acknowledged all of them. On a Redis error it retries the
// unacknowledged remainder with backoff, forever, until ctx is done; it then
// returns ctx's error wrapped. Applying the same batches twice is harmless.
//
// An invalid operation (ErrInvalidOp) is reported before anything is applied.
func (w *Writer) Apply(ctx context.Context, batches []mapping.Batch) error {
	return w.apply(ctx, batches, nil)
}

// apply is Apply; tail, when not nil, goes at the end of the last pipeline
// of effects (ApplyAdvance).
func (w *Writer) apply(ctx context.Context, batches []mapping.Batch, tail *advanceTail) error {
	ops, err := collectOps(batches)
	if err != nil {
		return err
	}
	// Test builds only (faultinject.go); a no-op otherwise.
	ops = dropEffects(ops)
	retry := 0 // consecutive failed attempts
	for done := 0; done < len(ops); {
		n, err := w.attempt(ctx, ops[done:], tail)
		done += n
		if err == nil {
			retry = 0
			w.recovered()
			continue
		}
		if ctx.Err() != nil {
			return w.stopped(ctx, len(ops)-done, len(ops))
		}
		// Whatever failed, Redis may have restarted meanwhile and lost
		// the scripts: load them before the next attempt rather than
		// meet NOSCRIPT halfway through a pipeline.
		w.scriptsMayBeMissing.Store(true)
		if tail != nil {
			tail.off = true // the position's swap goes apart now
		}
		w.failed(err, retry)
		if !backoff.Sleep(ctx, w.backoff(retry)) {
			return w.stopped(ctx, len(ops)-done, len(ops))
		}
		retry++
	}
	return nil
}

// stopped is Apply's error when ctx ends it: ctx.Err() wrapped, and the
// cause too when it says more.
func (w *Writer) stopped(ctx context.Context, remaining, total int) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, err) {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	return fmt.Errorf("writer: stopped with %d of %d operations not acknowledged by Redis: %w",
		remaining, total, err)
}

// collectOps flattens the batches and checks that every operation can be
// executed.
func collectOps(batches []mapping.Batch) ([]*mapping.Op, error) {
	n := 0
	for i := range batches {
		n += len(batches[i].Ops)
	}
	ops := make([]*mapping.Op, 0, n)
	for i := range batches {
		b := &batches[i]
		for j := range b.Ops {
			op := &b.Ops[j]
			switch {
			case op.Kind < mapping.OpDelete || op.Kind > mapping.OpFlush:
				return nil, fmt.Errorf("writer: batch with end LSN %s, operation %d (rule %q): kind %d: %w",
					b.EndLSN, j, op.Rule, op.Kind, ErrInvalidOp)
			case op.Kind == mapping.OpFlush && op.Keyspace == nil:
				return nil, fmt.Errorf("writer: batch with end LSN %s, operation %d (rule %q): flush without a key space: %w",
					b.EndLSN, j, op.Rule, ErrInvalidOp)
			}
			ops = append(ops, op)
		}
	}
	return ops, nil
}

// attempt applies the first round of ops, a flush or a pipeline of other
// operations (pipelineLen), and returns how many operations, from the first,
// Redis acknowledged: all of the round's when err is nil. tail, if any, goes
// with the round only when it is the last.
func (w *Writer) attempt(ctx context.Context, ops []*mapping.Op, tail *advanceTail) (int, error) {
	if w.scriptsMayBeMissing.Load() {
		if err := w.loadScripts(ctx); err != nil {
			return 0, err
		}
		// A new or reconfigured server may take smaller values.
		w.refreshBulkLimit(ctx)
		w.scriptsMayBeMissing.Store(false)
	}
	if ops[0].Kind == mapping.OpFlush {
		if err := w.flush(ctx, ops[0]); err != nil {
			return 0, err
		}
		w.counters.applied[mapping.OpFlush].Add(1)
		return 1, nil
	}
	// On a cluster go-redis splits a pipeline by master, sent in
	// parallel: MaxPipeline commands per master, about, in one round trip.
	maxOps := w.opts.MaxPipeline
	if w.cluster != nil {
		maxOps *= w.positions.masterCount()
	}
	n := pipelineLen(ops, maxOps, w.opts.MaxPipelineBytes)
	if n < len(ops) {
		tail = nil
	}
	return w.applyPipeline(ctx, ops[:n], tail)
}

// pipelineLen is how many of ops, from the first, go in one round trip: up
// to the first flush, at most maxOps of them and, past the first, as long as
// their keys and values add up to at most maxBytes.
func pipelineLen(ops []*mapping.Op, maxOps, maxBytes int) int {
	n, size := 1, len(ops[0].Key)+len(ops[0].Value)
	for n < len(ops) && n < maxOps && ops[n].Kind != mapping.OpFlush {
		if size += len(ops[n].Key) + len(ops[n].Value); size > maxBytes {
			break
		}
		n++
	}
	return n
}

// backoff returns the wait before retry number retry (from 0): uniform in
// [MinBackoff, min(MaxBackoff, MinBackoff·2^(retry+1))].
func (w *Writer) backoff(retry int) time.Duration {
	return backoff.Exponential{Min: w.opts.MinBackoff, Max: w.opts.MaxBackoff, Rand: w.opts.Rand}.FullJitter(retry + 1)
}

// reportAttempt records the outcome of a Redis command sent outside Apply on
// the same client, the bookkeeping of Positions, so that Failing, Retries
// and the outage's log lines cover every command: an idle pipeline whose
// only traffic is bookkeeping still reports Redis down. A failure is taken
// to be retried by the caller. Safe for concurrent use.
func (w *Writer) reportAttempt(err error) {
	if err == nil {
		w.recovered()
		return
	}
	w.scriptsMayBeMissing.Store(true)
	w.failed(err, -1)
}

// failed records a failed attempt (retry is Apply's count of consecutive
// failures, or -1 for a reported one); the first of an outage is logged.
func (w *Writer) failed(err error, retry int) {
	w.counters.retries.Add(1)
	o := &w.outage
	o.Lock()
	defer o.Unlock()
	o.retries++
	if o.since.IsZero() {
		o.since = time.Now()
		w.counters.failing.Store(true)
		ev := w.log.Warn().Err(err)
		if refused(err) {
			// Not an outage that passes by itself: say what to do.
			ev = ev.Str("fix", "the Redis server or user refuses a command or key cachesync needs: grant it (docs/operations.md, Redis permissions); nothing is lost meanwhile")
		}
		ev.Msg("Redis is failing; retrying with backoff until it recovers, and confirming no LSN meanwhile")
		return
	}
	ev := w.log.Debug().Err(err).Uint64("failures", o.retries)
	if retry >= 0 {
		ev = ev.Int("retry", retry+1)
	}
	ev.Msg("Redis still failing")
}

// recovered ends an outage, if one was going on, and logs it.
func (w *Writer) recovered() {
	if !w.counters.failing.Load() {
		return
	}
	o := &w.outage
	o.Lock()
	defer o.Unlock()
	if o.since.IsZero() {
		return
	}
	w.log.Info().
		Dur("down_for", time.Since(o.since)).
		Uint64("retries", o.retries).
		Msg("Redis recovered")
	o.since = time.Time{}
	o.retries = 0
	w.counters.failing.Store(false)
}

// counters are the Writer's statistics, updated as Redis acknowledges.
type counters struct {
	applied             [mapping.OpFlush + 1]atomic.Uint64
	retries             atomic.Uint64
	tagKeysDeleted      atomic.Uint64
	flushKeysDeleted    atomic.Uint64
	flushVersionsBumped atomic.Uint64
	setsSkipped         atomic.Uint64
	unsetsSkipped       atomic.Uint64
	fallbacks           atomic.Uint64
	failing             atomic.Bool
}

// Stats are counters since the Writer was created. Operations count once
// Redis acknowledged them; an operation in a pipeline that was retried counts
// once.
type Stats struct {
	// Operations applied, per kind.
	Deletes, TagDeletes, VersionBumps, Sets, Unsets, Flushes uint64
	// Retries is the number of failed attempts that were retried.
	Retries uint64
	// KeysDeletedByTags counts the member keys that OpDeleteTag deleted.
	KeysDeletedByTags uint64
	// KeysDeletedByFlushes counts the keys that flushes deleted: keys, tag
	// members and namespace entries.
	KeysDeletedByFlushes uint64
	// VersionsBumpedByFlushes counts the version keys that flushes incremented.
	VersionsBumpedByFlushes uint64
	// SetsSkipped counts OpSet not written because the guard held the same or
	// a later LSN (redelivery); UnsetsSkipped likewise for a later LSN.
	SetsSkipped, UnsetsSkipped uint64
	// Fallbacks counts operations that Redis would refuse on every retry,
	// replaced by stronger ones (see Failures).
	Fallbacks uint64
	// Failing is true from the first failed attempt until an attempt
	// succeeds, also between Apply calls when one gave up on a failing Redis.
	Failing bool
}

// Stats returns a snapshot of the counters. It is safe to call concurrently
// with Apply.
func (w *Writer) Stats() Stats {
	c := &w.counters
	return Stats{
		Deletes:                 c.applied[mapping.OpDelete].Load(),
		TagDeletes:              c.applied[mapping.OpDeleteTag].Load(),
		VersionBumps:            c.applied[mapping.OpBumpVersion].Load(),
		Sets:                    c.applied[mapping.OpSet].Load(),
		Unsets:                  c.applied[mapping.OpUnset].Load(),
		Flushes:                 c.applied[mapping.OpFlush].Load(),
		Retries:                 c.retries.Load(),
		KeysDeletedByTags:       c.tagKeysDeleted.Load(),
		KeysDeletedByFlushes:    c.flushKeysDeleted.Load(),
		VersionsBumpedByFlushes: c.flushVersionsBumped.Load(),
		SetsSkipped:             c.setsSkipped.Load(),
		UnsetsSkipped:           c.unsetsSkipped.Load(),
		Fallbacks:               c.fallbacks.Load(),
		Failing:                 c.failing.Load(),
	}
}
