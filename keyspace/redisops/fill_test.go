package redisops_test

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
)

// TestLockTicketAndFillUnlock runs the scripts of cacheaside's locked fill
// on a real server: the lock, the double-check, the ticket, and the fill
// that releases the lock and is refused once the fence lost the token.
func TestLockTicketAndFillUnlock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := testenv.StartRedis(t).Client(t)
	lockTicket := func(key, token string, check bool) any {
		t.Helper()
		keys := []string{keyspace.LockKey(key), keyspace.FenceKey(key)}
		if check {
			keys = append(keys, key)
		}
		v, err := rdb.Eval(ctx, redisops.LockTicketScript, keys, token, 5000, 10000).Result()
		if err != nil {
			t.Fatalf("LockTicketScript: %v", err)
		}
		return v
	}
	fillUnlock := func(key, token, value string) int64 {
		t.Helper()
		n, err := rdb.Eval(ctx, redisops.FillUnlockScript,
			[]string{key, keyspace.FenceKey(key), keyspace.LockKey(key), keyspace.StampKey(key)},
			token, value, 60000, "1700000000000").Int64()
		if err != nil {
			t.Fatalf("FillUnlockScript: %v", err)
		}
		return n
	}
	exists := func(key string) bool {
		t.Helper()
		return rdb.Exists(ctx, key).Val() == 1
	}
	get := func(key string) string {
		t.Helper()
		v, err := rdb.Get(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return v
	}

	// Locked and ticketed; a second token waits; the same token again is
	// harmless (a pipeline run again after NOSCRIPT).
	if v := lockTicket("k", "A", true); v != int64(1) {
		t.Fatalf("first lock: %v, want 1", v)
	}
	if v := lockTicket("k", "B", true); v != int64(0) {
		t.Fatalf("second token: %v, want 0 (busy)", v)
	}
	if v := lockTicket("k", "A", true); v != int64(1) {
		t.Fatalf("the holder again: %v, want 1", v)
	}
	if m := rdb.SMembers(ctx, keyspace.FenceKey("k")).Val(); len(m) != 1 || m[0] != "A" {
		t.Fatalf("fence %v, want [A] (B took no ticket)", m)
	}
	if ttl := rdb.PTTL(ctx, keyspace.FenceKey("k")).Val(); ttl <= 5000 {
		t.Errorf("fence TTL %s, want about 10s", ttl)
	}
	// The fill writes, stamps and unlocks.
	if n := fillUnlock("k", "A", "v1"); n != 1 || get("k") != "v1" || get(keyspace.StampKey("k")) != "1700000000000" {
		t.Fatalf("fill: %d, k = %q, stamp %q", n, get("k"), get(keyspace.StampKey("k")))
	}
	if exists(keyspace.LockKey("k")) {
		t.Error("the fill left the lock")
	}
	// The double-check: a filled key is returned and the lock released.
	if v := lockTicket("k", "C", true); v != "v1" || exists(keyspace.LockKey("k")) {
		t.Fatalf("lock of a filled key: %v (lock left: %v), want its value", v, exists(keyspace.LockKey("k")))
	}
	// Without the double-check (a refresh), the lock and ticket are taken.
	if v := lockTicket("k", "D", false); v != int64(1) {
		t.Fatalf("refresh lock: %v, want 1", v)
	}
	// An invalidation deletes the fence: the fill is refused, the lock
	// released all the same.
	if err := rdb.Unlink(ctx, "k", keyspace.FenceKey("k")).Err(); err != nil {
		t.Fatal(err)
	}
	if n := fillUnlock("k", "D", "v2"); n != 0 || exists("k") || exists(keyspace.LockKey("k")) {
		t.Fatalf("fill after an invalidation: %d, k exists %v, lock left %v", n, exists("k"), exists(keyspace.LockKey("k")))
	}
	// A fill whose lock expired and was taken over leaves the new holder's lock.
	lockTicket("k2", "E", true)
	rdb.Set(ctx, keyspace.LockKey("k2"), "F", 0)
	if n := fillUnlock("k2", "E", "v"); n != 1 || get(keyspace.LockKey("k2")) != "F" {
		t.Fatalf("fill after a takeover: %d, lock %q, want F's", n, get(keyspace.LockKey("k2")))
	}
	// "0" as the fill's time: a lock without a ticket (fencing disabled).
	if v, err := rdb.Eval(ctx, redisops.LockTicketScript, []string{keyspace.LockKey("k3"), keyspace.FenceKey("k3")}, "G", 5000, 0).Result(); err != nil || v != int64(1) || exists(keyspace.FenceKey("k3")) {
		t.Fatalf("lock without a ticket: %v, %v, fence exists %v", v, err, exists(keyspace.FenceKey("k3")))
	}
}
