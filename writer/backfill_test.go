package writer_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// fillOp is a backfill's op: its LSN is not used (Fill guards with A-1).
func fillOp(op mapping.Op) mapping.Op { op.LSN = 0; return op }

func (tb *testBundle) fill(t *testing.T, applied wal.LSN, ops ...mapping.Op) writer.FillResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	res, err := tb.writer.Fill(ctx, applied, ops)
	if err != nil {
		t.Fatalf("Fill: %v", err)
	}
	return res
}

func (tb *testBundle) value(t *testing.T, key string) string {
	t.Helper()
	v, _ := tb.get(t, key)
	return v
}

// TestFillRule checks the FILL rule of a backfill that read its rows after
// reading the applied position A: it writes over no guard, a guard of
// another history or one below A, and leaves A-1; a stream effect with a
// commit LSN >= A, applied before or after, wins; one below A cannot write
// over the fill.
func TestFillRule(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	h := keyspace.History("7000000000000000001", 1)
	tb.writer.SetHistory(h)
	const A = wal.LSN(0x5000)

	// Before the fill: p:1 written by the stream at A (not seen by the
	// snapshot), p:2 at A+5, p:3 at A-10 (seen by it), p:4 nothing, p:5
	// an unset at A-1, p:6 a tombstone at A.
	tb.apply(t, batch(A, set("p:1", "stream", A, 0, 0)))
	tb.apply(t, batch(A+5, set("p:2", "stream", A+5, time.Hour, 0)))
	tb.apply(t, batch(A-10, set("p:3", "old", A-10, 0, 0)))
	tb.apply(t, batch(A-1, unset("p:5", A-1)))
	tb.apply(t, batch(A, unset("p:6", A)))
	res := tb.fill(t, A,
		fillOp(set("p:1", "fill", 0, 0, 0)), fillOp(set("p:2", "fill", 0, 0, 0)),
		fillOp(set("p:3", "fill", 0, time.Hour, 0)), fillOp(set("p:4", "fill", 0, 0, 0)),
		fillOp(set("p:5", "fill", 0, 0, 0)), fillOp(set("p:6", "fill", 0, 0, 0)))
	if res.Written != 3 || res.Skipped != 3 {
		t.Errorf("Fill: %+v, want 3 written (p:3, p:4, p:5) and 3 skipped", res)
	}
	for key, want := range map[string]string{"p:1": "stream", "p:2": "stream", "p:3": "fill", "p:4": "fill", "p:5": "fill", "p:6": ""} {
		if v := tb.value(t, key); v != want {
			t.Errorf("%s = %q after the fill, want %q", key, v, want)
		}
	}
	for _, key := range []string{"p:3", "p:4", "p:5"} {
		if g := tb.value(t, keyspace.GuardKey(key)); g != keyspace.EncodeGuard(uint64(A-1), h) {
			t.Errorf("guard of %s = %q, want A-1 %q", key, g, keyspace.EncodeGuard(uint64(A-1), h))
		}
	}
	if g := tb.value(t, keyspace.GuardKey("p:2")); g != keyspace.EncodeGuard(uint64(A+5), h) {
		t.Errorf("guard of p:2 = %q: a fill lowered a higher guard", g)
	}
	if ttl := tb.client.PTTL(context.Background(), "p:3").Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("p:3 PTTL %v, want the op's TTL", ttl)
	}

	// After the fill: a redelivered older change (commit LSN < A, which
	// the snapshot saw) cannot write over it; a newer one can.
	tb.apply(t, batch(A-1, set("p:3", "older", A-1, 0, 0), set("p:4", "older", A-10, 0, 0)))
	if v := tb.value(t, "p:3"); v != "fill" {
		t.Errorf("p:3 = %q: a change below A wrote over the fill", v)
	}
	if v := tb.value(t, "p:4"); v != "fill" {
		t.Errorf("p:4 = %q: a change below A wrote over the fill", v)
	}
	tb.apply(t, batch(A, set("p:3", "newer", A, 0, 0), unset("p:4", A)))
	if v := tb.value(t, "p:3"); v != "newer" {
		t.Errorf("p:3 = %q: a change at A did not overwrite the fill", v)
	}
	if tb.exists(t, "p:4") {
		t.Error("p:4: an unset at A did not delete the fill")
	}

	// A fill's unset deletes, under the same rule.
	tb.apply(t, batch(A-20, set("p:7", "old", A-20, 0, 0)))
	if res := tb.fill(t, A, fillOp(unset("p:7", 0)), fillOp(unset("p:1", 0))); res.Written != 1 || res.Skipped != 1 {
		t.Errorf("Fill of unsets: %+v, want 1 written, 1 skipped", res)
	}
	if tb.exists(t, "p:7") || tb.value(t, "p:1") != "stream" {
		t.Errorf("after the unsets: p:7 exists %v, p:1 = %q", tb.exists(t, "p:7"), tb.value(t, "p:1"))
	}

	// A guard of another history counts as absent, whatever its LSN.
	tb.writer.SetHistory(keyspace.History("7000000000000000002", 1))
	if res := tb.fill(t, 0x100, fillOp(set("p:2", "new history", 0, 0, 0))); res.Written != 1 {
		t.Errorf("Fill over another history's guard: %+v, want written", res)
	}
	if v := tb.value(t, "p:2"); v != "new history" {
		t.Errorf("p:2 = %q, want the new history's fill", v)
	}
}

// TestUndoFill checks that the undo of a chunk deletes only the keys whose
// guard still holds exactly A-1 of the history: those nothing touched
// since the fill.
func TestUndoFill(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	h := keyspace.History("7000000000000000001", 1)
	tb.writer.SetHistory(h)
	const A = wal.LSN(0x5000)
	tb.fill(t, A, fillOp(set("u:1", "fill", 0, 0, 0)), fillOp(set("u:2", "fill", 0, 0, 0)),
		fillOp(set("u:3", "fill", 0, 0, 0)))
	tb.apply(t, batch(A, set("u:2", "stream", A, 0, 0))) // touched since
	// u:4: A-1 of another history; u:5: A-2 of this one.
	tb.client.Set(context.Background(), "u:4", "x", 0)
	tb.client.Set(context.Background(), keyspace.GuardKey("u:4"), keyspace.EncodeGuard(uint64(A-1), "other/1"), 0)
	tb.client.Set(context.Background(), "u:5", "x", 0)
	tb.client.Set(context.Background(), keyspace.GuardKey("u:5"), keyspace.EncodeGuard(uint64(A-2), h), 0)
	n, err := tb.writer.UndoFill(context.Background(), A, []string{"u:1", "u:2", "u:3", "u:4", "u:5"})
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || tb.exists(t, "u:1") || tb.exists(t, "u:3") {
		t.Errorf("UndoFill deleted %d; u:1 exists %v, u:3 exists %v; want u:1 and u:3 gone", n, tb.exists(t, "u:1"), tb.exists(t, "u:3"))
	}
	for _, key := range []string{"u:2", "u:4", "u:5"} {
		if !tb.exists(t, key) {
			t.Errorf("%s: undone, though its guard is not this fill's", key)
		}
	}
}

// TestFlushCountedBeforeDeleting holds a flush mid-way and looks at the
// rule's flush counter there: the writer's Redis user may not UNLINK, so
// the flush fails at its first deletion and retries; by then the counter
// must have moved, while every key is still there. A counter incremented
// after the deletions (or never) is still absent at that point.
func TestFlushCountedBeforeDeleting(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()
	tb.populate(t, "product:1", "product:2", "product:3")
	if err := tb.client.Do(ctx, "ACL", "SETUSER", "nounlink", "on", "nopass", "~*", "&*", "+@all", "-unlink").Err(); err != nil {
		t.Fatal(err)
	}
	held := redis.NewClient(&redis.Options{Addr: tb.server.Addr(), Username: "nounlink", Password: "x"})
	defer held.Close()
	w := writer.New(held, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t)), MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := startApply(actx, w, batch(10, mapping.Op{Kind: mapping.OpFlush, Rule: "product", Reason: "truncate",
		Keyspace: &mapping.Keyspace{Keys: []string{"product:*"}}}))
	waitBlocked(t, w, done, 2)
	if c, _ := tb.get(t, writer.FlushCounterKey("product")); c == "" {
		t.Fatal("the flush was refused its first deletion, and the rule's flush counter has not moved: a backfill would not see this flush")
	}
	for _, key := range []string{"product:1", "product:2", "product:3"} {
		if !tb.exists(t, key) {
			t.Fatalf("%s gone: the flush deleted despite NOPERM", key)
		}
	}
	before, _ := tb.get(t, writer.FlushCounterKey("product"))
	cancel()
	waitDone(t, done)

	// A flush that completes moves the counter on, from any start.
	tb.apply(t, batch(11, flush(mapping.Keyspace{Keys: []string{"product:*"}})))
	if c, _ := tb.get(t, writer.FlushCounterKey("test")); c == "" {
		t.Error("a completed flush did not count")
	}
	tb.apply(t, batch(12, mapping.Op{Kind: mapping.OpFlush, Rule: "product", Reason: "truncate",
		Keyspace: &mapping.Keyspace{Keys: []string{"product:*"}}}))
	if after, _ := tb.get(t, writer.FlushCounterKey("product")); after == before {
		t.Errorf("flush counter %q unchanged by a flush", after)
	}
	if tb.exists(t, "product:1") {
		t.Error("product:1 survived the flush")
	}
}

// TestCheckpointRoundTrip writes and reads a backfill checkpoint and the
// flush counter through Positions.
func TestCheckpointRoundTrip(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()
	p := tb.writer.Positions()
	if _, ok, err := p.Checkpoint(ctx, "product"); ok || err != nil {
		t.Fatalf("Checkpoint of a new cache: ok %v, err %v", ok, err)
	}
	if m, err := p.FlushCount(ctx, "product"); m != "" || err != nil {
		t.Fatalf("FlushCount of a new cache: %q, %v", m, err)
	}
	cp := writer.Checkpoint{Flushes: "7", LastKey: []string{"1", "a b"}, Rows: 42, Total: 100, Started: time.Unix(1700000000, 0).UTC()}
	if err := p.SetCheckpoint(ctx, "product", cp); err != nil {
		t.Fatal(err)
	}
	got, ok, err := p.Checkpoint(ctx, "product")
	if err != nil || !ok || got.Flushes != "7" || len(got.LastKey) != 2 || got.LastKey[1] != "a b" || got.Rows != 42 || !got.Started.Equal(cp.Started) || !got.Finished.IsZero() {
		t.Fatalf("Checkpoint = %+v, %v, %v; want %+v", got, ok, err, cp)
	}
}
