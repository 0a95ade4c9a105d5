package e2e

// The consistency checker of the fault-injection suite (fault_test.go), the
// seeding it checks against, and the workload that changes the rows under it.
//
// The world: faultUsers users and faultProducts products (schema and rules of
// core_test.go). The application caches user:<id> = the row's name, read from
// PostgreSQL; cachesync deletes the key on any change of the row. cachesync
// itself writes product:<id> = jsonencode(row) for published products and
// deletes it otherwise. After the system quiesced, no cached key may differ
// from what PostgreSQL holds.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/wal"
)

const (
	faultUsers    = 200
	faultProducts = 200
	// faultStatements is the length of every fault workload: each statement
	// is its own transaction.
	faultStatements = 300
)

// seed inserts the rows, waits until d applied them, then plays the
// application: it caches user:<id> = name as read from PostgreSQL now. The
// products' keys are written by cachesync's refresh rule. It returns the
// names it cached, so that a test can later refill keys from this old read.
func (e *env) seed(d *daemon) map[int64]string {
	e.t.Helper()
	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', g % 10, 'name-' || g FROM generate_series(1, $1::int) g`, faultUsers)
	e.exec(`INSERT INTO products SELECT g, 'p' || g, (g * 1.25)::numeric(10,2), g % 5 <> 0, 'd' || g FROM generate_series(1, $1::int) g`, faultProducts)
	e.caughtUp(d, 60*time.Second)
	names := e.userNames()
	e.cacheUsers(names, nil)
	if m, _ := e.cacheMismatches(); len(m) > 0 {
		e.t.Fatalf("right after seeding the cache already differs from PostgreSQL:\n%s", strings.Join(m, "\n"))
	}
	var published int
	if err := e.db.QueryRow(e.ctx, `SELECT count(*) FROM products WHERE published`).Scan(&published); err != nil {
		e.t.Fatal(err)
	}
	if got := len(e.keys("product:*")); got != published {
		e.t.Fatalf("after seeding %d product keys, want one per published product (%d): the refresh rule does not work", got, published)
	}
	return names
}

// userNames reads every user's name.
func (e *env) userNames() map[int64]string {
	e.t.Helper()
	rows, err := e.db.Query(e.ctx, `SELECT id, name FROM users`)
	if err != nil {
		e.t.Fatal(err)
	}
	names := map[int64]string{}
	var id int64
	var name string
	if _, err := pgx.ForEachRow(rows, []any{&id, &name}, func() error { names[id] = name; return nil }); err != nil {
		e.t.Fatal(err)
	}
	return names
}

// cacheUsers plays the application filling its cache from a read: user:<id>
// = names[id], for ids (all of names when ids is nil).
func (e *env) cacheUsers(names map[int64]string, ids []int64) {
	e.t.Helper()
	if ids == nil {
		for id := range names {
			ids = append(ids, id)
		}
	}
	pipe := e.rdb.Pipeline()
	n := 0
	for _, id := range ids {
		if name, ok := names[id]; ok {
			pipe.Set(e.ctx, fmt.Sprintf("user:%d", id), name, 0)
			n++
		}
	}
	if n == 0 {
		return
	}
	if _, err := pipe.Exec(e.ctx); err != nil {
		e.t.Fatalf("cache users: %v", err)
	}
}

// keys returns every key matching pattern.
func (e *env) keys(pattern string) []string {
	e.t.Helper()
	keys, err := scanKeys(e.ctx, e.rdb, pattern)
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

// scanKeys returns every key matching pattern: on a cluster, from every
// master.
func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, node redis.Cmdable) error {
		iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("scan %s: %w", pattern, err)
		}
		return nil
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return scan(ctx, m) })
	} else {
		err = scan(ctx, rdb)
	}
	if err != nil {
		return nil, err
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

type productRow struct {
	name, price, description string
	published                bool
}

func (p productRow) json(id int64) map[string]any {
	return productJSON(int(id), p.name, p.price, p.published, p.description)
}

// cacheMismatches is the checker: it compares every user:<id> and
// product:<id> key in Redis with the current rows and returns one line per
// key that differs (key, cached value, database value), and how many keys
// it compared. A key may be absent (a cache miss is always correct); a key
// that exists must hold what the row holds now, and its row must exist
// (and, for products, be published).
func (e *env) cacheMismatches() (mismatches []string, checked int) {
	e.t.Helper()
	// Redis errors are retried for a while: right after a failover a
	// client may need a moment to learn the new topology.
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		mismatches, checked, err = e.compareCache()
		if err == nil {
			return mismatches, checked
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("checker: Redis still failing after 30s: %v", err)
		}
	}
}

// compareCache is cacheMismatches returning Redis's errors, for a caller
// that polls while the topology is still changing: right after a failover
// a cluster node may still name the dead master for a moment.
func (e *env) compareCache() (mismatches []string, checked int, err error) {
	e.t.Helper()
	users := e.userNames()
	products := map[int64]productRow{}
	rows, err := e.db.Query(e.ctx, `SELECT id, name, price::text, published, description FROM products`)
	if err != nil {
		e.t.Fatal(err)
	}
	var id int64
	var p productRow
	if _, err := pgx.ForEachRow(rows, []any{&id, &p.name, &p.price, &p.published, &p.description}, func() error {
		products[id] = p
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}

	check := func(pattern string, compare func(key string, id int64, cached string) string) error {
		keys, err := scanKeys(e.ctx, e.rdb, pattern)
		if err != nil {
			return err
		}
		for start := 0; start < len(keys); start += 500 {
			chunk := keys[start:min(start+500, len(keys))]
			// GETs in a pipeline rather than MGET: a cluster refuses
			// multi-key commands across slots.
			cmds, err := e.rdb.Pipelined(e.ctx, func(p redis.Pipeliner) error {
				for _, k := range chunk {
					p.Get(e.ctx, k)
				}
				return nil
			})
			if err != nil && err != redis.Nil {
				return fmt.Errorf("read %s: %w", pattern, err)
			}
			for i, key := range chunk {
				cached, err := cmds[i].(*redis.StringCmd).Result()
				if err != nil {
					continue // expired or deleted between SCAN and GET: a miss
				}
				idText := strings.TrimPrefix(key, strings.TrimSuffix(pattern, "*"))
				id, err := strconv.ParseInt(idText, 10, 64)
				if err != nil {
					continue // another key of the rule's space (user:email:…): not the application's
				}
				checked++
				if msg := compare(key, id, cached); msg != "" {
					mismatches = append(mismatches, msg)
				}
			}
		}
		return nil
	}
	err = check("user:*", func(key string, id int64, cached string) string {
		name, ok := users[id]
		switch {
		case !ok:
			return fmt.Sprintf("%s: cached %q, db: row deleted", key, cached)
		case name != cached:
			return fmt.Sprintf("%s: cached %q, db %q", key, cached, name)
		}
		return ""
	})
	if err != nil {
		return nil, 0, err
	}
	err = check("product:*", func(key string, id int64, cached string) string {
		row, ok := products[id]
		if !ok {
			return fmt.Sprintf("%s: cached %s, db: row deleted", key, cached)
		}
		want := row.json(id)
		wantJSON, _ := json.Marshal(want)
		if !row.published {
			return fmt.Sprintf("%s: cached %s, db: row unpublished %s", key, cached, wantJSON)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(cached), &got); err != nil || !reflect.DeepEqual(got, want) {
			return fmt.Sprintf("%s: cached %s, db %s", key, cached, wantJSON)
		}
		return ""
	})
	if err != nil {
		return nil, 0, err
	}
	return mismatches, checked, nil
}

// quiesce waits until d applied everything committed so far, including a
// flush or replay it may be doing: it commits a transaction of its own (a
// logical message, which travels the pipeline like any transaction, behind
// any heal) and waits until the slot confirmed it. caughtUp alone can
// return at once when the slot's position is already past the last commit
// (a slot just created, a cache healed after everything was confirmed).
func (e *env) quiesce(d *daemon) {
	e.t.Helper()
	e.exec(`SELECT pg_logical_emit_message(true, 'cachesync-e2e', 'quiesce')`)
	e.caughtUp(d, 60*time.Second)
}

// checkCache fails the test with every key that differs from PostgreSQL.
// Call it once the system quiesced (quiesce on the surviving daemon).
func (e *env) checkCache() {
	e.t.Helper()
	m, checked := e.cacheMismatches()
	if len(m) > 0 {
		e.t.Errorf("checker: %d of %d cached keys differ from PostgreSQL after quiescing:\n%s", len(m), checked, strings.Join(m, "\n"))
		return
	}
	e.t.Logf("checker: %d cached user/product keys, all equal to PostgreSQL", checked)
}

// logAtStake logs how many of the keys the application cached at seeding
// (names) belong to rows that changed since: each of them would be stale now
// had its invalidation been lost, so the checker depends on all of them.
func (e *env) logAtStake(names map[int64]string) {
	e.t.Helper()
	now := e.userNames()
	n := 0
	for id, name := range names {
		if cur, ok := now[id]; !ok || cur != name {
			n++
		}
	}
	e.t.Logf("at stake: %d of the %d user keys cached at seeding belong to rows changed since", n, len(names))
}

// expectStale asserts the cache differs from PostgreSQL now (before the
// daemon healed it): otherwise the scenario proves nothing.
func (e *env) expectStale(when string) {
	e.t.Helper()
	m, checked := e.cacheMismatches()
	if len(m) == 0 {
		e.t.Fatalf("%s: the cache holds nothing stale (%d keys checked): the scenario would prove nothing", when, checked)
	}
	e.t.Logf("%s: %d of %d cached keys stale, as intended (e.g. %s)", when, len(m), checked, m[0])
}

// faultOp is one workload statement, run in its own transaction. Every
// statement can be repeated (updates, deletes, upserts), so that a retry
// after an ambiguous failure (server restart during COMMIT) is harmless.
type faultOp struct {
	sql     string
	args    []any
	user    int64 // the user row it touches, or 0
	product int64 // the product row it touches, or 0
}

func (o faultOp) String() string { return fmt.Sprintf("%s %v", o.sql, o.args) }

// faultWorkload returns n statements touching a random subset of users and
// products, deterministically from seed: renames, moves, deletes and
// (re)inserts of users, price/name changes, publish toggles, deletes and
// (re)inserts of products. Ids go a quarter beyond the seeded ones, so some
// statements create rows that never existed.
func faultWorkload(seed uint64, n int) []faultOp {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	userID := func() int64 { return 1 + r.Int64N(faultUsers+faultUsers/4) }
	productID := func() int64 { return 1 + r.Int64N(faultProducts+faultProducts/4) }
	price := func() string { return fmt.Sprintf("%d.%02d", r.IntN(500), r.IntN(100)) }
	ops := make([]faultOp, 0, n)
	for i := range n {
		var op faultOp
		switch k := r.IntN(20); {
		case k < 6:
			op.user = userID()
			op.sql, op.args = `UPDATE users SET name = $2 WHERE id = $1`, []any{op.user, fmt.Sprintf("name-%d-w%d", op.user, i)}
		case k < 8:
			op.user = userID()
			op.sql, op.args = `UPDATE users SET email = $2, org_id = $3 WHERE id = $1`, []any{op.user, fmt.Sprintf("u%d-w%d@y.io", op.user, i), r.IntN(10)}
		case k < 10:
			op.user = userID()
			op.sql, op.args = `DELETE FROM users WHERE id = $1`, []any{op.user}
		case k < 11:
			op.user = userID()
			op.sql = `INSERT INTO users (id, email, org_id, name) VALUES ($1, $2, $3, $4)
				ON CONFLICT (id) DO UPDATE SET email = excluded.email, org_id = excluded.org_id, name = excluded.name`
			op.args = []any{op.user, fmt.Sprintf("u%d-w%d@z.io", op.user, i), r.IntN(10), fmt.Sprintf("name-%d-i%d", op.user, i)}
		case k < 15:
			op.product = productID()
			op.sql, op.args = `UPDATE products SET price = $2::text::numeric, name = $3 WHERE id = $1`, []any{op.product, price(), fmt.Sprintf("p%d-w%d", op.product, i)}
		case k < 17:
			op.product = productID()
			op.sql, op.args = `UPDATE products SET published = NOT published WHERE id = $1`, []any{op.product}
		case k < 18:
			op.product = productID()
			op.sql, op.args = `DELETE FROM products WHERE id = $1`, []any{op.product}
		default:
			op.product = productID()
			op.sql = `INSERT INTO products (id, name, price, published, description) VALUES ($1, $2, $3::text::numeric, $4, $5)
				ON CONFLICT (id) DO UPDATE SET name = excluded.name, price = excluded.price, published = excluded.published, description = excluded.description`
			op.args = []any{op.product, fmt.Sprintf("p%d-i%d", op.product, i), price(), r.IntN(4) != 0, fmt.Sprintf("d%d-i%d", op.product, i)}
		}
		ops = append(ops, op)
	}
	return ops
}

// touchedUsers returns the user ids the statements touch.
func touchedUsers(ops []faultOp) []int64 {
	var ids []int64
	for _, op := range ops {
		if op.user != 0 {
			ids = append(ids, op.user)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// committed is what runWorkload learned of one statement's transaction.
type committed struct {
	xid  string // 32-bit, as logical decoding shows it
	rows int64  // rows changed: 0 makes an empty transaction, which pgoutput skips
	// attempts it took (more than 1 when the server was unreachable)
	attempts int
}

// runWorkload runs the statements in order, each in its own transaction, on
// a connection of its own, and returns what each transaction was. after(i) is called once statement i
// committed. With retryFor > 0 a failed statement (server down, connection
// lost) is retried on a new connection until it commits, for at most
// retryFor per statement; with 0 the first error is returned. Safe to call
// from another goroutine: it reports errors instead of failing the test.
func runWorkload(ctx context.Context, dbURL string, ops []faultOp, retryFor time.Duration, after func(i int)) ([]committed, error) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	exec := func(op faultOp) (c committed, err error) {
		if conn == nil {
			if conn, err = pgx.Connect(ctx, dbURL); err != nil {
				return c, err
			}
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return c, err
		}
		defer tx.Rollback(context.Background())
		tag, err := tx.Exec(ctx, op.sql, op.args...)
		if err != nil {
			return c, err
		}
		c.rows = tag.RowsAffected()
		if err := tx.QueryRow(ctx, `SELECT (txid_current() % 4294967296)::text`).Scan(&c.xid); err != nil {
			return c, err
		}
		return c, tx.Commit(ctx)
	}
	done := make([]committed, 0, len(ops))
	for i, op := range ops {
		deadline := time.Now().Add(retryFor)
		for attempt := 1; ; attempt++ {
			c, err := exec(op)
			if err == nil {
				c.attempts = attempt
				done = append(done, c)
				break
			}
			if retryFor == 0 || time.Now().After(deadline) || ctx.Err() != nil {
				return done, fmt.Errorf("workload statement %d (%s), attempt %d: %w", i, op, attempt, err)
			}
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
			// Backoff between attempts while the server is unreachable.
			time.Sleep(100 * time.Millisecond)
		}
		if after != nil {
			after(i)
		}
	}
	return done, nil
}

// appliedPosition reads the cache's applied position for the slot.
func (e *env) appliedPosition() (wal.LSN, bool) {
	e.t.Helper()
	s, err := e.rdb.Get(e.ctx, "cachesync:slot:"+e.slot+":applied").Result()
	if err == redis.Nil {
		return 0, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := wal.ParseLSN(s)
	if err != nil {
		e.t.Fatalf("applied position %q: %v", s, err)
	}
	return l, true
}

// The checker must be able to fail: every kind of staleness is reported,
// with the key, the cached value and the database's.
func TestFaultCheckerCatchesStaleness(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)
	e.checkCache() // clean after seeding

	// An unpublished product, cached as if it were published.
	var unpublished int64
	var row productRow
	if err := e.db.QueryRow(e.ctx, `SELECT id, name, price::text, description FROM products WHERE NOT published ORDER BY id LIMIT 1`).
		Scan(&unpublished, &row.name, &row.price, &row.description); err != nil {
		t.Fatal(err)
	}
	row.published = true
	asPublished, _ := json.Marshal(row.json(unpublished))
	stale := map[string]string{
		"user:3":     "an old name", // changed value
		"user:99999": "ghost",       // no such row
		"product:7":  `not json`,
		// wrong price
		"product:4": `{"id":4,"name":"p4","price":"5.01","published":true,"description":"d4"}`,
	}
	stale[fmt.Sprintf("product:%d", unpublished)] = string(asPublished)
	for k, v := range stale {
		if err := e.rdb.Set(e.ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A cached key whose row was deleted, the invalidation lost.
	e.exec(`DELETE FROM users WHERE id = 5`)
	e.caughtUp(d, 30*time.Second)
	e.cacheUsers(map[int64]string{5: "name-5"}, nil)
	stale["user:5"] = "name-5"

	m, _ := e.cacheMismatches()
	reported := map[string]string{}
	for _, line := range m {
		key, _, _ := strings.Cut(line, ":")
		rest := strings.TrimPrefix(line, key+":")
		id, _, _ := strings.Cut(rest, ":")
		reported[key+":"+id] = line
	}
	for k := range stale {
		if _, ok := reported[k]; !ok {
			t.Errorf("checker missed stale key %s; it reported:\n%s", k, strings.Join(m, "\n"))
		}
	}
	if len(m) != len(stale) {
		t.Errorf("checker reported %d keys, want exactly the %d stale ones:\n%s", len(m), len(stale), strings.Join(m, "\n"))
	}
	for _, want := range []string{
		`user:3: cached "an old name", db "name-3"`,
		`user:99999: cached "ghost", db: row deleted`,
		`user:5: cached "name-5", db: row deleted`,
		`product:4: cached {"id":4,"name":"p4","price":"5.01","published":true,"description":"d4"}, db {"description":"d4","id":4,"name":"p4","price":"5.00","published":true}`,
		fmt.Sprintf(`product:%d: cached`, unpublished),
		`db: row unpublished`,
	} {
		if !strings.Contains(strings.Join(m, "\n"), want) {
			t.Errorf("checker output lacks %q:\n%s", want, strings.Join(m, "\n"))
		}
	}
}
