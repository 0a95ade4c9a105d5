package cacheaside_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/writebehind"
)

type counter struct {
	ID   int    `json:"id"`
	Hits int    `json:"hits"`
	Note string `json:"note,omitempty"`
}

// newWriteBehind is a test's env, its client with opts, and the stream
// wb:counters.
func newWriteBehind(t *testing.T, opts cacheaside.Options) (*env, *cacheaside.Client, *cacheaside.WriteBehindStream) {
	t.Helper()
	e := newEnv(t)
	c := e.client(t, opts)
	return e, c, c.WriteBehindStream("wb:counters")
}

// streamEntries returns the stream's entries as XRANGE gives them.
func streamEntries(t *testing.T, rdb redis.Cmdable, stream string) []redis.XMessage {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE %s: %v", stream, err)
	}
	return msgs
}

// assertEntry checks that msg is exactly the entry op, row (the values of
// a Redis Stream entry are strings).
func assertEntry(t *testing.T, msg redis.XMessage, id, op, row string) {
	t.Helper()
	want := map[string]any{"op": op, "row": row}
	if msg.ID != id || !reflect.DeepEqual(msg.Values, want) {
		t.Errorf("entry %s %v, want %s %v", msg.ID, msg.Values, id, want)
	}
}

// TestWriteBehindEntryFormat: the field names and operations the client
// appends are the ones the worker reads.
func TestWriteBehindEntryFormat(t *testing.T) {
	t.Parallel()
	for _, c := range [][2]string{
		{keyspace.WriteBehindFieldOp, writebehind.FieldOp},
		{keyspace.WriteBehindFieldRow, writebehind.FieldRow},
		{keyspace.WriteBehindOpUpsert, writebehind.OpUpsert},
		{keyspace.WriteBehindOpDelete, writebehind.OpDelete},
	} {
		if c[0] != c[1] {
			t.Errorf("keyspace says %q where writebehind says %q: the client's entries would not be read", c[0], c[1])
		}
	}
}

// TestWriteBehind: the key and the entry are both written, in the public
// format; the value is read back by Get and GetOrLoad without a load; a
// delete appends op delete and removes the key.
func TestWriteBehind(t *testing.T) {
	t.Parallel()
	e, c, wb := newWriteBehind(t, cacheaside.Options{TTL: 10 * time.Second})
	ctx := context.Background()
	// The scripts are loaded on first use, and again after a flush.
	if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	v := counter{ID: 42, Hits: 7, Note: "a \"quoted\" note"}
	id, err := cacheaside.WriteBehind(ctx, wb, "counter:42", v, v, cacheaside.Tags("counters"))
	if err != nil {
		t.Fatal(err)
	}
	entries := streamEntries(t, e.rdb, "wb:counters")
	if len(entries) != 1 {
		t.Fatalf("%d entries, want 1", len(entries))
	}
	assertEntry(t, entries[0], id, "upsert", `{"id":42,"hits":7,"note":"a \"quoted\" note"}`)
	if raw, _ := e.get(t, "counter:42"); raw != `{"id":42,"hits":7,"note":"a \"quoted\" note"}` {
		t.Errorf("counter:42 = %q", raw)
	}
	if ttl := e.rdb.PTTL(ctx, "counter:42").Val(); ttl < 8*time.Second || ttl > 11*time.Second {
		t.Errorf("counter:42 has a TTL of %s, want 10s ± 10%%", ttl)
	}
	if got, err := cacheaside.Get[counter](ctx, c, "counter:42"); err != nil || got != v {
		t.Errorf("Get = %+v, %v; want %+v", got, err, v)
	}
	got, err := cacheaside.GetOrLoad(ctx, c, "counter:42", func(context.Context) (counter, error) {
		t.Error("GetOrLoad loaded a key WriteBehind had just written")
		return counter{}, nil
	})
	if err != nil || got != v {
		t.Errorf("GetOrLoad = %+v, %v; want %+v", got, err, v)
	}
	if !e.rdb.SIsMember(ctx, keyspace.TagKey("counters"), "counter:42").Val() {
		t.Error("counter:42 is not registered under its tag")
	}

	// A row of other columns than the value, as a map; the value is a number.
	id2, err := cacheaside.WriteBehind(ctx, wb, "hits:42", 8, map[string]any{"id": 42, "hits": 8})
	if err != nil {
		t.Fatal(err)
	}
	id3, err := cacheaside.WriteBehindDelete(ctx, wb, "counter:42", map[string]any{"id": 42})
	if err != nil {
		t.Fatal(err)
	}
	entries = streamEntries(t, e.rdb, "wb:counters")
	if len(entries) != 3 {
		t.Fatalf("%d entries, want 3", len(entries))
	}
	assertEntry(t, entries[1], id2, "upsert", `{"hits":8,"id":42}`)
	assertEntry(t, entries[2], id3, "delete", `{"id":42}`)
	if _, ok := e.get(t, "counter:42"); ok {
		t.Error("counter:42 still cached after WriteBehindDelete")
	}
	if raw, _ := e.get(t, "hits:42"); raw != "8" {
		t.Errorf("hits:42 = %q, want 8", raw)
	}
	// Versioned: the key in the namespace's current version, as Set writes it.
	e.rdb.Set(ctx, keyspace.VersionKey("stats"), 3, 0)
	if _, err := cacheaside.WriteBehind(ctx, wb, "hits:42", 9, map[string]any{"id": 42, "hits": 9}, cacheaside.Versioned("stats")); err != nil {
		t.Fatal(err)
	}
	if raw, _ := e.get(t, keyspace.VersionedKey("stats", 3, "hits:42")); raw != "9" {
		t.Errorf("%s = %q, want 9", keyspace.VersionedKey("stats", 3, "hits:42"), raw)
	}
	if st := c.Stats(); st.RedisErrors != 0 {
		t.Errorf("RedisErrors = %d", st.RedisErrors)
	}
}

// TestWriteBehindRefusesBadRows: a row that is not a JSON object with a
// column is refused before Redis is touched.
func TestWriteBehindRefusesBadRows(t *testing.T) {
	t.Parallel()
	e, c, wb := newWriteBehind(t, cacheaside.Options{})
	ctx := context.Background()
	for _, row := range []any{
		42, "text", `{"id":1}`, []int{1}, nil, map[string]any{}, struct{}{},
		json.RawMessage(`[1]`), []byte(`{"id":1}`), (*counter)(nil),
	} {
		if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 1, row); !errors.Is(err, cacheaside.ErrRowNotObject) || !strings.Contains(err.Error(), "counter:1") {
			t.Errorf("WriteBehind with row %#v: %v, want ErrRowNotObject naming the key", row, err)
		}
		if _, err := cacheaside.WriteBehindDelete(ctx, wb, "counter:1", row); !errors.Is(err, cacheaside.ErrRowNotObject) {
			t.Errorf("WriteBehindDelete with row %#v: %v, want ErrRowNotObject", row, err)
		}
	}
	if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 1, map[string]any{"bad": func() {}}); err == nil || errors.Is(err, cacheaside.ErrRowNotObject) {
		t.Errorf("a row that does not encode: %v", err)
	}
	if _, err := cacheaside.WriteBehind(ctx, c.WriteBehindStream(""), "counter:1", 1, counter{ID: 1}); err == nil || !strings.Contains(err.Error(), "no name") {
		t.Errorf("a stream without a name: %v", err)
	}
	if n := e.rdb.DBSize(ctx).Val(); n != 0 {
		t.Errorf("%d keys written by refused writes: %v", n, e.rdb.Keys(ctx, "*").Val())
	}
}

// TestWriteBehindAtomic: the script writes both or neither. When the stream
// cannot take the entry (its key holds a string), the cache key is left as
// it was, for a write and for a delete, and the error is returned.
func TestWriteBehindAtomic(t *testing.T) {
	t.Parallel()
	e, _, wb := newWriteBehind(t, cacheaside.Options{})
	ctx := context.Background()
	e.rdb.Set(ctx, "wb:counters", "not a stream", 0)
	e.rdb.Set(ctx, "counter:1", "before", 0)
	if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 2, counter{ID: 1, Hits: 2}); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") || !strings.Contains(err.Error(), "nothing was written") {
		t.Errorf("WriteBehind to a stream key of another type: %v, want the WRONGTYPE error", err)
	}
	if _, err := cacheaside.WriteBehindDelete(ctx, wb, "counter:1", counter{ID: 1}); err == nil {
		t.Error("WriteBehindDelete to a stream key of another type succeeded")
	}
	if v, _ := e.get(t, "counter:1"); v != "before" {
		t.Errorf("counter:1 = %q after the failed writes, want it untouched", v)
	}
	if v, _ := e.get(t, "wb:counters"); v != "not a stream" {
		t.Errorf("wb:counters = %q", v)
	}
}

// TestWriteBehindRefusesFillsInFlight: a GetOrLoad that read the row before
// another request's WriteBehind must not overwrite the written value with
// the older row afterwards.
func TestWriteBehindRefusesFillsInFlight(t *testing.T) {
	t.Parallel()
	e, c, wb := newWriteBehind(t, cacheaside.Options{})
	ctx := context.Background()
	old, updated := counter{ID: 1, Hits: 1}, counter{ID: 1, Hits: 2}
	load := func(ctx context.Context) (counter, error) {
		row := old // the SELECT returned the row before the write
		if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", updated, updated); err != nil {
			t.Error(err)
		}
		return row, nil
	}
	if got, err := cacheaside.GetOrLoad(ctx, c, "counter:1", load); err != nil || got != old {
		t.Fatalf("got %+v, %v; the reader still gets what it loaded", got, err)
	}
	if got, err := cacheaside.Get[counter](ctx, c, "counter:1"); err != nil || got != updated {
		t.Errorf("counter:1 = %+v, %v after the fill that began before WriteBehind; want %+v", got, err, updated)
	}
	if st := c.Stats(); st.FencedFills != 1 {
		t.Errorf("FencedFills = %d, want 1", st.FencedFills)
	}
	// The same for a delete: the older row is not cached again.
	_, err := cacheaside.GetOrLoad(ctx, c, "counter:2", func(ctx context.Context) (counter, error) {
		if _, err := cacheaside.WriteBehindDelete(ctx, wb, "counter:2", counter{ID: 2}); err != nil {
			t.Error(err)
		}
		return counter{ID: 2, Hits: 5}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := e.get(t, "counter:2"); ok {
		t.Errorf("counter:2 = %q: the fill that began before WriteBehindDelete wrote the deleted row", v)
	}
}

// TestWriteBehindRedisDown: with Redis down a write-behind write fails,
// even while reads bypass Redis: it would be lost.
func TestWriteBehindRedisDown(t *testing.T) {
	t.Parallel()
	e, c, wb := newWriteBehind(t, cacheaside.Options{RedisRetryAfter: time.Hour})
	ctx := context.Background()
	e.server.Stop(t)
	// A read fails over to the source, and later reads bypass Redis.
	if _, err := cacheaside.GetOrLoad(ctx, c, "counter:1", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 2, counter{ID: 1, Hits: 2}); err == nil || !strings.Contains(err.Error(), "nothing was written") {
		t.Errorf("WriteBehind with Redis down: %v, want an error", err)
	}
	if _, err := cacheaside.WriteBehindDelete(ctx, wb, "counter:1", counter{ID: 1}); err == nil {
		t.Error("WriteBehindDelete with Redis down succeeded")
	}
	e.server.Start(t)
	if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 3, counter{ID: 1, Hits: 3}); err != nil {
		t.Errorf("WriteBehind after Redis returned (reads still bypass it): %v", err)
	}
	if entries := streamEntries(t, e.rdb, "wb:counters"); len(entries) != 1 {
		t.Errorf("%d entries, want the one written after Redis returned", len(entries))
	}
}

// TestWriteBehindCluster: on Redis Cluster a key and a stream with the same
// hash tag are written in one step; without one, the write is refused with
// ErrCrossSlot and nothing is written, and so it is when the refusal comes
// from Redis itself (a plain client on one node).
func TestWriteBehindCluster(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{ReplicasPerMaster: -1})
	rdb := cluster.Client(t)
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	wb := c.WriteBehindStream("{counters}:wb")
	id, err := cacheaside.WriteBehind(ctx, wb, "{counters}:42", 7, counter{ID: 42, Hits: 7}, cacheaside.Tags("hot"))
	if err != nil {
		t.Fatal(err)
	}
	if entries := streamEntries(t, rdb, "{counters}:wb"); len(entries) != 1 {
		t.Errorf("%d entries, want 1", len(entries))
	} else {
		assertEntry(t, entries[0], id, "upsert", `{"id":42,"hits":7}`)
	}
	if v, err := cacheaside.Get[int](ctx, c, "{counters}:42"); err != nil || v != 7 {
		t.Errorf("Get = %d, %v", v, err)
	}
	if _, err := cacheaside.WriteBehindDelete(ctx, wb, "{counters}:42", map[string]int{"id": 42}); err != nil {
		t.Fatal(err)
	}

	// Different slots: refused before sending.
	_, err = cacheaside.WriteBehind(ctx, c.WriteBehindStream("wb:counters"), "counter:42", 7, counter{ID: 42})
	if !errors.Is(err, cacheaside.ErrCrossSlot) || !strings.Contains(err.Error(), "same hash tag") {
		t.Errorf("cross-slot WriteBehind: %v, want ErrCrossSlot saying to use a hash tag", err)
	}
	if _, err := cacheaside.WriteBehindDelete(ctx, c.WriteBehindStream("wb:counters"), "counter:42", counter{ID: 42}); !errors.Is(err, cacheaside.ErrCrossSlot) {
		t.Errorf("cross-slot WriteBehindDelete: %v, want ErrCrossSlot", err)
	}
	if n := rdb.Exists(ctx, "wb:counters").Val() + rdb.Exists(ctx, "counter:42").Val(); n != 0 {
		t.Errorf("the refused write left %d keys", n)
	}

	// Different slots through a client that does not know the cluster:
	// Redis refuses the script (CROSSSLOT), and the error says the same.
	node := redis.NewClient(&redis.Options{Addr: cluster.MasterOf(t, "counter:42").Addr})
	defer node.Close()
	nc, err := cacheaside.New(node, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, err = cacheaside.WriteBehind(ctx, nc.WriteBehindStream("wb:counters"), "counter:42", 7, counter{ID: 42})
	if !errors.Is(err, cacheaside.ErrCrossSlot) || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Errorf("cross-slot WriteBehind on one node: %v, want ErrCrossSlot with Redis's CROSSSLOT", err)
	}
	if n := rdb.Exists(ctx, "wb:counters").Val() + rdb.Exists(ctx, "counter:42").Val(); n != 0 {
		t.Errorf("the refused write left %d keys", n)
	}
}
