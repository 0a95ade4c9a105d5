package e2e

// The read side with the daemon: many readers fill the cache through
// cacheaside while writers change the rows under them and the daemon
// invalidates. Once the writers stopped and the daemon caught up, no cached
// value may differ from PostgreSQL. The same run without the fill fence
// must leave stale values behind, which shows that the check can fail.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/writebehind"
)

const (
	caUsers     = 40
	caOrgs      = 4
	caCustomers = 8
)

type caUser struct {
	ID    int64  `json:"id"`
	Email string `json:"email"`
	OrgID int64  `json:"org_id"`
	Name  string `json:"name"`
}

type caOrder struct {
	ID     int64  `json:"id"`
	Total  string `json:"total"`
	Status string `json:"status"`
}

// consistencyDuration is how long the writers run (CACHESYNC_CONSISTENCY_SECONDS
// overrides it, e.g. 60 for a minute-scale run).
func consistencyDuration(t *testing.T, def time.Duration) time.Duration {
	if s := os.Getenv("CACHESYNC_CONSISTENCY_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("CACHESYNC_CONSISTENCY_SECONDS=%q: want a positive number of seconds", s)
		}
		return time.Duration(n) * time.Second
	}
	return def
}

func TestCacheasideConsistency(t *testing.T) {
	for _, fenced := range []bool{true, false} {
		t.Run(fmt.Sprintf("fenced=%v", fenced), func(t *testing.T) {
			consistency(t, setup(t, schema, rules), fenced)
		})
	}
}

// TestCacheasideConsistencyCluster is the fenced run on a Redis Cluster and
// on Sentinel: the client's scripts keep to one slot, and tags whose members
// span slots are invalidated in steps.
func TestCacheasideConsistencyCluster(t *testing.T) {
	t.Run("cluster", func(t *testing.T) {
		e, _ := setupCluster(t)
		consistency(t, e, true)
	})
	t.Run("sentinel", func(t *testing.T) {
		e, _ := setupSentinel(t)
		consistency(t, e, true)
	})
}

// consistency runs readers through cacheaside and writers against the
// daemon, then compares every cached value with PostgreSQL.
func consistency(t *testing.T, e *env, fenced bool) {
	{
		{
			d := e.start()
			e.waitStreaming(d)
			e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', g % $2::int, 'name-' || g FROM generate_series(1, $1::int) g`, caUsers, caOrgs)
			e.exec(`INSERT INTO orders SELECT g, g % $1::int, g, 'new' FROM generate_series(1, 40) g`, caCustomers)
			e.caughtUp(d, time.Minute)

			pool, err := pgxpool.New(e.ctx, e.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			app := &caApp{pool: pool}
			var clients []*cacheaside.Client
			for range 2 { // two application processes
				c, err := cacheaside.New(e.rdb, cacheaside.Options{
					TTL: time.Hour, DisableFencing: !fenced, LockWait: 50 * time.Millisecond,
					Logger: slog.New(slog.NewTextHandler(&lockedBuffer{}, nil)),
				})
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, c)
			}

			run := consistencyDuration(t, 12*time.Second)
			if !fenced {
				run = min(run, 6*time.Second)
			}
			// The readers go on after the last write until the daemon has
			// applied everything, and a moment more, so that fills race
			// the last invalidations and the cache holds values to check.
			wctx, stopWriters := context.WithTimeout(e.ctx, run)
			defer stopWriters()
			rctx, stopReaders := context.WithCancel(e.ctx)
			defer stopReaders()
			var writers, readers sync.WaitGroup
			errs := make(chan error, 64)
			for i := range 3 {
				writers.Go(func() { errs <- app.write(wctx, uint64(i)) })
			}
			for i := range 12 {
				readers.Go(func() { errs <- app.read(rctx, clients[i%len(clients)], uint64(100+i)) })
			}
			writers.Wait()
			e.caughtUp(d, 2*time.Minute)
			time.AfterFunc(500*time.Millisecond, stopReaders)
			readers.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			// Every fill has returned; nothing was written since.
			e.quiesce(d)

			mismatches, checked := e.cacheasideMismatches(app)
			var st cacheaside.Stats
			for _, c := range clients {
				s := c.Stats()
				st.Loads += s.Loads
				st.Hits += s.Hits
				st.Fills += s.Fills
				st.FencedFills += s.FencedFills
				st.RedisErrors += s.RedisErrors
			}
			t.Logf("fenced=%v: %d writes, %d reads (%d hits, %d loads, %d fills, %d fenced out), %d cached keys checked, %d stale",
				fenced, app.writes.Load(), app.reads.Load(), st.Hits, st.Loads, st.Fills, st.FencedFills, checked, len(mismatches))
			// The writers keep most keys invalidated, so few are cached at
			// the end; the races played are counted by the fenced-out fills.
			if st.Fills < 100 {
				t.Fatalf("only %d fills: the readers did not exercise the cache", st.Fills)
			}
			if st.RedisErrors > 0 {
				t.Errorf("%d Redis errors during the run", st.RedisErrors)
			}
			switch {
			case fenced && len(mismatches) > 0:
				t.Errorf("%d cached values differ from PostgreSQL:\n%s", len(mismatches), strings.Join(mismatches, "\n"))
			case fenced && st.FencedFills == 0:
				t.Errorf("no fill was fenced out in %d loads: the race was never played", st.Loads)
			case !fenced && len(mismatches) == 0:
				t.Errorf("without the fence no stale value was left after %d fills: this test cannot catch the race", st.Fills)
			}
		}
	}
}

// caApp is the application: it reads users, org pages and order lists through
// cacheaside, and its writers change them.
type caApp struct {
	pool          *pgxpool.Pool
	reads, writes atomic.Int64
}

// slowApp widens the window between the database read and the fill, as a
// busy application server does; it is what makes the race likely.
func slowApp(ctx context.Context, rng *rand.Rand) {
	t := time.NewTimer(time.Duration(rng.IntN(15)) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (a *caApp) loadUser(ctx context.Context, id int64) (caUser, error) {
	var u caUser
	err := a.pool.QueryRow(ctx, `SELECT id, email, org_id, name FROM users WHERE id = $1`, id).Scan(&u.ID, &u.Email, &u.OrgID, &u.Name)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, cacheaside.ErrNotFound
	}
	return u, err
}

func (a *caApp) loadOrg(ctx context.Context, org int64) ([]string, error) {
	rows, err := a.pool.Query(ctx, `SELECT name FROM users WHERE org_id = $1 ORDER BY id`, org)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (a *caApp) loadOrders(ctx context.Context, customer int64) ([]caOrder, error) {
	rows, err := a.pool.Query(ctx, `SELECT id, total::text, status FROM orders WHERE customer_id = $1 ORDER BY id`, customer)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (caOrder, error) {
		var o caOrder
		return o, r.Scan(&o.ID, &o.Total, &o.Status)
	})
}

func (a *caApp) read(ctx context.Context, c *cacheaside.Client, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 7))
	for ctx.Err() == nil {
		a.reads.Add(1)
		var err error
		switch rng.IntN(3) {
		case 0:
			id := 1 + rng.Int64N(caUsers)
			_, err = cacheaside.GetOrLoad(ctx, c, fmt.Sprintf("user:%d", id), func(ctx context.Context) (caUser, error) {
				u, err := a.loadUser(ctx, id)
				slowApp(ctx, rng)
				return u, err
			}, cacheaside.Tags(fmt.Sprintf("org:%d", id%caOrgs)))
		case 1:
			org := rng.Int64N(caOrgs)
			_, err = cacheaside.GetOrLoad(ctx, c, fmt.Sprintf("orgpage:%d", org), func(ctx context.Context) ([]string, error) {
				names, err := a.loadOrg(ctx, org)
				slowApp(ctx, rng)
				return names, err
			}, cacheaside.Tags(fmt.Sprintf("org:%d", org)))
		case 2:
			cust := rng.Int64N(caCustomers)
			_, err = cacheaside.GetOrLoad(ctx, c, "list", func(ctx context.Context) ([]caOrder, error) {
				orders, err := a.loadOrders(ctx, cust)
				slowApp(ctx, rng)
				return orders, err
			}, cacheaside.Versioned(fmt.Sprintf("orders:customer:%d", cust)))
		}
		if err != nil && !errors.Is(err, cacheaside.ErrNotFound) && ctx.Err() == nil {
			return fmt.Errorf("read: %w", err)
		}
	}
	return nil
}

// write changes names and orders; a user's tag is its id's org, so users
// keep their org (the org page lists names by org_id).
func (a *caApp) write(ctx context.Context, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 11))
	for n := 0; ctx.Err() == nil; n++ {
		var err error
		switch rng.IntN(4) {
		case 0, 1:
			_, err = a.pool.Exec(ctx, `UPDATE users SET name = $2 WHERE id = $1`, 1+rng.Int64N(caUsers), fmt.Sprintf("name-%d-%d", seed, n))
		case 2:
			_, err = a.pool.Exec(ctx, `UPDATE orders SET total = total + 1, status = $2 WHERE id = $1`, 1+rng.Int64N(40), fmt.Sprintf("s%d", n))
		case 3:
			_, err = a.pool.Exec(ctx, `UPDATE users SET email = $2 WHERE id = $1`, 1+rng.Int64N(caUsers), fmt.Sprintf("u%d-%d@x.io", seed, n))
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("write: %w", err)
		}
		a.writes.Add(1)
	}
	return nil
}

// cacheasideMismatches compares every reachable cached value with what the
// loaders read from PostgreSQL now.
func (e *env) cacheasideMismatches(a *caApp) (mismatches []string, checked int) {
	e.t.Helper()
	compare := func(key string, want any) {
		raw, err := e.rdb.Get(e.ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			return
		}
		if err != nil {
			e.t.Fatal(err)
		}
		checked++
		got := reflect.New(reflect.TypeOf(want)).Interface()
		if err := json.Unmarshal([]byte(raw), got); err != nil {
			mismatches = append(mismatches, fmt.Sprintf("%s: %q does not decode: %v", key, raw, err))
			return
		}
		if g := reflect.ValueOf(got).Elem().Interface(); !reflect.DeepEqual(g, want) {
			mismatches = append(mismatches, fmt.Sprintf("%s: cached %s, PostgreSQL has %+v", key, raw, want))
		}
	}
	for id := int64(1); id <= caUsers; id++ {
		u, err := a.loadUser(e.ctx, id)
		if err != nil {
			e.t.Fatal(err)
		}
		compare(fmt.Sprintf("user:%d", id), u)
	}
	for org := range int64(caOrgs) {
		names, err := a.loadOrg(e.ctx, org)
		if err != nil {
			e.t.Fatal(err)
		}
		compare(fmt.Sprintf("orgpage:%d", org), names)
	}
	for cust := range int64(caCustomers) {
		ns := fmt.Sprintf("orders:customer:%d", cust)
		v, err := e.rdb.Get(e.ctx, keyspace.VersionKey(ns)).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			e.t.Fatal(err)
		}
		orders, err := a.loadOrders(e.ctx, cust)
		if err != nil {
			e.t.Fatal(err)
		}
		compare(keyspace.VersionedKey(ns, v, "list"), orders)
	}
	return mismatches, checked
}

// TestExampleProgram runs examples/cacheaside against a streaming daemon: the
// example exits 1 unless every step it narrates happened.
func TestExampleProgram(t *testing.T) {
	e := setup(t, schema, rules)
	bin := filepath.Join(t.TempDir(), "example")
	if out, err := exec.Command("go", "build", "-o", bin, "../examples/cacheaside").CombinedOutput(); err != nil {
		t.Fatalf("go build examples/cacheaside: %v\n%s", err, out)
	}
	d := e.start()
	e.waitStreaming(d)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+e.dbURL, "REDIS_URL="+e.redis.URL())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "example passed") {
		t.Fatalf("examples/cacheaside: %v\n%s\ndaemon log:\n%s", err, out, d.log.String())
	}
	t.Logf("examples/cacheaside:\n%s", out)
}

// caProduct is jsonencode(row) of the products table, as the rules.hcl
// "product" refresh rule writes it (numeric as a string).
type caProduct struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Price     string `json:"price"`
	Published bool   `json:"published"`
}

// TestCacheasideGetAndSet: Get reads what the daemon's refresh rule wrote,
// without loading or filling; a value written with Set is removed by the
// daemon's invalidations that follow, by key and by tag, and stays removed.
func TestCacheasideGetAndSet(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	c, err := cacheaside.New(e.rdb, cacheaside.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	e.exec(`INSERT INTO products VALUES (1, 'Lamp', 19.90, true, 'bright')`)
	var got caProduct
	testenv.Eventually(t, 30*time.Second, "the daemon's refresh of product:1", func() (bool, string) {
		got, err = cacheaside.Get[caProduct](e.ctx, c, "product:1")
		return err == nil, fmt.Sprintf("Get: %+v, %v", got, err)
	})
	if want := (caProduct{ID: 1, Name: "Lamp", Price: "19.90", Published: true}); got != want {
		t.Errorf("Get(product:1) = %+v, want the committed row %+v", got, want)
	}
	// The rule's when turns false: the daemon deletes the key; Get misses.
	e.exec(`UPDATE products SET published = false WHERE id = 1`)
	testenv.Eventually(t, 30*time.Second, "product:1 deleted by the daemon", func() (bool, string) {
		_, err := cacheaside.Get[caProduct](e.ctx, c, "product:1")
		return errors.Is(err, cacheaside.ErrMiss), fmt.Sprintf("Get: %v, want ErrMiss", err)
	})
	if st := c.Stats(); st.Loads != 0 || st.Fills != 0 {
		t.Errorf("Get loaded or filled: %+v", st)
	}
	if e.exists(keyspace.FenceKey("product:1")) || e.exists(keyspace.LockKey("product:1")) {
		t.Error("Get left a fence or a lock behind")
	}

	// Set, then the daemon's invalidations: of the key (user:5), of a tag
	// (the page registered under org:7).
	u := caUser{ID: 5, Email: "e@x.io", OrgID: 7, Name: "Eve"}
	if err := cacheaside.Set(e.ctx, c, "user:5", u, cacheaside.Tags("org:7")); err != nil {
		t.Fatal(err)
	}
	if err := cacheaside.Set(e.ctx, c, "page:org7", []string{"Eve"}, cacheaside.Tags("org:7")); err != nil {
		t.Fatal(err)
	}
	if v, err := cacheaside.Get[caUser](e.ctx, c, "user:5"); err != nil || v != u {
		t.Fatalf("Get after Set: %+v, %v", v, err)
	}
	e.exec(`INSERT INTO users VALUES (5, 'e@x.io', 7, 'Eve')`)
	e.gone("user:5", "page:org7", "tag:org:7")
	e.caughtUp(d, time.Minute)
	for _, k := range []string{"user:5", "page:org7"} {
		if _, err := cacheaside.Get[json.RawMessage](e.ctx, c, k); !errors.Is(err, cacheaside.ErrMiss) {
			t.Errorf("Get(%s) after the daemon invalidated it: %v, want ErrMiss", k, err)
		}
	}
}

// TestWriteBehindExampleProgram runs examples/writebehind twice. The first
// run, before anything drains the stream, creates its table, and every visit
// it counts is both in the cache and in the stream, in the public entry
// format, the retired page's deletion last. Then a worker (package
// writebehind, with the example's own rules.hcl block) drains the stream,
// and the second run counts on from the cached totals and waits until
// PostgreSQL holds them: the example exits 1 otherwise.
func TestWriteBehindExampleProgram(t *testing.T) {
	dbURL, server := testenv.Database(t), testenv.StartRedis(t)
	rdb := server.Client(t)
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "example")
	if out, err := exec.Command("go", "build", "-o", bin, "../examples/writebehind").CombinedOutput(); err != nil {
		t.Fatalf("go build examples/writebehind: %v\n%s", err, out)
	}
	example := func(run int, wait string) {
		t.Helper()
		cmd := exec.Command(bin, "-wait", wait)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "REDIS_URL="+server.URL())
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "example passed") {
			t.Fatalf("examples/writebehind, run %d: %v\n%s", run, err, out)
		}
		t.Logf("examples/writebehind, run %d:\n%s", run, out)
		cached := map[string]string{}
		for _, page := range []string{"home", "pricing", "old-page"} {
			if v, err := rdb.Get(ctx, "{counters}:page:"+page).Result(); err == nil {
				cached[page] = v
			}
		}
		want := map[string]string{"home": fmt.Sprintf(`{"hits":%d,"page":"home"}`, 3*run), "pricing": fmt.Sprintf(`{"hits":%d,"page":"pricing"}`, 2*run)}
		if !reflect.DeepEqual(cached, want) {
			t.Errorf("run %d: cached %v, want %v", run, cached, want)
		}
	}

	example(1, "0")
	entries, err := rdb.XRange(ctx, "{counters}:wb", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, fmt.Sprintf("%v %v", e.Values["op"], e.Values["row"]))
	}
	want := []string{
		`upsert {"hits":1,"page":"home"}`, `upsert {"hits":1,"page":"pricing"}`, `upsert {"hits":2,"page":"home"}`,
		`upsert {"hits":1,"page":"old-page"}`, `upsert {"hits":3,"page":"home"}`, `upsert {"hits":2,"page":"pricing"}`,
		`delete {"page":"old-page"}`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stream {counters}:wb holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	var rows int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM page_hits`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("page_hits: %d rows, %v; want the table created, and empty until the stream is drained", rows, err)
	}

	cfg, diags := config.Load("../examples/writebehind/rules.hcl")
	if diags.HasErrors() || len(cfg.WriteBehinds) != 1 {
		t.Fatalf("examples/writebehind/rules.hcl: %v", diags)
	}
	wctx, stop := context.WithCancel(ctx)
	worker := make(chan error, 1)
	go func() {
		worker <- writebehind.Run(wctx, writebehind.Options{
			Spec: cfg.WriteBehinds[0], Redis: rdb,
			Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, dbURL) },
			Logger:  zerolog.New(zerolog.NewTestWriter(t)),
		})
	}()
	defer func() {
		stop()
		if err := <-worker; !errors.Is(err, context.Canceled) {
			t.Errorf("the worker ended with %v", err)
		}
	}()
	example(2, "30s") // fails unless page_hits holds home 6, pricing 4 and no old-page
}
