// Package backfill loads the rows of a refresh rule's table into the cache,
// beside the stream, without ever leaving a stale key whatever interleaves
// (docs/ARCHITECTURE.md, Backfill).
//
// Per chunk (Run):
//
//  1. m0 := the rule's flush counter (writer.FlushCounterKey);
//  2. A := the cache's applied position (writer.Positions.Applied);
//  3. read up to Options.ChunkRows rows after the last key done, in
//     primary-key order, in one REPEATABLE READ READ ONLY transaction
//     (replication.TableReader): its snapshot sees every transaction with a
//     commit LSN below A;
//  4. map each row as an INSERT with the stream's own mapper, and write the
//     ops with writer.Writer.Fill: only over a guard below A, leaving A-1;
//  5. m1 := the flush counter: if it moved, a flush overlapped the chunk:
//     undo it (writer.Writer.UndoFill) and start over from the first row;
//  6. checkpoint (writer.Checkpoint) and go on after the chunk's last key.
//
// A run resumes from the checkpoint when it was written under the current
// flush counter, and starts over otherwise.
package backfill

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// Defaults of Options.
const (
	DefaultChunkRows  = 1000
	DefaultChunkBytes = 8 << 20
)

// ErrNotRefresh is returned for a rule that does not write rows (only
// refresh rules can be backfilled).
var ErrNotRefresh = errors.New("not a refresh rule")

// ErrNoPosition is returned when the cache holds no applied position: the
// stream has not set it up yet.
var ErrNoPosition = errors.New("the cache has no applied position")

// ErrStopped is returned when Options.Stop ended a run before its last
// chunk; the checkpoint is kept.
var ErrStopped = errors.New("backfill stopped")

// Options tell Run what to backfill and how.
type Options struct {
	// Rule is the refresh rule to backfill.
	Rule *config.Rule
	// Slot names the replication slot whose applied position
	// (writer.AppliedKey) the cache holds.
	Slot string
	// Where, if not empty, is an SQL predicate on the table's columns:
	// only the rows it holds for are loaded.
	Where string
	// ChunkRows and ChunkBytes bound a chunk (defaults DefaultChunkRows
	// rows, DefaultChunkBytes bytes of values).
	ChunkRows, ChunkBytes int
	// Rate bounds the rows read per second (0: no bound).
	Rate float64
	// Restart ignores the checkpoint: start from the first row.
	Restart bool
	// Count counts the rows exactly before the first chunk (otherwise
	// Progress.Total is the planner's estimate).
	Count bool
	// Mapper are the mapper's options: the daemon's (daemon.MapperOptions).
	Mapper mapping.Options
	// Fence, when set, is called before every write to Redis; an error
	// stops the run (the daemon passes its lease's fence).
	Fence func() error
	// OnProgress, when set, is called after every chunk, and once with
	// the estimate before the first.
	OnProgress func(Progress)
	// AfterCheckpoint, when set, is called after every checkpoint (fault
	// tests' failpoint).
	AfterCheckpoint func()
	// Stop, when closed, ends the run after the current chunk (ErrStopped).
	Stop <-chan struct{}
	// Logger receives a line per restart and at the end.
	Logger zerolog.Logger
}

func (o Options) withDefaults() Options {
	if o.ChunkRows <= 0 {
		o.ChunkRows = DefaultChunkRows
	}
	if o.ChunkBytes <= 0 {
		o.ChunkBytes = DefaultChunkBytes
	}
	if o.Fence == nil {
		o.Fence = func() error { return nil }
	}
	return o
}

// Progress is a run's progress.
type Progress struct {
	Rule string
	// Rows counts the rows done, from the checkpoint's start; Read those
	// this run read (less than Rows after a resume).
	Rows, Read int64
	// Total is the rows expected: the planner's estimate, or the count
	// (TotalExact).
	Total      int64
	TotalExact bool
	// Resumed is true when the run went on from a checkpoint.
	Resumed bool
	// Written and Skipped count the keys the run wrote and those it left
	// to a newer stream effect.
	Written, Skipped int64
	// Undone counts the keys taken back from chunks a flush overlapped.
	Undone int64
	// Restarts counts the flushes that made the run start over.
	Restarts int
	// Started is when the checkpoint's run started.
	Started time.Time
	// Done is true once every row was loaded.
	Done bool
}

// Run backfills opts.Rule's table into the cache: conn is a normal
// PostgreSQL connection (its session settings are pinned to pgoutput's),
// w the writer, whose history (writer.Writer.SetHistory) must be that of
// the server the stream reads. It returns when every row is done, or with
// ctx's error after the current chunk, the checkpoint kept.
func Run(ctx context.Context, conn *pgx.Conn, w *writer.Writer, opts Options) (Progress, error) {
	opts = opts.withDefaults()
	r := opts.Rule
	p := Progress{}
	if r == nil || r.Refresh == nil {
		name := ""
		if r != nil {
			name = r.Name
		}
		return p, fmt.Errorf("rule %q: %w: only a refresh rule writes rows to keys", name, ErrNotRefresh)
	}
	p.Rule = r.Name
	b := &run{conn: conn, w: w, pos: w.Positions(), opts: opts, log: opts.Logger.With().Str("rule", r.Name).Logger()}
	var err error
	if b.mapper, err = mapping.New([]*config.Rule{r}, opts.Mapper); err != nil {
		return p, err
	}
	if b.reader, err = replication.NewTableReader(ctx, conn, r.Table, opts.Where); err != nil {
		return p, err
	}
	return b.run(ctx)
}

// testHookAfterFill, when set, runs between a chunk's write and the
// second read of the flush counter (tests).
var testHookAfterFill func()

// run is one Run's state.
type run struct {
	conn   *pgx.Conn
	w      *writer.Writer
	pos    *writer.Positions
	opts   Options
	log    zerolog.Logger
	mapper *mapping.Mapper
	reader *replication.TableReader
	cp     writer.Checkpoint
	p      Progress
}

func (b *run) run(ctx context.Context) (Progress, error) {
	b.p.Rule = b.opts.Rule.Name
	if err := b.start(ctx); err != nil {
		return b.p, err
	}
	began := time.Now()
	for {
		more, err := b.chunk(ctx)
		if err != nil {
			b.fail(err)
			return b.p, err
		}
		if !more {
			break
		}
		if b.stopped() {
			return b.p, ErrStopped
		}
		if err := b.pace(ctx, began); err != nil {
			return b.p, err
		}
	}
	b.cp.Finished = time.Now().UTC()
	if err := b.checkpoint(ctx); err != nil {
		return b.p, err
	}
	b.p.Done = true
	b.progress()
	b.log.Info().Int64("rows", b.p.Rows).Int64("written", b.p.Written).Int64("skipped", b.p.Skipped).
		Int("restarts", b.p.Restarts).Msg("backfill done")
	return b.p, nil
}

// start reads the checkpoint, and the total.
func (b *run) start(ctx context.Context) error {
	m, err := b.pos.FlushCount(ctx, b.opts.Rule.Name)
	if err != nil {
		return err
	}
	cp, ok, err := b.pos.Checkpoint(ctx, b.opts.Rule.Name)
	if err != nil {
		return err
	}
	if ok && !b.opts.Restart && cp.Flushes == m && cp.Finished.IsZero() && cp.Where == b.opts.Where && cp.LastKey != nil {
		b.cp = cp
		b.cp.Error = ""
		b.p.Resumed = true
		b.p.Rows = cp.Rows
		b.p.Started = cp.Started
		b.log.Info().Int64("rows_done", cp.Rows).Strs("after_key", cp.LastKey).Msg("backfill resumes from its checkpoint")
	} else {
		b.fresh(m)
	}
	if b.p.Total, err = b.reader.Estimate(ctx, b.conn); err != nil {
		return err
	}
	b.progress()
	if b.opts.Count {
		if b.p.Total, err = b.reader.Count(ctx, b.conn); err != nil {
			return err
		}
		b.p.TotalExact = true
		b.progress()
	}
	b.cp.Total, b.cp.TotalExact = b.p.Total, b.p.TotalExact
	return nil
}

// fresh starts the run over, under flush counter m.
func (b *run) fresh(m string) {
	b.cp = writer.Checkpoint{Flushes: m, Where: b.opts.Where, Started: time.Now().UTC(),
		Total: b.p.Total, TotalExact: b.p.TotalExact}
	b.p.Rows = 0
	b.p.Started = b.cp.Started
}

// chunk loads one chunk; more is false after the last.
func (b *run) chunk(ctx context.Context) (more bool, err error) {
	rule := b.opts.Rule.Name
	m0, err := b.pos.FlushCount(ctx, rule)
	if err != nil {
		return false, err
	}
	if m0 != b.cp.Flushes {
		b.p.Restarts++
		b.log.Warn().Str("flushes", m0).Msg("the rule's key space was flushed since the backfill's checkpoint: starting over from the first row")
		b.fresh(m0)
	}
	pos, err := b.pos.Applied(ctx, b.opts.Slot)
	if err != nil {
		return false, err
	}
	if !pos.OK || pos.LSN == 0 {
		return false, fmt.Errorf("%w (slot %q): run `cachesync setup` or `cachesync run` first", ErrNoPosition, b.opts.Slot)
	}
	applied := pos.LSN
	ch, err := b.reader.Read(ctx, b.conn, b.cp.LastKey, b.opts.ChunkRows, b.opts.ChunkBytes)
	if err != nil {
		return false, err
	}
	b.p.Read += int64(len(ch.Rows))
	ops, err := b.mapRows(ch.Rows)
	if err != nil {
		return false, err
	}
	if err := b.fill(ctx, applied, ops); err != nil {
		return false, err
	}
	if testHookAfterFill != nil {
		testHookAfterFill()
	}
	m1, err := b.pos.FlushCount(ctx, rule)
	if err != nil {
		return false, err
	}
	if m1 != m0 {
		// A flush began since m0: it may have scanned past keys this chunk
		// wrote afterwards. Take back those nothing touched since.
		keys := make([]string, len(ops))
		for i := range ops {
			keys[i] = ops[i].Key
		}
		if err := b.opts.Fence(); err != nil {
			return false, err
		}
		n, err := b.w.UndoFill(ctx, applied, keys)
		if err != nil {
			return false, err
		}
		b.p.Undone += int64(n)
		b.p.Restarts++
		b.log.Warn().Int("undone", n).Msg("the rule's key space was flushed while a chunk was written: chunk undone, starting over from the first row")
		b.fresh(m1)
		return true, b.checkpoint(ctx)
	}
	b.cp.LastKey = ch.LastKey
	b.cp.Rows += int64(len(ch.Rows))
	b.p.Rows = b.cp.Rows
	if err := b.checkpoint(ctx); err != nil {
		return false, err
	}
	if b.opts.AfterCheckpoint != nil {
		b.opts.AfterCheckpoint()
	}
	b.progress()
	return ch.More, nil
}

// mapRows maps each row as an INSERT, through the stream's mapper.
func (b *run) mapRows(rows []wal.Tuple) ([]mapping.Op, error) {
	rel := &b.reader.Relation().Relation
	var ops []mapping.Op
	for _, row := range rows {
		batch, err := b.mapper.Map(wal.Txn{Changes: []wal.Change{{Relation: rel, Kind: wal.Insert, New: row}}})
		if err != nil {
			return nil, err
		}
		for _, op := range batch.Ops {
			if op.Kind != mapping.OpSet && op.Kind != mapping.OpUnset {
				return nil, fmt.Errorf("rule %q: the row with primary key %v maps to a %s (%s), not a value: fix the rule (cachesync explain --pk shows what the row does)",
					op.Rule, b.key(row), op.Kind, op.Reason)
			}
			ops = append(ops, op)
		}
	}
	return ops, nil
}

// key is a row's primary key, for messages.
func (b *run) key(row wal.Tuple) []string {
	rel := b.reader.Relation()
	out := make([]string, len(rel.PrimaryKey))
	for k, i := range rel.PrimaryKey {
		out[k] = row[i].Text
	}
	return out
}

// fill writes ops, retrying Redis errors with the writer's backoff.
func (b *run) fill(ctx context.Context, applied wal.LSN, ops []mapping.Op) error {
	if len(ops) == 0 {
		return nil
	}
	for attempt := 0; ; attempt++ {
		if err := b.opts.Fence(); err != nil {
			return err
		}
		res, err := b.w.Fill(ctx, applied, ops)
		if err == nil {
			b.p.Written += int64(res.Written)
			b.p.Skipped += int64(res.Skipped)
			return nil
		}
		if errors.Is(err, writer.ErrInvalidOp) {
			return err
		}
		b.log.Debug().Err(err).Int("retry", attempt+1).Msg("backfill chunk not written; retrying")
		if err := b.pos.Wait(ctx, attempt); err != nil {
			return err
		}
	}
}

func (b *run) checkpoint(ctx context.Context) error {
	if err := b.opts.Fence(); err != nil {
		return err
	}
	return b.pos.SetCheckpoint(context.WithoutCancel(ctx), b.opts.Rule.Name, b.cp)
}

// fail records err in the checkpoint, best effort.
func (b *run) fail(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	b.cp.Error = err.Error()
	if b.opts.Fence() == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.pos.SetCheckpoint(ctx, b.opts.Rule.Name, b.cp)
	}
}

func (b *run) stopped() bool {
	select {
	case <-b.opts.Stop:
		return true
	default:
		return false
	}
}

func (b *run) progress() {
	if b.opts.OnProgress != nil {
		b.opts.OnProgress(b.p)
	}
}

// pace waits until the rows read since began fit within Options.Rate.
func (b *run) pace(ctx context.Context, began time.Time) error {
	if b.opts.Rate <= 0 {
		return nil
	}
	due := began.Add(time.Duration(float64(b.p.Read) / b.opts.Rate * float64(time.Second)))
	wait := time.Until(due)
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-b.opts.Stop:
		return ErrStopped
	case <-t.C:
		return nil
	}
}
