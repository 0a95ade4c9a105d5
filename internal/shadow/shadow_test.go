package shadow

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
)

// TestMain fails the run when Close leaves a goroutine behind, once the
// servers are stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testenv.Tests(m), goleak.IgnoreTopFunction(testenv.SpawnerFunction))
}

func TestMergeNotifyFlags(t *testing.T) {
	for _, c := range []struct {
		current, want string
		changed       bool
	}{
		{"", "Kg$xe", true},
		{"Elz", "ElzKg$xe", true},
		{"KA", "KA", false},
		{"EA", "EAK", true},
		{"Kg$xe", "Kg$xe", false},
		{"Kx", "Kxg$e", true},
	} {
		got, changed := MergeNotifyFlags(c.current)
		if got != c.want || changed != c.changed {
			t.Errorf("MergeNotifyFlags(%q) = %q, %v; want %q, %v", c.current, got, changed, c.want, c.changed)
		}
	}
}

// counts is an Observer that counts.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[k]++
}
func (c *counts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}
func (c *counts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.n)
}
func (c *counts) Checked(rule string)           { c.add("checked " + rule) }
func (c *counts) Missed(rule string)            { c.add("missed " + rule) }
func (c *counts) Unchecked(rule, reason string) { c.add("unchecked " + rule + " " + reason) }

// start starts a shadow on a Redis of its own, after setting the preset
// keys (so that no notification of them is heard).
func start(t *testing.T, maxKeys int, preset ...string) (*Shadow, *redis.Client, *counts) {
	t.Helper()
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	for _, k := range preset {
		rdb.Set(ctx, k, "1", 0)
	}
	if _, err := EnableNotifications(ctx, rdb); err != nil {
		t.Fatal(err)
	}
	obs := &counts{n: map[string]int{}}
	s := New(Options{Redis: rdb, Window: 300 * time.Millisecond, MaxKeys: maxKeys, Observer: obs, Logger: zerolog.Nop()})
	if err := s.Start(ctx, []string{"*"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, rdb, obs
}

// heard waits until the shadow received the notifications of keys: the
// test's own writes must not pass for the application's after the commit.
func heard(t *testing.T, s *Shadow, keys ...string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "notifications received", func() (bool, string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, k := range keys {
			if _, ok := s.seen[k]; !ok {
				return false, k
			}
		}
		return true, ""
	})
}

// TestTagKeysAreTrackedEach: a tag's deletion tracks each of its keys that
// exists; the one the application deletes is checked, the one it leaves is
// missed, the one that was not cached is not counted.
func TestTagKeysAreTrackedEach(t *testing.T) {
	s, rdb, obs := start(t, 100)
	ctx := context.Background()
	rdb.Set(ctx, "page:a", "1", 0)
	rdb.Set(ctx, "page:b", "1", 0)
	rdb.SAdd(ctx, keyspace.TagKey("org:7"), "page:a", "page:b", "page:gone")
	heard(t, s, "page:a", "page:b")
	commit := time.Now()
	if err := s.Apply(ctx, []mapping.Batch{{CommitTime: commit, Ops: []mapping.Op{{Kind: mapping.OpDeleteTag, Key: "org:7", Rule: "user"}}}}); err != nil {
		t.Fatal(err)
	}
	rdb.Del(ctx, "page:a")
	testenv.Eventually(t, 10*time.Second, "page:b missed", func() (bool, string) {
		return obs.get("missed user") == 1 && obs.get("checked user") == 2, obs.String()
	})
	if n := rdb.Exists(ctx, "page:b", keyspace.TagKey("org:7")).Val(); n != 2 {
		t.Errorf("the shadow deleted something: %d of page:b and the tag set left", n)
	}
}

// TestCapCountsUnchecked: past MaxKeys an existing key is counted as
// unchecked, never as missed.
func TestCapCountsUnchecked(t *testing.T) {
	s, _, obs := start(t, 1, "k1", "k2")
	ctx := context.Background()
	ops := []mapping.Op{{Kind: mapping.OpDelete, Key: "k1", Rule: "r"}, {Kind: mapping.OpDelete, Key: "k2", Rule: "r"}, {Kind: mapping.OpDelete, Key: "k3", Rule: "r"}}
	if err := s.Apply(ctx, []mapping.Batch{{CommitTime: time.Now(), Ops: ops}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "k1 missed", func() (bool, string) {
		return obs.get("missed r") == 1, obs.String()
	})
	if got := obs.get("unchecked r " + UncheckedCap); got != 1 {
		t.Errorf("unchecked tracking_cap = %d, want 1 (%v)", got, obs)
	}
}

// TestBrokenSubscriptionCountsNoMiss: when Redis drops the subscription,
// the keys in their window are counted as unchecked, not missed (their
// notifications may be lost); once subscribed again, keys are judged again.
func TestBrokenSubscriptionCountsNoMiss(t *testing.T) {
	s, rdb, obs := start(t, 100, "k1", "k2")
	ctx := context.Background()
	if err := s.Apply(ctx, []mapping.Batch{{CommitTime: time.Now(), Ops: []mapping.Op{{Kind: mapping.OpDelete, Key: "k1", Rule: "r"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "k1 unchecked", func() (bool, string) {
		return obs.get("unchecked r "+UncheckedNotification) == 1, obs.String()
	})
	testenv.Eventually(t, 10*time.Second, "subscribed again", func() (bool, string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return !s.blind && !s.blindUntil.IsZero(), ""
	})
	if err := s.Apply(ctx, []mapping.Batch{{CommitTime: time.Now(), Ops: []mapping.Op{{Kind: mapping.OpDelete, Key: "k2", Rule: "r"}}}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "k2 missed", func() (bool, string) {
		return obs.get("missed r") == 1, obs.String()
	})
	if got := obs.get("unchecked r " + UncheckedNotification); got != 1 {
		t.Errorf("unchecked notifications_lost = %d, want 1 (%v)", got, obs)
	}
}
