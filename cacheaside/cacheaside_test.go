package cacheaside_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/writer"
)

// TestMain fails the run when a test leaves a goroutine behind, once the
// servers are stopped: a Client's goroutines (refreshes, shared loads) must
// end with Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testenv.Tests(m),
		// testenv starts servers from one goroutine that lives as long as
		// the process, on purpose (the parent-death signal is per thread).
		goleak.IgnoreTopFunction(testenv.SpawnerFunction))
}

type user struct {
	ID    int    `json:"id"`
	Email string `json:"email"`
}

type env struct {
	server *testenv.RedisServer
	rdb    *redis.Client
	logs   *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	server := testenv.StartRedis(t)
	return &env{server: server, rdb: server.Client(t), logs: &syncBuffer{}}
}

// client is a cacheaside.Client on the env's Redis, logging into e.logs,
// closed at the test's end.
func (e *env) client(t *testing.T, opts cacheaside.Options) *cacheaside.Client {
	t.Helper()
	opts.Logger = slog.New(slog.NewTextHandler(e.logs, nil))
	c, err := cacheaside.New(e.rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (e *env) get(t *testing.T, key string) (string, bool) {
	t.Helper()
	v, err := e.rdb.Get(context.Background(), key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// invalidate applies the daemon's own effects to Redis with its writer.
func (e *env) invalidate(t *testing.T, ops ...mapping.Op) {
	t.Helper()
	w := writer.New(e.rdb, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	for i := range ops {
		ops[i].Rule = "test"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Apply(ctx, []mapping.Batch{{CommitLSN: 100, EndLSN: 101, Ops: ops}}); err != nil {
		t.Fatal(err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// loader counts its calls and returns a fixed user.
type loader struct {
	calls atomic.Int64
	user  user
	err   error
}

func (l *loader) load(context.Context) (user, error) {
	l.calls.Add(1)
	return l.user, l.err
}

func TestMissThenHit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{TTL: time.Hour})
	ctx := context.Background()
	l := &loader{user: user{ID: 7, Email: "a@example.com"}}

	for i := range 3 {
		got, err := cacheaside.GetOrLoad(ctx, c, "user:7", l.load)
		if err != nil || got != l.user {
			t.Fatalf("read %d: %+v, %v; want %+v", i, got, err, l.user)
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want 1", n)
	}
	if v, _ := e.get(t, "user:7"); v != `{"id":7,"email":"a@example.com"}` {
		t.Errorf("cached %q, want the JSON of the user", v)
	}
	st := c.Stats()
	if st.Hits != 2 || st.Misses != 1 || st.Fills != 1 || st.Loads != 1 {
		t.Errorf("stats %+v, want 2 hits, 1 miss, 1 load, 1 fill", st)
	}
	if n := e.rdb.Exists(ctx, keyspace.FenceKey("user:7"), keyspace.LockKey("user:7")).Val(); n != 0 {
		t.Errorf("%d fence or lock keys left after the fill", n)
	}
}

func TestTTLJitter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{TTL: 100 * time.Second, Jitter: 0.2})
	ctx := context.Background()
	distinct := map[time.Duration]bool{}
	for i := range 100 {
		key := fmt.Sprintf("k:%d", i)
		if _, err := cacheaside.GetOrLoad(ctx, c, key, func(context.Context) (int, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
		ttl := e.rdb.PTTL(ctx, key).Val()
		if ttl < 79*time.Second || ttl > 120*time.Second {
			t.Fatalf("%s: TTL %s outside 100s ± 20%%", key, ttl)
		}
		distinct[ttl.Truncate(time.Second)] = true
	}
	if len(distinct) < 10 {
		t.Errorf("100 TTLs fell into %d distinct seconds: no jitter", len(distinct))
	}
	// A per-call TTL overrides the default.
	if _, err := cacheaside.GetOrLoad(ctx, c, "short", func(context.Context) (int, error) { return 1, nil }, cacheaside.TTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if ttl := e.rdb.PTTL(ctx, "short").Val(); ttl > 12*time.Second || ttl < 7*time.Second {
		t.Errorf("TTL(10s) gave %s", ttl)
	}
}

func TestNotFoundIsCached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{NotFoundTTL: 20 * time.Second})
	ctx := context.Background()
	l := &loader{err: fmt.Errorf("user 9: %w", cacheaside.ErrNotFound)}
	for i := range 3 {
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:9", l.load); !errors.Is(err, cacheaside.ErrNotFound) {
			t.Fatalf("read %d: %v, want ErrNotFound", i, err)
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want 1", n)
	}
	if ttl := e.rdb.PTTL(ctx, "user:9").Val(); ttl <= 0 || ttl > 20*time.Second {
		t.Errorf("not-found TTL %s, want within 20s", ttl)
	}
	if st := c.Stats(); st.NotFoundHits != 2 {
		t.Errorf("NotFoundHits = %d, want 2", st.NotFoundHits)
	}

	// Other loader errors are returned and never cached.
	boom := errors.New("database down")
	l2 := &loader{err: boom}
	for range 2 {
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:10", l2.load); !errors.Is(err, boom) {
			t.Fatalf("got %v, want the loader's error", err)
		}
	}
	if n := l2.calls.Load(); n != 2 {
		t.Errorf("a failed load was cached: loader called %d times, want 2", n)
	}
	if _, ok := e.get(t, "user:10"); ok {
		t.Error("a failed load left a value")
	}
	if st := c.Stats(); st.LoadErrors != 2 {
		t.Errorf("LoadErrors = %d, want 2", st.LoadErrors)
	}
}

func TestSingleflightInProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{})
	release := make(chan struct{})
	var calls atomic.Int64
	load := func(context.Context) (string, error) {
		calls.Add(1)
		<-release
		return "v", nil
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if v, err := cacheaside.GetOrLoad(context.Background(), c, "hot", load); err != nil || v != "v" {
				t.Errorf("got %q, %v", v, err)
			}
		})
	}
	testenv.Eventually(t, 10*time.Second, "the first load", func() (bool, string) {
		n := calls.Load()
		return n == 1, fmt.Sprintf("%d loads", n)
	})
	testenv.Eventually(t, 10*time.Second, "every reader to miss", func() (bool, string) {
		n := c.Stats().Misses
		return n == 50, fmt.Sprintf("%d misses, want 50", n)
	})
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("50 concurrent readers made %d loads, want 1", n)
	}
}

// TestStampedeAcrossProcesses: several clients (as several processes would)
// miss the same key at once; the lock holder loads, the others wait for its
// fill and re-read.
func TestStampedeAcrossProcesses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var calls atomic.Int64
	load := func(context.Context) (string, error) {
		calls.Add(1)
		time.Sleep(50 * time.Millisecond) // a slow query, so that the others arrive meanwhile
		return "v", nil
	}
	clients := make([]*cacheaside.Client, 4)
	for i := range clients {
		clients[i] = e.client(t, cacheaside.Options{LockWait: 5 * time.Second})
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		for range 10 {
			wg.Go(func() {
				<-start
				if v, err := cacheaside.GetOrLoad(context.Background(), c, "hot", load); err != nil || v != "v" {
					t.Errorf("got %q, %v", v, err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("4 processes made %d loads, want 1", n)
	}
	var waits uint64
	for _, c := range clients {
		waits += c.Stats().LockWaits
	}
	if waits == 0 {
		t.Error("no process waited for the lock holder")
	}
}

func TestLockWaitIsBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{LockWait: 100 * time.Millisecond})
	ctx := context.Background()
	// A holder that never fills (it crashed).
	if err := e.rdb.Set(ctx, keyspace.LockKey("k"), "someone", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	l := &loader{user: user{ID: 1}}
	got, err := cacheaside.GetOrLoad(ctx, c, "k", l.load)
	if err != nil || got != l.user {
		t.Fatalf("got %+v, %v", got, err)
	}
	if st := c.Stats(); st.LockWaits != 1 || st.LockTimeouts != 1 || st.Fills != 1 {
		t.Errorf("stats %+v, want one lock wait that timed out and a fill", st)
	}
	if v, _ := e.get(t, "k"); v != `{"id":1,"email":""}` {
		t.Errorf("cached %q", v)
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{TTL: time.Hour, SoftTTL: time.Minute, Jitter: -1})
	ctx := context.Background()
	var version atomic.Int64
	load := func(context.Context) (int64, error) { return version.Load(), nil }
	if v, err := cacheaside.GetOrLoad(ctx, c, "k", load); err != nil || v != 0 {
		t.Fatalf("got %d, %v", v, err)
	}
	version.Store(1)
	// Fresh: served from the cache, no refresh.
	if v, _ := cacheaside.GetOrLoad(ctx, c, "k", load); v != 0 || c.Stats().StaleServed != 0 {
		t.Fatalf("a fresh value was treated as stale")
	}
	// Age it past the soft TTL: 58 minutes left of 60.
	e.rdb.PExpire(ctx, "k", 58*time.Minute)
	if v, err := cacheaside.GetOrLoad(ctx, c, "k", load); err != nil || v != 0 {
		t.Fatalf("stale read got %d, %v; want the cached 0 at once", v, err)
	}
	testenv.Eventually(t, 10*time.Second, "the background refresh", func() (bool, string) {
		v, _ := e.get(t, "k")
		return v == "1", fmt.Sprintf("k = %q, want \"1\"", v)
	})
	if st := c.Stats(); st.StaleServed != 1 || st.Refreshes != 1 {
		t.Errorf("stats %+v, want one stale serve and one refresh", st)
	}
	if ttl := e.rdb.PTTL(ctx, "k").Val(); ttl < 59*time.Minute {
		t.Errorf("the refresh left a TTL of %s", ttl)
	}

	// Many stale reads during one slow refresh start one refresh.
	e.rdb.PExpire(ctx, "k", 58*time.Minute)
	release := make(chan struct{})
	var slowLoads atomic.Int64
	slow := func(context.Context) (int64, error) {
		slowLoads.Add(1)
		<-release
		return 2, nil
	}
	for range 50 {
		if v, err := cacheaside.GetOrLoad(ctx, c, "k", slow); err != nil || v != 1 {
			t.Fatalf("stale read during a refresh got %d, %v; want the cached 1 at once", v, err)
		}
	}
	close(release)
	testenv.Eventually(t, 10*time.Second, "the second refresh", func() (bool, string) {
		v, _ := e.get(t, "k")
		return v == "2", fmt.Sprintf("k = %q, want \"2\"", v)
	})
	if n := slowLoads.Load(); n != 1 {
		t.Errorf("50 stale reads during a refresh made %d loads, want 1", n)
	}
}

func TestTagsAndVersions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{TTL: time.Hour})
	ctx := context.Background()
	l := &loader{user: user{ID: 3}}
	if _, err := cacheaside.GetOrLoad(ctx, c, "user:3", l.load, cacheaside.Tags("org:1", "team:2")); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"org:1", "team:2"} {
		members := e.rdb.SMembers(ctx, keyspace.TagKey(tag)).Val()
		if !contains(members, "user:3") || !contains(members, keyspace.FenceKey("user:3")) {
			t.Errorf("%s holds %v, want the key and its fence", keyspace.TagKey(tag), members)
		}
		if tagTTL, keyTTL := e.rdb.PTTL(ctx, keyspace.TagKey(tag)).Val(), e.rdb.PTTL(ctx, "user:3").Val(); tagTTL < keyTTL {
			t.Errorf("%s expires in %s, before its member (%s)", tag, tagTTL, keyTTL)
		}
	}
	// The daemon's tag invalidation reaches what the client cached.
	e.invalidate(t, mapping.Op{Kind: mapping.OpDeleteTag, Key: "org:1"})
	if _, ok := e.get(t, "user:3"); ok {
		t.Error("user:3 survived the invalidation of its tag")
	}

	// Versions: v0 until the daemon bumps the namespace.
	if _, err := cacheaside.GetOrLoad(ctx, c, "page:1", l.load, cacheaside.Versioned("users:list")); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.get(t, "users:list:v0:page:1"); !ok {
		t.Fatal("the versioned key users:list:v0:page:1 was not filled")
	}
	e.invalidate(t, mapping.Op{Kind: mapping.OpBumpVersion, Key: "users:list"})
	before := l.calls.Load()
	if _, err := cacheaside.GetOrLoad(ctx, c, "page:1", l.load, cacheaside.Versioned("users:list")); err != nil {
		t.Fatal(err)
	}
	if l.calls.Load() != before+1 {
		t.Error("a bumped namespace was served from the old version")
	}
	if _, ok := e.get(t, "users:list:v1:page:1"); !ok {
		t.Error("the versioned key users:list:v1:page:1 was not filled")
	}
	if v, err := c.Version(ctx, "users:list"); err != nil || v != 1 {
		t.Errorf("Version = %d, %v; want 1", v, err)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestFencedFill plays the race deterministically: the loader reads the old
// row, then the row changes and the daemon's effect lands, then the loader
// returns. With the fence the old value is refused; without it, it is cached.
func TestFencedFill(t *testing.T) {
	t.Parallel()
	invalidations := []struct {
		name string
		op   mapping.Op
	}{
		{"delete", mapping.Op{Kind: mapping.OpDelete, Key: "user:1"}},
		{"tag", mapping.Op{Kind: mapping.OpDeleteTag, Key: "org:1"}},
		{"write-through", mapping.Op{Kind: mapping.OpSet, Key: "user:1", Value: []byte(`{"id":1,"email":"new@example.com"}`), LSN: 100, TTL: time.Hour}},
		{"flush", mapping.Op{Kind: mapping.OpFlush, Keyspace: &mapping.Keyspace{Keys: []string{"other:*"}}, Reason: "truncate"}},
	}
	for _, inv := range invalidations {
		for _, fenced := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/fenced=%v", inv.name, fenced), func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				c := e.client(t, cacheaside.Options{DisableFencing: !fenced})
				old := user{ID: 1, Email: "old@example.com"}
				load := func(context.Context) (user, error) {
					row := old              // the SELECT returned the old row
					e.invalidate(t, inv.op) // the UPDATE commits and the daemon applies it
					return row, nil         // the reader writes what it read
				}
				got, err := cacheaside.GetOrLoad(context.Background(), c, "user:1", load, cacheaside.Tags("org:1"))
				if err != nil || got != old {
					t.Fatalf("got %+v, %v; the reader still gets what it loaded", got, err)
				}
				v, _ := e.get(t, "user:1")
				stale := strings.Contains(v, "old@example.com")
				switch {
				case fenced && stale:
					t.Errorf("the fenced fill wrote the old row after the invalidation: %q", v)
				case fenced && c.Stats().FencedFills != 1:
					t.Errorf("FencedFills = %d, want 1", c.Stats().FencedFills)
				case !fenced && !stale:
					t.Errorf("without the fence the race should leave the old row, found %q", v)
				}
			})
		}
	}
}

func TestRedisDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{ErrorLogInterval: time.Hour})
	e.server.Stop(t)
	l := &loader{user: user{ID: 5}}
	for i := range 5 {
		got, err := cacheaside.GetOrLoad(context.Background(), c, "user:5", l.load, cacheaside.Tags("t"), cacheaside.Versioned("ns"))
		if err != nil || got != l.user {
			t.Fatalf("read %d with Redis down: %+v, %v; want the loaded row", i, got, err)
		}
	}
	if n := l.calls.Load(); n != 5 {
		t.Errorf("loader called %d times, want 5 (one per read)", n)
	}
	if st := c.Stats(); st.RedisErrors+st.Bypassed < 5 {
		t.Errorf("stats %+v: want every read counted as a Redis error or a bypass", st)
	}
	if n := strings.Count(e.logs.String(), "cacheaside: redis failed"); n != 1 {
		t.Errorf("%d log lines in one interval, want 1:\n%s", n, e.logs.String())
	}

	if st := c.Stats(); st.Bypassed == 0 {
		t.Errorf("stats %+v: reads kept trying the Redis that just failed", st)
	}

	e.server.Start(t)
	testenv.Eventually(t, 10*time.Second, "a fill after Redis returned", func() (bool, string) {
		if _, err := cacheaside.GetOrLoad(context.Background(), c, "user:5", l.load); err != nil {
			return false, fmt.Sprintf("GetOrLoad: %v", err)
		}
		return e.rdb.Exists(context.Background(), "user:5").Val() == 1, "user:5 not cached"
	})
}

func TestScriptsReloaded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{})
	ctx := context.Background()
	if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := cacheaside.GetOrLoad(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }, cacheaside.Tags("t")); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.get(t, "k"); v != "1" {
		t.Errorf("after SCRIPT FLUSH the fill wrote %q", v)
	}
	if st := c.Stats(); st.RedisErrors != 0 {
		t.Errorf("RedisErrors = %d: NOSCRIPT should be handled", st.RedisErrors)
	}
}

func TestUndecodableValueIsReloaded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{})
	ctx := context.Background()
	e.rdb.Set(ctx, "user:1", "not json", 0)
	l := &loader{user: user{ID: 1}}
	if got, err := cacheaside.GetOrLoad(ctx, c, "user:1", l.load); err != nil || got != l.user {
		t.Fatalf("got %+v, %v", got, err)
	}
	if st := c.Stats(); st.DecodeErrors != 1 || st.Fills != 1 {
		t.Errorf("stats %+v, want one decode error and a fill", st)
	}
	if !strings.Contains(e.logs.String(), "does not decode") {
		t.Error("the decode error was not logged")
	}
}

func TestInvalidateHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{})
	ctx := context.Background()
	one := func(context.Context) (int, error) { return 1, nil }
	for _, k := range []string{"a", "b", "c"} {
		if _, err := cacheaside.GetOrLoad(ctx, c, k, one, cacheaside.Tags("t")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cacheaside.GetOrLoad(ctx, c, "d", one); err != nil {
		t.Fatal(err)
	}
	if err := c.Invalidate(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if err := c.InvalidateTags(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if n := e.rdb.Exists(ctx, "a", "b", "c", "d", keyspace.TagKey("t")).Val(); n != 0 {
		t.Errorf("%d keys left after Invalidate and InvalidateTags", n)
	}
}

func TestOptionsValidated(t *testing.T) {
	t.Parallel()
	for _, o := range []cacheaside.Options{
		{TTL: time.Minute, SoftTTL: time.Hour},
		{Jitter: 1.5},
		{TTL: time.Microsecond},
		{VerifyHits: 1.5},
		{VerifyHits: -0.1},
		{VerifyWindow: -time.Second},
	} {
		if _, err := cacheaside.New(nil, o); err == nil {
			t.Errorf("New(%+v) accepted invalid options", o)
		}
	}
}

// TestCluster: fills, tags, versions and the fence on a real Redis Cluster,
// where a tag's members live in many slots.
func TestCluster(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{})
	rdb := cluster.Client(t)
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var keys []string
	for i := range 30 {
		k := fmt.Sprintf("user:%d", i)
		keys = append(keys, k)
		if _, err := cacheaside.GetOrLoad(ctx, c, k, func(context.Context) (int, error) { return i, nil }, cacheaside.Tags("org:1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cacheaside.GetOrLoad(ctx, c, "page", func(context.Context) (int, error) { return 1, nil }, cacheaside.Versioned("list")); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, append(keys, "list:v0:page")...); n.Err() == nil {
		t.Fatal("a multi-key EXISTS across slots should be refused: the test's premise")
	}
	present := func(ks ...string) int {
		n := 0
		for _, k := range ks {
			n += int(rdb.Exists(ctx, k).Val())
		}
		return n
	}
	if n := present(append(keys, "list:v0:page")...); n != 31 {
		t.Fatalf("%d of 31 keys filled", n)
	}
	// The fill stamps live in their keys' slots, written by the same scripts.
	if err := cacheaside.Set(ctx, c, "user:set", 1); err != nil {
		t.Fatalf("Set on a cluster: %v", err)
	}
	if n := present(keyspace.StampKey(keys[0]), keyspace.StampKey("list:v0:page"), keyspace.StampKey("user:set")); n != 3 {
		t.Errorf("%d of 3 fill stamps written on a cluster", n)
	}
	if err := c.InvalidateTags(ctx, "org:1"); err != nil {
		t.Fatalf("InvalidateTags across slots: %v", err)
	}
	if n := present(append(keys, keyspace.TagKey("org:1"))...); n != 0 {
		t.Errorf("%d keys left after InvalidateTags", n)
	}
	// The fence on a cluster: an invalidation during the load refuses the fill.
	_, err = cacheaside.GetOrLoad(ctx, c, "user:99", func(context.Context) (int, error) {
		if err := c.Invalidate(ctx, "user:99"); err != nil {
			t.Fatal(err)
		}
		return 99, nil
	})
	if err != nil || present("user:99") != 0 || c.Stats().FencedFills != 1 {
		t.Errorf("the fill after an invalidation was not refused: err %v, present %d, stats %+v", err, present("user:99"), c.Stats())
	}
	if st := c.Stats(); st.RedisErrors != 0 {
		t.Errorf("%d Redis errors on the cluster", st.RedisErrors)
	}
}

// TestCloseWaitsForRefresh: Close cancels a stale-while-revalidate refresh
// in flight (its load sees ErrClosed as the cause) and returns only once the
// refresh has ended; afterwards every call is refused with ErrClosed, and
// Close may be called again.
func TestCloseWaitsForRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{TTL: time.Hour, SoftTTL: time.Minute, Jitter: -1})
	ctx := context.Background()
	if _, err := cacheaside.GetOrLoad(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	e.rdb.PExpire(ctx, "k", 58*time.Minute) // past the soft TTL

	var slow blockingLoader
	if v, err := cacheaside.GetOrLoad(ctx, c, "k", slow.load); err != nil || v != 1 {
		t.Fatalf("stale read got %d, %v; want the cached 1", v, err)
	}
	slow.awaitStart(t)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !slow.ended.Load() {
		t.Fatal("Close returned while the background refresh was still loading")
	}
	if err, _ := slow.cause.Load().(error); !errors.Is(err, cacheaside.ErrClosed) {
		t.Errorf("the refresh's context ended with cause %v, want ErrClosed", err)
	}
	if v, _ := e.get(t, "k"); v != "1" {
		t.Errorf("k = %q after the cancelled refresh, want the stale \"1\" untouched", v)
	}
	assertClosed(t, c)
}

// TestCloseWaitsForAbandonedLoad: a shared load whose only caller gave up
// goes on in the background (other callers could join it); Close cancels it
// and waits for it too.
func TestCloseWaitsForAbandonedLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{LoadTimeout: time.Minute})
	var slow blockingLoader
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := cacheaside.GetOrLoad(ctx, c, "k", slow.load)
		done <- err
	}()
	slow.awaitStart(t)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("GetOrLoad with a cancelled context: %v, want context.Canceled", err)
	}
	if slow.ended.Load() {
		t.Fatal("the caller's cancellation ended the shared load: the premise of this test is that it goes on")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !slow.ended.Load() {
		t.Fatal("Close returned while the abandoned load was still running")
	}
	if _, ok := e.get(t, "k"); ok {
		t.Error("the cancelled load filled the key")
	}
	assertClosed(t, c)
}

// blockingLoader is a query that runs until its context is cancelled.
type blockingLoader struct {
	started, ended atomic.Bool
	cause          atomic.Value // context.Cause of the load's context
}

func (b *blockingLoader) load(ctx context.Context) (int, error) {
	b.started.Store(true)
	<-ctx.Done()
	b.cause.Store(context.Cause(ctx))
	b.ended.Store(true)
	return 0, ctx.Err()
}

func (b *blockingLoader) awaitStart(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "the load to start", func() (bool, string) {
		return b.started.Load(), "the loader was not called"
	})
}

// assertClosed checks that every call of a closed client is refused and
// that Close is idempotent.
func assertClosed(t *testing.T, c *cacheaside.Client) {
	t.Helper()
	ctx := context.Background()
	calls := map[string]error{}
	_, calls["GetOrLoad"] = cacheaside.GetOrLoad(ctx, c, "k", func(context.Context) (int, error) {
		t.Error("a closed client called the loader")
		return 0, nil
	})
	_, calls["Get"] = cacheaside.Get[int](ctx, c, "k")
	calls["Set"] = cacheaside.Set(ctx, c, "k", 1)
	_, calls["WriteBehind"] = cacheaside.WriteBehind(ctx, c.WriteBehindStream("wb"), "k", 1, map[string]int{"id": 1})
	_, calls["WriteBehindDelete"] = cacheaside.WriteBehindDelete(ctx, c.WriteBehindStream("wb"), "k", map[string]int{"id": 1})
	calls["Invalidate"] = c.Invalidate(ctx, "k")
	calls["InvalidateTags"] = c.InvalidateTags(ctx, "t")
	_, calls["Version"] = c.Version(ctx, "ns")
	for name, err := range calls {
		if !errors.Is(err, cacheaside.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("a second Close: %v, want nil", err)
	}
}

// TestGet: Get reads what the daemon's refresh rules write (applied here by
// the daemon's own writer) and decodes it as GetOrLoad would, without loading,
// filling, locking or fencing anything.
func TestGet(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{})
	ctx := context.Background()
	e.invalidate(t, mapping.Op{Kind: mapping.OpSet, Key: "user:1", Value: []byte(`{"id":1,"email":"a@example.com"}`), LSN: 100, TTL: time.Hour})
	got, err := cacheaside.Get[user](ctx, c, "user:1")
	if want := (user{ID: 1, Email: "a@example.com"}); err != nil || got != want {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, want)
	}
	if n := e.rdb.Exists(ctx, keyspace.FenceKey("user:1"), keyspace.LockKey("user:1")).Val(); n != 0 {
		t.Errorf("Get left %d fence or lock keys", n)
	}

	// The row's deletion: the key holds nothing.
	e.invalidate(t, mapping.Op{Kind: mapping.OpUnset, Key: "user:1", LSN: 101})
	if _, err := cacheaside.Get[user](ctx, c, "user:1"); !errors.Is(err, cacheaside.ErrMiss) {
		t.Errorf("Get of a deleted key: %v, want ErrMiss", err)
	}
	// A cached "not found" (a fill of a missing row) is ErrNotFound.
	if _, err := cacheaside.GetOrLoad(ctx, c, "user:2", func(context.Context) (user, error) { return user{}, cacheaside.ErrNotFound }); !errors.Is(err, cacheaside.ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := cacheaside.Get[user](ctx, c, "user:2"); !errors.Is(err, cacheaside.ErrNotFound) {
		t.Errorf("Get of a cached not found: %v, want ErrNotFound", err)
	}
	// A value that does not decode is an error, not a miss: there is no
	// source to read instead, and the key stays.
	e.rdb.Set(ctx, "user:3", "not json", 0)
	if _, err := cacheaside.Get[user](ctx, c, "user:3"); err == nil || errors.Is(err, cacheaside.ErrMiss) || !strings.Contains(err.Error(), "user:3") {
		t.Errorf("Get of an undecodable value: %v, want an error naming user:3", err)
	}
	if v, _ := e.get(t, "user:3"); v != "not json" {
		t.Errorf("Get changed user:3 to %q", v)
	}
	if st := c.Stats(); st.Hits != 1 || st.NotFoundHits != 1 || st.Misses != 2 || st.DecodeErrors != 1 || st.Loads != 1 || st.Fills != 1 {
		t.Errorf("stats %+v, want Get's 1 hit, 1 not-found hit, 1 miss and 1 decode error besides GetOrLoad's miss, load and fill", st)
	}
}

// TestSetRefusesFillsInFlight: a GetOrLoad that read the row before another
// request wrote it and Set the new value must not overwrite that value
// with the old row afterwards.
func TestSetRefusesFillsInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{})
	ctx := context.Background()
	old, updated := user{ID: 1, Email: "old@example.com"}, user{ID: 1, Email: "new@example.com"}
	load := func(ctx context.Context) (user, error) {
		row := old // the SELECT returned the old row
		// Another request UPDATEs the row and caches what it wrote.
		if err := cacheaside.Set(ctx, c, "user:1", updated); err != nil {
			t.Error(err)
		}
		return row, nil
	}
	if got, err := cacheaside.GetOrLoad(ctx, c, "user:1", load); err != nil || got != old {
		t.Fatalf("got %+v, %v; the reader still gets what it loaded", got, err)
	}
	got, err := cacheaside.Get[user](ctx, c, "user:1")
	if err != nil || got != updated {
		t.Errorf("user:1 = %+v, %v after the fill that began before Set; want Set's %+v", got, err, updated)
	}
	if st := c.Stats(); st.FencedFills != 1 {
		t.Errorf("FencedFills = %d, want 1", st.FencedFills)
	}
}

// TestSetThenInvalidation: a value written by Set, with the TTL, tags and
// version namespace a fill would give it, is removed by every invalidation
// the daemon applies afterwards, and nothing brings it back.
func TestSetThenInvalidation(t *testing.T) {
	t.Parallel()
	for _, inv := range []struct {
		name string
		op   mapping.Op
		key  string // where Set writes
	}{
		{"delete", mapping.Op{Kind: mapping.OpDelete, Key: "user:1"}, "user:1"},
		{"tag", mapping.Op{Kind: mapping.OpDeleteTag, Key: "org:1"}, "user:1"},
		{"flush", mapping.Op{Kind: mapping.OpFlush, Keyspace: &mapping.Keyspace{Keys: []string{"user:*"}}, Reason: "truncate"}, "user:1"},
		{"bump_version", mapping.Op{Kind: mapping.OpBumpVersion, Key: "users"}, "users:v0:user:1"},
	} {
		t.Run(inv.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			c := e.client(t, cacheaside.Options{TTL: 10 * time.Second})
			ctx := context.Background()
			u := user{ID: 1, Email: "a@example.com"}
			opts := []cacheaside.FillOption{cacheaside.Tags("org:1")}
			if inv.name == "bump_version" {
				opts = append(opts, cacheaside.Versioned("users"))
			}
			if err := cacheaside.Set(ctx, c, "user:1", u, opts...); err != nil {
				t.Fatal(err)
			}
			if v, _ := e.get(t, inv.key); v != `{"id":1,"email":"a@example.com"}` {
				t.Fatalf("%s = %q after Set", inv.key, v)
			}
			if ttl := e.rdb.PTTL(ctx, inv.key).Val(); ttl < 8*time.Second || ttl > 11*time.Second {
				t.Errorf("Set gave %s a TTL of %s, want 10s ± 10%%", inv.key, ttl)
			}
			e.invalidate(t, inv.op)
			if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", func(context.Context) (user, error) { return user{ID: 1, Email: "reloaded"}, nil }, opts...); err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); st.Loads != 1 {
				t.Errorf("the read after the invalidation did not load (stats %+v): Set's value survived", st)
			}
			// A bump leaves the old version's entry to expire unread.
			if v, _ := e.get(t, inv.key); v == `{"id":1,"email":"a@example.com"}` && inv.name != "bump_version" {
				t.Errorf("%s still holds Set's value after the invalidation", inv.key)
			}
		})
	}
}
