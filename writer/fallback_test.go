package writer_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/writer"
)

// fallbackRecorder collects what Options.OnFallback reports.
type fallbackRecorder struct {
	mu  sync.Mutex
	got []writer.Fallback
}

func (r *fallbackRecorder) record(f writer.Fallback) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, f)
}

func (r *fallbackRecorder) all() []writer.Fallback {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// setupFallbacks is setup with the key space of rule "test" known to the
// writer, and its fallbacks recorded.
func setupFallbacks(t *testing.T, ks mapping.Keyspace) (*testBundle, *fallbackRecorder) {
	t.Helper()
	rec := &fallbackRecorder{}
	tb := setup(t, writer.Options{
		Keyspaces:  map[string]mapping.Keyspace{"test": ks},
		OnFallback: rec.record,
	})
	return tb, rec
}

// applyReturns applies batches and fails the test if Apply does not return
// nil: before fallbacks existed, it retried an operation Redis refuses
// forever and returned only when the context ended.
func (tb *testBundle) applyReturns(t *testing.T, batches ...mapping.Batch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := tb.writer.Apply(ctx, batches); err != nil {
		t.Fatalf("Apply did not return: the pipeline is wedged on an error Redis gives every time: %v", err)
	}
}

func wantFallbacks(t *testing.T, tb *testBundle, rec *fallbackRecorder, want ...writer.Fallback) {
	t.Helper()
	if got := rec.all(); !slices.Equal(got, want) {
		t.Errorf("fallbacks reported %+v, want %+v", got, want)
	}
	if got := tb.writer.Stats().Fallbacks; got != uint64(len(want)) {
		t.Errorf("Stats().Fallbacks = %d, want %d", got, len(want))
	}
}

// A version key that INCR can never increment (not an integer, at the
// largest integer, not a string) must not wedge the pipeline: the namespace
// is reset (version key and every entry deleted) and the rule's key space
// flushed, before Apply returns.
func TestFallbackBrokenVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		break_ func(tb *testBundle, key string)
		reason string
	}{
		{"not an integer", func(tb *testBundle, key string) {
			tb.client.Set(context.Background(), key, "abc", 0)
		}, writer.FallbackVersionNotInteger},
		{"overflow", func(tb *testBundle, key string) {
			tb.client.Set(context.Background(), key, "9223372036854775807", 0)
		}, writer.FallbackVersionOverflow},
		{"wrong type", func(tb *testBundle, key string) {
			tb.client.SAdd(context.Background(), key, "x")
		}, writer.FallbackVersionWrongType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb, rec := setupFallbacks(t, mapping.Keyspace{Keys: []string{"order:*"}, Versions: []string{"orders:*"}})
			ctx := context.Background()
			tc.break_(tb, keyspace.VersionKey("orders:1"))
			tb.client.Set(ctx, keyspace.VersionKey("orders:2"), 4, 0)
			tb.populate(t,
				keyspace.VersionedKey("orders:1", 0, "a"), // cached long ago at version 0
				keyspace.VersionedKey("orders:1", 9, "b"),
				keyspace.VersionedKey("orders:2", 4, "c"),
				"order:1", "after", "other:1")

			tb.applyReturns(t, batch(100, bump("orders:1"), del("after")))

			if tb.exists(t, keyspace.VersionKey("orders:1")) {
				t.Error("the broken version key is still there")
			}
			if left := tb.keysMatching(t, "orders:*"); len(left) != 0 {
				t.Errorf("entries left after the fallback: %q", left)
			}
			if v, _ := tb.get(t, keyspace.VersionKey("orders:2")); v != "5" {
				t.Errorf("version:orders:2 = %q, want 5 (bumped by the rule's flush)", v)
			}
			if tb.exists(t, "order:1") {
				t.Error("order:1 left: the rule's key space was not flushed")
			}
			if tb.exists(t, "after") {
				t.Error("the operation after the failed one was not applied")
			}
			if !tb.exists(t, "other:1") {
				t.Error("a key outside the rule's key space was deleted")
			}
			wantFallbacks(t, tb, rec, writer.Fallback{Rule: "test", Reason: tc.reason, Key: "orders:1"})
		})
	}
}

// A flush that meets a version key it cannot INCR resets that namespace
// instead of failing forever.
func TestFlushResetsBrokenVersion(t *testing.T) {
	t.Parallel()
	tb, rec := setupFallbacks(t, mapping.Keyspace{})
	ctx := context.Background()
	tb.client.Set(ctx, keyspace.VersionKey("orders:1"), "not a number", 0)
	tb.client.Set(ctx, keyspace.VersionKey("orders:2"), 1, 0)
	tb.populate(t, keyspace.VersionedKey("orders:1", 0, "a"), keyspace.VersionedKey("orders:2", 1, "b"))

	tb.applyReturns(t, batch(100, flush(mapping.Keyspace{Versions: []string{"orders:*"}})))

	if tb.exists(t, keyspace.VersionKey("orders:1")) {
		t.Error("the broken version key is still there")
	}
	if v, _ := tb.get(t, keyspace.VersionKey("orders:2")); v != "2" {
		t.Errorf("version:orders:2 = %q, want 2", v)
	}
	if left := tb.keysMatching(t, "orders:*"); len(left) != 0 {
		t.Errorf("entries left: %q", left)
	}
	wantFallbacks(t, tb, rec, writer.Fallback{Rule: "test", Reason: writer.FallbackVersionNotInteger, Key: "orders:1"})
}

// A tag key that is not a set lost its members: the rule's key space is
// flushed, then the key deleted.
func TestFallbackTagWrongType(t *testing.T) {
	t.Parallel()
	tb, rec := setupFallbacks(t, mapping.Keyspace{Keys: []string{"user:*"}, Tags: []string{"org:*"}})
	ctx := context.Background()
	tb.client.Set(ctx, keyspace.TagKey("org:1"), "not a set", 0)
	tb.populate(t, "user:1", "user:2", "after", "other:1")
	tb.client.SAdd(ctx, keyspace.TagKey("org:2"), "user:2")

	tb.applyReturns(t, batch(100, delTag("org:1"), del("after")))

	if tb.exists(t, keyspace.TagKey("org:1")) {
		t.Error("the broken tag key is still there")
	}
	if left := tb.keysMatching(t, "user:*"); len(left) != 0 {
		t.Errorf("keys of the rule left: %q", left)
	}
	if tb.exists(t, "after") {
		t.Error("the operation after the failed one was not applied")
	}
	if !tb.exists(t, "other:1") {
		t.Error("a key outside the rule's key space was deleted")
	}
	wantFallbacks(t, tb, rec, writer.Fallback{Rule: "test", Reason: writer.FallbackTagWrongType, Key: "org:1"})
}

// A write-through value larger than proto-max-bulk-len makes Redis drop the
// connection, every time. It is never sent: the key is unset instead (the
// old value deleted, the change's LSN left in the guard).
func TestFallbackValueTooLarge(t *testing.T) {
	t.Parallel()
	tb, rec := setupFallbacks(t, mapping.Keyspace{Keys: []string{"doc:*"}})
	ctx := context.Background()
	const limit = 1 << 20 // the smallest proto-max-bulk-len Redis accepts
	if err := tb.client.ConfigSet(ctx, "proto-max-bulk-len", "1048576").Err(); err != nil {
		t.Fatalf("CONFIG SET proto-max-bulk-len: %v", err)
	}
	tb.populate(t, "doc:1", "after")
	big := strings.Repeat("x", limit+1)

	tb.applyReturns(t, batch(100, set("doc:1", big, 100, 0, 0), del("after"), set("doc:2", "small", 100, 0, 0)))

	if tb.exists(t, "doc:1") {
		t.Error("doc:1 still holds its old value")
	}
	if g, _ := tb.get(t, keyspace.GuardKey("doc:1")); g != keyspace.EncodeLSN(100) {
		t.Errorf("guard of doc:1 = %q, want the change's LSN %s (a tombstone)", g, keyspace.EncodeLSN(100))
	}
	if tb.exists(t, "after") {
		t.Error("the operation after the large one was not applied")
	}
	if v, _ := tb.get(t, "doc:2"); v != "small" {
		t.Errorf("doc:2 = %q, want small", v)
	}
	// The tombstone keeps an older redelivered change out.
	tb.applyReturns(t, batch(50, set("doc:1", "older", 50, 0, 0)))
	if tb.exists(t, "doc:1") {
		t.Error("an older change wrote doc:1 back over the tombstone")
	}
	wantFallbacks(t, tb, rec, writer.Fallback{Rule: "test", Reason: writer.FallbackValueTooLarge, Key: "doc:1"})
}
