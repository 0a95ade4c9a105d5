package writer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// isMarker reports whether cmd swaps or reads a position marker.
func isMarker(cmd redis.Cmder) bool {
	args := cmd.Args()
	return len(args) > 3 && strings.HasPrefix(fmt.Sprint(args[3]), "cachesync:slot:")
}

// limitedClient is a client of server for a user who may touch only
// cachesync:* and ok:*: its effects on other keys (denied:*) fail with
// NOPERM on every retry, while the position markers stay writable.
func limitedClient(ctx context.Context, t *testing.T, server *testenv.RedisServer, admin *redis.Client) *redis.Client {
	t.Helper()
	if err := admin.Do(ctx, aclSetUser("limited", "+@all", "~cachesync:*", "~ok:*")...).Err(); err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: server.Addr(), Username: "limited", Password: "pw"})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// TestApplyAdvance: on one server the position's swap travels with the
// effects (one round trip for a group), a swap after a failed effect does
// not count (the position stays where it was until every effect is
// applied), and a moved marker is reported as Advance reports it.
func TestApplyAdvance(t *testing.T) {
	t.Parallel()
	server := testenv.StartRedis(t)
	admin := server.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client := limitedClient(ctx, t, server, admin)
	trips := &testenv.RoundTrips{}
	client.AddHook(trips)
	w := writer.New(client, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t)), MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	pos := w.Positions()
	const slot = "aa"
	if _, _, err := pos.Advance(ctx, slot, writer.Position{}, 0x100); err != nil {
		t.Fatal(err)
	}
	from, err := pos.Applied(ctx, slot)
	if err != nil || from.LSN != 0x100 {
		t.Fatalf("Applied = %v, %v", from.LSN, err)
	}
	applied := func() wal.LSN {
		t.Helper()
		p, err := pos.Applied(ctx, slot)
		if err != nil {
			t.Fatal(err)
		}
		return p.LSN
	}
	group := func(end wal.LSN, keys ...string) []mapping.Batch {
		b := mapping.Batch{CommitLSN: end - 1, EndLSN: end}
		for _, k := range keys {
			b.Ops = append(b.Ops, mapping.Op{Kind: mapping.OpDelete, Key: k, Rule: "test"})
		}
		return []mapping.Batch{b}
	}
	// The first Apply loads the scripts: not counted.
	if err := w.Apply(ctx, group(0x100, "ok:0")); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ok:1", "ok:2"} {
		admin.Set(ctx, k, "v", 0)
	}

	// One round trip: the effects and the swap.
	var swapped bool
	var cur writer.Position
	if n := trips.Count(func() { swapped, cur, err = w.ApplyAdvance(ctx, group(0x200, "ok:1", "ok:2"), slot, from, 0x200) }); n != 1 || err != nil || !swapped || cur.LSN != 0x200 {
		t.Fatalf("ApplyAdvance: %d round trips, swapped %v, %s, %v; want 1, true, 0/200", n, swapped, cur.LSN, err)
	}
	if n, _ := admin.Exists(ctx, "ok:1", "ok:2").Result(); n != 0 {
		t.Errorf("%d keys survived", n)
	}
	if got := applied(); got != 0x200 {
		t.Errorf("Applied = %s, want 0/200", got)
	}
	// The old path, for comparison: two.
	from = cur
	if n := trips.Count(func() {
		if err := w.Apply(ctx, group(0x300, "ok:1")); err != nil {
			t.Fatal(err)
		}
		swapped, cur, err = pos.Advance(ctx, slot, from, 0x300)
	}); n != 2 || err != nil || !swapped {
		t.Fatalf("Apply then Advance: %d round trips, swapped %v, %v; want 2", n, swapped, err)
	}
	from = cur

	// An effect that fails on every retry, in the pipeline that carries
	// the swap: the markers are never left ahead of it.
	seen := make(chan wal.LSN, 1)
	watch, stopWatch := context.WithCancel(ctx)
	go func() { // what the position shows while the group is retried
		highest := wal.LSN(0)
		defer func() { seen <- highest }()
		for watch.Err() == nil {
			if v, err := admin.Get(watch, writer.AppliedKey(slot)).Result(); err == nil {
				if l, err := wal.ParseLSN(v); err == nil && l > highest {
					highest = l
				}
			}
		}
	}()
	failing, stop := context.WithTimeout(ctx, 500*time.Millisecond)
	_, _, err = w.ApplyAdvance(failing, group(0x400, "ok:1", "denied:1", "ok:2"), slot, from, 0x400)
	stop()
	stopWatch()
	if err == nil || errors.Is(err, writer.ErrNotAdvanced) {
		t.Fatalf("ApplyAdvance with an effect refused: %v, want the context's error", err)
	}
	if got := applied(); got != 0x300 {
		t.Errorf("Applied = %s after a failed effect, want 0/300", got)
	}
	if w.Stats().Retries < 2 {
		t.Errorf("%d retries: the failing pipeline was not retried", w.Stats().Retries)
	}
	// The swap of the failed attempts was set back at once; a reader may
	// still catch it in between (the effects' own commands before it were
	// executed), which is why undo exists: log what was seen.
	t.Logf("highest position seen while retrying: %s", <-seen)

	// A permanent failure replaced by a fallback, last in the group: the
	// swap after it is sent apart, once the fallback is applied.
	// (A writer of every key: the fallback resets the namespace.)
	full := writer.New(admin, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	admin.HSet(ctx, keyspace.VersionKey("orders:1"), "f", "v")
	bump := []mapping.Batch{{CommitLSN: 0x4ff, EndLSN: 0x500, Ops: []mapping.Op{{Kind: mapping.OpBumpVersion, Key: "orders:1", Rule: "test"}}}}
	swapped, cur, err = full.ApplyAdvance(ctx, bump, slot, from, 0x500)
	if err != nil || !swapped || cur.LSN != 0x500 || applied() != 0x500 || full.Stats().Fallbacks != 1 {
		t.Fatalf("ApplyAdvance with a fallback: swapped %v, %s, %v, %d fallbacks", swapped, cur.LSN, err, full.Stats().Fallbacks)
	}
	from = cur

	// A marker moved by someone else: the effects are applied, the swap
	// is refused and what the marker holds is returned.
	admin.Set(ctx, writer.AppliedKey(slot), wal.LSN(0x777).String(), 0)
	admin.Set(ctx, "ok:1", "v", 0)
	swapped, cur, err = w.ApplyAdvance(ctx, group(0x600, "ok:1"), slot, from, 0x600)
	if err != nil || swapped || cur.LSN != 0x777 {
		t.Fatalf("ApplyAdvance over a moved marker: swapped %v, %s, %v; want false, 0/777", swapped, cur.LSN, err)
	}
	if n, _ := admin.Exists(ctx, "ok:1").Result(); n != 0 {
		t.Error("the effects were not applied")
	}

}

// TestApplyAdvanceUndo: a swap sent after an effect that failed is set back
// before ApplyAdvance goes on, so that between retries the position is
// where it was. The failing effect comes after the swap's server answered
// (one server: in order), so without the undo the marker would be ahead.
func TestApplyAdvanceUndo(t *testing.T) {
	t.Parallel()
	server := testenv.StartRedis(t)
	admin := server.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client := limitedClient(ctx, t, server, admin)
	// Between attempts, read the marker: the backoff is long enough to
	// see what an attempt left.
	var mu sync.Mutex
	var between []string
	w := writer.New(client, writer.Options{
		Logger:     zerolog.New(zerolog.NewTestWriter(t)),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 60 * time.Millisecond,
		Rand: func(n int64) int64 {
			v, _ := admin.Get(context.Background(), writer.AppliedKey("u")).Result()
			mu.Lock()
			between = append(between, v)
			mu.Unlock()
			return 0
		},
	})
	pos := w.Positions()
	if _, _, err := pos.Advance(ctx, "u", writer.Position{}, 0x100); err != nil {
		t.Fatal(err)
	}
	from, _ := pos.Applied(ctx, "u")
	failing, stop := context.WithTimeout(ctx, 400*time.Millisecond)
	defer stop()
	_, _, err := w.ApplyAdvance(failing, []mapping.Batch{{CommitLSN: 0x1ff, EndLSN: 0x200, Ops: []mapping.Op{
		{Kind: mapping.OpDelete, Key: "denied:1", Rule: "test"},
	}}}, "u", from, 0x200)
	if err == nil {
		t.Fatal("ApplyAdvance with a refused effect returned nil")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(between) == 0 {
		t.Fatal("no retry happened")
	}
	for i, v := range between {
		if v != wal.LSN(0x100).String() {
			t.Errorf("between attempts %d the marker held %q, want 0/100", i, v)
		}
	}
}

func init() {
	applyAdvance = func(ctx context.Context, w *writer.Writer, batches []mapping.Batch, slot string, from writer.Position, to wal.LSN) (bool, writer.Position, error) {
		return w.ApplyAdvance(ctx, batches, slot, from, to)
	}
}
