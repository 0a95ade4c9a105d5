package writebehind

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/backoff"
	"github.com/cachesync/cachesync/keyspace"
)

// Group is the consumer group a Worker reads with.
const Group = "cachesync"

// PositionsTable holds each stream's last applied entry ID.
const PositionsTable = "cachesync.write_behind"

// DeadLetterStream is where stream's entries that cannot apply go.
func DeadLetterStream(stream string) string { return stream + ":dead" }

// Entry fields.
const (
	FieldOp  = keyspace.WriteBehindFieldOp
	FieldRow = keyspace.WriteBehindFieldRow
	// Dead letters carry the entry's fields plus these.
	FieldID    = "id"
	FieldError = "error"
	OpUpsert   = keyspace.WriteBehindOpUpsert
	OpDelete   = keyspace.WriteBehindOpDelete
)

// Observer hears what a worker does (internal/metrics implements it). Its
// methods must not block.
type Observer interface {
	// Batch is called after a batch's transaction committed: entries read,
	// applied (rows written or deleted after merging), skipped (at or below
	// the recorded ID) and dead letters among them, and how long it took
	// from the read to the acknowledgement.
	Batch(name string, entries, applied, skipped, dead int, took time.Duration)
}

// Options configure a Worker.
type Options struct {
	Spec *config.WriteBehind
	// Redis holds the stream; DB is the worker's own connection to the
	// database (it takes the stream's lock on it and applies batches on it).
	Redis redis.UniversalClient
	// Connect opens the worker's PostgreSQL connection (again after a
	// failure).
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Consumer names this worker in the consumer group (default: host and
	// process ID).
	Consumer string
	// Fence, when set, is checked before every commit: an error stops the
	// worker without committing (the daemon's lease).
	Fence func() error
	// Failpoint, when set, is called at "write-behind-before-begin" (a
	// batch read, its transaction not begun), "write-behind-before-commit"
	// and "write-behind-after-commit" (committed, not acknowledged).
	Failpoint func(name string)
	Observer  Observer
	Logger    zerolog.Logger
}

// ErrMoved means the stream's recorded position moved under the worker:
// another worker applied entries (it lost its lock, or two ran without
// one). The worker starts over from the recorded position.
var ErrMoved = errors.New("the stream's recorded position moved: another worker applied entries")

// Run drains the stream until ctx ends: it takes the stream's lock
// (waiting while another worker holds it), claims pending entries, then
// applies batches. Failures (PostgreSQL or Redis down, the table missing)
// are logged and retried with backoff; Run returns ctx's error, or Fence's.
func Run(ctx context.Context, o Options) error {
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	w := &worker{o: o, spec: o.Spec, log: o.Logger.With().Str("write_behind", o.Spec.Name).Str("stream", o.Spec.Stream).Logger()}
	retry := 0
	for {
		err := w.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fenced *fenceError
		if errors.As(err, &fenced) {
			return fenced.err
		}
		if err == nil {
			retry = 0
			continue
		}
		wait := sessionBackoff.Wait(retry)
		retry++
		w.log.Warn().Err(err).Dur("retry_in", wait).Msg("write-behind: draining stopped; retrying")
		if !backoff.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

var sessionBackoff = backoff.Exponential{Min: 100 * time.Millisecond, Max: 10 * time.Second}

// fenceError carries Options.Fence's refusal out of Run.
type fenceError struct{ err error }

func (e *fenceError) Error() string { return e.err.Error() }

type worker struct {
	o    Options
	spec *config.WriteBehind
	log  zerolog.Logger
	// Per session:
	conn *pgx.Conn
	tab  *table
	// last is the recorded position as this worker last read or wrote it.
	last ID
}

// lockKey is the text whose hashtext keys the stream's advisory lock.
func lockKey(stream string) string { return "cachesync write-behind " + stream }

// standbyRetry is how often a worker that finds the stream's lock held
// tries again.
const standbyRetry = 2 * time.Second

// session connects, takes the stream's lock, claims and drains until a
// failure or ctx's end.
func (w *worker) session(ctx context.Context) error {
	conn, err := w.o.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	w.conn = conn
	standby := false
	for {
		var locked bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext($1))", lockKey(w.spec.Stream)).Scan(&locked); err != nil {
			return fmt.Errorf("take the stream's lock: %w", err)
		}
		if locked {
			break
		}
		if !standby {
			standby = true
			w.log.Info().Msg("write-behind: another cachesync drains this stream; standing by")
		}
		if !backoff.Sleep(ctx, standbyRetry/2+time.Duration(rand.Int64N(int64(standbyRetry)))) {
			return ctx.Err()
		}
	}
	if err := w.prepare(ctx); err != nil {
		return err
	}
	w.log.Info().Stringer("last_applied", w.last).Str("consumer", w.o.Consumer).Msg("write-behind: draining the stream")
	if err := w.claim(ctx); err != nil {
		return err
	}
	return w.drain(ctx)
}

// prepare reads the table's columns, creates the positions table and the
// consumer group when missing, and reads the recorded position.
func (w *worker) prepare(ctx context.Context) error {
	cols, err := readColumns(ctx, w.conn, w.spec.Table)
	if err != nil {
		return err
	}
	for _, k := range w.spec.KeyColumns {
		if !slices.ContainsFunc(cols, func(c column) bool { return c.Name == k }) {
			return fmt.Errorf("table %s has no column %q (write_behind %q key_columns)", w.spec.Table, k, w.spec.Name)
		}
	}
	w.tab = newTable(w.spec, cols)
	if err := ensurePositions(ctx, w.conn); err != nil {
		return err
	}
	if w.last, err = readPosition(ctx, w.conn, w.spec.Stream); err != nil {
		return err
	}
	return w.ensureGroup(ctx)
}

func (w *worker) ensureGroup(ctx context.Context) error {
	err := w.o.Redis.XGroupCreateMkStream(ctx, w.spec.Stream, Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group %q on stream %q: %w", Group, w.spec.Stream, err)
	}
	return nil
}

// claim moves every entry pending with another consumer to this one (the
// stream's lock is held, so they are a dead or stopped worker's), then
// forgets the consumers left with nothing pending.
func (w *worker) claim(ctx context.Context) error {
	start, claimed := "0-0", 0
	for {
		msgs, next, err := w.o.Redis.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: w.spec.Stream, Group: Group, Consumer: w.o.Consumer, Start: start, Count: int64(w.spec.BatchSize),
		}).Result()
		if err != nil {
			return fmt.Errorf("claim pending entries of stream %q: %w", w.spec.Stream, err)
		}
		claimed += len(msgs)
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	consumers, err := w.o.Redis.XInfoConsumers(ctx, w.spec.Stream, Group).Result()
	if err != nil {
		return fmt.Errorf("list the consumers of stream %q: %w", w.spec.Stream, err)
	}
	for _, c := range consumers {
		if c.Name != w.o.Consumer && c.Pending == 0 {
			_ = w.o.Redis.XGroupDelConsumer(ctx, w.spec.Stream, Group, c.Name).Err()
		}
	}
	if claimed > 0 {
		w.log.Info().Int("entries", claimed).Msg("write-behind: claimed the entries another worker left pending")
	}
	return nil
}

// drain applies batches until a failure or ctx's end: this consumer's
// pending entries first (claimed, or read before a failure), then new
// ones. Three goroutines: the reader reads and parses the next batch while
// the applier commits the current one and the acker acknowledges the one
// before, so that Redis and PostgreSQL work in parallel; at most four
// batches are held.
func (w *worker) drain(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	batches := make(chan readBatch, 1)
	g.Go(func() error {
		defer close(batches)
		cursor := "0" // pending entries after this ID; ">" once they are read
		for gctx.Err() == nil {
			msgs, err := w.read(gctx, cursor)
			if err != nil {
				return err
			}
			if cursor != ">" {
				if len(msgs) == 0 {
					cursor = ">"
					continue
				}
				cursor = msgs[len(msgs)-1].ID
			}
			if len(msgs) == 0 {
				continue
			}
			select {
			case batches <- w.parseBatch(msgs):
			case <-gctx.Done():
			}
		}
		return gctx.Err()
	})
	acks := make(chan applied, 2)
	g.Go(func() error {
		defer close(acks)
		for b := range batches {
			a, err := w.applyBatch(gctx, b)
			if err != nil {
				return err
			}
			select {
			case acks <- a:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return gctx.Err()
	})
	g.Go(func() error {
		for a := range acks {
			if err := w.ack(gctx, a.ids, a.trim); err != nil {
				return err
			}
			if w.o.Observer != nil {
				w.o.Observer.Batch(w.spec.Name, len(a.ids), a.rows, a.skipped, a.dead, time.Since(a.read))
			}
		}
		return gctx.Err()
	})
	return g.Wait()
}

// readBatch is a batch as read, parsed (by the reader, so that parsing
// overlaps the transaction of the batch before), and when it was read.
type readBatch struct {
	msgs []redis.XMessage
	// ids, entries and errs are per message: entries[i] nil and errs[i]
	// set for an entry that cannot apply; ids[i] zero for an ID that
	// does not parse.
	ids     []ID
	entries []*entry
	errs    []error
	read    time.Time
}

func (w *worker) parseBatch(msgs []redis.XMessage) readBatch {
	b := readBatch{msgs: msgs, ids: make([]ID, len(msgs)), entries: make([]*entry, len(msgs)), errs: make([]error, len(msgs)), read: time.Now()}
	for i, m := range msgs {
		b.ids[i], _ = ParseID(m.ID)
		if m.Values != nil {
			b.entries[i], b.errs[i] = w.tab.parse(m)
		}
	}
	return b
}

// read returns the next batch: this consumer's pending entries after the
// ID cursor, or new entries (cursor ">"), waiting up to the flush
// interval for the batch to fill once one entry is there.
func (w *worker) read(ctx context.Context, cursor string) ([]redis.XMessage, error) {
	size := w.spec.BatchSize
	args := &redis.XReadGroupArgs{Group: Group, Consumer: w.o.Consumer, Count: int64(size), Block: -1, Streams: []string{w.spec.Stream, cursor}}
	if cursor != ">" {
		return w.readGroup(ctx, args)
	}
	args.Block = idleBlock
	msgs, err := w.readGroup(ctx, args)
	if err != nil || len(msgs) == 0 || len(msgs) >= size {
		return msgs, err
	}
	deadline := time.Now().Add(w.spec.FlushInterval)
	for len(msgs) < size {
		left := time.Until(deadline)
		if left < time.Millisecond {
			break
		}
		args.Count, args.Block = int64(size-len(msgs)), left
		more, err := w.readGroup(ctx, args)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, more...)
	}
	return msgs, nil
}

// idleBlock is how long a read of new entries waits on an idle stream.
const idleBlock = time.Second

func (w *worker) readGroup(ctx context.Context, args *redis.XReadGroupArgs) ([]redis.XMessage, error) {
	res, err := w.o.Redis.XReadGroup(ctx, args).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil && strings.HasPrefix(err.Error(), "NOGROUP"):
		// The stream or its group is gone (Redis lost its data, or someone
		// deleted the stream): recreate the group and start over.
		if gerr := w.ensureGroup(ctx); gerr != nil {
			return nil, gerr
		}
		return nil, fmt.Errorf("read stream %q: %w (the group was recreated)", w.spec.Stream, err)
	case err != nil:
		return nil, fmt.Errorf("read stream %q: %w", w.spec.Stream, err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	return res[0].Messages, nil
}

// applied is a batch committed, for the acker: the IDs to acknowledge,
// the ID below which the stream is trimmed, and the batch's figures.
type applied struct {
	ids                 []string
	trim                ID
	rows, skipped, dead int
	read                time.Time
}

// applyBatch applies a batch in one transaction with the position's
// compare-and-set.
func (w *worker) applyBatch(ctx context.Context, b readBatch) (applied, error) {
	var (
		entries []*entry
		dead    []deadLetter
		acks    = make([]string, 0, len(b.msgs))
		skipped int
		top     = w.last
	)
	for i, m := range b.msgs {
		acks = append(acks, m.ID)
		id := b.ids[i]
		if !w.last.Less(id) || m.Values == nil {
			// Applied already (at or below the recorded ID), or deleted
			// from the stream while pending (trimmed or XDEL).
			skipped++
			continue
		}
		top = id // the stream and the pending list are in ID order
		if b.errs[i] != nil {
			dead = append(dead, deadLetter{msg: m, err: b.errs[i].Error()})
			continue
		}
		entries = append(entries, b.entries[i])
	}
	rows := 0
	if top != w.last {
		var err error
		if rows, dead, err = w.commit(ctx, entries, dead, top); err != nil {
			return applied{}, err
		}
		w.last = top
	}
	return applied{ids: acks, trim: w.last.next(), rows: rows, skipped: skipped, dead: len(dead), read: b.read}, nil
}

// commit applies entries and moves the position from w.last to top in one
// transaction. Entries whose statement fails on their own data join dead,
// which is appended to the dead-letter stream before the commit (so a dead
// letter may be appended twice if the process dies between the two, never
// lost). It returns the rows written and every dead letter.
func (w *worker) commit(ctx context.Context, entries []*entry, dead []deadLetter, top ID) (int, []deadLetter, error) {
	w.failpoint("write-behind-before-begin")
	applied, err := w.begin(ctx, top, w.tab.statements(merge(entries))...)
	if err == nil {
		return applied, dead, w.end(ctx, dead)
	}
	if !isEntryError(err) {
		return 0, dead, err
	}
	w.log.Warn().Err(err).Int("entries", len(entries)).Msg("write-behind: the batch failed on an entry's data; applying its entries one by one to find it")
	if _, err := w.begin(ctx, top, statement{sql: "SET CONSTRAINTS ALL IMMEDIATE"}); err != nil {
		return 0, dead, err
	}
	applied = 0
	for _, e := range entries {
		n, err := w.inSavepoint(ctx, w.tab.statements(merge([]*entry{e})))
		if err != nil && !isEntryError(err) {
			w.rollback(ctx)
			return 0, dead, err
		}
		if err != nil {
			dead = append(dead, deadLetter{msg: e.msg, err: err.Error()})
		}
		applied += n
	}
	return applied, dead, w.end(ctx, dead)
}

// begin opens the batch's transaction, moves the position from w.last to
// top and runs stmts, all in one round trip. On success the transaction
// stays open for end; on failure it is rolled back.
func (w *worker) begin(ctx context.Context, top ID, stmts ...statement) (int, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("UPDATE "+PositionsTable+" SET last_id = $3, updated_at = now() WHERE stream = $1 AND last_id = $2", w.spec.Stream, w.last.String(), top.String())
	queue(b, stmts)
	res := w.conn.SendBatch(ctx, b)
	_, err := res.Exec()
	var moved pgconn.CommandTag
	if err == nil {
		moved, err = res.Exec()
	}
	n := 0
	if err == nil {
		n, err = results(res, len(stmts))
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		w.rollback(ctx)
		return 0, err
	case moved.RowsAffected() != 1:
		w.rollback(ctx)
		return 0, ErrMoved
	}
	return n, nil
}

// inSavepoint runs stmts under a savepoint of the open transaction, in
// one round trip, rolling back to it on failure.
func (w *worker) inSavepoint(ctx context.Context, stmts []statement) (int, error) {
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT wb_entry")
	queue(b, stmts)
	b.Queue("RELEASE SAVEPOINT wb_entry")
	res := w.conn.SendBatch(ctx, b)
	_, err := res.Exec()
	n := 0
	if err == nil {
		n, err = results(res, len(stmts))
	}
	if err == nil {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil && isEntryError(err) {
		if _, rerr := w.conn.Exec(ctx, "ROLLBACK TO SAVEPOINT wb_entry"); rerr != nil {
			return 0, rerr
		}
	}
	return n, err
}

// end appends the dead letters, checks the fence and commits the open
// transaction.
func (w *worker) end(ctx context.Context, dead []deadLetter) error {
	if err := w.deadLetters(ctx, dead); err != nil {
		w.rollback(ctx)
		return err
	}
	w.failpoint("write-behind-before-commit")
	if w.o.Fence != nil {
		if err := w.o.Fence(); err != nil {
			w.rollback(ctx)
			return &fenceError{err}
		}
	}
	if _, err := w.conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit a batch of stream %q: %w", w.spec.Stream, err)
	}
	w.failpoint("write-behind-after-commit")
	return nil
}

// rollback ends the open transaction; a connection that cannot is broken,
// and the session starts over on a new one.
func (w *worker) rollback(ctx context.Context) {
	_, _ = w.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
}

func queue(b *pgx.Batch, stmts []statement) {
	for _, st := range stmts {
		if st.rows == nil {
			b.Queue(st.sql)
		} else {
			b.Queue(st.sql, string(st.rows))
		}
	}
}

// results reads n statements' results and returns the rows they wrote.
func results(res pgx.BatchResults, n int) (int, error) {
	rows := 0
	for range n {
		tag, err := res.Exec()
		if err != nil {
			return 0, err
		}
		rows += int(tag.RowsAffected())
	}
	return rows, nil
}

func (w *worker) failpoint(name string) {
	if w.o.Failpoint != nil {
		w.o.Failpoint(name)
	}
}

// deadLetters appends dead to the dead-letter stream, in one round trip.
func (w *worker) deadLetters(ctx context.Context, dead []deadLetter) error {
	if len(dead) == 0 {
		return nil
	}
	p := w.o.Redis.Pipeline()
	for _, d := range dead {
		values := []any{FieldID, d.msg.ID}
		for k, v := range d.msg.Values {
			if k != FieldID && k != FieldError {
				values = append(values, k, v)
			}
		}
		values = append(values, FieldError, d.err)
		p.XAdd(ctx, &redis.XAddArgs{Stream: DeadLetterStream(w.spec.Stream), Values: values})
		w.log.Warn().Str("id", d.msg.ID).Str("error", d.err).Str("dead_letters", DeadLetterStream(w.spec.Stream)).Msg("write-behind: an entry cannot apply; moved to the dead-letter stream")
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("append to the dead-letter stream %q: %w", DeadLetterStream(w.spec.Stream), err)
	}
	return nil
}

// ack acknowledges ids and trims the applied entries (below trim) from the
// stream, in one round trip. When it fails the session starts over: the
// entries stay pending, and the next session skips them (they are at or
// below the recorded ID) and acknowledges them then.
func (w *worker) ack(ctx context.Context, ids []string, trim ID) error {
	p := w.o.Redis.Pipeline()
	p.XAck(ctx, w.spec.Stream, Group, ids...)
	p.XTrimMinID(ctx, w.spec.Stream, trim.String())
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("acknowledge applied entries of stream %q: %w", w.spec.Stream, err)
	}
	return nil
}

// isEntryError tells errors caused by a row's data (a type, constraint or
// trigger error), which a dead letter resolves, from the others, which a
// retry may.
func isEntryError(err error) bool {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return false
	}
	switch pg.Code[:2] {
	case "21", "22", "23", "P0":
		return true
	}
	return pg.Code == "42804" // datatype_mismatch
}
