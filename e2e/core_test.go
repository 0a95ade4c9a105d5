package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

const schema = `
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, org_id int, name text);
ALTER TABLE users REPLICA IDENTITY FULL;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, total numeric(10,2), status text);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE products (id bigint PRIMARY KEY, name text, price numeric(10,2), published bool, description text);
-- Long descriptions go out of line uncompressed, so an UPDATE that does not
-- touch them sends them as "unchanged TOAST".
ALTER TABLE products ALTER description SET STORAGE EXTERNAL;
CREATE TABLE unrelated (id bigint PRIMARY KEY, v text);
`

// rules are the rule blocks of the repository's rules.hcl (up to its
// write-behind example), which is written
// for the schema above; the postgres and redis blocks are the harness's own.
// Tests that need other rules write them out; these are read, not pasted,
// so that the documented example is the one the tests run.
var rules = exampleRules()

func exampleRules() string {
	src, err := os.ReadFile("../rules.hcl")
	if err != nil {
		panic(fmt.Sprintf("e2e: the tests' rules come from the repository's rules.hcl: %v", err))
	}
	i := strings.Index(string(src), "\nrule \"")
	if i < 0 {
		panic("e2e: ../rules.hcl has no rule block")
	}
	body := string(src[i+1:])
	// The write-behind example at the end needs a table of its own: the
	// tests that want it set it up themselves (writebehind_test.go).
	if j := strings.Index(body, "\n# Write-behind"); j >= 0 {
		body = body[:j+1]
	}
	return body
}

func TestInvalidateOnInsertUpdateDeleteTruncate(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)

	e.set("user:1", "user:email:ann@x.io", "page:a", "page:b", "user:2", "other:1")
	if err := e.rdb.SAdd(e.ctx, "tag:org:7", "page:a", "page:b").Err(); err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO users VALUES (1, 'Ann@X.io', 7, 'Ann')`)
	e.gone("user:1", "user:email:ann@x.io", "page:a", "page:b", "tag:org:7")
	e.present("user:2", "other:1")

	// An UPDATE that moves the email and the org: the old and the new keys go.
	e.set("user:1", "user:email:ann@x.io", "user:email:ann@y.io", "page:c", "page:d")
	e.rdb.SAdd(e.ctx, "tag:org:7", "page:c")
	e.rdb.SAdd(e.ctx, "tag:org:8", "page:d")
	e.exec(`UPDATE users SET email = 'ann@y.io', org_id = 8 WHERE id = 1`)
	e.gone("user:1", "user:email:ann@x.io", "user:email:ann@y.io", "page:c", "page:d", "tag:org:7", "tag:org:8")

	e.set("user:1", "user:email:ann@y.io")
	e.exec(`DELETE FROM users WHERE id = 1`)
	e.gone("user:1", "user:email:ann@y.io")
	e.present("user:2", "other:1")

	e.exec(`INSERT INTO users VALUES (3, 'c@x.io', 9, 'Cy'), (4, 'd@x.io', 9, 'Di')`)
	e.caughtUp(d, 30*time.Second)
	e.set("user:3", "user:4", "user:email:zz", "page:e")
	e.rdb.SAdd(e.ctx, "tag:org:9", "page:e")
	e.exec(`TRUNCATE users`)
	e.gone("user:3", "user:4", "user:email:zz", "user:2", "page:e", "tag:org:9")
	e.present("other:1")
	if d.exited() {
		t.Fatalf("daemon exited\n%s", d.log.String())
	}
}

func (e *env) version(ns string) int64 {
	e.t.Helper()
	n, err := e.rdb.Get(e.ctx, "version:"+ns).Int64()
	if err != nil && err.Error() != "redis: nil" {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) waitVersion(ns string, want int64) {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, "version of "+ns, func() (bool, string) {
		got := e.version(ns)
		return got == want, fmt.Sprintf("version %d, want %d", got, want)
	})
}

func TestBumpVersion(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)

	e.exec(`INSERT INTO orders VALUES (1, 5, 10.00, 'new')`)
	e.waitVersion("orders:customer:5", 1)
	e.exec(`UPDATE orders SET status = 'paid' WHERE id = 1`)
	e.waitVersion("orders:customer:5", 2)
	// Moving the order to another customer retires both customers' lists.
	e.exec(`UPDATE orders SET customer_id = 6 WHERE id = 1`)
	e.waitVersion("orders:customer:5", 3)
	e.waitVersion("orders:customer:6", 1)
	e.exec(`DELETE FROM orders WHERE id = 1`)
	e.waitVersion("orders:customer:6", 2)
	// One transaction touching one customer many times bumps once.
	e.exec(`INSERT INTO orders SELECT g, 7, 1.00, 'new' FROM generate_series(10, 60) g`)
	e.waitVersion("orders:customer:7", 1)

	// TRUNCATE: every version key is bumped and every cached list dropped.
	e.set("orders:customer:5:v3:page1", "orders:customer:9:v0:page1", "user:1")
	e.exec(`TRUNCATE orders`)
	e.gone("orders:customer:5:v3:page1", "orders:customer:9:v0:page1")
	e.waitVersion("orders:customer:7", 2)
	e.present("user:1")
}

// productJSON is what the refresh rule must write for a committed row.
func productJSON(id int, name, price string, published bool, description string) map[string]any {
	return map[string]any{"id": float64(id), "name": name, "price": price, "published": published, "description": description}
}

func (e *env) waitValue(key string, want map[string]any) {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, "value of "+key, func() (bool, string) {
		raw, err := e.rdb.Get(e.ctx, key).Result()
		if err != nil {
			return false, err.Error()
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(raw), &got); err != nil {
			return false, raw
		}
		return reflect.DeepEqual(got, want), raw
	})
}

func TestRefresh(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)

	e.exec(`INSERT INTO products VALUES (1, 'Pen', 42.50, true, 'blue')`)
	e.waitValue("product:1", productJSON(1, "Pen", "42.50", true, "blue"))
	ttl, err := e.rdb.PTTL(e.ctx, "product:1").Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < 55*time.Minute-time.Minute || ttl > 65*time.Minute {
		t.Errorf("TTL %s outside 1h ± 5m", ttl)
	}

	e.exec(`UPDATE products SET price = 40.00, description = repeat('long ', 5000) WHERE id = 1`)
	e.waitValue("product:1", productJSON(1, "Pen", "40.00", true, strings.Repeat("long ", 5000)))
	// Only the price changes: the TOASTed description is not sent, and the
	// table's default replica identity does not carry it either. The
	// refresh must not guess: the key is deleted.
	e.exec(`UPDATE products SET price = 39.00 WHERE id = 1`)
	e.gone("product:1")

	e.exec(`INSERT INTO products VALUES (2, 'Cap', 3.10, true, 'red')`)
	e.waitValue("product:2", productJSON(2, "Cap", "3.10", true, "red"))
	e.exec(`UPDATE products SET published = false WHERE id = 2`)
	e.gone("product:2")
	e.exec(`INSERT INTO products VALUES (3, 'Hat', 9.99, false, 'grey')`)
	e.exec(`INSERT INTO products VALUES (4, 'Bag', 19.00, true, 'black')`)
	e.waitValue("product:4", productJSON(4, "Bag", "19.00", true, "black"))
	if e.exists("product:3") {
		t.Error("an unpublished product was written")
	}
	e.exec(`DELETE FROM products WHERE id = 4`)
	e.gone("product:4")

	e.exec(`INSERT INTO products VALUES (5, 'Mug', 5.00, true, 'white')`)
	e.waitValue("product:5", productJSON(5, "Mug", "5.00", true, "white"))
	e.exec(`TRUNCATE products`)
	e.gone("product:5")
}

func TestRestartWithoutLoss(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', 1, 'n' FROM generate_series(1, 100) g`)
	e.caughtUp(d, 30*time.Second)
	if code := d.stop(); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0\n%s", code, d.log.String())
	}
	if !strings.Contains(d.log.String(), `"stopped"`) {
		t.Errorf("no final confirmation logged:\n%s", d.log.String())
	}
	// The journal holds what was applied, up to the confirmed position.
	out, code := e.cli("status", "--json")
	var st struct {
		Journal *struct {
			NewestLSN uint64
			Entries   int64
		} `json:"journal"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Journal == nil {
		t.Fatalf("status --json: exit %d, %v\n%s", code, err, out)
	}
	if confirmed := e.confirmedLSN(); st.Journal.Entries == 0 || st.Journal.NewestLSN < uint64(confirmed) {
		t.Errorf("journal: %+v, slot confirmed %s", *st.Journal, confirmed)
	}

	// While the daemon is down, rows change under cached keys.
	for i := 1; i <= 100; i++ {
		e.set(fmt.Sprintf("user:%d", i))
	}
	e.exec(`UPDATE users SET name = 'changed'`)
	e.exec(`DELETE FROM users WHERE id > 90`)

	d2 := e.start()
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i+1)
	}
	e.gone(keys...)
	e.caughtUp(d2, 30*time.Second)
}

func TestRedisOutage(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', 1, 'n' FROM generate_series(1, 1000) g`)
	e.caughtUp(d, 60*time.Second)

	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i+1)
		e.set(keys[i])
	}
	// Persist the cached (soon stale) values so they come back with Redis.
	if err := e.rdb.Save(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	e.redis.Stop(t)
	for i := 1; i <= 1000; i++ {
		e.exec(`UPDATE users SET name = 'v2' WHERE id = $1`, i)
	}
	before := e.confirmedLSN()
	// Keep Redis down for 30 s: the scenario's length, not a wait for an effect.
	for time.Since(down) < 30*time.Second {
		if d.exited() {
			t.Fatalf("daemon exited while Redis was down\n%s", d.log.String())
		}
		var active bool
		if err := e.db.QueryRow(e.ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&active); err != nil || !active {
			t.Fatalf("walsender dropped while Redis was down (active=%v, err=%v)", active, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got := e.confirmedLSN(); got > before {
		t.Fatalf("slot confirmed %s while Redis was down (was %s): unapplied changes confirmed", got, before)
	}
	e.redis.Start(t)
	for _, k := range keys[:3] {
		if !e.exists(k) {
			t.Fatalf("%s did not come back with Redis's snapshot; the test would prove nothing", k)
		}
	}
	e.gone(keys...)
	e.caughtUp(d, 60*time.Second)
	if d.exited() {
		t.Fatalf("daemon exited\n%s", d.log.String())
	}
}

func TestKillAfterApplyBeforeConfirm(t *testing.T) {
	e := setup(t, schema, rules)
	if out, code := e.cli("setup"); code != 0 {
		t.Fatalf("setup: %d\n%s", code, out)
	}
	d := e.start("CACHESYNC_FAILPOINT=after-apply")
	e.waitStreaming(d)
	e.set("user:1", "user:email:a@x.io")
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'Ann')`)
	committed := e.currentLSN()
	d.waitExit(30 * time.Second)
	if !strings.Contains(d.log.String(), "failpoint after-apply") {
		t.Fatalf("daemon exited, but not at the failpoint:\n%s", d.log.String())
	}
	if e.exists("user:1") {
		t.Fatal("the failpoint fires after Redis applied the batch, yet user:1 exists")
	}
	if got := e.confirmedLSN(); got >= committed {
		t.Fatalf("slot confirmed %s, past the commit at %s, before the daemon confirmed anything", got, committed)
	}
	// A reader refills the key with what it read before the commit. Only a
	// redelivery of the unconfirmed transaction can remove it now.
	e.set("user:1", "user:email:a@x.io")
	d2 := e.start()
	e.gone("user:1", "user:email:a@x.io")
	e.caughtUp(d2, 30*time.Second)
}
