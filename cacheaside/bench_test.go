package cacheaside_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
)

// counted is a Redis client of server whose round trips rt counts.
func counted(t testing.TB, server *testenv.RedisServer) (*redis.Client, *testenv.RoundTrips) {
	rdb := server.Client(t)
	rt := &testenv.RoundTrips{}
	rdb.AddHook(rt)
	return rdb, rt
}

// roundTripsOf runs op and returns the round trips it sent.
func roundTripsOf(t testing.TB, rt *testenv.RoundTrips, op func() error) int64 {
	t.Helper()
	before := rt.Load()
	if err := op(); err != nil {
		t.Fatal(err)
	}
	return rt.Load() - before
}

// TestRoundTrips: what each GetOrLoad costs in round trips, as
// docs/cacheaside.md (Costs) gives them: a hit one GET, a miss three (read,
// lock with the ticket and the tags, fill with the unlock).
func TestRoundTrips(t *testing.T) {
	t.Parallel()
	server := testenv.StartRedis(t)
	rdb, rt := counted(t, server)
	quiet := slog.New(slog.NewTextHandler(&syncBuffer{}, nil))
	ctx := context.Background()
	load := func(context.Context) (user, error) { return user{ID: 1}, nil }
	for _, tc := range []struct {
		name      string
		opts      cacheaside.Options
		fill      []cacheaside.FillOption
		miss, hit int64
	}{
		{name: "plain", miss: 3, hit: 1},
		{name: "tags", fill: []cacheaside.FillOption{cacheaside.Tags("org:1", "org:2")}, miss: 3, hit: 1},
		{name: "no stamps", opts: cacheaside.Options{NoFillStamps: true}, miss: 3, hit: 1},
		// The soft TTL needs the hit's TTL: PTTL in the GET's pipeline.
		{name: "soft TTL", opts: cacheaside.Options{SoftTTL: time.Minute}, miss: 3, hit: 1},
		// The version's GET comes first, on a hit too.
		{name: "versioned", fill: []cacheaside.FillOption{cacheaside.Versioned("ns")}, miss: 4, hit: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Logger = quiet
			c, err := cacheaside.New(rdb, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			get := func(key string) func() error {
				return func() error {
					_, err := cacheaside.GetOrLoad(ctx, c, key, load, tc.fill...)
					return err
				}
			}
			roundTripsOf(t, rt, get("warm:"+tc.name)) // loads the scripts
			if n := roundTripsOf(t, rt, get("k:"+tc.name)); n != tc.miss {
				t.Errorf("a miss took %d round trips, want %d", n, tc.miss)
			}
			if n := roundTripsOf(t, rt, get("k:"+tc.name)); n != tc.hit {
				t.Errorf("a hit took %d round trips, want %d", n, tc.hit)
			}
			if st := c.Stats(); st.Fills != 2 || st.Hits != 1 {
				t.Errorf("stats %+v, want 2 fills and 1 hit", st)
			}
		})
	}
}

// BenchmarkHit compares a GetOrLoad hit with a raw go-redis GET of the same
// value (and the GET with the decode GetOrLoad does), on the same
// connection pool. GetOrLoad's ns/op over raw-GET's is its overhead: the
// target is at most 1.15 (docs/cacheaside.md, Costs).
func BenchmarkHit(b *testing.B) {
	server := testenv.StartRedis(b)
	rdb, rt := counted(b, server)
	ctx := context.Background()
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	u := user{ID: 42, Email: "someone@example.com"}
	load := func(context.Context) (user, error) { return u, nil }
	if _, err := cacheaside.GetOrLoad(ctx, c, "user:42", load); err != nil {
		b.Fatal(err)
	}
	report := func(b *testing.B, before int64) {
		b.ReportMetric(float64(rt.Load()-before)/float64(b.N), "roundtrips/op")
	}
	b.Run("raw-GET", func(b *testing.B) {
		b.ReportAllocs()
		before := rt.Load()
		for b.Loop() {
			if _, err := rdb.Get(ctx, "user:42").Bytes(); err != nil {
				b.Fatal(err)
			}
		}
		report(b, before)
	})
	b.Run("raw-GET+decode", func(b *testing.B) {
		b.ReportAllocs()
		before := rt.Load()
		for b.Loop() {
			raw, err := rdb.Get(ctx, "user:42").Bytes()
			if err != nil {
				b.Fatal(err)
			}
			var v user
			if err := json.Unmarshal(raw, &v); err != nil {
				b.Fatal(err)
			}
		}
		report(b, before)
	})
	b.Run("GetOrLoad", func(b *testing.B) {
		b.ReportAllocs()
		before := rt.Load()
		for b.Loop() {
			if _, err := cacheaside.GetOrLoad(ctx, c, "user:42", load); err != nil {
				b.Fatal(err)
			}
		}
		report(b, before)
	})
	// The two alternated, each op timed: the median of GetOrLoad's times
	// over the median of the raw GETs', measured over the same span, is
	// what a noisy machine leaves of the ratio.
	b.Run("paired", func(b *testing.B) {
		var raw, hit []time.Duration
		for b.Loop() {
			t0 := time.Now()
			if _, err := rdb.Get(ctx, "user:42").Bytes(); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := cacheaside.GetOrLoad(ctx, c, "user:42", load); err != nil {
				b.Fatal(err)
			}
			raw, hit = append(raw, t1.Sub(t0)), append(hit, time.Since(t1))
		}
		b.ReportMetric(float64(median(hit))/float64(median(raw)), "hit/raw")
	})
	if c.Stats().Loads != 1 {
		b.Errorf("%d loads, want the first one only", c.Stats().Loads)
	}
}

// BenchmarkMiss measures a miss with a fenced fill (a fresh key each time,
// a loader that returns at once): its time and round trips, with and
// without tags.
func BenchmarkMiss(b *testing.B) {
	server := testenv.StartRedis(b)
	rdb, rt := counted(b, server)
	ctx := context.Background()
	u := user{ID: 42, Email: "someone@example.com"}
	load := func(context.Context) (user, error) { return u, nil }
	for _, bc := range []struct {
		name string
		fill []cacheaside.FillOption
	}{
		{"plain", nil},
		{"tags", []cacheaside.FillOption{cacheaside.Tags("org:1")}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := cacheaside.GetOrLoad(ctx, c, "warm", load, bc.fill...); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			before, i := rt.Load(), 0
			for b.Loop() {
				i++
				if _, err := cacheaside.GetOrLoad(ctx, c, fmt.Sprintf("miss:%s:%d", bc.name, i), load, bc.fill...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rt.Load()-before)/float64(b.N), "roundtrips/op")
			b.StopTimer()
			if err := rdb.FlushAll(ctx).Err(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}
