// Command cacheaside shows the whole loop of cachesync with the read side:
// the application reads rows through the cacheaside package, a writer
// changes them in PostgreSQL, the cachesync daemon deletes or retires the
// cached entries, and the next read loads the committed row.
//
// It needs the demo schema and the rules.hcl at the root of the repository,
// with `cachesync run` streaming (make demo runs it that way):
//
//	DATABASE_URL=postgres://... REDIS_URL=redis://... go run ./examples/cacheaside
//
// It exits 1 if any step does not happen as described.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
)

// User is a row of public.users, cached as JSON under user:<id> and
// registered under the tag org:<org_id>, as rules.hcl's "user" rule names them.
type User struct {
	ID    int    `json:"id"`
	Email string `json:"email"`
	OrgID int    `json:"org_id"`
	Name  string `json:"name"`
}

// Order is a row of public.orders; a customer's recent orders are cached in
// the version namespace orders:customer:<id> that the "order_lists" rule bumps.
type Order struct {
	ID    int    `json:"id"`
	Total string `json:"total"`
}

const (
	userID     = 100
	orgID      = 42
	customerID = 77
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "example failed:", err)
		os.Exit(1)
	}
}

type app struct {
	db    *pgxpool.Pool
	rdb   *redis.Client
	cache *cacheaside.Client
}

func run(ctx context.Context) error {
	dbURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if dbURL == "" || redisURL == "" {
		return errors.New("set DATABASE_URL and REDIS_URL (the servers cachesync run uses)")
	}
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	ropts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	cache, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour, NotFoundTTL: time.Minute})
	if err != nil {
		return err
	}
	defer cache.Close() // before rdb.Close: waits for what the client still does with it
	a := &app{db: db, rdb: rdb, cache: cache}

	// A row to read. A placeholder under its key shows the daemon at work:
	// the INSERT's invalidation deletes it.
	key := fmt.Sprintf("user:%d", userID)
	if err := rdb.Set(ctx, key, "placeholder", time.Hour).Err(); err != nil {
		return err
	}
	if _, err := db.Exec(ctx, `INSERT INTO users (id, email, org_id, name) VALUES ($1, 'ada@example.com', $2, 'Ada')
		ON CONFLICT (id) DO UPDATE SET email = excluded.email, org_id = excluded.org_id, name = excluded.name`, userID, orgID); err != nil {
		return err
	}
	if err := a.waitGone(ctx, key, "the INSERT"); err != nil {
		return err
	}

	// Read twice: one load from PostgreSQL, then a hit.
	for range 2 {
		if _, err := a.user(ctx, "Ada"); err != nil {
			return err
		}
	}
	if st := cache.Stats(); st.Loads != 1 || st.Hits != 1 {
		return fmt.Errorf("after two reads: %d loads and %d hits, want 1 and 1", st.Loads, st.Hits)
	}

	// A writer renames the user; the application does not touch the cache.
	if _, err := db.Exec(ctx, `UPDATE users SET name = 'Ada Lovelace' WHERE id = $1`, userID); err != nil {
		return err
	}
	fmt.Println("UPDATE users SET name = 'Ada Lovelace' committed")
	if err := a.waitGone(ctx, key, "the UPDATE"); err != nil {
		return err
	}
	if _, err := a.user(ctx, "Ada Lovelace"); err != nil {
		return err
	}

	// A list in a version namespace: a new order bumps it.
	before, err := a.orders(ctx)
	if err != nil {
		return err
	}
	version, err := cache.Version(ctx, nsOf(customerID))
	if err != nil {
		return err
	}
	var orderID int
	if err := db.QueryRow(ctx, `INSERT INTO orders (id, customer_id, total, status)
		SELECT coalesce(max(id), 0) + 1, $1, 19.90, 'new' FROM orders RETURNING id`, customerID).Scan(&orderID); err != nil {
		return err
	}
	fmt.Printf("INSERT INTO orders (id %d, customer %d) committed\n", orderID, customerID)
	if err := a.waitVersion(ctx, version); err != nil {
		return err
	}
	after, err := a.orders(ctx)
	if err != nil {
		return err
	}
	if len(after) != len(before)+1 || after[len(after)-1].ID != orderID {
		return fmt.Errorf("the recent orders after the bump are %v, want %v plus order %d", after, before, orderID)
	}

	st := cache.Stats()
	fmt.Printf("cacheaside stats: %d hits, %d misses, %d loads, %d fills, %d fenced out, %d Redis errors\n",
		st.Hits, st.Misses, st.Loads, st.Fills, st.FencedFills, st.RedisErrors)
	fmt.Println("example passed")
	return nil
}

// user reads the user through the cache and checks its name.
func (a *app) user(ctx context.Context, wantName string) (User, error) {
	loads := a.cache.Stats().Loads
	u, err := cacheaside.GetOrLoad(ctx, a.cache, fmt.Sprintf("user:%d", userID), func(ctx context.Context) (User, error) {
		var u User
		err := a.db.QueryRow(ctx, `SELECT id, email, org_id, name FROM users WHERE id = $1`, userID).Scan(&u.ID, &u.Email, &u.OrgID, &u.Name)
		if errors.Is(err, pgx.ErrNoRows) {
			return u, cacheaside.ErrNotFound
		}
		return u, err
	}, cacheaside.Tags(fmt.Sprintf("org:%d", orgID)))
	if err != nil {
		return u, err
	}
	from := "cache hit"
	if a.cache.Stats().Loads > loads {
		from = "loaded from PostgreSQL and cached"
	}
	fmt.Printf("GetOrLoad user:%d → %q (%s)\n", userID, u.Name, from)
	if u.Name != wantName {
		return u, fmt.Errorf("read %q, want %q", u.Name, wantName)
	}
	return u, nil
}

func nsOf(customer int) string { return fmt.Sprintf("orders:customer:%d", customer) }

// orders reads the customer's recent orders through the cache, in the
// namespace's current version.
func (a *app) orders(ctx context.Context) ([]Order, error) {
	list, err := cacheaside.GetOrLoad(ctx, a.cache, "recent", func(ctx context.Context) ([]Order, error) {
		rows, err := a.db.Query(ctx, `SELECT id, total::text FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 10`, customerID)
		if err != nil {
			return nil, err
		}
		list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Order])
		// Oldest first, so that a new order is last.
		for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
			list[i], list[j] = list[j], list[i]
		}
		return list, err
	}, cacheaside.Versioned(nsOf(customerID)))
	if err != nil {
		return nil, err
	}
	v, _ := a.cache.Version(ctx, nsOf(customerID))
	fmt.Printf("GetOrLoad %s:v%d:recent → %d orders\n", nsOf(customerID), v, len(list))
	return list, nil
}

// waitGone polls until cachesync deleted key.
func (a *app) waitGone(ctx context.Context, key, after string) error {
	start := time.Now()
	for deadline := start.Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		n, err := a.rdb.Exists(ctx, key).Result()
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Printf("cachesync deleted %s %s after %s\n", key, time.Since(start).Round(time.Millisecond), after)
			return nil
		}
	}
	return fmt.Errorf("%s still cached 15s after %s: is cachesync run streaming with rules.hcl?", key, after)
}

// waitVersion polls until cachesync bumped the customer's namespace past from.
func (a *app) waitVersion(ctx context.Context, from int64) error {
	start := time.Now()
	for deadline := start.Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		v, err := a.cache.Version(ctx, nsOf(customerID))
		if err != nil {
			return err
		}
		if v > from {
			fmt.Printf("cachesync bumped version:%s to %d %s after the INSERT\n", nsOf(customerID), v, time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
	return fmt.Errorf("version:%s still %d 15s after the INSERT: is cachesync run streaming with rules.hcl?", nsOf(customerID), from)
}
