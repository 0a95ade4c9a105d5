// Command writebehind shows write-behind with cachesync: a page-hit counter
// that the application writes to Redis only, and that cachesync writes to
// PostgreSQL behind it.
//
// Each visit reads the page's count through the cache (cacheaside.GetOrLoad),
// adds one and writes it back with cacheaside.WriteBehind, which sets the
// cache key and appends the row to the Redis Stream {counters}:wb in one
// step. cachesync, run with the rules.hcl beside this file, drains the
// stream into public.page_hits in batched upserts, and its refresh rule
// keeps the cached counts equal to the committed rows.
//
//	DATABASE_URL=postgres://... REDIS_URL=redis://... go run ./examples/writebehind
//	cachesync run --config examples/writebehind/rules.hcl   # drains the stream
//
// The program creates page_hits if it is missing (run it once before
// cachesync, which checks that the table exists), writes, reads back
// through the cache, deletes one page's counter, and then waits (-wait,
// default 30s) until PostgreSQL holds what it wrote; -wait 0 only writes.
// It exits 1 if any step does not happen as described.
//
// A visit reads, adds and writes the new total: entries carry values, not
// increments, so that applying one twice does no harm. Two processes that
// count the same page at the same moment can therefore both write the same
// total; serialise the writers of a key (one process per key, or a lock)
// where every increment must count.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
)

// PageHits is a row of public.page_hits, cached as JSON under
// {counters}:page:<page>. It is also the entry's row: its JSON fields are
// the table's columns. Its fields are in alphabetical order so that it
// encodes to the very bytes the refresh rule's jsonencode(row) writes when
// the row's change comes back (bigint as a number, text as a string).
type PageHits struct {
	Hits int64  `json:"hits"`
	Page string `json:"page"`
}

const (
	stream = "{counters}:wb" // the write_behind block's stream; the hash tag puts it in the keys' cluster slot
	schema = `CREATE TABLE IF NOT EXISTS page_hits (page text PRIMARY KEY, hits bigint NOT NULL)`
)

func key(page string) string { return "{counters}:page:" + page }

func main() {
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for cachesync to write the counts to PostgreSQL (0: do not wait)")
	flag.Parse()
	if err := run(context.Background(), *wait); err != nil {
		fmt.Fprintln(os.Stderr, "example failed:", err)
		os.Exit(1)
	}
}

type app struct {
	db    *pgxpool.Pool
	cache *cacheaside.Client
	wb    *cacheaside.WriteBehindStream
}

func run(ctx context.Context, wait time.Duration) error {
	dbURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if dbURL == "" || redisURL == "" {
		return errors.New("set DATABASE_URL and REDIS_URL (the servers cachesync run uses)")
	}
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create page_hits: %w", err)
	}
	fmt.Println(schema)
	ropts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	cache, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour})
	if err != nil {
		return err
	}
	defer cache.Close() // before rdb.Close
	a := &app{db: db, cache: cache, wb: cache.WriteBehindStream(stream)}

	// Visits: each one a read through the cache and a write-behind write.
	want := map[string]int64{}
	for _, page := range []string{"home", "pricing", "home", "old-page", "home", "pricing"} {
		n, err := a.visit(ctx, page)
		if err != nil {
			return err
		}
		want[page] = n
	}

	// Read back: the counts come from the cache, not from PostgreSQL.
	loads := cache.Stats().Loads
	for _, page := range []string{"home", "pricing"} {
		h, err := a.hits(ctx, page)
		if err != nil {
			return err
		}
		fmt.Printf("GetOrLoad %s → %d hits\n", key(page), h.Hits)
		if h.Hits != want[page] {
			return fmt.Errorf("read %d hits of %s back, want the %d written", h.Hits, page, want[page])
		}
	}
	if n := cache.Stats().Loads - loads; n != 0 {
		return fmt.Errorf("reading back loaded %d rows from PostgreSQL, want every count from the cache", n)
	}

	// A retired page: its counter goes from the cache now, from the table behind.
	id, err := cacheaside.WriteBehindDelete(ctx, a.wb, key("old-page"), map[string]string{"page": "old-page"})
	if err != nil {
		return err
	}
	delete(want, "old-page")
	fmt.Printf("WriteBehindDelete %s → entry %s (op delete)\n", key("old-page"), id)
	backlog, err := rdb.XLen(ctx, stream).Result()
	if err != nil {
		return err
	}
	fmt.Printf("stream %s holds %d entries\n", stream, backlog)

	if wait > 0 {
		if err := a.awaitTable(ctx, want, wait); err != nil {
			return err
		}
	} else {
		fmt.Println("not waiting for cachesync (-wait 0)")
	}
	st := cache.Stats()
	fmt.Printf("cacheaside stats: %d hits, %d misses, %d loads, %d fenced out, %d Redis errors\n",
		st.Hits, st.Misses, st.Loads, st.FencedFills, st.RedisErrors)
	fmt.Println("example passed")
	return nil
}

// hits reads a page's count through the cache: a miss loads the row, and
// a page without one has 0 hits.
func (a *app) hits(ctx context.Context, page string) (PageHits, error) {
	return cacheaside.GetOrLoad(ctx, a.cache, key(page), func(ctx context.Context) (PageHits, error) {
		h := PageHits{Page: page}
		err := a.db.QueryRow(ctx, `SELECT hits FROM page_hits WHERE page = $1`, page).Scan(&h.Hits)
		if errors.Is(err, pgx.ErrNoRows) {
			return h, nil
		}
		return h, err
	})
}

// visit counts one visit of page and returns the new count.
func (a *app) visit(ctx context.Context, page string) (int64, error) {
	h, err := a.hits(ctx, page)
	if err != nil {
		return 0, err
	}
	h.Hits++
	// The cached value and the entry's row are the same struct here.
	id, err := cacheaside.WriteBehind(ctx, a.wb, key(page), h, h)
	if err != nil {
		return 0, err // nothing was written: the visit is not counted
	}
	fmt.Printf("WriteBehind %s hits=%d → entry %s (op upsert)\n", key(page), h.Hits, id)
	return h.Hits, nil
}

// awaitTable polls until page_hits holds want for every page written, and
// no row of the deleted one.
func (a *app) awaitTable(ctx context.Context, want map[string]int64, wait time.Duration) error {
	start := time.Now()
	var got map[string]int64
	for deadline := start.Add(wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		rows, err := a.db.Query(ctx, `SELECT page, hits FROM page_hits WHERE page IN ('home', 'pricing', 'old-page')`)
		if err != nil {
			return err
		}
		got = map[string]int64{}
		var page string
		var hits int64
		if _, err := pgx.ForEachRow(rows, []any{&page, &hits}, func() error {
			got[page] = hits
			return nil
		}); err != nil {
			return err
		}
		if maps.Equal(got, want) {
			fmt.Printf("cachesync wrote the counts to PostgreSQL %s after the last write: %v\n", time.Since(start).Round(time.Millisecond), got)
			return nil
		}
	}
	return fmt.Errorf("page_hits holds %v %s after the writes, want %v: is cachesync run (or cachesync write-behind) running with examples/writebehind/rules.hcl?", got, wait, want)
}
