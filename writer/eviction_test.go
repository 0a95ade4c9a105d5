package writer_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/writer"
)

func TestEvictionRisk(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		maxmemory int64
		policy    string
		unsafe    bool
	}{
		{0, "noeviction", false},
		{0, "allkeys-lru", false}, // no limit: nothing is evicted
		{0, "volatile-ttl", false},
		{100 << 20, "noeviction", false},
		{100 << 20, "allkeys-lru", true},
		{100 << 20, "allkeys-lfu", true},
		{100 << 20, "allkeys-random", true},
		{100 << 20, "volatile-lru", true}, // tag sets and guards carry a TTL
		{100 << 20, "volatile-lfu", true},
		{100 << 20, "volatile-random", true},
		{100 << 20, "volatile-ttl", true},
		{100 << 20, "some-future-policy", true},
	} {
		if got := writer.EvictionRisk(tc.maxmemory, tc.policy); (got != "") != tc.unsafe {
			t.Errorf("EvictionRisk(%d, %q) = %q, want unsafe %v", tc.maxmemory, tc.policy, got, tc.unsafe)
		}
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestCheckEviction: at start, a Redis whose maxmemory policy may evict
// cachesync's bookkeeping keys is refused with the fix, unless allowed
// (then a warning); noeviction and maxmemory 0 pass; a server that refuses
// CONFIG GET gets a warning saying what to verify.
func TestCheckEviction(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	configure := func(maxmemory, policy string) {
		t.Helper()
		for _, kv := range [][2]string{{"maxmemory", maxmemory}, {"maxmemory-policy", policy}} {
			if err := tb.client.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
				t.Fatalf("CONFIG SET %s %s: %v", kv[0], kv[1], err)
			}
		}
	}
	check := func(client redis.UniversalClient, allow bool) (string, error) {
		var logs syncBuffer
		err := writer.CheckEviction(ctx, client, allow, zerolog.New(&logs))
		return logs.String(), err
	}

	for _, tc := range []struct{ maxmemory, policy string }{
		{"0", "noeviction"},
		{"0", "allkeys-lru"},
		{"1gb", "noeviction"},
	} {
		configure(tc.maxmemory, tc.policy)
		if logs, err := check(tb.client, false); err != nil || logs != "" {
			t.Errorf("maxmemory %s, %s: %v, logged %q; want accepted silently", tc.maxmemory, tc.policy, err, logs)
		}
	}

	for _, policy := range []string{"allkeys-lru", "volatile-lru"} {
		configure("1gb", policy)
		_, err := check(tb.client, false)
		if !errors.Is(err, writer.ErrEvictionUnsafe) {
			t.Fatalf("maxmemory 1gb, %s: %v, want ErrEvictionUnsafe", policy, err)
		}
		for _, want := range []string{tb.server.Addr(), policy, "CONFIG SET maxmemory-policy noeviction", "--allow-eviction", "docs/operations.md"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: the refusal lacks %q: %v", policy, want, err)
			}
		}
		logs, err := check(tb.client, true)
		if err != nil || !strings.Contains(logs, `"level":"warn"`) || !strings.Contains(logs, policy) {
			t.Errorf("%s with --allow-eviction: %v, logged %q; want a warning naming the policy", policy, err, logs)
		}
	}

	// A user without CONFIG (as on managed services): warned, not refused.
	if err := tb.client.Do(ctx, aclSetUser("noconfig", "+@all", "-config", "~*")...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	limited := redis.NewClient(&redis.Options{Addr: tb.server.Addr(), Username: "noconfig", Password: "pw"})
	t.Cleanup(func() { _ = limited.Close() })
	logs, err := check(limited, false)
	if err != nil || !strings.Contains(logs, "could not read the Redis eviction policy") || !strings.Contains(logs, "noeviction") {
		t.Errorf("without CONFIG: %v, logged %q; want a warning saying what to verify", err, logs)
	}
}
