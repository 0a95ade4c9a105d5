package replication

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
)

// A heartbeat and the partition flush messages come back through the
// stream as written: the heartbeat with its time, one message per root.
func TestConnMessagesComeBackThroughTheStream(t *testing.T) {
	b := setupStream(t)
	ctx := context.Background()
	c := &Conn{pg: b.conn}
	at := time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.FixedZone("CET", 3600))
	if err := c.EmitHeartbeat(ctx, at); err != nil {
		t.Fatal(err)
	}
	m := b.next(t, EventMessage).Message
	if got, ok := HeartbeatSent(m); !ok || !got.Equal(at) {
		t.Fatalf("HeartbeatSent(%q: %q) = %s, %v; want %s", m.Prefix, m.Content, got, ok, at)
	}
	roots := []string{"public.a", "s.b"}
	if err := c.EmitPartitionsChanged(ctx, roots); err != nil {
		t.Fatal(err)
	}
	for _, root := range roots {
		m := b.next(t, EventMessage).Message
		if m.Prefix != wal.PartitionsMessagePrefix || string(m.Content) != root {
			t.Fatalf("message %q: %q; want %q: %q", m.Prefix, m.Content, wal.PartitionsMessagePrefix, root)
		}
		if _, ok := HeartbeatSent(m); ok {
			t.Fatalf("a partitions message read as a heartbeat")
		}
	}
}

// Snapshot shows a transaction that has not committed as running, and as
// finished once it committed.
func TestConnSnapshot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.Database(t)
	c, err := Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var xid uint64
	if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	running := func() int {
		t.Helper()
		snap, err := c.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return snap.Running([]uint32{uint32(xid)})
	}
	if n := running(); n != 1 {
		t.Fatalf("open transaction %d: running = %d, want 1", xid, n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := running(); n != 0 {
		t.Fatalf("committed transaction %d: running = %d, want 0", xid, n)
	}
}
