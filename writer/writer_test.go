package writer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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

func TestMain(m *testing.M) { testenv.Main(m) }

// waitTimeout bounds every wait for an effect that should happen soon.
const waitTimeout = 30 * time.Second

type testBundle struct {
	server *testenv.RedisServer
	client *redis.Client
	writer *writer.Writer
}

// setup starts a private redis-server and a Writer on it. opts may leave
// fields zero; the logger goes to the test log.
func setup(t *testing.T, opts writer.Options) *testBundle {
	t.Helper()
	server := testenv.StartRedis(t)
	client := server.Client(t)
	opts.Logger = zerolog.New(zerolog.NewTestWriter(t))
	return &testBundle{server: server, client: client, writer: writer.New(client, opts)}
}

func (tb *testBundle) apply(t *testing.T, batches ...mapping.Batch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := tb.writer.Apply(ctx, batches); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// populate sets every key to "v" in pipelines.
func (tb *testBundle) populate(t *testing.T, keys ...string) {
	t.Helper()
	ctx := context.Background()
	for chunk := range slices.Chunk(keys, 1000) {
		_, err := tb.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, k := range chunk {
				pipe.Set(ctx, k, "v", 0)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("populate: %v", err)
		}
	}
}

func (tb *testBundle) exists(t *testing.T, key string) bool {
	t.Helper()
	n, err := tb.client.Exists(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("EXISTS %s: %v", key, err)
	}
	return n == 1
}

func (tb *testBundle) get(t *testing.T, key string) (string, bool) {
	t.Helper()
	v, err := tb.client.Get(context.Background(), key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false
	}
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	return v, true
}

// keysMatching returns every key matching pattern, sorted.
func (tb *testBundle) keysMatching(t *testing.T, pattern string) []string {
	t.Helper()
	keys, err := tb.client.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatalf("KEYS %s: %v", pattern, err)
	}
	slices.Sort(keys)
	return keys
}

func batch(lsn wal.LSN, ops ...mapping.Op) mapping.Batch {
	return mapping.Batch{CommitLSN: lsn, EndLSN: lsn + 1, Ops: ops}
}

func del(key string) mapping.Op { return mapping.Op{Kind: mapping.OpDelete, Key: key, Rule: "test"} }
func delTag(tag string) mapping.Op {
	return mapping.Op{Kind: mapping.OpDeleteTag, Key: tag, Rule: "test"}
}
func bump(ns string) mapping.Op {
	return mapping.Op{Kind: mapping.OpBumpVersion, Key: ns, Rule: "test"}
}
func set(key, value string, lsn wal.LSN, ttl, jitter time.Duration) mapping.Op {
	return mapping.Op{Kind: mapping.OpSet, Key: key, Value: []byte(value), TTL: ttl, Jitter: jitter, LSN: lsn, Rule: "test"}
}
func unset(key string, lsn wal.LSN) mapping.Op {
	return mapping.Op{Kind: mapping.OpUnset, Key: key, LSN: lsn, Rule: "test"}
}
func flush(ks mapping.Keyspace) mapping.Op {
	return mapping.Op{Kind: mapping.OpFlush, Keyspace: &ks, Rule: "test", Reason: "truncate"}
}

func TestDelete(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	tb.populate(t, "user:1", "user:2", "user:3")

	tb.apply(t, batch(100, del("user:1"), del("user:2"), del("user:missing")))

	for _, k := range []string{"user:1", "user:2"} {
		if tb.exists(t, k) {
			t.Errorf("%s survived its delete", k)
		}
	}
	if !tb.exists(t, "user:3") {
		t.Error("user:3 was deleted without an operation")
	}
	tb.apply(t, batch(100, del("user:1"), del("user:2"), del("user:missing"))) // redelivery
	if got := tb.writer.Stats().Deletes; got != 6 {
		t.Errorf("Stats.Deletes = %d, want 6", got)
	}
}

func TestDeleteTag(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()

	small := []string{"user:1", "user:2", "user:email:a@example.com"}
	large := make([]string, 5000)
	for i := range large {
		large[i] = "item:" + strconv.Itoa(i)
	}
	tb.populate(t, small...)
	tb.populate(t, large...)
	tb.populate(t, "user:3") // in no tag
	for _, m := range small {
		tb.client.SAdd(ctx, keyspace.TagKey("org:1"), m)
	}
	for chunk := range slices.Chunk(large, 1000) {
		tb.client.SAdd(ctx, keyspace.TagKey("list:big"), toAny(chunk)...)
	}
	tb.client.SAdd(ctx, keyspace.TagKey("org:2"), "user:3") // not deleted

	tb.apply(t, batch(100, delTag("org:1"), delTag("list:big"), delTag("org:missing")))

	if left := tb.keysMatching(t, "user:*"); !slices.Equal(left, []string{"user:3"}) {
		t.Errorf("user keys left: %q, want only user:3", left)
	}
	if left := tb.keysMatching(t, "item:*"); len(left) != 0 {
		t.Errorf("%d members of the 5,000-member tag left", len(left))
	}
	for _, tag := range []string{"org:1", "list:big"} {
		if tb.exists(t, keyspace.TagKey(tag)) {
			t.Errorf("tag set %s left", tag)
		}
	}
	if !tb.exists(t, keyspace.TagKey("org:2")) {
		t.Error("unrelated tag set deleted")
	}
	st := tb.writer.Stats()
	if st.TagDeletes != 3 || st.KeysDeletedByTags != uint64(len(small)+len(large)) {
		t.Errorf("Stats: %d tag deletes, %d keys; want 3, %d", st.TagDeletes, st.KeysDeletedByTags, len(small)+len(large))
	}
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func TestBumpVersion(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})

	tb.apply(t, batch(100, bump("orders:customer:5")))
	tb.apply(t, batch(200, bump("orders:customer:5"), bump("orders:customer:6")))

	if v, _ := tb.get(t, keyspace.VersionKey("orders:customer:5")); v != "2" {
		t.Errorf("version after two bumps = %q, want 2", v)
	}
	if v, _ := tb.get(t, keyspace.VersionKey("orders:customer:6")); v != "1" {
		t.Errorf("version after one bump = %q, want 1", v)
	}
}

func TestSetTTLAndJitter(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{GuardTTL: 10 * time.Minute})
	ctx := context.Background()
	const (
		ttl    = time.Hour
		jitter = 5 * time.Minute
		n      = 200
	)
	var ops []mapping.Op
	for i := range n {
		ops = append(ops, set(fmt.Sprintf("product:%d", i), `{"id":`+strconv.Itoa(i)+`}`, 1000, ttl, jitter))
	}
	ops = append(ops,
		set("short", "v", 1000, 2*time.Second, time.Minute), // jitter floored at 1s
		set("tiny", "v", 1000, 300*time.Millisecond, 0),     // below 1s: kept
		set("forever", "v", 1000, 0, 0))                     // no expiry
	tb.apply(t, batch(1000, ops...))

	distinct := map[time.Duration]bool{}
	for i := range n {
		key := fmt.Sprintf("product:%d", i)
		if v, _ := tb.get(t, key); v != `{"id":`+strconv.Itoa(i)+`}` {
			t.Fatalf("%s = %q", key, v)
		}
		pttl := tb.client.PTTL(ctx, key).Val()
		// The lower bound allows for the time since the SET.
		if pttl < ttl-jitter-time.Minute || pttl > ttl+jitter {
			t.Errorf("%s PTTL %v outside %v ± %v", key, pttl, ttl, jitter)
		}
		distinct[pttl.Round(time.Second)] = true
		guardTTL := tb.client.PTTL(ctx, keyspace.GuardKey(key)).Val()
		if diff := guardTTL - pttl; diff < 10*time.Minute-time.Second || diff > 10*time.Minute+time.Second {
			t.Errorf("%s guard outlives the value by %v, want 10m", key, diff)
		}
	}
	if len(distinct) < n/2 {
		t.Errorf("only %d distinct TTLs among %d keys: jitter not applied", len(distinct), n)
	}
	if pttl := tb.client.PTTL(ctx, "short").Val(); pttl < 500*time.Millisecond || pttl > 62*time.Second {
		t.Errorf("short PTTL %v, want within [1s, 62s]", pttl)
	}
	// "tiny" may have expired already on a slow machine: PTTL then answers -2.
	if pttl := tb.client.PTTL(ctx, "tiny").Val(); (pttl <= 0 || pttl > 300*time.Millisecond) && pttl != -2 {
		t.Errorf("tiny PTTL %v, want within (0, 300ms]", pttl)
	}
	if pttl := tb.client.PTTL(ctx, "forever").Val(); pttl != -1 {
		t.Errorf("forever PTTL %v, want no expiry", pttl)
	}
	// The guard of a value without expiry expires nonetheless (TombstoneTTL):
	// no guard outlives its use.
	if pttl := tb.client.PTTL(ctx, keyspace.GuardKey("forever")).Val(); pttl < writer.DefaultTombstoneTTL-time.Minute || pttl > writer.DefaultTombstoneTTL {
		t.Errorf("guard of forever: PTTL %v, want within a minute below %v", pttl, writer.DefaultTombstoneTTL)
	}
}

func TestSetGuardedByLSN(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})

	tb.apply(t, batch(2000, set("product:1", "v2000", 2000, time.Hour, 0)))
	// A redelivered older change does not overwrite; nor does the same one.
	tb.apply(t, batch(1000, set("product:1", "v1000", 1000, time.Hour, 0)))
	tb.apply(t, batch(2000, set("product:1", "v2000-again", 2000, time.Hour, 0)))
	if v, _ := tb.get(t, "product:1"); v != "v2000" {
		t.Fatalf("after older redelivery: %q, want v2000", v)
	}
	// A newer change does.
	tb.apply(t, batch(3000, set("product:1", "v3000", 3000, time.Hour, 0)))
	if v, _ := tb.get(t, "product:1"); v != "v3000" {
		t.Fatalf("after newer change: %q, want v3000", v)
	}
	if v, _ := tb.get(t, keyspace.GuardKey("product:1")); v != keyspace.EncodeGuard(3000, "") {
		t.Fatalf("guard %q, want %s", v, keyspace.EncodeGuard(3000, ""))
	}
	if st := tb.writer.Stats(); st.Sets != 4 || st.SetsSkipped != 2 {
		t.Errorf("Stats: %d sets, %d skipped; want 4, 2", st.Sets, st.SetsSkipped)
	}
}

// Guards of another WAL history (a restore, another server) count as
// absent: the new history's lower LSNs write. Within a history the guards
// order effects as before.
func TestGuardsOfAnotherHistory(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	old := keyspace.History("7000000000000000001", 1)
	tb.writer.SetHistory(old)
	tb.apply(t, batch(0x9000000000, set("product:1", "old", 0x9000000000, time.Hour, 0),
		set("product:2", "old", 0x9000000000, 0, 0)))
	tb.apply(t, batch(0x9000000001, unset("product:3", 0x9000000001)))
	if v, _ := tb.get(t, keyspace.GuardKey("product:1")); v != keyspace.EncodeGuard(0x9000000000, old) {
		t.Fatalf("guard %q, want %q", v, keyspace.EncodeGuard(0x9000000000, old))
	}

	// A new server, far behind: its changes land, tombstoned key included.
	tb.writer.SetHistory(keyspace.History("7000000000000000002", 1))
	tb.apply(t, batch(0x1000, set("product:1", "new", 0x1000, time.Hour, 0),
		set("product:2", "new", 0x1000, 0, 0), set("product:3", "new", 0x1000, 0, 0)))
	for _, key := range []string{"product:1", "product:2", "product:3"} {
		if v, _ := tb.get(t, key); v != "new" {
			t.Errorf("%s = %q after the new history's set, want new", key, v)
		}
	}
	// A new timeline of the same system is a new history too.
	tb.writer.SetHistory(keyspace.History("7000000000000000002", 2))
	tb.apply(t, batch(0x800, unset("product:2", 0x800)))
	if tb.exists(t, "product:2") {
		t.Error("product:2: the new timeline's unset was refused")
	}
	// Within the history, an older change is refused as before.
	tb.apply(t, batch(0x700, set("product:2", "older", 0x700, 0, 0)))
	if tb.exists(t, "product:2") {
		t.Error("product:2: an older set of the same history came back after the unset")
	}
	if st := tb.writer.Stats(); st.SetsSkipped != 1 || st.UnsetsSkipped != 0 {
		t.Errorf("Stats: %d sets and %d unsets skipped, want 1 and 0", st.SetsSkipped, st.UnsetsSkipped)
	}
}

func TestUnset(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})

	tb.apply(t, batch(1000, set("product:1", "v1000", 1000, time.Hour, 0)))
	tb.apply(t, batch(2000, unset("product:1", 2000)))
	if tb.exists(t, "product:1") {
		t.Fatal("unset did not delete")
	}
	// The tombstone lives TombstoneTTL (as long as the journal reaches back).
	if pttl := tb.client.PTTL(context.Background(), keyspace.GuardKey("product:1")).Val(); pttl < writer.DefaultTombstoneTTL-time.Minute || pttl > writer.DefaultTombstoneTTL {
		t.Errorf("tombstone PTTL %v, want within a minute below %v", pttl, writer.DefaultTombstoneTTL)
	}
	// The older set, redelivered, cannot bring the row back.
	tb.apply(t, batch(1000, set("product:1", "v1000", 1000, time.Hour, 0)))
	if tb.exists(t, "product:1") {
		t.Fatal("an older set came back after the unset")
	}
	// An older unset is skipped; a newer set writes.
	tb.apply(t, batch(1500, unset("product:1", 1500)))
	tb.apply(t, batch(3000, set("product:1", "v3000", 3000, time.Hour, 0)))
	if v, _ := tb.get(t, "product:1"); v != "v3000" {
		t.Fatalf("newer set after unset: %q", v)
	}
	st := tb.writer.Stats()
	if st.Unsets != 2 || st.UnsetsSkipped != 1 || st.SetsSkipped != 1 {
		t.Errorf("Stats: %+v", st)
	}
}

func TestFlushKeys(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})

	prefix := "cache:we*rd[x]?:" // glob characters, escaped by the mapper
	var matching, others []string
	for i := range 10000 {
		matching = append(matching, prefix+strconv.Itoa(i))
	}
	for i := range 100 {
		others = append(others,
			"cache:weXrd[x]?:"+strconv.Itoa(i), // would match the unescaped pattern
			"cache:we*rdx?:"+strconv.Itoa(i),
			"other:"+strconv.Itoa(i))
	}
	others = append(others, "cache:we*rd[x]?") // the prefix without its colon
	tb.populate(t, matching...)
	tb.populate(t, others...)

	tb.apply(t, batch(100, flush(mapping.Keyspace{Keys: []string{keyspace.EscapeGlob(prefix) + "*"}})))

	left := tb.keysMatching(t, "*")
	want := slices.Sorted(slices.Values(append(others, writer.FlushCounterKey("test"))))
	if !slices.Equal(left, want) {
		t.Fatalf("after flush: %d keys left, want the %d non-matching ones", len(left), len(want))
	}
	if st := tb.writer.Stats(); st.Flushes != 1 || st.KeysDeletedByFlushes != 10000 {
		t.Errorf("Stats: %d flushes, %d keys; want 1, 10000", st.Flushes, st.KeysDeletedByFlushes)
	}
}

func TestFlushTags(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{ScanCount: 10, MaxPipeline: 7})
	ctx := context.Background()
	for org := range 30 {
		for u := range 5 {
			key := fmt.Sprintf("user:%d:%d", org, u)
			tb.populate(t, key)
			tb.client.SAdd(ctx, keyspace.TagKey("org:"+strconv.Itoa(org)), key)
		}
	}
	tb.populate(t, "team:1:a")
	tb.client.SAdd(ctx, keyspace.TagKey("team:1"), "team:1:a")
	tb.client.Set(ctx, keyspace.TagKey("org:string"), "not a set", 0) // skipped by TYPE set

	tb.apply(t, batch(100, flush(mapping.Keyspace{Tags: []string{"org:*"}})))

	if left := tb.keysMatching(t, "user:*"); len(left) != 0 {
		t.Errorf("tag members left: %q", left)
	}
	want := []string{writer.FlushCounterKey("test"), keyspace.TagKey("org:string"), keyspace.TagKey("team:1"), "team:1:a"}
	if left := tb.keysMatching(t, "*"); !slices.Equal(left, want) {
		t.Errorf("keys left %q, want %q", left, want)
	}
	if got := tb.writer.Stats().KeysDeletedByFlushes; got != 150 {
		t.Errorf("KeysDeletedByFlushes = %d, want 150", got)
	}
}

func TestFlushVersions(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{ScanCount: 5})
	ctx := context.Background()
	tb.client.Set(ctx, keyspace.VersionKey("orders:customer:1"), 3, 0)
	tb.client.Set(ctx, keyspace.VersionKey("orders:customer:2"), 7, 0)
	tb.client.Set(ctx, keyspace.VersionKey("orders:all"), 1, 0)
	tb.client.Set(ctx, keyspace.VersionKey("invoices:customer:1"), 4, 0)
	var dropped []string
	for i := range 50 {
		dropped = append(dropped,
			keyspace.VersionedKey("orders:customer:1", 3, "page:"+strconv.Itoa(i)),
			keyspace.VersionedKey("orders:customer:2", 0, "page:"+strconv.Itoa(i)), // from before any bump
			keyspace.VersionedKey("orders:customer:3", 2, "page:"+strconv.Itoa(i)), // version key expired or never set
			keyspace.VersionedKey("orders:all", 1, "page:"+strconv.Itoa(i)))
	}
	kept := []string{
		keyspace.VersionedKey("invoices:customer:1", 4, "page:1"),
		"orders:customer:1", // not a versioned entry
	}
	tb.populate(t, dropped...)
	tb.populate(t, kept...)

	tb.apply(t, batch(100, flush(mapping.Keyspace{Versions: []string{"orders:customer:*", "orders:all"}})))

	for ns, want := range map[string]string{
		"orders:customer:1":   "4",
		"orders:customer:2":   "8",
		"orders:all":          "2",
		"invoices:customer:1": "4",
	} {
		if v, _ := tb.get(t, keyspace.VersionKey(ns)); v != want {
			t.Errorf("version of %s = %q, want %s", ns, v, want)
		}
	}
	if tb.exists(t, keyspace.VersionKey("orders:customer:3")) {
		t.Error("a flush created a version key")
	}
	left := tb.keysMatching(t, "*")
	want := append(slices.Clone(kept), writer.FlushCounterKey("test"),
		keyspace.VersionKey("invoices:customer:1"), keyspace.VersionKey("orders:all"),
		keyspace.VersionKey("orders:customer:1"), keyspace.VersionKey("orders:customer:2"))
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Errorf("keys left %q, want %q", left, want)
	}
	if st := tb.writer.Stats(); st.VersionsBumpedByFlushes != 3 || st.KeysDeletedByFlushes != uint64(len(dropped)) {
		t.Errorf("Stats: %d versions bumped, %d keys deleted; want 3, %d", st.VersionsBumpedByFlushes, st.KeysDeletedByFlushes, len(dropped))
	}
}

func TestOrderAcrossBatches(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{MaxPipeline: 2}) // several pipelines per Apply
	tb.populate(t, "p:old")

	tb.apply(t,
		batch(1000, set("a", "a1", 1000, time.Hour, 0), unset("b", 1000)),
		batch(2000, unset("a", 2000), set("b", "b2", 2000, time.Hour, 0)),
		batch(3000, set("p:1", "x", 3000, time.Hour, 0), bump("ns")),
		batch(4000, flush(mapping.Keyspace{Keys: []string{"p:*"}}), bump("ns")),
		batch(5000, set("p:2", "y", 5000, time.Hour, 0)),
		batch(6000), // no operations
	)

	if tb.exists(t, "a") {
		t.Error("set then unset: a exists")
	}
	if v, _ := tb.get(t, "b"); v != "b2" {
		t.Errorf("unset then newer set: b = %q, want b2", v)
	}
	if tb.exists(t, "p:old") || tb.exists(t, "p:1") {
		t.Error("keys written before the flush survived it")
	}
	if v, _ := tb.get(t, "p:2"); v != "y" {
		t.Errorf("key written after the flush: %q, want y", v)
	}
	if v, _ := tb.get(t, keyspace.VersionKey("ns")); v != "2" {
		t.Errorf("version %q, want 2", v)
	}
}

// TestReapplyIsHarmless applies the same batches twice, as a redelivery
// after a crash does.
func TestReapplyIsHarmless(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()
	tb.populate(t, "user:1", "m:1", "m:2", "p:1", "p:2", "keep")
	tb.client.SAdd(ctx, keyspace.TagKey("t"), "m:1", "m:2")
	batches := []mapping.Batch{
		batch(1000, del("user:1"), delTag("t"), set("product:1", "v1", 1000, time.Hour, 0), unset("product:2", 1000)),
		batch(2000, flush(mapping.Keyspace{Keys: []string{"p:*"}}), set("p:3", "v", 2000, time.Hour, 0)),
	}
	tb.apply(t, batches...)
	want := []string{
		keyspace.GuardKey("p:3"), keyspace.GuardKey("product:1"), keyspace.GuardKey("product:2"),
		"keep", "p:3", "product:1", writer.FlushCounterKey("test"),
	}
	slices.Sort(want)
	if got := tb.keysMatching(t, "*"); !slices.Equal(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}

	tb.apply(t, batches...)
	// The same state, except that the replayed flush dropped p:3, which the
	// guard then kept the replayed set from writing again: a cache miss, never
	// an older value.
	want = slices.DeleteFunc(want, func(k string) bool { return k == "p:3" })
	if got := tb.keysMatching(t, "*"); !slices.Equal(got, want) {
		t.Fatalf("after the redelivery: keys %q, want %q", got, want)
	}
	if v, _ := tb.get(t, "product:1"); v != "v1" {
		t.Errorf("product:1 = %q, want v1", v)
	}
}

func TestEmptyApply(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	tb.apply(t)
	tb.apply(t, batch(100), batch(200))
	tb.server.Stop(t) // nothing to apply: Redis is not needed
	tb.apply(t, batch(300))
}

func TestInvalidOperation(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	tb.populate(t, "k")
	for _, bad := range []mapping.Op{
		{Kind: 0, Key: "x"},
		{Kind: mapping.OpFlush + 1, Key: "x"},
		{Kind: mapping.OpFlush},
	} {
		err := tb.writer.Apply(context.Background(), []mapping.Batch{batch(100, del("k"), bad)})
		if !errors.Is(err, writer.ErrInvalidOp) {
			t.Errorf("Apply(%+v) = %v, want ErrInvalidOp", bad, err)
		}
	}
	if !tb.exists(t, "k") {
		t.Error("an invalid batch was partly applied")
	}
}

func TestNoScriptRecovery(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()
	tb.client.SAdd(ctx, keyspace.TagKey("t"), "m")
	tb.populate(t, "m")

	// SCRIPT FLUSH between Applies: the Writer loaded the scripts on its first
	// attempt and does not know they are gone until EVALSHA answers NOSCRIPT.
	tb.apply(t, batch(1000, set("k", "v1", 1000, time.Hour, 0)))
	if err := tb.client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	tb.apply(t, batch(2000, set("k", "v2", 2000, time.Hour, 0), delTag("t")))
	if err := tb.client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	tb.apply(t, batch(3000, unset("k", 3000)))

	if tb.exists(t, "k") || tb.exists(t, "m") || tb.exists(t, keyspace.TagKey("t")) {
		t.Error("operations not applied after SCRIPT FLUSH")
	}
	if st := tb.writer.Stats(); st.Retries != 0 || st.Sets != 2 || st.Unsets != 1 || st.TagDeletes != 1 {
		t.Errorf("Stats: %+v; NOSCRIPT must be recovered without a retry", st)
	}
}

// startApply runs Apply in a goroutine; the channel receives its result.
func startApply(ctx context.Context, w *writer.Writer, batches ...mapping.Batch) <-chan error {
	done := make(chan error, 1)
	go func() { done <- w.Apply(ctx, batches) }()
	return done
}

// waitBlocked waits until the Writer has retried at least retries times,
// failing the test if Apply returns meanwhile.
func waitBlocked(t *testing.T, w *writer.Writer, done <-chan error, retries uint64) {
	t.Helper()
	testenv.Eventually(t, waitTimeout, fmt.Sprintf("%d retries", retries), func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("Apply returned (%v) while Redis was failing", err)
		default:
		}
		n := w.Stats().Retries
		return n >= retries, fmt.Sprintf("only %d retries", n)
	})
	if !w.Stats().Failing {
		t.Fatal("Stats.Failing is false while Apply retries")
	}
}

func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("Apply did not return within %v", waitTimeout)
		return nil
	}
}

func TestRedisDown(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	tb.populate(t, "user:1")
	tb.server.Stop(t)

	done := startApply(context.Background(), tb.writer,
		batch(100, del("user:1"), set("product:1", "v", 100, time.Hour, 0)),
		batch(200, bump("ns")))
	waitBlocked(t, tb.writer, done, 5)

	tb.server.Start(t) // empty, without the scripts
	if err := waitDone(t, done); err != nil {
		t.Fatalf("Apply after Redis came back: %v", err)
	}
	if tb.exists(t, "user:1") {
		t.Error("user:1 exists")
	}
	if v, _ := tb.get(t, "product:1"); v != "v" {
		t.Errorf("product:1 = %q: the set was not applied after the outage", v)
	}
	if v, _ := tb.get(t, keyspace.VersionKey("ns")); v != "1" {
		t.Errorf("version = %q, want 1", v)
	}
	if st := tb.writer.Stats(); st.Failing || st.Deletes != 1 || st.Sets != 1 || st.VersionBumps != 1 {
		t.Errorf("Stats after recovery: %+v", st)
	}
}

func TestCancelWhileRedisDown(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	tb.server.Stop(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startApply(ctx, tb.writer, batch(100, del("user:1")))
	waitBlocked(t, tb.writer, done, 2)
	cancelled := time.Now()
	cancel()
	err := waitDone(t, done)
	if waited := time.Since(cancelled); waited > 5*time.Second {
		t.Errorf("Apply returned %v after the cancel: not promptly", waited)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want an error wrapping context.Canceled", err)
	}
	if !tb.writer.Stats().Failing {
		t.Error("Stats.Failing reset although Redis never recovered")
	}
}

// TestCommandErrorRetried checks that an error of one command inside a
// pipeline is noticed, retried, and that the operations are applied once the
// cause is gone, none skipped. The error is one an operator can cure (NOPERM
// on the version key); errors no one can cure fall back (fallback_test.go).
func TestCommandErrorRetried(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()
	tb.populate(t, "a", "b")
	tb.client.Set(ctx, keyspace.VersionKey("bad"), 41, 0)
	if err := tb.client.Do(ctx, aclSetUser("w", "+@all", "~a", "~b", "~cachesync:*")...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	limited := redis.NewClient(&redis.Options{Addr: tb.server.Addr(), Username: "w", Password: "pw"})
	t.Cleanup(func() { _ = limited.Close() })
	w := writer.New(limited, writer.Options{MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		Logger: zerolog.New(zerolog.NewTestWriter(t))})

	done := startApply(ctx, w, batch(100, del("a"), bump("bad"), del("b")))
	waitBlocked(t, w, done, 3)
	// An operator grants the key.
	if err := tb.client.Do(ctx, aclSetUser("w", "+@all", "~*")...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}

	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	if tb.exists(t, "a") || tb.exists(t, "b") {
		t.Error("deletes not applied")
	}
	if v, _ := tb.get(t, keyspace.VersionKey("bad")); v != "42" {
		t.Errorf("version %q, want 42", v)
	}
	if n := w.Stats().Fallbacks; n != 0 {
		t.Errorf("%d fallbacks for an error an operator can cure", n)
	}
}

// BenchmarkApplyDeletes measures pipelined deletes: Apply of one batch of
// 1000 OpDelete, one round trip per Apply.
func BenchmarkApplyDeletes(b *testing.B) {
	server := testenv.StartRedis(b)
	w := writer.New(server.Client(b), writer.Options{})
	ops := make([]mapping.Op, 1000)
	for i := range ops {
		ops[i] = del("bench:" + strconv.Itoa(i))
	}
	batches := []mapping.Batch{batch(100, ops...)}
	ctx := context.Background()
	iterations := 0
	for b.Loop() {
		if err := w.Apply(ctx, batches); err != nil {
			b.Fatal(err)
		}
		iterations++
	}
	b.ReportMetric(float64(iterations*len(ops))/b.Elapsed().Seconds(), "ops/s")
}

// TestInvalidationsDropFillFences: every effect that invalidates a key also
// deletes the fences of the application fills in flight for it
// (keyspace.FenceKey), so that a fill that read an older row is refused.
func TestInvalidationsDropFillFences(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx := context.Background()
	fence := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if err := tb.client.SAdd(ctx, keyspace.FenceKey(k), "token").Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	fenced := func(k string) bool { return tb.exists(t, keyspace.FenceKey(k)) }

	// Delete, write-through set and unset.
	fence("d:1", "s:1", "u:1", "untouched")
	tb.apply(t, batch(100, del("d:1"), set("s:1", "v", 100, time.Hour, 0), unset("u:1", 100)))
	for _, k := range []string{"d:1", "s:1", "u:1"} {
		if fenced(k) {
			t.Errorf("the fence of %s survived its invalidation", k)
		}
	}
	if !fenced("untouched") {
		t.Error("a fence of a key no operation named was deleted")
	}

	// A tag deletes the fences registered under it with their keys.
	tb.populate(t, "t:1")
	fence("t:1")
	if err := tb.client.SAdd(ctx, keyspace.TagKey("org:1"), "t:1", keyspace.FenceKey("t:1")).Err(); err != nil {
		t.Fatal(err)
	}
	tb.apply(t, batch(200, delTag("org:1")))
	if fenced("t:1") || tb.exists(t, "t:1") {
		t.Error("the tag's deletion left its member or the member's fence")
	}

	// A flush deletes every fence, whatever its key space.
	fence("f:1", "elsewhere:1")
	tb.apply(t, batch(300, flush(mapping.Keyspace{Keys: []string{"f:*"}})))
	if got := tb.keysMatching(t, keyspace.FencePattern); len(got) != 0 {
		t.Errorf("fences after a flush: %v", got)
	}
}

// TestPositionsReportOutage: failures of the bookkeeping commands sent
// beside Apply (Writer.Positions) count as retries and mark Redis failing,
// logged once per outage; the first success ends the outage.
func TestPositionsReportOutage(t *testing.T) {
	t.Parallel()
	server := testenv.StartRedis(t)
	var log strings.Builder
	w := writer.New(server.Client(t), writer.Options{Logger: zerolog.New(&log)})
	positions := w.Positions()
	ctx := context.Background()
	if _, err := positions.Applied(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Failing || st.Retries != 0 {
		t.Fatalf("after a success: %+v", st)
	}
	server.Stop(t)
	for range 2 {
		if _, _, err := positions.Rules(ctx, "s"); err == nil {
			t.Fatal("Rules succeeded with Redis stopped")
		}
	}
	if st := w.Stats(); !st.Failing || st.Retries != 2 {
		t.Fatalf("after two failures: Failing %v, Retries %d; want true, 2", st.Failing, st.Retries)
	}
	server.Start(t)
	if err := positions.SetRules(ctx, "s", map[string]string{"r": "f"}); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Failing || st.Retries != 2 {
		t.Fatalf("after recovering: Failing %v, Retries %d; want false, 2", st.Failing, st.Retries)
	}
	got := log.String()
	if n := strings.Count(got, "Redis is failing"); n != 1 {
		t.Errorf("the outage was logged %d times at warn, want once:\n%s", n, got)
	}
	if strings.Contains(got, "Redis permissions") {
		t.Errorf("an outage was taken for a refusal:\n%s", got)
	}
	if !strings.Contains(got, `"retries":2`) || !strings.Contains(got, "Redis recovered") {
		t.Errorf("the recovery line lacks the outage's retries:\n%s", got)
	}
}
