package cacheaside_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
)

// assertStamp checks that key holds a value and a fill stamp within
// [notBefore, notAfter] (Unix milliseconds), both with the same TTL.
func (e *env) assertStamp(t *testing.T, key string, notBefore, notAfter time.Time) {
	t.Helper()
	ctx := context.Background()
	var vttl, sttl *redis.DurationCmd
	var stamp *redis.StringCmd
	// One transaction: both TTLs are read at the same instant.
	if _, err := e.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		vttl = p.PTTL(ctx, key)
		sttl = p.PTTL(ctx, keyspace.StampKey(key))
		stamp = p.Get(ctx, keyspace.StampKey(key))
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatalf("read %s and its stamp: %v", key, err)
	}
	if errors.Is(stamp.Err(), redis.Nil) {
		t.Fatalf("%s has no fill stamp (%s missing)", key, keyspace.StampKey(key))
	}
	ms, err := strconv.ParseInt(stamp.Val(), 10, 64)
	if err != nil {
		t.Fatalf("stamp of %s = %q, want Unix milliseconds", key, stamp.Val())
	}
	if ms < notBefore.UnixMilli() || ms > notAfter.UnixMilli() {
		t.Errorf("stamp of %s = %d, want within [%d, %d] (before the load began)", key, ms, notBefore.UnixMilli(), notAfter.UnixMilli())
	}
	// The same TTL, to the millisecond: Redis before 7.2 reads its clock
	// for each SET … PX of a script or a MULTI, so the second one may
	// expire 1 ms after the first when the clock ticks between them (it
	// did under -race).
	if d := sttl.Val() - vttl.Val(); vttl.Val() <= 0 || d < -time.Millisecond || d > time.Millisecond {
		t.Errorf("%s has TTL %s, its stamp %s; want the same positive TTL", key, vttl.Val(), sttl.Val())
	}
}

// assertNoStamp checks that key has no fill stamp.
func (e *env) assertNoStamp(t *testing.T, key, why string) {
	t.Helper()
	if n := e.rdb.Exists(context.Background(), keyspace.StampKey(key)).Val(); n != 0 {
		t.Errorf("%s has a fill stamp %s", key, why)
	}
}

// TestFillStamps: every path that writes a value writes its fill stamp
// with it, with the same TTL, taken before the value was loaded.
func TestFillStamps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := user{ID: 1, Email: "a@example.com"}

	t.Run("fill", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		c := e.client(t, cacheaside.Options{TTL: time.Minute})
		before := time.Now()
		var loadStart time.Time
		load := func(context.Context) (user, error) {
			loadStart = time.Now()
			time.Sleep(20 * time.Millisecond) // a load that takes time: the stamp is its start
			return u, nil
		}
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", load); err != nil {
			t.Fatal(err)
		}
		e.assertStamp(t, "user:1", before, loadStart)
	})
	t.Run("not found", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		c := e.client(t, cacheaside.Options{NotFoundTTL: time.Minute})
		before := time.Now()
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:2", func(context.Context) (user, error) { return user{}, cacheaside.ErrNotFound }); err == nil {
			t.Fatal("want ErrNotFound")
		}
		e.assertStamp(t, "user:2", before, time.Now())
	})
	t.Run("refresh", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		c := e.client(t, cacheaside.Options{TTL: time.Hour, SoftTTL: time.Minute, Jitter: -1})
		// A value without a stamp, past its soft TTL.
		e.rdb.Set(ctx, "user:1", `{"id":1,"email":"old@example.com"}`, 58*time.Minute)
		before := time.Now()
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", func(context.Context) (user, error) { return u, nil }); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 10*time.Second, "the background refresh", func() (bool, string) {
			v, _ := e.get(t, "user:1")
			return v == `{"id":1,"email":"a@example.com"}`, "user:1 = " + v
		})
		e.assertStamp(t, "user:1", before, time.Now())
	})
	t.Run("set", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		c := e.client(t, cacheaside.Options{})
		before := time.Now()
		if err := cacheaside.Set(ctx, c, "user:1", u); err != nil {
			t.Fatal(err)
		}
		e.assertStamp(t, "user:1", before, time.Now())
		if err := c.Invalidate(ctx, "user:1"); err != nil {
			t.Fatal(err)
		}
		e.assertNoStamp(t, "user:1", "after Client.Invalidate")
	})
	t.Run("write-behind", func(t *testing.T) {
		t.Parallel()
		e, _, wb := newWriteBehind(t, cacheaside.Options{})
		before := time.Now()
		if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 5, map[string]int{"id": 1, "n": 5}); err != nil {
			t.Fatal(err)
		}
		e.assertStamp(t, "counter:1", before, time.Now())
		if _, err := cacheaside.WriteBehindDelete(ctx, wb, "counter:1", map[string]int{"id": 1}); err != nil {
			t.Fatal(err)
		}
		e.assertNoStamp(t, "counter:1", "after WriteBehindDelete")
	})
	t.Run("refused fill", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		c := e.client(t, cacheaside.Options{})
		load := func(context.Context) (user, error) {
			e.invalidate(t, mapping.Op{Kind: mapping.OpDelete, Key: "user:1"})
			return u, nil
		}
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", load); err != nil {
			t.Fatal(err)
		}
		if st := c.Stats(); st.FencedFills != 1 {
			t.Fatalf("FencedFills = %d, want 1", st.FencedFills)
		}
		e.assertNoStamp(t, "user:1", "after a refused fill")
	})
	t.Run("NoFillStamps", func(t *testing.T) {
		t.Parallel()
		e, c, wb := newWriteBehind(t, cacheaside.Options{NoFillStamps: true})
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", func(context.Context) (user, error) { return u, nil }); err != nil {
			t.Fatal(err)
		}
		if err := cacheaside.Set(ctx, c, "user:2", u); err != nil {
			t.Fatal(err)
		}
		if _, err := cacheaside.WriteBehind(ctx, wb, "counter:1", 5, map[string]int{"id": 1, "n": 5}); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"user:1", "user:2", "counter:1"} {
			if _, ok := e.get(t, k); !ok {
				t.Errorf("%s not written", k)
			}
			e.assertNoStamp(t, k, "with NoFillStamps")
		}
	})
}
