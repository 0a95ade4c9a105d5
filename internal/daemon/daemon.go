package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/backoff"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// Applier applies batches to the cache. writer.Writer is the real one; the dry
// run prints instead. Apply returns nil only when every operation is applied.
type Applier interface {
	Apply(ctx context.Context, batches []mapping.Batch) error
}

// applyAdvancer is an Applier that sends the cache's applied position's
// compare-and-set (CacheState.Advance from `from` to `to`) in the same
// round trip as the group's last effects, after them
// (writer.Writer.ApplyAdvance): one round trip fewer per group. Its results
// are CacheState.Advance's once every effect is applied. An error is
// Apply's (nothing advanced), unless appliedNotAdvanced says every effect
// was applied and only the position is to be advanced apart.
type applyAdvancer interface {
	ApplyAdvance(ctx context.Context, batches []mapping.Batch, slot string, from writer.Position, to wal.LSN) (swapped bool, cur writer.Position, err error)
}

// appliedNotAdvanced reports whether an error of ApplyAdvance says the
// effects were all applied and only the position's swap failed
// (writer.ErrNotAdvanced): the position is then advanced apart. Any other
// error ends the session, which is safe (the group is not confirmed, and is
// delivered again) if slower.
func appliedNotAdvanced(err error) bool { return errors.Is(err, writer.ErrNotAdvanced) }

// HistoryRecorder is an Applier that records the WAL history of what it
// applies (writer.Writer, in its write-through guards). ensureSlot tells it
// the server's history before anything is applied: positions of another
// history must not fence this one's writes.
type HistoryRecorder interface {
	SetHistory(history string)
}

// Journal records applied batches before their LSN is confirmed, for replay
// (journal.Journal). The daemon calls Append after Apply and before Confirm.
type Journal interface {
	Append(ctx context.Context, batches []mapping.Batch) error
	Replay(ctx context.Context, from wal.LSN, since time.Time, fn func(mapping.Batch) error) error
	SetCompleteFrom(lsn wal.LSN) error
	LastLSN() wal.LSN
	Reset(lsn wal.LSN) error
	State() (journal.State, bool)
	SaveState(journal.State) error
	Range() journal.Range
}

// Options configure a Daemon.
type Options struct {
	Config      *config.Config
	DatabaseURL string
	Applier     Applier
	// Journal is required unless DryRun.
	Journal Journal
	// Cache reports the cache's applied position and identity
	// (writer.Positions, whose commands the writer's outage tracker
	// hears of); nil in dry runs.
	Cache CacheState
	// CheckCache, when set, is run once before streaming with the key
	// spaces of the rules: it returns an error wrapping ErrConfig when the
	// cache refuses a command or key that cachesync will need, so that run
	// stops with what to grant instead of retrying a refusal forever. Any
	// other error is logged and streaming goes on (the writer retries).
	CheckCache func(ctx context.Context, spaces []mapping.Keyspace) error
	// DryRun streams from a temporary slot and never touches the real one.
	DryRun bool
	// DryRunLabel names the dry run's temporary slot, <slot>_<label>_<n>,
	// and its log line ("dryrun" when empty; "shadow" for run --shadow).
	DryRunLabel string

	KeyCap int
	// MaxQueuedBytes bounds the row data the pipeline holds between the
	// replication connection and the journal (default
	// DefaultMaxQueuedBytes): decoded events, the transaction being mapped
	// and mapped batches (see queueBudgets). Reading from PostgreSQL waits
	// while it is full.
	MaxQueuedBytes int64
	// StatusInterval bounds the time between standby status updates.
	StatusInterval time.Duration
	// HeartbeatInterval is how often a heartbeat message is written to the
	// WAL (0: never). It keeps the slot moving on an idle database.
	HeartbeatInterval time.Duration
	// DrainTimeout bounds the graceful stop: applying what was received.
	DrainTimeout time.Duration
	// MaxBackoff caps the reconnect backoff (default 30s).
	MaxBackoff time.Duration
	// StandbyRetry is how often a passive instance retries the slot held by
	// another instance (default 2s, jittered).
	StandbyRetry time.Duration
	// CacheCheckInterval is how often, between groups, the cache's applied
	// position is compared with the one last written, to catch a restarted,
	// restored or failed-over Redis while nothing changes (default 1s).
	CacheCheckInterval time.Duration
	// PartitionCheckInterval is how often, while streaming, the partition
	// trees of the rule tables are compared with the ones seen last, to
	// flush for partitions attached, detached, dropped or created (none of
	// which PostgreSQL publishes) and give new partitions their truncate
	// trigger (default 1s).
	PartitionCheckInterval time.Duration
	// Backfill runs a rule's backfill (package backfill, wired by
	// cmd/cachesync); required when a rule has refresh { backfill = true },
	// unless DryRun.
	Backfill BackfillFunc
	// BackfillCheckInterval is how often, while streaming, the backfill
	// runner checks whether a backfill = true rule needs a fill (default
	// 1s).
	BackfillCheckInterval time.Duration
	// WriteBehind drains one write_behind block's stream until ctx ends
	// (package writebehind's Run, wired by cmd/cachesync); the active
	// instance runs one per block under its lease (fence). Required when
	// the rules have write_behind blocks, unless DryRun.
	WriteBehind WriteBehindFunc
	// Failpoint, when set, is called at named points of the pipeline so
	// that tests can crash or stop the process exactly there:
	// "before-apply" (a group is mapped, nothing applied), "before-advance"
	// (Redis acknowledged it, the applied position not yet moved),
	// "after-apply" (the position moved, nothing journaled), "after-journal"
	// (journaled, not confirmed), "partitions-changed" (a partition tree
	// change seen, its flush not yet written to the WAL).
	Failpoint func(name string)
	// AdvanceApart applies each group and then advances the cache's
	// applied position in a round trip of its own, even when the Applier
	// can send the position's compare-and-set with the group's effects
	// (applyAdvancer). A Failpoint implies it, so that "before-advance"
	// exists.
	AdvanceApart bool
	// FormatDiagnostics renders preflight findings (with source lines when
	// the parser's files are at hand).
	FormatDiagnostics func(hcl.Diagnostics) string
	// Checker, when set, re-checks a sample of the applied effects after
	// a window (internal/checker, run --verify-rate): the active session
	// runs it, and hands it every group Redis acknowledged.
	Checker Checker
	// Metrics receive the pipeline's figures and state (default: a fresh
	// set nobody scrapes).
	Metrics *metrics.Metrics
	Logger  zerolog.Logger
}

// Checker is the continuous consistency checker (internal/checker.Checker).
// Applied must not block: it is called on the pipeline's journal stage,
// once the group's applied position moved.
type Checker interface {
	Applied(group []mapping.Batch)
	Run(ctx context.Context) error
}

// WriteBehindFunc drains wb's stream into its table until ctx ends; fence
// refuses once the instance lock is lost.
type WriteBehindFunc func(ctx context.Context, wb *config.WriteBehind, fence func() error) error

// Daemon runs the pipeline, reconnecting after failures. It keeps only what
// lives across replication sessions; each session's state is a session.
type Daemon struct {
	opts    Options
	mapper  *mapping.Mapper
	log     zerolog.Logger
	metrics *metrics.Metrics
	// passive is set while another instance holds the slot.
	passive bool
}

// session is the state of one replication session (or of Setup's slot
// recovery): created when the session starts, dropped with it, so nothing
// of a failed session leaks into the next one. Its methods are the
// recovery and the pipeline's stages.
type session struct {
	*Daemon
	// stream is the session's replication stream (nil in Setup).
	stream *replication.Stream
	// lease is the session's hold on the instance lock (nil in dry runs).
	lease *lease
	// mark is the applied position last written to the cache, as written:
	// recovered by ensureSlot, then moved by every group.
	mark writer.Position
	// trees are the partition trees of the rule tables whose changes were
	// flushed: read by ensureSlot, then followed by monitor.
	trees replication.PartitionTrees
	// gate holds the session's groups until PostgreSQL shows them (nil in
	// dry runs).
	gate *visibilityGate
	// opsBudget bounds the operations between mapper and writer;
	// eventBudget the bytes of events between stream and mapper, and
	// batchBudget the bytes of batches between mapper and journal.
	opsBudget, eventBudget, batchBudget *budget
	// journalQ feeds the journal stage of the session's pipeline (nil
	// before it runs).
	journalQ chan<- journalItem
	// confirms times the confirmed stage: journaled groups until a
	// standby status update carries them.
	confirms *confirmWatch
}

// ErrConfig marks failures that retrying cannot fix: the rules do not fit the
// database. The message says what to change.
var ErrConfig = errors.New("configuration does not fit the database")

// ErrFatal marks failures the process cannot recover from in place (the
// journal's disk failed): run exits non-zero so that its supervisor restarts
// it, and nothing unapplied or unjournaled was confirmed.
var ErrFatal = errors.New("fatal")

// New prepares a daemon.
func New(opts Options) (*Daemon, error) {
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	if opts.FormatDiagnostics == nil {
		opts.FormatDiagnostics = func(diags hcl.Diagnostics) string { return config.FormatDiagnostics(diags, nil) }
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.StandbyRetry <= 0 {
		opts.StandbyRetry = 2 * time.Second
	}
	if opts.CacheCheckInterval <= 0 {
		opts.CacheCheckInterval = time.Second
	}
	if opts.PartitionCheckInterval <= 0 {
		opts.PartitionCheckInterval = time.Second
	}
	if opts.BackfillCheckInterval <= 0 {
		opts.BackfillCheckInterval = time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.Failpoint != nil {
		opts.AdvanceApart = true
	}
	if opts.MaxQueuedBytes <= 0 {
		opts.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if !opts.DryRun && (opts.Journal == nil || opts.Cache == nil) {
		return nil, errors.New("daemon: a journal and a cache state are required unless dry running")
	}
	m, err := mapping.New(opts.Config.Rules, MapperOptions(opts.KeyCap, opts.MaxQueuedBytes, opts.Logger))
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, mapper: m, log: opts.Logger, metrics: opts.Metrics}
	if !opts.DryRun && opts.Backfill == nil && len(d.backfillRules()) > 0 {
		return nil, errors.New("daemon: a backfill function is required when a rule has backfill = true")
	}
	if !opts.DryRun && opts.WriteBehind == nil && len(opts.Config.WriteBehinds) > 0 {
		return nil, errors.New("daemon: a write-behind function is required when the rules have write_behind blocks")
	}
	return d, nil
}

// Run prepares the database (preflight, publication) and streams until ctx is
// done, then drains, confirms the last applied position and returns nil.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.metrics.SetState(metrics.StateStopped, "")
	if err := d.prepare(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the database
		}
		return err
	}
	reconnect := backoff.Exponential{Min: time.Second, Max: d.opts.MaxBackoff}
	retry := 0 // consecutive failed sessions
	for {
		started := time.Now()
		err := d.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrConfig) || errors.Is(err, ErrFatal) {
			return err
		}
		if errors.Is(err, replication.ErrSlotActive) {
			// Another instance streams: that is our active/passive lock.
			// Retry often; only a holder whose lease expired is
			// terminated (takeLock).
			if errors.Is(err, errLockLost) {
				d.log.Error().Err(err).Str("slot", d.opts.Config.Postgres.Slot).
					Msg("INSTANCE LOCK LOST: stopped streaming without confirming anything more; another instance may have taken over")
			}
			if !d.passive {
				d.passive = true
				d.metrics.SetState(metrics.StateStandby, "")
				d.log.Info().Str("slot", d.opts.Config.Postgres.Slot).Str("role", "standby").Msg("another instance holds the slot; standing by as passive")
			}
			wait := d.opts.StandbyRetry/2 + rand.N(d.opts.StandbyRetry+1)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			continue
		}
		if time.Since(started) > time.Minute {
			retry = 0
		}
		wait := reconnect.Wait(retry)
		d.metrics.Reconnects.Inc()
		d.metrics.SetState(metrics.StateReconnecting, err.Error())
		d.log.Warn().Err(err).Dur("retry_in", wait).Msg("replication session ended; reconnecting")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		retry++
	}
}

func (d *Daemon) connect(ctx context.Context) (*replication.Conn, error) {
	return replication.Connect(ctx, d.opts.DatabaseURL)
}

// prepare runs the preflight checks, retrying while PostgreSQL is
// unreachable. The publication is aligned later, by the session that takes
// the slot.
func (d *Daemon) prepare(ctx context.Context) error {
	pgc := d.opts.Config.Postgres
	retries := backoff.Exponential{Min: time.Second, Max: d.opts.MaxBackoff}
	for retry := 0; ; retry++ {
		err := d.prepareOnce(ctx, pgc)
		if err == nil {
			return d.checkCache(ctx)
		}
		if errors.Is(err, ErrConfig) || ctx.Err() != nil {
			return err
		}
		wait := retries.Ceiling(retry)
		d.log.Warn().Err(err).Dur("retry_in", wait).Msg("cannot prepare the database; retrying")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// checkCacheTimeout bounds the cache check: a Redis that does not answer is
// the writer's to wait for.
const checkCacheTimeout = 10 * time.Second

// checkCache runs Options.CheckCache on the rules' key spaces.
func (d *Daemon) checkCache(ctx context.Context) error {
	if d.opts.CheckCache == nil || d.opts.DryRun {
		return nil
	}
	var spaces []mapping.Keyspace
	for _, op := range d.mapper.FlushAll("") {
		spaces = append(spaces, *op.Keyspace)
	}
	cctx, cancel := context.WithTimeout(ctx, checkCacheTimeout)
	defer cancel()
	err := d.opts.CheckCache(cctx, spaces)
	switch {
	case err == nil || ctx.Err() != nil:
		return nil
	case errors.Is(err, ErrConfig):
		return err
	}
	d.log.Warn().Err(err).Msg("could not check what Redis lets cachesync do; streaming anyway (the writer retries until Redis answers)")
	return nil
}

func (d *Daemon) prepareOnce(ctx context.Context, pgc config.Postgres) error {
	conn, err := d.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pf := replication.PreflightOptions{Publication: pgc.Publication, WriteBehinds: d.opts.Config.WriteBehinds}
	if d.opts.DryRun {
		pf.Publication = "" // a dry run creates and alters nothing
	}
	diags, err := conn.Preflight(ctx, d.opts.Config.Rules, pf)
	if err != nil {
		return err
	}
	if diags.HasErrors() {
		return fmt.Errorf("%w:\n%s", ErrConfig, d.opts.FormatDiagnostics(diags))
	}
	if len(diags) > 0 {
		// Findings that do not stop a start (a template that fails only on
		// NULL): said once, as validate says them.
		d.log.Warn().Str("findings", d.opts.FormatDiagnostics(diags)).
			Msg("the rules fit the database, with warnings: fix them or accept what each says run does")
	}
	if !d.opts.DryRun {
		return nil
	}
	pub, err := conn.ReadPublication(ctx, pgc.Publication)
	if err != nil {
		return err
	}
	if pub == nil {
		return fmt.Errorf("%w: publication %q does not exist: run cachesync setup first, which also creates the slot and flushes the rules' key spaces, or create it by hand (docs/operations.md, Shadow mode, gives the statement); a dry run changes nothing", ErrConfig, pgc.Publication)
	}
	return nil
}

// alignPublication brings the publication's tables in line with the rules and
// installs the partitions' truncate triggers. Only the instance about to
// stream does it (under the instance lock): a passive instance with other
// rules must not change what the active one receives. It returns the tables
// it added, whose changes before now were never published.
func (d *Daemon) alignPublication(ctx context.Context, conn *replication.Conn) ([]string, error) {
	pub, tables := d.opts.Config.Postgres.Publication, d.mapper.Tables()
	added, err := conn.EnsurePublication(ctx, pub, tables)
	if err != nil {
		return nil, err
	}
	parts, err := conn.EnsurePartitionTruncateTriggers(ctx, tables)
	if err != nil {
		return nil, err
	}
	if len(parts) > 0 {
		d.log.Info().Strs("partitions", parts).Msg("truncate triggers installed on partitions (a partition's TRUNCATE is not published by itself)")
	}
	// Triggers no publication needs any more only cost a logical message
	// per TRUNCATE: failing to drop them does not stop streaming.
	if gone, err := conn.RemovePartitionTruncateTriggers(ctx); err != nil {
		d.log.Warn().Err(err).Msg("could not remove truncate triggers no publication needs any more")
	} else if len(gone) > 0 {
		d.log.Info().Strs("partitions", gone).Msg("truncate triggers removed from partitions no publication lists any more")
	}
	if len(added) > 0 {
		d.log.Info().Strs("tables", added).Str("publication", pub).Msg("tables added to publication")
	}
	return added, nil
}

// session is one replication connection's life: the instance lock, slot
// check or creation, any pending flush, then the streaming pipeline.
func (d *Daemon) session(ctx context.Context) error {
	if d.opts.DryRun {
		s := &session{Daemon: d}
		return s.streamSession(ctx, context.WithoutCancel(ctx))
	}
	return d.withLock(ctx, func(ctx, hard context.Context, l *lease) error {
		s := &session{Daemon: d, lease: l}
		return s.streamSession(ctx, hard)
	})
}

// streamSession is a session's work once the lock is held (or in a dry
// run): ctx ends it gracefully (drain, confirm), hard at once.
func (s *session) streamSession(ctx, hard context.Context) error {
	pgc := s.opts.Config.Postgres
	conns, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer conns.close(ctx)
	conn, repl := conns.conn, conns.repl

	slot := pgc.Slot
	var start wal.LSN
	if s.opts.DryRun {
		// A temporary slot of its own, within the 63-character limit.
		label := cmp.Or(s.opts.DryRunLabel, "dryrun")
		slot = fmt.Sprintf("%s_%s_%d", pgc.Slot[:min(len(pgc.Slot), 48)], label[:min(len(label), 6)], rand.N(1_000_000))
		if start, err = replication.CreateSlot(ctx, repl, slot, true); err != nil {
			return err
		}
		s.log.Info().Str("slot", slot).Str("mode", label).Msg("dry run: streaming from a temporary slot; nothing is applied or confirmed on the real slot")
	} else {
		if start, err = s.ensureSlot(ctx, conn, repl, conns.dbname); err != nil {
			return err
		}
		gateConn, err := s.connect(ctx)
		if err != nil {
			return err
		}
		defer gateConn.Close(context.WithoutCancel(ctx))
		s.gate = newVisibilityGate(gateConn, s.log, func() { s.metrics.WaitingForPostgres(time.Now()) })
	}

	s.newBudgets()
	s.confirms = &confirmWatch{metrics: s.metrics}
	s.stream = replication.NewStream(repl, replication.StreamOptions{
		Slot: slot, Publication: pgc.Publication, StatusInterval: s.opts.StatusInterval,
		MessagePrefix: "cachesync", Budget: s.eventBudget, Logger: s.log,
		OnStatus: s.confirms.sent,
	})
	s.mapper.Abandon()
	if s.passive {
		s.passive = false
		s.log.Info().Str("slot", slot).Str("role", "active").Msg("the slot is free: this instance takes over as the active one")
	}
	s.metrics.Positions(s.stream.Positions)
	s.metrics.SetState(metrics.StateStreaming, "")
	err = s.pipeline(ctx, hard, start, conn)
	if ctx.Err() != nil && hard.Err() == nil && s.fence() == nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if ferr := s.stream.Finish(fctx); ferr != nil {
			s.log.Warn().Err(ferr).Msg("could not send the final confirmation; the next start redelivers from the last confirmed position")
		} else {
			s.log.Info().Stringer("confirmed_lsn", s.stream.Applied()).Msg("stopped")
		}
	}
	return err
}

// queuedOps bounds the operations mapped but not yet applied.
const queuedOps = 64 << 10

// Channel sizes: bounded so that memory stays flat whatever Redis does. The
// budgets bound what the items weigh: operations (queuedOps) and bytes
// (Options.MaxQueuedBytes).
const (
	eventQueue  = 4096
	batchQueue  = 256
	groupMaxTxn = 512
	groupMaxOps = 8192
)

// newBudgets gives a session's pipeline budgets of its own: a failed
// session's items are dropped with its budgets.
func (s *session) newBudgets() {
	eventBytes, _, batchBytes := queueBudgets(s.opts.MaxQueuedBytes)
	s.opsBudget, s.eventBudget, s.batchBudget = newBudget(queuedOps), newBudget(eventBytes), newBudget(batchBytes)
	events, batches := s.eventBudget, s.batchBudget
	s.metrics.QueuedBytes(func() int64 { return events.Held() + batches.Held() })
}

// pipeline runs stream → mapper → applier → journal → confirm until ctx is
// done (graceful: drain what was received, within DrainTimeout), hardStop
// is done (the instance lock was lost: stop at once) or a stage fails (the
// others stop; nothing unapplied is confirmed).
func (s *session) pipeline(ctx, hardStop context.Context, start wal.LSN, conn catalog) error {
	hard, hardCancel := context.WithCancel(hardStop)
	defer hardCancel()
	stopDrain := context.AfterFunc(ctx, func() {
		time.AfterFunc(s.opts.DrainTimeout, hardCancel)
	})
	defer stopDrain()
	g, gctx := errgroup.WithContext(hard)
	readCtx, stopReading := context.WithCancel(gctx)
	defer stopReading()
	stopOnSignal := context.AfterFunc(ctx, stopReading)
	defer stopOnSignal()

	events := make(chan replication.Event, eventQueue)
	batches := make(chan queued, batchQueue)
	g.Go(func() error {
		defer close(events)
		return s.stream.Run(readCtx, start, events)
	})
	g.Go(func() error {
		defer close(batches)
		return s.mapEvents(gctx, events, batches)
	})
	applied := make(chan journalItem, journalQueue)
	s.journalQ = applied
	// The visibility gate's queries run beside the apply stage, and stop
	// with it.
	gateCtx, stopGate := context.WithCancel(gctx)
	defer stopGate()
	if s.gate != nil {
		g.Go(func() error { return s.gate.run(gateCtx) })
	}
	g.Go(func() error {
		defer close(applied)
		defer stopGate()
		return s.applyBatches(gctx, batches)
	})
	g.Go(func() error {
		return s.journalGroups(gctx, applied)
	})
	if !s.opts.DryRun {
		g.Go(func() error { return s.monitor(readCtx, conn) })
		if len(s.backfillRules()) > 0 {
			g.Go(func() error { return s.runBackfills(readCtx, gctx) })
		}
		for _, wb := range s.opts.Config.WriteBehinds {
			g.Go(func() error { return s.runWriteBehind(readCtx, wb) })
		}
		if s.opts.Checker != nil {
			g.Go(func() error { return s.opts.Checker.Run(readCtx) })
		}
	}
	err := g.Wait()
	if cause := context.Cause(hardStop); cause != nil {
		return cause
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		s.log.Warn().Dur("drain_timeout", s.opts.DrainTimeout).Msg("stopped before everything received was applied; it will be redelivered")
		return nil
	}
	return err
}

// catalog is what monitor does on the session's catalog connection
// (replication.Conn) while streaming.
type catalog interface {
	EmitHeartbeat(ctx context.Context, at time.Time) error
	ReadSlot(ctx context.Context, name string) (*replication.SlotInfo, error)
	ReadPartitionTrees(ctx context.Context, tables []config.TableName) (replication.PartitionTrees, error)
	EnsurePartitionTruncateTriggers(ctx context.Context, tables []config.TableName) ([]string, error)
	EmitPartitionsChanged(ctx context.Context, roots []string) error
}

// monitor owns the session's catalog connection while streaming: it writes
// a heartbeat every HeartbeatInterval (if set), every StatusInterval reads
// the slot's retained WAL and the journal's size for the metrics, and every
// PartitionCheckInterval follows the rule tables' partition trees
// (checkPartitions).
//
// A heartbeat is a transactional logical message on our prefix. It travels
// the whole pipeline like any transaction, so the slot keeps moving even when
// no published table changes, and its round trip is measured when it comes
// back. A failed query ends the session: the catalog connection is gone.
func (s *session) monitor(ctx context.Context, conn catalog) error {
	var beat <-chan time.Time
	if s.opts.HeartbeatInterval > 0 {
		t := time.NewTicker(s.opts.HeartbeatInterval)
		defer t.Stop()
		beat = t.C
	}
	stats := time.NewTicker(s.opts.StatusInterval)
	defer stats.Stop()
	parts := time.NewTicker(s.opts.PartitionCheckInterval)
	defer parts.Stop()
	err := s.observe(ctx, conn)
	for err == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-beat:
			if err = conn.EmitHeartbeat(ctx, time.Now()); err == nil {
				s.log.Debug().Msg("heartbeat written")
			}
		case <-stats.C:
			err = s.observe(ctx, conn)
		case <-parts.C:
			err = s.checkPartitions(ctx, conn)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// checkPartitions compares the rule tables' partition trees with the ones
// seen last. ATTACH, DETACH and DROP of a partition add or remove rows of
// the root, and CREATE leaves a partition without a truncate trigger;
// PostgreSQL publishes none of it. For each root whose tree changed it
// installs the truncate trigger on new partitions, then writes a
// transactional logical message naming the root, which flushes the root's
// rules once it comes back through the pipeline: in WAL order, journaled and
// confirmed like any transaction, and redelivered after a crash. The trigger
// comes first so that a TRUNCATE of a new partition before it is covered by
// the message. The tree is recorded in the cache only once the message is
// written: a crash before that leaves the old record, and the next start
// flushes for the difference (flushPartitionChanges).
//
// What remains is the time between the DDL's commit and this check (at most
// PartitionCheckInterval) plus the message's way through the pipeline.
func (s *session) checkPartitions(ctx context.Context, conn catalog) error {
	tables := s.mapper.Tables()
	now, err := conn.ReadPartitionTrees(ctx, tables)
	if err != nil {
		return err
	}
	changed := s.trees.Changed(now)
	if len(changed) == 0 {
		return nil
	}
	s.failpoint("partitions-changed")
	var roots []config.TableName
	for _, t := range tables {
		if slices.Contains(changed, t.String()) {
			roots = append(roots, t)
		}
	}
	// A trigger that cannot be installed ends the session (as at start),
	// but the flush is written first.
	parts, trigErr := conn.EnsurePartitionTruncateTriggers(ctx, roots)
	if err := conn.EmitPartitionsChanged(ctx, changed); err != nil {
		return err
	}
	s.log.Warn().Strs("tables", changed).
		Msg("partitions attached, detached, dropped or created (PostgreSQL publishes none of it): these tables' rules flush in WAL order")
	if trigErr != nil {
		return trigErr
	}
	if len(parts) > 0 {
		s.log.Info().Strs("partitions", parts).Msg("truncate triggers installed on new partitions")
	}
	if err := s.retryRedis(ctx, func() error { return s.opts.Cache.SetPartitions(ctx, s.opts.Config.Postgres.Slot, now) }); err != nil {
		return err
	}
	s.trees = now
	return nil
}

// observe reads the figures that come from outside the pipeline.
func (d *Daemon) observe(ctx context.Context, conn catalog) error {
	r := d.opts.Journal.Range()
	d.metrics.JournalBytes.Set(float64(r.Bytes))
	d.metrics.JournalSegments.Set(float64(r.Segments))
	info, err := conn.ReadSlot(ctx, d.opts.Config.Postgres.Slot)
	if err != nil {
		return fmt.Errorf("read the slot's retained WAL: %w", err)
	}
	if info == nil {
		return nil // dropped under us: the stream fails and says so
	}
	// An invalidated slot has no restart_lsn, hence no retained WAL and no
	// wal_status: the figures last read stay.
	if info.RestartLSN != 0 {
		d.metrics.SlotRetained.Set(float64(info.RetainedBytes))
	}
	if info.WALStatus != "" {
		d.metrics.SlotWALStatus(info.WALStatus)
	}
	return nil
}

// heartbeatReceived measures a heartbeat's round trip: written by monitor,
// back through the replication stream.
func (d *Daemon) heartbeatReceived(m wal.Message) {
	if at, ok := replication.HeartbeatSent(m); ok {
		d.metrics.HeartbeatRTT.Set(time.Since(at).Seconds())
	}
}

// queued is a mapped batch on its way to the writer, with the times its
// stages are measured from.
type queued struct {
	mapping.Batch
	// received is when its commit was read from the replication
	// connection, mapped when it was queued (zero for barriers).
	received, mapped time.Time
	// seen is visibilityGate.note's number for it (0: it needs no
	// snapshot).
	seen uint64
}

func (s *session) mapEvents(ctx context.Context, events <-chan replication.Event, batches chan<- queued) error {
	send := func(b queued) error {
		if s.gate != nil && len(b.Ops) > 0 && b.XID != 0 {
			b.seen = s.gate.note() // the snapshot query goes out now
		}
		// Bound the operations and bytes waiting for the writer and the
		// journal, not just the batches: 256 queued transactions near the
		// key cap would hold millions of keys, or of wide rows gigabytes.
		if err := s.opsBudget.Acquire(ctx, int64(len(b.Ops))); err != nil {
			return err
		}
		if err := s.batchBudget.Acquire(ctx, b.Size()); err != nil {
			return err
		}
		if !b.received.IsZero() {
			b.mapped = time.Now()
			s.metrics.StageDone(metrics.StageMapped, b.received, b.mapped)
		}
		select {
		case batches <- b:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	lastStats := time.Now()
	defer func() { s.metrics.MapperStats(s.mapper.Stats()) }()
	for ev := range events {
		var err error
		switch ev.Kind {
		case replication.EventBegin:
			err = s.mapper.Begin(ev.Begin)
		case replication.EventChange:
			s.metrics.Change(ev.Change.Relation, ev.Change.Kind)
			err = s.mapper.Change(ev.Change)
		case replication.EventMessage:
			s.heartbeatReceived(ev.Message)
			err = s.mapper.Message(ev.Message)
		case replication.EventCommit:
			s.metrics.Transactions.Inc()
			s.metrics.StageDone(metrics.StageReceived, ev.Commit.CommitTime, ev.Received)
			var b mapping.Batch
			if b, err = s.mapper.Commit(ev.Commit); err == nil {
				err = send(queued{Batch: b, received: ev.Received})
			}
			if now := time.Now(); now.Sub(lastStats) >= time.Second {
				lastStats = now
				s.metrics.MapperStats(s.mapper.Stats())
			}
		case replication.EventBarrier:
			err = send(queued{Batch: mapping.Batch{EndLSN: ev.Barrier}})
		}
		// The event is mapped: what the open transaction keeps of its
		// values is bounded by mapping.Options.TxnValueBytes.
		s.eventBudget.Release(ev.Size())
		if err != nil {
			return err
		}
	}
	return nil
}

// applyBatches forms groups of the batches waiting and commits them in
// order. A group is the longest run of waiting batches whose commits the
// visibility gate's latest answer covers (waiting, when none is, for one
// that covers the first): the batches behind it, noted while that query was
// out, go in the next group rather than holding this one for another round
// trip.
func (s *session) applyBatches(ctx context.Context, batches <-chan queued) error {
	pend := make([]queued, 0, groupMaxTxn) // taken from batches, not applied yet
	group := make([]mapping.Batch, 0, groupMaxTxn)
	mapped := make([]time.Time, 0, groupMaxTxn) // group[i]'s
	check := time.NewTicker(s.opts.CacheCheckInterval)
	defer check.Stop()
	closed := false
	for {
		if len(pend) == 0 {
			if closed {
				return nil
			}
			select {
			case b, ok := <-batches:
				if !ok {
					return nil
				}
				pend = append(pend, b)
			case <-check.C:
				if !s.opts.DryRun {
					if err := s.verifyCache(ctx); err != nil {
						return err
					}
				}
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ops := 0
		for _, b := range pend {
			ops += len(b.Ops)
		}
	fill:
		for !closed && len(pend) < groupMaxTxn && ops < groupMaxOps {
			select {
			case b, ok := <-batches:
				if !ok {
					closed = true
					break fill
				}
				pend = append(pend, b)
				ops += len(b.Ops)
			default:
				break fill
			}
		}
		waitBegan := time.Now()
		n, err := s.clearedRun(ctx, pend)
		if err != nil {
			return err
		}
		group, mapped = group[:0], mapped[:0]
		var seen uint64 // the group's last commit noted by the gate
		ops = 0
		for _, b := range pend[:n] {
			group, mapped = append(group, b.Batch), append(mapped, b.mapped)
			seen = max(seen, b.seen)
			ops += len(b.Ops)
		}
		if err := s.commitGroup(ctx, group, mapped, seen, ops, waitBegan); err != nil {
			return err
		}
		for _, b := range group {
			s.opsBudget.Release(int64(len(b.Ops)))
			if s.opts.DryRun {
				s.batchBudget.Release(b.Size()) // no journal stage after this
			}
		}
		clear(pend[copy(pend, pend[n:]):])
		pend = pend[:len(pend)-n]
	}
}

// clearedRun returns how many of the batches waiting, from the first, the
// visibility gate's latest answer covers (at least one: it waits for an
// answer covering the first). All of them in dry runs, which have no gate.
func (s *session) clearedRun(ctx context.Context, pend []queued) (int, error) {
	if s.gate == nil {
		return len(pend), nil
	}
	covers, err := s.gate.covering(ctx, pend[0].seen)
	if err != nil {
		return 0, err
	}
	n := 1
	for n < len(pend) && pend[n].seen <= covers {
		n++
	}
	return n, nil
}

// commitGroup applies a group of transactions, records it, and only then
// confirms its end: apply → cache position → journal → confirm. mapped[i]
// is when group[i] was queued (zero for barriers); seen is the gate's number
// of its last commit with effects; waitBegan is when the wait for its
// visibility began (clearedRun).
func (s *session) commitGroup(ctx context.Context, group []mapping.Batch, mapped []time.Time, seen uint64, ops int, waitBegan time.Time) error {
	end := group[len(group)-1].EndLSN
	if s.opts.DryRun {
		s.clearedStage(mapped, time.Now())
		if err := s.opts.Applier.Apply(ctx, group); err != nil {
			return err
		}
		s.stream.Confirm(end)
		s.metrics.Confirmed(end, time.Now())
		return nil
	}
	cleared := time.Now()
	applied := cleared // for a group without effects
	if ops > 0 {
		if err := s.gate.wait(ctx, group, seen); err != nil {
			return err
		}
		cleared = time.Now()
		s.metrics.VisibilitySeconds.Observe(cleared.Sub(waitBegan).Seconds())
		s.failpoint("before-apply")
		if err := s.fence(); err != nil {
			return err
		}
		s.noteFlushes(group)
	}
	t, err := s.applyAdvance(ctx, group, ops, end)
	if err != nil {
		return err
	}
	if ops > 0 {
		applied = t.applied
		s.failpoint("after-apply")
	}
	// The journal's fsync, and the group's bookkeeping (metrics, the
	// checker's sample, the debug log), run beside the next group's
	// apply; the group is confirmed only once it is journaled, in order.
	it := journalItem{group: slices.Clone(group), ops: ops, mapped: slices.Clone(mapped),
		cleared: cleared, applied: applied, positioned: t.positioned}
	select {
	case s.journalQ <- it:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// applyTimes are when a group's effects were acknowledged and when the
// cache's applied position moved past it.
type applyTimes struct{ applied, positioned time.Time }

// applyAdvance applies a group's effects (if any) and advances the cache's
// applied position to end: in one round trip when the Applier can
// (applyAdvancer, unless Options.AdvanceApart), else Apply then advance.
func (s *session) applyAdvance(ctx context.Context, group []mapping.Batch, ops int, end wal.LSN) (applyTimes, error) {
	var t applyTimes
	if ops == 0 {
		err := s.advance(ctx, end, group)
		t.positioned = time.Now()
		return t, err
	}
	began := time.Now()
	if aa, ok := s.opts.Applier.(applyAdvancer); ok && !s.opts.AdvanceApart {
		swapped, cur, err := aa.ApplyAdvance(ctx, group, s.opts.Config.Postgres.Slot, s.mark, end)
		t.applied = time.Now()
		s.metrics.ApplySeconds.Observe(t.applied.Sub(began).Seconds())
		switch {
		case err != nil && appliedNotAdvanced(err) && ctx.Err() == nil:
			err = s.advance(ctx, end, group)
		case err != nil:
		case swapped:
			s.mark = cur
		default:
			// The cache does not hold the position last written: heal it,
			// as advance does.
			if err = s.fence(); err == nil {
				if err = s.cacheReset(ctx, cur, group); err == nil {
					err = s.settle(ctx, cur, end, group)
				}
			}
		}
		t.positioned = time.Now()
		return t, err
	}
	if err := s.opts.Applier.Apply(ctx, group); err != nil {
		return t, err
	}
	t.applied = time.Now()
	s.metrics.ApplySeconds.Observe(t.applied.Sub(began).Seconds())
	s.failpoint("before-advance")
	err := s.advance(ctx, end, group)
	t.positioned = time.Now()
	return t, err
}

// groupApplied does an applied group's bookkeeping, on the journal stage:
// the stage timings up to its position, the group and lag metrics, and the
// checker's sample.
func (s *session) groupApplied(it journalItem) {
	s.clearedStage(it.mapped, it.cleared)
	if it.ops > 0 {
		s.metrics.StageDone(metrics.StageApplied, it.cleared, it.applied)
		if s.opts.Checker != nil {
			s.opts.Checker.Applied(it.group)
		}
	}
	s.metrics.StageDone(metrics.StagePositioned, it.applied, it.positioned)
	s.metrics.GroupTransactions.Observe(float64(len(it.group)))
	s.metrics.GroupOperations.Observe(float64(it.ops))
	var oldest, newest time.Time
	for _, b := range it.group {
		if !b.CommitTime.IsZero() {
			if oldest.IsZero() {
				oldest = b.CommitTime
			}
			newest = b.CommitTime
		}
	}
	s.metrics.Applied(it.group[len(it.group)-1].EndLSN, oldest, newest, it.positioned)
}

// noteFlushes logs and counts the key-space flushes of a group (truncate,
// key cap, values not sent): one line per flush, never per row.
func (d *Daemon) noteFlushes(group []mapping.Batch) {
	for _, b := range group {
		for i := range b.Ops {
			if op := &b.Ops[i]; op.Kind == mapping.OpFlush {
				d.metrics.Flush(op.Rule, op.Reason)
				d.log.Info().Str("rule", op.Rule).Str("reason", op.Reason).Uint32("xid", b.XID).Stringer("commit_lsn", b.CommitLSN).Msg("flushing key space")
			}
		}
	}
}

// journalItem is an applied group on its way to the journal, or (done set)
// a request to report when everything before it is journaled.
type journalItem struct {
	group []mapping.Batch
	ops   int
	// mapped[i] is when group[i] was queued (zero for barriers); cleared
	// when the group was cleared to apply, applied when Redis acknowledged
	// it, positioned when the cache's applied position moved past it.
	mapped                       []time.Time
	cleared, applied, positioned time.Time
	done                         chan struct{}
}

// journalQueue bounds the applied groups waiting for the journal.
const journalQueue = 16

// journalGroups journals applied groups in order and only then confirms
// them: apply → applied position → journal → confirm. Groups that queued up
// during an fsync are written together with one fsync.
func (s *session) journalGroups(ctx context.Context, items <-chan journalItem) error {
	var pending []mapping.Batch
	var positioned []time.Time // of each group pending, with its end
	var ends []wal.LSN
	var waiting []chan struct{}
	ops := 0
	flush := func() error {
		if len(pending) > 0 {
			if err := s.opts.Journal.Append(ctx, pending); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				// The journal refuses further appends after a failed
				// write: its disk state is unknown until it is reopened,
				// which a restart does (cutting the torn tail). Nothing of
				// these groups is confirmed.
				return fmt.Errorf("%w: journal: %w", ErrFatal, err)
			}
			journaled := time.Now()
			for i, at := range positioned {
				s.metrics.StageDone(metrics.StageJournaled, at, journaled)
				s.confirms.journaled(ends[i], journaled)
			}
			if ops > 0 {
				s.failpoint("after-journal")
			}
			if err := s.fence(); err != nil {
				return err
			}
			s.logApplied(pending)
			for _, b := range pending {
				s.batchBudget.Release(b.Size()) // journaled: dropped now
			}
			confirmed := pending[len(pending)-1].EndLSN
			s.stream.Confirm(confirmed)
			s.metrics.Confirmed(confirmed, time.Now())
		}
		for _, w := range waiting {
			close(w)
		}
		pending, waiting, ops = pending[:0], waiting[:0], 0
		positioned, ends = positioned[:0], ends[:0]
		return nil
	}
	for it := range items {
		for more := true; more; {
			if it.done != nil {
				waiting = append(waiting, it.done)
			} else {
				s.groupApplied(it)
				pending = append(pending, it.group...)
				ops += it.ops
				positioned = append(positioned, it.positioned)
				ends = append(ends, it.group[len(it.group)-1].EndLSN)
			}
			select {
			case it, more = <-items:
			default:
				more = false
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
	return flush()
}

// journalSync waits until every applied group handed to the journal stage
// is journaled, so that a replay reads all of them.
func (s *session) journalSync(ctx context.Context) error {
	if s.journalQ == nil {
		return nil
	}
	done := make(chan struct{})
	select {
	case s.journalQ <- journalItem{done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *Daemon) failpoint(name string) {
	if d.opts.Failpoint != nil {
		d.opts.Failpoint(name)
	}
}

// logApplied logs each transaction's effects at debug level: which change
// invalidated which keys, for people watching (make demo).
func (d *Daemon) logApplied(group []mapping.Batch) {
	if d.log.GetLevel() > zerolog.DebugLevel {
		return
	}
	for _, b := range group {
		if len(b.Ops) == 0 {
			continue
		}
		ev := d.log.Debug().Uint32("xid", b.XID).Stringer("end_lsn", b.EndLSN).Int("ops", len(b.Ops))
		const show = 8
		desc := make([]string, 0, min(len(b.Ops), show))
		for _, op := range b.Ops[:min(len(b.Ops), show)] {
			if op.Kind == mapping.OpFlush {
				desc = append(desc, fmt.Sprintf("flush(%s: %s)", op.Rule, op.Reason))
				continue
			}
			desc = append(desc, op.Kind.String()+" "+op.Key)
		}
		ev.Strs("effects", desc).Msg("applied")
	}
}

// Setup prepares everything run needs without streaming: preflight, the
// publication, the slot and the flush that follows its creation. It is
// idempotent.
func (d *Daemon) Setup(ctx context.Context) error {
	if err := d.prepareOnce(ctx, d.opts.Config.Postgres); err != nil {
		return err
	}
	// Before the slot: its flush would retry a refusal forever.
	if err := d.checkCache(ctx); err != nil {
		return err
	}
	return d.withLock(ctx, func(ctx, _ context.Context, l *lease) error {
		conns, err := d.open(ctx)
		if err != nil {
			return err
		}
		defer conns.close(ctx)
		s := &session{Daemon: d, lease: l}
		_, err = s.ensureSlot(ctx, conns.conn, conns.repl, conns.dbname)
		return err
	})
}

// sessionConns are the two connections of a session: a normal one for
// catalog queries, and the replication connection that streams.
type sessionConns struct {
	conn   *replication.Conn
	repl   *replication.ReplConn
	dbname string
}

func (d *Daemon) open(ctx context.Context) (*sessionConns, error) {
	conn, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	s := &sessionConns{conn: conn}
	if s.dbname, err = conn.DatabaseName(ctx); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	if s.repl, err = replication.ConnectReplication(ctx, d.opts.DatabaseURL); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

func (s *sessionConns) close(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	s.repl.Close(ctx)
	s.conn.Close(ctx)
}
