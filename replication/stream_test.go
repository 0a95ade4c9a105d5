package replication

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type streamBundle struct {
	conn   *pgx.Conn
	stream *Stream
	events chan Event
	errc   chan error
	start  wal.LSN
}

// setupStream creates a table in the publication, a table outside it, the
// slot, and runs a Stream whose events the test consumes.
func setupStream(t *testing.T) *streamBundle {
	t.Helper()
	return setupStreamWith(t, func(*StreamOptions) {})
}

// setupStreamWith is setupStream with options of the test's.
func setupStreamWith(t *testing.T, opt func(*StreamOptions)) *streamBundle {
	t.Helper()
	t.Parallel()
	ctx := context.Background()
	url := testenv.Database(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, `CREATE TABLE watched (id int PRIMARY KEY, v text); CREATE TABLE busy (id int, v text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsurePublication(ctx, conn, "pub", []config.TableName{{Schema: "public", Name: "watched"}}); err != nil {
		t.Fatal(err)
	}
	var slot string
	conn.QueryRow(ctx, "SELECT left(current_database(), 63)").Scan(&slot)
	repl, err := ConnectReplication(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	start, err := CreateSlot(ctx, repl, slot, false)
	if err != nil {
		t.Fatal(err)
	}
	b := &streamBundle{conn: conn, events: make(chan Event, 64), errc: make(chan error, 1), start: start}
	opts := StreamOptions{Slot: slot, Publication: "pub", StatusInterval: time.Second, MessagePrefix: "cachesync"}
	opt(&opts)
	b.stream = NewStream(repl, opts)
	runCtx, cancel := context.WithCancel(ctx)
	go func() { b.errc <- b.stream.Run(runCtx, start, b.events) }()
	t.Cleanup(func() {
		cancel()
		if err := <-b.errc; err != nil {
			t.Errorf("stream: %v", err)
		}
		repl.Close(context.Background())
	})
	return b
}

func (b *streamBundle) confirmed(t *testing.T) wal.LSN {
	t.Helper()
	var s string
	if err := b.conn.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", b.stream.opts.Slot).Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, err := wal.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (b *streamBundle) next(t *testing.T, kind EventKind) Event {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ev := <-b.events:
			if ev.Kind == kind {
				return ev
			}
		case err := <-b.errc:
			t.Fatalf("stream ended: %v", err)
		case <-deadline:
			t.Fatalf("no %v event within 30s", kind)
		}
	}
}

// The slot only moves to what the consumer confirmed, although status
// updates flow all along.
func TestStreamConfirmsOnlyWhatWasApplied(t *testing.T) {
	b := setupStream(t)
	ctx := context.Background()
	if _, err := b.conn.Exec(ctx, `INSERT INTO watched VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	commit := b.next(t, EventCommit).Commit
	// Several status intervals pass; nothing was confirmed, so the slot stays.
	var updates int
	testenv.Eventually(t, 30*time.Second, "status updates sent", func() (bool, string) {
		b.conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'cachesync' AND reply_time > now() - interval '1 second'").Scan(&updates)
		return updates > 0, "no reply within the last second"
	})
	if got := b.confirmed(t); got >= commit.EndLSN {
		t.Fatalf("slot confirmed %s before the transaction ending at %s was applied", got, commit.EndLSN)
	}
	b.stream.Confirm(commit.EndLSN)
	testenv.Eventually(t, 30*time.Second, "slot confirms the commit end", func() (bool, string) {
		got := b.confirmed(t)
		return got >= commit.EndLSN, fmt.Sprintf("confirmed %s, want %s", got, commit.EndLSN)
	})
	// Confirm never moves backwards.
	b.stream.Confirm(b.start)
	if b.stream.Applied() != commit.EndLSN {
		t.Errorf("applied moved back to %s", b.stream.Applied())
	}
}

// Writes to tables outside the publication produce no transactions for us,
// but keepalives carry barriers past them, so retained WAL does not grow.
func TestStreamBarrierAdvancesPastUnrelatedWAL(t *testing.T) {
	b := setupStream(t)
	ctx := context.Background()
	if _, err := b.conn.Exec(ctx, `INSERT INTO busy SELECT g, 'x' FROM generate_series(1, 5000) g`); err != nil {
		t.Fatal(err)
	}
	var s string
	b.conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s)
	written, _ := wal.ParseLSN(s)
	var barrier wal.LSN
	testenv.Eventually(t, 30*time.Second, "a barrier past the unrelated WAL", func() (bool, string) {
		select {
		case ev := <-b.events:
			if ev.Kind == EventCommit {
				t.Fatalf("a transaction on an unpublished table reached us: %+v", ev.Commit)
			}
			if ev.Kind == EventBarrier {
				barrier = ev.Barrier
				b.stream.Confirm(barrier)
			}
		default:
		}
		return barrier >= written, fmt.Sprintf("last barrier %s, want %s", barrier, written)
	})
	testenv.Eventually(t, 30*time.Second, "slot follows the barrier", func() (bool, string) {
		got := b.confirmed(t)
		return got >= written, fmt.Sprintf("confirmed %s, want %s", got, written)
	})
}

// countingBudget is a Budget with room for everything that counts how it is
// asked.
type countingBudget struct{ tries, waits atomic.Int64 }

func (c *countingBudget) Acquire(context.Context, int64) error { c.waits.Add(1); return nil }
func (c *countingBudget) TryAcquire(int64) bool                { c.tries.Add(1); return true }

// The stream reads on across many idle read windows (each a read deadline
// that expires), stamps a commit with when it was read, takes its budget
// without waiting while there is room, and reports each status update it
// sends with the position it confirmed.
func TestStreamReadsAcrossWindowsAndReportsStatus(t *testing.T) {
	budget := &countingBudget{}
	var statuses atomic.Int64
	var flushed atomic.Uint64
	b := setupStreamWith(t, func(o *StreamOptions) {
		o.Budget = budget
		o.OnStatus = func(flush wal.LSN, at time.Time) {
			statuses.Add(1)
			flushed.Store(uint64(flush))
		}
	})
	ctx := context.Background()
	// Two status updates are a second apart: ten read windows expired.
	testenv.Eventually(t, 30*time.Second, "two status updates", func() (bool, string) {
		return statuses.Load() >= 2, fmt.Sprintf("%d status updates", statuses.Load())
	})
	before := time.Now()
	if _, err := b.conn.Exec(ctx, `INSERT INTO watched VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	ev := b.next(t, EventCommit)
	if ev.Received.Before(before) || time.Since(ev.Received) > 30*time.Second {
		t.Errorf("commit stamped received at %v, the insert began at %v", ev.Received, before)
	}
	if budget.tries.Load() == 0 || budget.waits.Load() != 0 {
		t.Errorf("budget asked %d times without waiting and %d times waiting; want only the former", budget.tries.Load(), budget.waits.Load())
	}
	b.stream.Confirm(ev.Commit.EndLSN)
	testenv.Eventually(t, 30*time.Second, "a status update confirming the commit", func() (bool, string) {
		return wal.LSN(flushed.Load()) >= ev.Commit.EndLSN, fmt.Sprintf("last status confirmed %s, want %s", wal.LSN(flushed.Load()), ev.Commit.EndLSN)
	})
}
