package cacheaside_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
)

// newRedisClient connects to the Redis of the examples. In an application:
// redis.NewClient(&redis.Options{Addr: "localhost:6379"}), or a
// redis.ClusterClient.
func newRedisClient() *redis.Client {
	server, err := testenv.SharedRedis()
	if err != nil {
		panic(err)
	}
	opts, err := redis.ParseURL(server.URL())
	if err != nil {
		panic(err)
	}
	return redis.NewClient(opts)
}

// User is the row of the package example.
type User struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// usersDB stands for the application's database in the package example.
type usersDB map[string]User

// loadUser stands for the application's query.
func loadUser(_ context.Context, db usersDB, id string) (User, error) {
	fmt.Printf("  SELECT id, name FROM users WHERE id = %s\n", id)
	u, ok := db[id]
	if !ok {
		return User{}, cacheaside.ErrNotFound
	}
	return u, nil
}

// The package documentation's example (TestPackageDocExample keeps the two
// the same): one Client per application, a read through it by the key and
// tag a rule of rules.hcl invalidates,
//
//	rule "user" {
//	  table = "public.users"
//	  invalidate {
//	    keys = ["user:${row.id}"]
//	    tags = ["org:${row.org_id}"]
//	  }
//	}
//
// and Close at the end. The next read of user:42 is a hit, until the
// daemon deletes the key or the tag.
func Example() {
	ctx, rdb, db, id, orgID := context.Background(), newRedisClient(), usersDB{"42": {ID: "42", Name: "Ann"}}, "42", "3"
	defer rdb.Close()
	rdb.Del(ctx, "user:42", "tag:org:3") // a clean start for this example
	// The package documentation shows the rest.
	c, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour})
	if err != nil {
		panic(err)
	}
	defer c.Close() // stops background refreshes and waits for them
	user, err := cacheaside.GetOrLoad(ctx, c, "user:"+id, func(ctx context.Context) (User, error) {
		return loadUser(ctx, db, id) // cacheaside.ErrNotFound for a missing row
	}, cacheaside.Tags("org:"+orgID))
	if err != nil {
		panic(err)
	}
	fmt.Println(user.Name)
	// Output:
	//   SELECT id, name FROM users WHERE id = 42
	// Ann
}

// Product is what the examples cache.
type Product struct {
	ID    int    `json:"id"`
	Name  string `json:"name"`
	Price string `json:"price"`
}

// The read side of a rule such as
//
//	rule "product" {
//	  table = "public.products"
//	  invalidate { keys = ["product:${row.id}"] }
//	}
//
// The first read loads from the source and caches; the next is a hit.
// cachesync deletes product:<id> when the row changes.
func ExampleGetOrLoad() {
	ctx := context.Background()
	rdb := newRedisClient()
	defer rdb.Close()
	c, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	_ = c.Invalidate(ctx, "example:product:1") // a clean start for this example

	loadProduct := func(ctx context.Context) (Product, error) {
		fmt.Println("  SELECT … FROM products WHERE id = 1")
		return Product{ID: 1, Name: "Lamp", Price: "19.90"}, nil
	}
	for range 2 {
		p, err := cacheaside.GetOrLoad(ctx, c, "example:product:1", loadProduct)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s costs %s\n", p.Name, p.Price)
	}
	fmt.Printf("hits %d, loads %d\n", c.Stats().Hits, c.Stats().Loads)
	// Output:
	//   SELECT … FROM products WHERE id = 1
	// Lamp costs 19.90
	// Lamp costs 19.90
	// hits 1, loads 1
}

// A missing row is cached too (for Options.NotFoundTTL), so that a flood of
// reads of an absent id does not reach the database.
func ExampleErrNotFound() {
	ctx := context.Background()
	rdb := newRedisClient()
	defer rdb.Close()
	c, err := cacheaside.New(rdb, cacheaside.Options{NotFoundTTL: 30 * time.Second})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	_ = c.Invalidate(ctx, "example:product:404")

	loads := 0
	load := func(ctx context.Context) (Product, error) {
		loads++
		return Product{}, cacheaside.ErrNotFound // the query found no row
	}
	for range 3 {
		_, err := cacheaside.GetOrLoad(ctx, c, "example:product:404", load)
		fmt.Println(errors.Is(err, cacheaside.ErrNotFound))
	}
	fmt.Println("loads:", loads)
	// Output:
	// true
	// true
	// true
	// loads: 1
}

// Tags register a key in tag:<tag> sets. A rule with
//
//	invalidate { tags = ["org:${row.org_id}"] }
//
// deletes every key registered under org:<id> when any row of that org
// changes; InvalidateTags does the same from the application.
func ExampleTags() {
	ctx := context.Background()
	rdb := newRedisClient()
	defer rdb.Close()
	c, err := cacheaside.New(rdb, cacheaside.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	_ = c.InvalidateTags(ctx, "example-org:3")

	members := func(ctx context.Context) ([]string, error) {
		fmt.Println("  SELECT name FROM users WHERE org_id = 3")
		return []string{"Ann", "Bob"}, nil
	}
	page := func() {
		names, err := cacheaside.GetOrLoad(ctx, c, "example:org:3:members", members, cacheaside.Tags("example-org:3"))
		if err != nil {
			panic(err)
		}
		fmt.Println(names)
	}
	page()
	page()
	_ = c.InvalidateTags(ctx, "example-org:3") // what cachesync does when a user of org 3 changes
	page()
	// Output:
	//   SELECT name FROM users WHERE org_id = 3
	// [Ann Bob]
	// [Ann Bob]
	//   SELECT name FROM users WHERE org_id = 3
	// [Ann Bob]
}

// Versioned keys live in a namespace whose version cachesync increments:
//
//	bump_version { namespaces = ["orders:customer:${row.customer_id}"] }
//
// A bump makes every entry of the namespace unreachable at once.
func ExampleVersioned() {
	ctx := context.Background()
	rdb := newRedisClient()
	defer rdb.Close()
	c, err := cacheaside.New(rdb, cacheaside.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ns := "example:orders:customer:7"
	rdb.Del(ctx, "version:"+ns) // a clean start for this example

	recent := func(ctx context.Context) ([]int, error) {
		fmt.Println("  SELECT id FROM orders WHERE customer_id = 7")
		return []int{101, 102}, nil
	}
	read := func() {
		ids, err := cacheaside.GetOrLoad(ctx, c, "recent", recent, cacheaside.Versioned(ns))
		if err != nil {
			panic(err)
		}
		v, _ := c.Version(ctx, ns)
		fmt.Printf("version %d: %v\n", v, ids)
	}
	read()
	read()
	rdb.Incr(ctx, "version:"+ns) // what cachesync does on a change of customer 7's orders
	read()
	// Output:
	//   SELECT id FROM orders WHERE customer_id = 7
	// version 0: [101 102]
	// version 0: [101 102]
	//   SELECT id FROM orders WHERE customer_id = 7
	// version 1: [101 102]
}

// Counter is the row of the write-behind example: public.counters.
type Counter struct {
	Hits int `json:"hits"`
	ID   int `json:"id"`
}

// A counter written behind: each write sets the cache key and appends the
// row to the stream in one step, and cachesync applies the entries to
// PostgreSQL in batches, by the block of rules.hcl that names the stream:
//
//	write_behind "counters" {
//	  stream      = "{counters}:wb"
//	  table       = "public.counters"
//	  key_columns = ["id"]
//	}
//
// The key and the stream share the hash tag {counters}, which Redis Cluster
// requires (one script writes both).
func ExampleWriteBehind() {
	ctx, rdb := context.Background(), newRedisClient()
	defer rdb.Close()
	rdb.Del(ctx, "{counters}:42", "{counters}:wb") // a clean start for this example
	c, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	wb := c.WriteBehindStream("{counters}:wb")

	n := Counter{Hits: 7, ID: 42}
	if _, err := cacheaside.WriteBehind(ctx, wb, "{counters}:42", n, n); err != nil {
		panic(err) // Redis failed: nothing was written, and nothing will reach PostgreSQL
	}
	cached, err := cacheaside.Get[Counter](ctx, c, "{counters}:42")
	fmt.Printf("cached %+v, %v\n", cached, err)

	if _, err := cacheaside.WriteBehindDelete(ctx, wb, "{counters}:42", map[string]int{"id": 42}); err != nil {
		panic(err)
	}
	_, err = cacheaside.Get[Counter](ctx, c, "{counters}:42")
	fmt.Println("after the delete:", err)

	entries, err := rdb.XRange(ctx, "{counters}:wb", "-", "+").Result()
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		fmt.Println("XADD {counters}:wb * op", e.Values["op"], "row", e.Values["row"])
	}
	// Output:
	// cached {Hits:7 ID:42}, <nil>
	// after the delete: cacheaside: key not cached
	// XADD {counters}:wb * op upsert row {"hits":7,"id":42}
	// XADD {counters}:wb * op delete row {"id":42}
}
