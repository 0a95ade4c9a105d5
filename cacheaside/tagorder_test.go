package cacheaside_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
)

// pipelineHook runs before on every pipeline a node client sends, and
// after once it returned.
type pipelineHook struct {
	before, after func(cmds []redis.Cmder)
}

func (h pipelineHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h pipelineHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h pipelineHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.before(cmds)
		err := next(ctx, cmds)
		h.after(cmds)
		return err
	}
}

// touches reports whether one of cmds names key among its arguments.
func touches(cmds []redis.Cmder, key string) bool {
	return slices.ContainsFunc(cmds, func(c redis.Cmder) bool {
		return slices.ContainsFunc(c.Args(), func(a any) bool { return a == key })
	})
}

// TestClusterTicketBeforeTags: on a cluster, a fill takes its ticket before
// it registers the key under its tags. A cluster client sends the commands
// of each node of a pipeline concurrently, so when the ticket and the tag
// registration shared one pipeline, the registration could run first; a tag
// invalidation between the two then deleted the registration (and a fence
// without the ticket yet), the fill was written, and the key escaped every
// later invalidation of the tag. The test forces that interleaving when it
// can: the ticket's node pipeline waits for the tag registration (at most
// 300 ms, which it never sees when the ticket goes first), and the tag is
// invalidated right after its registration.
func TestClusterTicketBeforeTags(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{ReplicasPerMaster: -1})
	ctx := context.Background()
	const key = "user:1"
	tag := ""
	for i := 0; tag == ""; i++ {
		if tk := fmt.Sprintf("org:%d", i); cluster.MasterOf(t, keyspace.TagKey(tk)).Addr != cluster.MasterOf(t, key).Addr {
			tag = tk
		}
	}
	quiet := slog.New(slog.NewTextHandler(&syncBuffer{}, nil))
	// The daemon's side: another client that invalidates the tag.
	daemon, err := cacheaside.New(cluster.Client(t), cacheaside.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer daemon.Close()

	var (
		once        sync.Once
		invalidated = make(chan struct{})
	)
	hook := pipelineHook{
		before: func(cmds []redis.Cmder) {
			// The ticket's (the tag registration names the fence too).
			if touches(cmds, keyspace.FenceKey(key)) && !touches(cmds, keyspace.TagKey(tag)) {
				select {
				case <-invalidated:
				case <-time.After(300 * time.Millisecond):
				}
			}
		},
		after: func(cmds []redis.Cmder) {
			// A registration that ran (not one refused with NOSCRIPT, which
			// the client retries after it loads its scripts).
			if touches(cmds, keyspace.TagKey(tag)) && cmds[0].Err() == nil {
				once.Do(func() {
					defer close(invalidated)
					if err := daemon.InvalidateTags(ctx, tag); err != nil {
						t.Errorf("invalidate %s: %v", tag, err)
					}
				})
			}
		},
	}
	rdb := cluster.Client(t)
	rdb.OnNewNode(func(n *redis.Client) { n.AddHook(hook) }) // before any command
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if _, err := cacheaside.GetOrLoad(ctx, c, key, func(context.Context) (int, error) { return 1, nil }, cacheaside.Tags(tag)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-invalidated:
	default:
		t.Fatal("the tag was never registered: the test's premise")
	}
	// Whatever the fill did, the next invalidation of the tag must remove it.
	if err := daemon.InvalidateTags(ctx, tag); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, key).Val(); n != 0 {
		v, _ := rdb.Get(ctx, key).Result()
		t.Errorf("%s = %q escaped the invalidation of tag %s (stats %+v): its registration was lost to an invalidation before its ticket", key, v, tag, c.Stats())
	}
}

// TestClusterRoundTrips: on a cluster, a miss costs the three round trips
// it does on a standalone server, and one more with tags: their
// registration waits for the ticket (TestClusterTicketBeforeTags).
func TestClusterRoundTrips(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{ReplicasPerMaster: -1})
	rdb := cluster.Client(t)
	rt := &testenv.RoundTrips{}
	rdb.AddHook(rt)
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	get := func(key string, opts ...cacheaside.FillOption) func() error {
		return func() error {
			_, err := cacheaside.GetOrLoad(ctx, c, key, func(context.Context) (int, error) { return 1, nil }, opts...)
			return err
		}
	}
	roundTripsOf(t, rt, get("warm", cacheaside.Tags("org:1"))) // loads the scripts
	for _, tc := range []struct {
		key       string
		opts      []cacheaside.FillOption
		miss, hit int64
	}{
		{key: "user:1", miss: 3, hit: 1},
		{key: "user:2", opts: []cacheaside.FillOption{cacheaside.Tags("org:1", "org:2")}, miss: 4, hit: 1},
	} {
		if n := roundTripsOf(t, rt, get(tc.key, tc.opts...)); n != tc.miss {
			t.Errorf("%s: a miss took %d round trips, want %d", tc.key, n, tc.miss)
		}
		if n := roundTripsOf(t, rt, get(tc.key, tc.opts...)); n != tc.hit {
			t.Errorf("%s: a hit took %d round trips, want %d", tc.key, n, tc.hit)
		}
	}
	if st := c.Stats(); st.Fills != 3 || st.RedisErrors != 0 {
		t.Errorf("stats %+v, want 3 fills and no Redis error", st)
	}
}

// TestWriteAfterTagInvalidation: Set and WriteBehind register the key under
// its tags before the write and again after it. A tag invalidation that
// lands between the first registration and the write deletes that
// registration; without the second, the value written next escaped every
// later invalidation of the tag. The hook applies the invalidation just
// before the write's pipeline.
func TestWriteAfterTagInvalidation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, write := range []struct {
		name  string
		write func(c *cacheaside.Client) error
	}{
		{"Set", func(c *cacheaside.Client) error {
			return cacheaside.Set(ctx, c, "user:1", user{ID: 1}, cacheaside.Tags("org:1"))
		}},
		{"WriteBehind", func(c *cacheaside.Client) error {
			_, err := cacheaside.WriteBehind(ctx, c.WriteBehindStream("wb:users"), "user:1", user{ID: 1}, map[string]int{"id": 1}, cacheaside.Tags("org:1"))
			return err
		}},
	} {
		t.Run(write.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			daemon := e.client(t, cacheaside.Options{})
			var once sync.Once
			rdb := e.server.Client(t)
			rdb.AddHook(pipelineHook{
				before: func(cmds []redis.Cmder) {
					// The write: the pipeline that names the stamp.
					if touches(cmds, keyspace.StampKey("user:1")) {
						once.Do(func() {
							if err := daemon.InvalidateTags(ctx, "org:1"); err != nil {
								t.Errorf("invalidate org:1: %v", err)
							}
						})
					}
				},
				after: func([]redis.Cmder) {},
			})
			c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := write.write(c); err != nil {
				t.Fatal(err)
			}
			if _, ok := e.get(t, "user:1"); !ok {
				t.Fatal("user:1 not written: the test's premise")
			}
			if err := daemon.InvalidateTags(ctx, "org:1"); err != nil {
				t.Fatal(err)
			}
			if v, ok := e.get(t, "user:1"); ok {
				t.Errorf("user:1 = %q escaped the invalidation of org:1 that followed the write", v)
			}
		})
	}
}
