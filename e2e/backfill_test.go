package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/writer"
)

// backfillProducts inserts products 1..n before the slot exists (so that
// only a backfill can load them): every third one unpublished, which the
// rule's `when` filters out.
func (e *env) backfillProducts(n int) {
	e.t.Helper()
	e.exec(`INSERT INTO products SELECT g, 'p' || g, g * 1.5, g % 3 <> 0, 'd' || g FROM generate_series(1, $1::int) g`, n)
}

// backfilledProduct is what the product rule writes for product id of
// backfillProducts, and whether it writes anything.
func backfilledProduct(id int) (map[string]any, bool) {
	return productJSON(id, fmt.Sprintf("p%d", id), fmt.Sprintf("%.2f", float64(id)*1.5), id%3 != 0, fmt.Sprintf("d%d", id)), id%3 != 0
}

// streamed starts the daemon and waits until the cache holds an applied
// position: a backfill's requirement.
func (e *env) streamed() *daemon {
	e.t.Helper()
	d := e.start()
	e.waitStreaming(d)
	e.exec(`INSERT INTO unrelated VALUES (1, 'x')`)
	e.caughtUp(d, 30*time.Second)
	testenv.Eventually(e.t, 30*time.Second, "applied position in Redis", func() (bool, string) {
		n, err := e.rdb.Exists(e.ctx, writer.AppliedKey(e.slot)).Result()
		return n == 1, fmt.Sprint(n, err)
	})
	return d
}

// checkProducts checks every key of products 1..n against its row: the
// rule's value, or no key for a filtered-out row (or ids outside keep).
func (e *env) checkProducts(n int, keep func(id int) bool) {
	e.t.Helper()
	bad := 0
	for id := 1; id <= n; id++ {
		key := fmt.Sprintf("product:%d", id)
		want, ok := backfilledProduct(id)
		raw, err := e.rdb.Get(e.ctx, key).Result()
		switch {
		case !ok || !keep(id):
			if !errors.Is(err, redis.Nil) {
				e.t.Errorf("%s = %q, want no key (filtered out)", key, raw)
				bad++
			}
		case err != nil:
			e.t.Errorf("%s: %v, want the row's value", key, err)
			bad++
		default:
			var got map[string]any
			if json.Unmarshal([]byte(raw), &got) != nil || !reflect.DeepEqual(got, want) {
				e.t.Errorf("%s = %s, want %v", key, raw, want)
				bad++
			}
		}
		if bad > 5 {
			e.t.FailNow()
		}
	}
}

// TestBackfillOnDemand: `cachesync backfill` beside a running daemon loads
// every row of the refresh rule's table: each key equals the rule's value
// for its row, a filtered-out row has no key (a stale one is deleted), and
// the stream's later changes still win. --where loads only its rows.
func TestBackfillOnDemand(t *testing.T) {
	e := setup(t, schema, rules)
	e.backfillProducts(250)
	d := e.streamed()
	e.set("product:3") // filtered out: the backfill deletes it

	out, code := e.cli("backfill", "--rule", "product", "--chunk-rows", "40")
	if code != 0 || !strings.Contains(out, `backfilled rule "product": 250 rows (read 250)`) {
		t.Fatalf("backfill: exit %d\n%s", code, out)
	}
	e.checkProducts(250, func(int) bool { return true })
	if ttl := e.rdb.PTTL(e.ctx, "product:1").Val(); ttl < 54*time.Minute || ttl > 66*time.Minute {
		t.Errorf("product:1 TTL %v, want 1h ± 5m", ttl)
	}
	// The stream goes on over the backfilled keys.
	e.exec(`UPDATE products SET name = 'lamp' WHERE id = 1`)
	e.waitValue("product:1", productJSON(1, "lamp", "1.50", true, "d1"))
	e.exec(`UPDATE products SET name = 'p1' WHERE id = 1`)
	e.waitValue("product:1", productJSON(1, "p1", "1.50", true, "d1"))

	// A predicate: only its rows, after a TRUNCATE-like emptying.
	if err := e.rdb.FlushDB(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO unrelated VALUES (2, 'x')`) // the position again
	e.caughtUp(d, 30*time.Second)
	testenv.Eventually(t, 60*time.Second, "applied position back in Redis", func() (bool, string) {
		n, err := e.rdb.Exists(e.ctx, writer.AppliedKey(e.slot)).Result()
		return n == 1, fmt.Sprint(n, err)
	})
	out, code = e.cli("backfill", "--rule", "product", "--where", "id > 200 OR name = 'p7'")
	if code != 0 || !strings.Contains(out, `backfilled rule "product": 51 rows`) {
		t.Fatalf("backfill --where: exit %d\n%s", code, out)
	}
	e.checkProducts(250, func(id int) bool { return id > 200 || id == 7 })
	var cp writer.Checkpoint
	raw, _ := e.rdb.Get(e.ctx, writer.BackfillKey("product")).Bytes()
	if err := json.Unmarshal(raw, &cp); err != nil || cp.Finished.IsZero() || cp.Rows != 51 || cp.Where == "" {
		t.Errorf("checkpoint after the run: %s (%v)", raw, err)
	}
}

// TestBackfillResumesAfterKill: a backfill killed (-9) after its first
// chunk's checkpoint resumes from it: the second run reads only the rows
// after it, and every key ends right.
func TestBackfillResumesAfterKill(t *testing.T) {
	e := setup(t, schema, rules)
	e.backfillProducts(100)
	e.streamed()
	out, code := e.cliEnv([]string{"CACHESYNC_FAILPOINT=after-backfill-checkpoint"}, "backfill", "--rule", "product", "--chunk-rows", "15")
	if code == 0 || !strings.Contains(out, "failpoint after-backfill-checkpoint: killing the process") {
		t.Fatalf("backfill with the failpoint: exit %d\n%s", code, out)
	}
	out, code = e.cli("backfill", "--rule", "product", "--chunk-rows", "15")
	if code != 0 || !strings.Contains(out, `backfilled rule "product": 100 rows (read 85, resumed from the checkpoint at row 15)`) {
		t.Fatalf("second backfill: exit %d, want 85 rows read after the checkpoint\n%s", code, out)
	}
	e.checkProducts(100, func(int) bool { return true })
	// --restart starts from the first row.
	out, code = e.cli("backfill", "--rule", "product", "--restart")
	if code != 0 || !strings.Contains(out, `100 rows (read 100)`) {
		t.Fatalf("backfill --restart: exit %d\n%s", code, out)
	}
}

const backfillKeysSchema = `
CREATE TABLE stock (shop int, sku text COLLATE "en-x-icu", qty int, PRIMARY KEY (shop, sku));
CREATE TABLE tokens (id uuid PRIMARY KEY, owner text);
CREATE TABLE unrelated (id bigint PRIMARY KEY, v text);
INSERT INTO stock SELECT s, k, s * 10 + length(k) FROM generate_series(1, 5) s, unnest(ARRAY['a', 'B', 'c', 'D', 'a b', 'é']) k;
INSERT INTO tokens SELECT md5(g::text)::uuid, 'owner' || g FROM generate_series(1, 23) g;
`

const backfillKeysRules = `
rule "stock" {
  table = "public.stock"
  refresh {
    key   = "stock:${row.shop}:${row.sku}"
    value = "${row.qty}"
    ttl   = "1h"
  }
}
rule "token" {
  table = "public.tokens"
  refresh {
    key   = "token:${row.id}"
    value = row.owner
    ttl   = "1h"
  }
}
rule "ping" {
  table = "public.unrelated"
  invalidate {
    keys = ["unrelated:${row.id}"]
  }
}
`

// TestBackfillCompositeAndUUIDKeys: a composite primary key (int, text in
// a non-C collation) and a uuid key are read completely, in small chunks.
func TestBackfillCompositeAndUUIDKeys(t *testing.T) {
	e := setup(t, backfillKeysSchema, backfillKeysRules)
	e.streamed()
	for _, c := range []struct {
		rule string
		rows int
	}{{"stock", 30}, {"token", 23}} {
		out, code := e.cli("backfill", "--rule", c.rule, "--chunk-rows", "4")
		if code != 0 || !strings.Contains(out, fmt.Sprintf(`backfilled rule %q: %d rows`, c.rule, c.rows)) {
			t.Fatalf("backfill %s: exit %d\n%s", c.rule, code, out)
		}
	}
	for s := 1; s <= 5; s++ {
		for _, k := range []string{"a", "B", "c", "D", "a b", "é"} {
			key := fmt.Sprintf("stock:%d:%s", s, k)
			if v, err := e.rdb.Get(e.ctx, key).Result(); err != nil || v != fmt.Sprint(s*10+utf8.RuneCountInString(k)) {
				t.Errorf("%s = %q, %v; want %d", key, v, err, s*10+utf8.RuneCountInString(k))
			}
		}
	}
	rows, err := e.db.Query(e.ctx, `SELECT id::text, owner FROM tokens`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, owner string
		if err := rows.Scan(&id, &owner); err != nil {
			t.Fatal(err)
		}
		if v, err := e.rdb.Get(e.ctx, "token:"+id).Result(); err != nil || v != owner {
			t.Errorf("token:%s = %q, %v; want %q", id, v, err, owner)
		}
	}
	// Not a refresh rule, an unknown one: refused as usage errors.
	out, code := e.cli("backfill", "--rule", "ping")
	if code != 2 || !strings.Contains(out, `rule "ping" is not a refresh rule`) {
		t.Errorf("backfill of an invalidate rule: exit %d\n%s", code, out)
	}
	out, code = e.cli("backfill", "--rule", "stok")
	if code != 2 || !strings.Contains(out, `no rule "stok" (did you mean stock?); the refresh rules are stock, token`) {
		t.Errorf("backfill of an unknown rule: exit %d\n%s", code, out)
	}
}

// TestBackfillRefusals: a table without a primary key is refused with the
// fix; so is a cache without an applied position.
func TestBackfillRefusals(t *testing.T) {
	e := setup(t, `CREATE TABLE notes (body text); CREATE TABLE tags (id int PRIMARY KEY, name text);`, `
rule "note" {
  table = "public.notes"
  refresh {
    key   = "note:${row.body}"
    value = row.body
    ttl   = "1h"
  }
}
rule "tag" {
  table = "public.tags"
  refresh {
    key   = "tag-name:${row.id}"
    value = row.name
    ttl   = "1h"
  }
}
`)
	out, code := e.cli("backfill", "--rule", "note")
	if code != 1 || !strings.Contains(out, "table public.notes: no primary key") || !strings.Contains(out, `ALTER TABLE public.notes ADD PRIMARY KEY`) {
		t.Errorf("backfill of a table without a primary key: exit %d\n%s", code, out)
	}
	out, code = e.cli("backfill", "--rule", "tag")
	if code != 1 || !strings.Contains(out, "run `cachesync setup` or `cachesync run` first") {
		t.Errorf("backfill before any run: exit %d\n%s", code, out)
	}
}

// TestBackfillCtrlC: an interrupt stops the backfill after the current
// chunk, with exit status 1 and the checkpoint kept; the next run resumes
// from it.
func TestBackfillCtrlC(t *testing.T) {
	e := setup(t, schema, rules)
	e.backfillProducts(100)
	e.streamed()
	cmd := exec.Command(binary, "backfill", "--rule", "product", "--chunk-rows", "10", "--rate", "20")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+e.dbURL, e.redisEnv, "CACHESYNC_CONFIG="+e.rules)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck // after Wait, a no-op
	var cp writer.Checkpoint
	testenv.Eventually(t, 30*time.Second, "a first checkpoint", func() (bool, string) {
		raw, _ := e.rdb.Get(e.ctx, writer.BackfillKey("product")).Bytes()
		return json.Unmarshal(raw, &cp) == nil && cp.Rows > 0, string(raw)
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 || !strings.Contains(out.String(), "stopping after the current chunk") ||
		!strings.Contains(out.String(), "run it again to resume") {
		t.Fatalf("backfill interrupted: %v\n%s", err, out.String())
	}
	raw, _ := e.rdb.Get(e.ctx, writer.BackfillKey("product")).Bytes()
	if err := json.Unmarshal(raw, &cp); err != nil || cp.Rows == 0 || cp.Rows == 100 || !cp.Finished.IsZero() {
		t.Fatalf("checkpoint after the interrupt: %s", raw)
	}
	done := cp.Rows
	got, code := e.cli("backfill", "--rule", "product", "--chunk-rows", "10")
	if code != 0 || !strings.Contains(got, fmt.Sprintf(`100 rows (read %d, resumed from the checkpoint at row %d)`, 100-done, done)) {
		t.Fatalf("backfill after the interrupt: exit %d, want a resume from row %d\n%s", code, done, got)
	}
	e.checkProducts(100, func(int) bool { return true })
}
