package writer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/writer"
)

// TestCluster applies every kind of operation to a real Redis Cluster (3
// masters, 3 replicas): pipelines span nodes, no command spans slots, and a
// tag's members are deleted whether they share the tag's slot (the atomic
// script) or not (the stepwise path).
func TestCluster(t *testing.T) {
	t.Parallel()
	// A node timeout longer than a read timeout: the replica hung at the
	// end stays in the topology that clients see (until the cluster
	// flags it failed) as long as an attempt to reach it takes.
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{NodeTimeout: 5 * time.Second})
	client := cluster.Client(t)
	w := writer.New(client, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	apply := func(ops ...mapping.Op) {
		t.Helper()
		for i := range ops {
			ops[i].Rule = "test"
		}
		if err := w.Apply(ctx, []mapping.Batch{{CommitLSN: 100, EndLSN: 101, Ops: ops}}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	exists := func(keys ...string) int {
		t.Helper()
		n := 0
		for _, k := range keys {
			c, err := client.Exists(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			n += int(c)
		}
		return n
	}
	set := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if err := client.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}

	// 300 plain keys over every master, deleted in one Apply.
	var keys []string
	var dels []mapping.Op
	for i := range 300 {
		k := fmt.Sprintf("user:%d", i)
		keys = append(keys, k)
		dels = append(dels, mapping.Op{Kind: mapping.OpDelete, Key: k})
	}
	set(keys...)
	masters := map[string]bool{}
	for _, k := range keys {
		masters[cluster.MasterOf(t, k).Addr] = true
	}
	if len(masters) != 3 {
		t.Fatalf("the keys live on %d masters, want 3", len(masters))
	}
	apply(dels...)
	if n := exists(keys...); n != 0 {
		t.Errorf("%d of 300 keys survived their deletes", n)
	}

	// A tag whose members live all over the cluster: the stepwise path.
	spread := []string{"page:a", "page:b", "page:c", "page:d", "page:e", "page:f"}
	set(spread...)
	members := append([]any{}, toAny(spread)...)
	members = append(members, keyspace.FenceKey("page:a"))
	client.SAdd(ctx, keyspace.FenceKey("page:a"), "token")
	if err := client.SAdd(ctx, keyspace.TagKey("org:1"), members...).Err(); err != nil {
		t.Fatal(err)
	}
	// A tag whose members carry it as a hash tag: the atomic script.
	local := []string{"{org:2}:page:a", "{org:2}:page:b"}
	set(local...)
	if err := client.SAdd(ctx, keyspace.TagKey("{org:2}"), toAny(local)...).Err(); err != nil {
		t.Fatal(err)
	}
	// Both tags in one Apply, with operations around them.
	set("after:1", "before:1")
	apply(
		mapping.Op{Kind: mapping.OpDelete, Key: "before:1"},
		mapping.Op{Kind: mapping.OpDeleteTag, Key: "org:1"},
		mapping.Op{Kind: mapping.OpDeleteTag, Key: "{org:2}"},
		mapping.Op{Kind: mapping.OpBumpVersion, Key: "orders:customer:7"},
		mapping.Op{Kind: mapping.OpSet, Key: "product:1", Value: []byte(`{"id":1}`), LSN: 100, TTL: time.Hour},
		mapping.Op{Kind: mapping.OpDelete, Key: "after:1"},
	)
	if n := exists(spread...); n != 0 {
		t.Errorf("%d members of the spread tag survived", n)
	}
	if n := exists(local...); n != 0 {
		t.Errorf("%d members of the hash-tagged tag survived", n)
	}
	if n := exists(keyspace.TagKey("org:1"), keyspace.TagKey("{org:2}"), keyspace.TagPendingKey(keyspace.TagKey("org:1")), keyspace.FenceKey("page:a")); n != 0 {
		t.Errorf("%d tag, pending or fence keys left", n)
	}
	if n := exists("before:1", "after:1"); n != 0 {
		t.Errorf("the deletes around the tags did not all apply")
	}
	if v, _ := client.Get(ctx, keyspace.VersionKey("orders:customer:7")).Int(); v != 1 {
		t.Errorf("version = %d, want 1", v)
	}
	if v, _ := client.Get(ctx, "product:1").Result(); v != `{"id":1}` {
		t.Errorf("product:1 = %q", v)
	}
	st := w.Stats()
	if st.TagDeletes != 2 || st.KeysDeletedByTags != 6+1+2 {
		t.Errorf("stats %+v: want 2 tag deletes and 9 member keys (6 + a fence + 2)", st)
	}

	// A hash-tagged tag whose members break the convention: the script is
	// refused (cross-slot) and the tag is deleted in steps after all.
	strays := []string{"stray:1", "stray:2", "stray:3"}
	set(strays...)
	client.SAdd(ctx, keyspace.TagKey("{org:3}"), toAny(strays)...)
	apply(mapping.Op{Kind: mapping.OpDeleteTag, Key: "{org:3}"}, mapping.Op{Kind: mapping.OpDelete, Key: "after:1"})
	if n := exists(append(strays, keyspace.TagKey("{org:3}"))...); n != 0 {
		t.Errorf("%d keys of the unconventional hash-tagged tag survived", n)
	}

	// A flush finds keys, tags and fences on every master.
	set(keys...)
	client.SAdd(ctx, keyspace.TagKey("org:9"), "user:1", "user:2", "user:3")
	client.SAdd(ctx, keyspace.FenceKey("user:4"), "token")
	apply(mapping.Op{Kind: mapping.OpFlush, Reason: "truncate", Keyspace: &mapping.Keyspace{Keys: []string{"user:*"}, Tags: []string{"org:*"}}})
	if n := exists(keys...); n != 0 {
		t.Errorf("%d of 300 keys survived the flush", n)
	}
	if n := exists(keyspace.TagKey("org:9"), keyspace.FenceKey("user:4")); n != 0 {
		t.Error("the flush left a tag set or a fence")
	}

	// The permission check on a cluster: the advised ACL (per node, as
	// cluster ACLs are) passes, SCAN refused on one is found.
	spaces := []mapping.Keyspace{{Keys: []string{"user:*"}, Tags: []string{"org:*"}}}
	aclUser := func(name string, rules ...string) *redis.ClusterClient {
		t.Helper()
		for _, addr := range cluster.Addrs() {
			node := redis.NewClient(&redis.Options{Addr: addr})
			err := node.Do(ctx, aclSetUser(name, rules...)...).Err()
			_ = node.Close()
			if err != nil {
				t.Fatalf("ACL SETUSER on %s: %v", addr, err)
			}
		}
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs(), Username: name, Password: "pw"})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	var advised []string
	for _, c := range writer.Commands(client) {
		advised = append(advised, "+"+c)
	}
	for _, p := range writer.KeyPatterns(spaces) {
		advised = append(advised, "~"+p)
	}
	if err := writer.CheckAccess(ctx, aclUser("advised", advised...), spaces); err != nil {
		t.Errorf("CheckAccess on the cluster with the advised ACL: %v", err)
	}
	if err := writer.CheckAccess(ctx, aclUser("noscan", "+@all", "-scan", "~*"), spaces); !errors.Is(err, writer.ErrNoAccess) || !strings.Contains(err.Error(), "+cluster|slots") {
		t.Errorf("CheckAccess on the cluster without SCAN = %v, want ErrNoAccess advising +cluster|slots", err)
	}

	// A backfill's fill and undo over every master: key and guard share
	// a slot; the flush counter moves on a flush.
	var fills []mapping.Op
	var fillKeys []string
	for i := range 300 {
		k := fmt.Sprintf("fill:%d", i)
		fillKeys = append(fillKeys, k)
		fills = append(fills, mapping.Op{Kind: mapping.OpSet, Key: k, Value: []byte("v"), Rule: "test"})
	}
	if res, err := w.Fill(ctx, 0x500, fills); err != nil || res.Written != 300 {
		t.Fatalf("Fill: %+v, %v", res, err)
	}
	apply(mapping.Op{Kind: mapping.OpSet, Key: "fill:0", Value: []byte("stream"), LSN: 0x500})
	if n, err := w.UndoFill(ctx, 0x500, fillKeys); err != nil || n != 299 || exists("fill:0") != 1 {
		t.Fatalf("UndoFill: %d, %v; fill:0 exists %d: want 299 undone, fill:0 kept", n, err, exists("fill:0"))
	}
	apply(mapping.Op{Kind: mapping.OpFlush, Keyspace: &mapping.Keyspace{Keys: []string{"fill:*"}}})
	if n := exists(writer.FlushCounterKey("test")); n != 1 || exists("fill:0") != 0 {
		t.Errorf("after a flush: counter exists %d, fill:0 exists %d", n, exists("fill:0"))
	}

	// A hung replica, while the masters lost their scripts: the writer
	// loads them on the masters, which alone run them, and goes on.
	// go-redis's cluster SCRIPT LOAD would wait for the replica too.
	cluster.AwaitReplicasListed(t)
	replica := cluster.Replicas(t)[0].Addr
	cluster.PauseNode(t, replica)
	t.Cleanup(func() { cluster.ResumeNode(t, replica) })
	if err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.ScriptFlush(ctx).Err()
	}); err != nil {
		t.Fatal(err)
	}
	set(local...)
	client.SAdd(ctx, keyspace.TagKey("{org:2}"), toAny(local)...)
	retries := w.Stats().Retries
	hung, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	if err := w.Apply(hung, []mapping.Batch{{CommitLSN: 200, EndLSN: 201, Ops: []mapping.Op{{Kind: mapping.OpDeleteTag, Key: "{org:2}", Rule: "test"}}}}); err != nil {
		t.Fatalf("Apply with replica %s hung: %v", replica, err)
	}
	if n := exists(local...); n != 0 {
		t.Errorf("%d members of the tag survived with a replica hung", n)
	}
	if n := w.Stats().Retries - retries; n != 0 {
		t.Errorf("%d retries with a replica hung, want none: the scripts were loaded on it", n)
	}
}

// TestClusterFallbacksAndEviction: on a cluster, the eviction check reads
// every master (one unsafe master is named and refused), and a tag key that
// is not a set falls back on the stepwise path as on one server.
func TestClusterFallbacksAndEviction(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{})
	client := cluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t))

	if err := writer.CheckEviction(ctx, client, false, log); err != nil {
		t.Fatalf("CheckEviction on a default cluster: %v", err)
	}
	masters := cluster.Masters(t)
	last := masters[len(masters)-1]
	node := redis.NewClient(&redis.Options{Addr: last.Addr})
	t.Cleanup(func() { _ = node.Close() })
	for _, kv := range [][2]string{{"maxmemory", "1gb"}, {"maxmemory-policy", "volatile-ttl"}} {
		if err := node.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	err := writer.CheckEviction(ctx, client, false, log)
	if !errors.Is(err, writer.ErrEvictionUnsafe) || !strings.Contains(err.Error(), last.Addr) {
		t.Errorf("CheckEviction with %s on volatile-ttl: %v, want ErrEvictionUnsafe naming it", last.Addr, err)
	}
	for _, m := range masters[:len(masters)-1] {
		if err != nil && strings.Contains(err.Error(), m.Addr) {
			t.Errorf("a safe master %s is named: %v", m.Addr, err)
		}
	}

	var fallbacks []writer.Fallback
	w := writer.New(client, writer.Options{
		Logger:     log,
		Keyspaces:  map[string]mapping.Keyspace{"test": {Keys: []string{"user:*"}, Tags: []string{"org:*"}}},
		OnFallback: func(f writer.Fallback) { fallbacks = append(fallbacks, f) },
	})
	tag := keyspace.TagKey("org:1") // no hash tag: the stepwise path
	for _, k := range []string{"user:1", "user:2", "other:1"} {
		if err := client.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Set(ctx, tag, "not a set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx, []mapping.Batch{{CommitLSN: 100, EndLSN: 101, Ops: []mapping.Op{
		{Kind: mapping.OpDeleteTag, Key: "org:1", Rule: "test"},
	}}}); err != nil {
		t.Fatalf("Apply did not return: %v", err)
	}
	for _, k := range []string{tag, "user:1", "user:2"} {
		if n, _ := client.Exists(ctx, k).Result(); n != 0 {
			t.Errorf("%s survived the fallback", k)
		}
	}
	if n, _ := client.Exists(ctx, "other:1").Result(); n != 1 {
		t.Error("a key outside the rule's key space was deleted")
	}
	if want := []writer.Fallback{{Rule: "test", Reason: writer.FallbackTagWrongType, Key: "org:1"}}; fmt.Sprint(fallbacks) != fmt.Sprint(want) {
		t.Errorf("fallbacks %v, want %v", fallbacks, want)
	}
}
