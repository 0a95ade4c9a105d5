package redisops_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestGuardedScripts runs the guarded scripts on a real server, with LSNs on
// either side of the 32-bit and 53-bit boundaries.
func TestGuardedScripts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	client := testenv.StartRedis(t).Client(t)
	set := func(key, value string, lsn uint64, ttl, guardTTL int64) int64 {
		t.Helper()
		n, err := client.Eval(ctx, redisops.GuardedSetScript, []string{key, keyspace.GuardKey(key)},
			value, keyspace.EncodeLSN(lsn), ttl, guardTTL).Int64()
		if err != nil {
			t.Fatalf("GuardedSetScript: %v", err)
		}
		return n
	}
	unset := func(key string, lsn uint64) int64 {
		t.Helper()
		n, err := client.Eval(ctx, redisops.GuardedUnsetScript, []string{key, keyspace.GuardKey(key)},
			keyspace.EncodeLSN(lsn), 60000).Int64()
		if err != nil {
			t.Fatalf("GuardedUnsetScript: %v", err)
		}
		return n
	}
	get := func(key string) string {
		t.Helper()
		v, err := client.Get(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return v
	}

	const big = 1<<53 + 1 // not exactly representable as a double
	if n := set("k", "v1", big, 60000, 120000); n != 1 {
		t.Fatalf("first set: %d", n)
	}
	if n := set("k", "v0", big-1, 60000, 120000); n != 0 || get("k") != "v1" {
		t.Fatalf("older set: %d, value %q", n, get("k"))
	}
	if n := set("k", "v1again", big, 60000, 120000); n != 0 || get("k") != "v1" {
		t.Fatalf("same-LSN set: %d, value %q", n, get("k"))
	}
	if n := set("k", "v2", big+1, 60000, 120000); n != 1 || get("k") != "v2" {
		t.Fatalf("newer set: %d, value %q", n, get("k"))
	}
	if ttl := client.PTTL(ctx, "k").Val().Milliseconds(); ttl <= 0 || ttl > 60000 {
		t.Fatalf("value PTTL %d", ttl)
	}
	if ttl := client.PTTL(ctx, keyspace.GuardKey("k")).Val().Milliseconds(); ttl <= 60000 || ttl > 120000 {
		t.Fatalf("guard PTTL %d", ttl)
	}
	// Across the 32-bit boundary: 0x1_00000000 > 0x0_FFFFFFFF.
	if n := set("h", "low", 0xFFFFFFFF, 0, 0); n != 1 {
		t.Fatal("set low")
	}
	if n := set("h", "high", 1<<32, 0, 0); n != 1 || get("h") != "high" {
		t.Fatalf("set high: %d %q", n, get("h"))
	}
	if ttl := client.PTTL(ctx, "h").Val(); ttl != -1 {
		t.Fatalf("no-expiry value has PTTL %v", ttl)
	}
	if n := set("h", "low", 0xFFFFFFFF, 0, 0); n != 0 || get("h") != "high" {
		t.Fatalf("set low again: %d %q", n, get("h"))
	}
	// Unset: an older one is skipped; the same LSN wins the tie; afterwards
	// only a newer set writes.
	if n := unset("h", 0xFFFFFFFF); n != 0 || get("h") != "high" {
		t.Fatalf("older unset: %d %q", n, get("h"))
	}
	if n := unset("h", 1<<32); n != 1 || get("h") != "" {
		t.Fatalf("same-LSN unset: %d %q", n, get("h"))
	}
	if n := set("h", "high", 1<<32, 0, 0); n != 0 || get("h") != "" {
		t.Fatalf("set after unset, same LSN: %d %q", n, get("h"))
	}
	if n := set("h", "newer", 1<<32+1, 0, 0); n != 1 || get("h") != "newer" {
		t.Fatalf("newer set after unset: %d %q", n, get("h"))
	}
	// A guard that is not an LSN, or not a string, counts as no guard.
	client.Set(ctx, keyspace.GuardKey("g"), "garbage", 0)
	if n := set("g", "v", 1, 0, 0); n != 1 {
		t.Fatal("set over a garbage guard")
	}
	client.Del(ctx, keyspace.GuardKey("g"))
	client.SAdd(ctx, keyspace.GuardKey("g"), "x")
	if n := set("g", "v", 1, 0, 0); n != 1 {
		t.Fatal("set over a set-typed guard")
	}
	// A guard of another WAL history counts as no guard; within one
	// history, guards order by LSN as above.
	oldH, newH := keyspace.History("7000000000000000001", 1), keyspace.History("7000000000000000002", 1)
	guarded := func(key, value string, lsn uint64, history string) int64 {
		t.Helper()
		n, err := client.Eval(ctx, redisops.GuardedSetScript, []string{key, keyspace.GuardKey(key)},
			value, keyspace.EncodeGuard(lsn, history), 0, 60000).Int64()
		if err != nil {
			t.Fatalf("GuardedSetScript: %v", err)
		}
		return n
	}
	if n := guarded("w", "old", 1<<40, oldH); n != 1 {
		t.Fatal("set in the old history")
	}
	if n := guarded("w", "new", 1, newH); n != 1 || get("w") != "new" {
		t.Fatalf("lower LSN of a new history: %d %q, want written", n, get("w"))
	}
	if v := get(keyspace.GuardKey("w")); v != keyspace.EncodeLSN(1)+"@7000000000000000002/1" {
		t.Fatalf("guard %q", v)
	}
	if n := guarded("w", "older", 0, newH); n != 0 || get("w") != "new" {
		t.Fatalf("older set of the same history: %d %q, want refused", n, get("w"))
	}
	if n := guarded("w", "bare", 2, ""); n != 1 || get("w") != "bare" {
		t.Fatalf("set without a history over a guard with one: %d %q, want written", n, get("w"))
	}
	if n, err := client.Eval(ctx, redisops.GuardedUnsetScript, []string{"w", keyspace.GuardKey("w")},
		keyspace.EncodeGuard(1, oldH), 60000).Int64(); err != nil || n != 1 || get("w") != "" {
		t.Fatalf("unset of another history: %d %v %q, want applied", n, err, get("w"))
	}
	// A malformed LSN argument is an error, never a silent write.
	err := client.Eval(ctx, redisops.GuardedSetScript, []string{"m", keyspace.GuardKey("m")}, "v", "12", 0, 0).Err()
	if err == nil || !strings.Contains(err.Error(), "16 hex digits") {
		t.Fatalf("short LSN: %v", err)
	}
}

func TestDeleteTagScript(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	client := testenv.StartRedis(t).Client(t)
	tag := keyspace.TagKey("org:1")
	const members = 2500 // three UNLINK chunks
	for i := range members {
		key := fmt.Sprintf("user:%d", i)
		client.Set(ctx, key, "v", 0)
		client.SAdd(ctx, tag, key)
	}
	client.SAdd(ctx, tag, "never-cached") // a member without a key
	n, err := client.Eval(ctx, redisops.DeleteTagScript, []string{tag}).Int64()
	if err != nil || n != members {
		t.Fatalf("DeleteTagScript = %d, %v; want %d", n, err, members)
	}
	if size := client.DBSize(ctx).Val(); size != 0 {
		t.Fatalf("%d keys left", size)
	}
	// Missing set, and a key of another type under tag:.
	if n, err := client.Eval(ctx, redisops.DeleteTagScript, []string{tag}).Int64(); err != nil || n != 0 {
		t.Fatalf("missing tag: %d, %v", n, err)
	}
	client.Set(ctx, tag, "not a set", 0)
	if n, err := client.Eval(ctx, redisops.DeleteTagScript, []string{tag}).Int64(); err != nil || n != 0 {
		t.Fatalf("string tag: %d, %v", n, err)
	}
	if client.Exists(ctx, tag).Val() != 0 {
		t.Fatal("string under tag: left in place")
	}
	// Strict (the daemon's): refused, and left for the caller to flush
	// before it deletes the key.
	client.Set(ctx, tag, "not a set", 0)
	err = client.Eval(ctx, redisops.DeleteTagScript, []string{tag}, "strict").Err()
	if !redis.HasErrorPrefix(err, "WRONGTYPE") {
		t.Fatalf("strict, string tag: %v, want WRONGTYPE", err)
	}
	if client.Exists(ctx, tag).Val() != 1 {
		t.Fatal("strict, string tag: deleted")
	}
}
