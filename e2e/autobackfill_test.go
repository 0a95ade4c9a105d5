package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// backfillRule is the example's product rule with refresh { backfill = true }.
const backfillRule = `
rule "product" {
  table = "public.products"
  when  = row.published
  refresh {
    key      = "product:${row.id}"
    value    = jsonencode(row)
    ttl      = "1h"
    backfill = true
  }
}
`

// autoBackfillRows is more than two chunks (backfill.DefaultChunkRows).
const autoBackfillRows = 2500

// insertProducts inserts products 1..n, every fifth one unpublished.
func (e *env) insertProducts(n int, name string) {
	e.t.Helper()
	e.exec(`INSERT INTO products SELECT g, $1 || g, g * 1.5, g % 5 <> 0, 'd' || g FROM generate_series(1, $2) g`, name, n)
}

// backfilled waits until Redis holds, for every row of products, what
// value makes of it (the key absent for a nil value), and reports how many
// keys it checked.
func (e *env) backfilled(value func(id int, name, price string, published bool, description string) map[string]any) int {
	e.t.Helper()
	var checked int
	testenv.Eventually(e.t, 90*time.Second, "every product's key holds its row", func() (bool, string) {
		rows, err := e.db.Query(e.ctx, `SELECT id, name, price::text, published, description FROM products ORDER BY id`)
		if err != nil {
			e.t.Fatal(err)
		}
		type row struct {
			key  string
			want map[string]any
		}
		var want []row
		for rows.Next() {
			var (
				id                 int
				name, price, descr string
				published          bool
			)
			if err := rows.Scan(&id, &name, &price, &published, &descr); err != nil {
				e.t.Fatal(err)
			}
			want = append(want, row{fmt.Sprintf("product:%d", id), value(id, name, price, published, descr)})
		}
		if err := rows.Err(); err != nil {
			e.t.Fatal(err)
		}
		if len(want) == 0 {
			checked = 0
			return true, ""
		}
		keys := make([]string, len(want))
		for i, r := range want {
			keys[i] = r.key
		}
		got, err := e.rdb.MGet(e.ctx, keys...).Result()
		if err != nil {
			return false, err.Error()
		}
		bad := 0
		first := ""
		for i, r := range want {
			ok := got[i] == nil && r.want == nil
			if s, isString := got[i].(string); isString && r.want != nil {
				var v map[string]any
				ok = json.Unmarshal([]byte(s), &v) == nil && reflect.DeepEqual(v, r.want)
			}
			if !ok {
				if bad == 0 {
					first = fmt.Sprintf("%s = %v, want %v", r.key, got[i], r.want)
				}
				bad++
			}
		}
		checked = len(want)
		return bad == 0, fmt.Sprintf("%d of %d keys differ, first %s", bad, len(want), first)
	})
	return checked
}

// productValue is the product rule's value: the row's JSON when published.
func productValue(id int, name, price string, published bool, description string) map[string]any {
	if !published {
		return nil
	}
	return productJSON(id, name, price, published, description)
}

// backfillStatus is a rule's backfill in `cachesync status --json`.
type backfillStatus struct {
	Rule      string     `json:"rule"`
	Automatic bool       `json:"automatic"`
	State     string     `json:"state"`
	Rows      int64      `json:"rows"`
	Total     int64      `json:"total"`
	Started   *time.Time `json:"started"`
	Finished  *time.Time `json:"finished"`
	Error     string     `json:"error"`
}

// ruleBackfill returns rule's backfill as status --json shows it.
func (e *env) ruleBackfill(rule string) backfillStatus {
	e.t.Helper()
	out, code := e.cli("status", "--json")
	if code != 0 {
		e.t.Fatalf("status --json: exit %d\n%s", code, out)
	}
	var st struct {
		Cache struct {
			Backfills []backfillStatus `json:"backfills"`
		} `json:"cache"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, b := range st.Cache.Backfills {
		if b.Rule == rule {
			return b
		}
	}
	e.t.Fatalf("status --json shows no backfill of rule %s:\n%s", rule, out)
	return backfillStatus{}
}

// waitBackfillFinished waits until status shows the product rule's backfill
// finished after since, and returns it.
func (e *env) waitBackfillFinished(since time.Time) backfillStatus {
	e.t.Helper()
	var b backfillStatus
	testenv.Eventually(e.t, 90*time.Second, "the backfill finished", func() (bool, string) {
		b = e.ruleBackfill("product")
		return b.State == "finished" && b.Finished != nil && b.Finished.After(since), fmt.Sprintf("%+v", b)
	})
	return b
}

// TestAutoBackfill: a backfill = true rule is filled at the first start
// (the slot is created: every key space flushed), its progress shown by
// status and the metrics; a TRUNCATE empties it and the backfill that
// follows loads nothing; a rules change that flushes the rule fills it
// again with the new value.
func TestAutoBackfill(t *testing.T) {
	e := setup(t, schema, backfillRule)
	e.insertProducts(autoBackfillRows, "p")
	start := time.Now()
	d := e.start()
	e.waitStreaming(d)
	// Nothing changes: only the backfill can fill the keys.
	if n := e.backfilled(productValue); n != autoBackfillRows {
		t.Fatalf("checked %d rows, want %d", n, autoBackfillRows)
	}
	b := e.waitBackfillFinished(start)
	if !b.Automatic || b.Rows != autoBackfillRows || b.Error != "" || b.Started == nil || b.Started.Before(start.Add(-time.Second)) {
		t.Errorf("status after the first fill: %+v", b)
	}
	if out, code := e.cli("status"); code != 0 || !strings.Contains(out, "backfill product") || !strings.Contains(out, fmt.Sprintf("finished: %d rows", autoBackfillRows)) {
		t.Errorf("status: exit %d, want a line saying the backfill of product finished with %d rows:\n%s", code, autoBackfillRows, out)
	}
	m := d.scrape()
	if got := m.value("cachesync_backfill_rows_total", "rule", "product"); got < autoBackfillRows {
		t.Errorf("cachesync_backfill_rows_total{rule=product} = %v, want at least %d", got, autoBackfillRows)
	}
	if got := m.value("cachesync_backfill_running", "rule", "product"); got != 0 {
		t.Errorf("cachesync_backfill_running{rule=product} = %v after the fill, want 0", got)
	}
	if got := m.value("cachesync_backfill_remaining_rows", "rule", "product"); got != 0 {
		t.Errorf("cachesync_backfill_remaining_rows{rule=product} = %v after the fill, want 0", got)
	}
	if got := m.value("cachesync_backfill_duration_seconds", "rule", "product"); got <= 0 {
		t.Errorf("cachesync_backfill_duration_seconds{rule=product} = %v, want > 0", got)
	}

	// TRUNCATE: the keys go, and the backfill after the flush loads none.
	truncated := time.Now()
	e.exec(`TRUNCATE products`)
	e.gone("product:1", fmt.Sprintf("product:%d", autoBackfillRows))
	b = e.waitBackfillFinished(truncated)
	if b.Rows != 0 || b.Error != "" {
		t.Errorf("status after TRUNCATE: %+v, want a finished backfill of 0 rows", b)
	}
	if keys := e.keys("product:*"); len(keys) != 0 {
		t.Errorf("keys after TRUNCATE and its backfill: %v", keys[:min(len(keys), 5)])
	}

	// A rules change that flushes the rule: the rows, written by the
	// stream with the old value, are loaded again with the new one.
	e.insertProducts(100, "q")
	e.backfilled(productValue)
	if code := d.stop(); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, d.log.String())
	}
	if err := os.WriteFile(e.rules, []byte(strings.Replace(mustRead(t, e.rules), "jsonencode(row)", `jsonencode({ id = row.id, name = row.name })`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	d = e.start()
	e.waitStreaming(d)
	e.backfilled(func(id int, name, _ string, published bool, _ string) map[string]any {
		if !published {
			return nil
		}
		return map[string]any{"id": float64(id), "name": name}
	})
	if b := e.waitBackfillFinished(changed); b.Rows != 100 {
		t.Errorf("status after the rules change: %+v, want 100 rows", b)
	}
	if l := logLines(d.log.String(), "rules added or changed"); len(l) == 0 {
		t.Errorf("the rules change flushed nothing:\n%s", d.log.String())
	}
}

// TestAutoBackfillAfterSlotLoss: rows changed while the slot is gone are
// never streamed; the flush of the new slot and the backfill after it
// bring every key to the current row.
func TestAutoBackfillAfterSlotLoss(t *testing.T) {
	e := setup(t, schema, backfillRule)
	e.insertProducts(autoBackfillRows, "p")
	d := e.start()
	e.waitStreaming(d)
	e.backfilled(productValue)
	if code := d.stop(); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, d.log.String())
	}
	testenv.Eventually(t, 30*time.Second, "drop the slot", func() (bool, string) {
		_, err := e.db.Exec(e.ctx, "SELECT pg_drop_replication_slot($1)", e.slot)
		return err == nil, fmt.Sprint(err)
	})
	// Never delivered to anyone: only the backfill can show them.
	e.exec(`UPDATE products SET name = 'lost' || id, published = NOT published WHERE id % 3 = 0`)
	e.exec(`DELETE FROM products WHERE id % 7 = 0`)
	lost := time.Now()
	d = e.start()
	e.waitStreaming(d)
	e.backfilled(productValue)
	e.waitBackfillFinished(lost)
	if len(logLines(d.log.String(), "SLOT LOST")) == 0 {
		t.Errorf("no SLOT LOST logged:\n%s", d.log.String())
	}
}

// TestAutoBackfillAfterRedisReset: Redis comes back from an older snapshot
// with on_redis_reset = flush: every key space is flushed, and the backfill
// refills it with the current rows.
func TestAutoBackfillAfterRedisReset(t *testing.T) {
	e := setup(t, schema, backfillRule+"redis {\n  on_redis_reset = \"flush\"\n}\n")
	e.insertProducts(autoBackfillRows, "p")
	d := e.start()
	e.waitStreaming(d)
	e.backfilled(productValue)
	e.waitBackfillFinished(time.Time{})
	if err := e.rdb.Save(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	e.exec(`UPDATE products SET name = 'new' || id WHERE id % 2 = 0`)
	e.backfilled(productValue)
	e.caughtUp(d, 30*time.Second)

	reset := time.Now()
	e.redis.Stop(t)
	e.redis.Start(t)
	testenv.Eventually(t, 30*time.Second, "the daemon flushes the restored cache", func() (bool, string) {
		d.alive("after the Redis reset")
		return strings.Contains(d.log.String(), "on_redis_reset = flush"), ""
	})
	e.backfilled(productValue)
	e.waitBackfillFinished(reset)
}

// itemRule backfills public.items (id, name).
const itemRule = `
rule "item" {
  table = "public.items"
  refresh {
    key      = "item:${row.id}"
    value    = row.name
    ttl      = "1h"
    backfill = true
  }
}
`

// TestAutoBackfillFailureRetried: a backfill that fails (the table lost
// its primary key, which run's preflight requires) is logged and retried
// with backoff while the stream goes on; once the table has a primary key
// again, the retry finishes it.
func TestAutoBackfillFailureRetried(t *testing.T) {
	e := setup(t, schema+`
CREATE TABLE items (id bigint PRIMARY KEY, name text);
ALTER TABLE items REPLICA IDENTITY FULL;
INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 50) g;
`, itemRule+`
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`)
	d := e.start()
	e.waitStreaming(d)
	testenv.Eventually(t, 60*time.Second, "the first backfill fills the keys", func() (bool, string) {
		d.alive("backfilling")
		v, err := e.rdb.Get(e.ctx, "item:50").Result()
		return err == nil && v == "i50", fmt.Sprint(v, err)
	})
	// The TRUNCATE's flush calls for a backfill, which cannot read the
	// table any more.
	e.exec(`ALTER TABLE items DROP CONSTRAINT items_pkey`)
	e.exec(`TRUNCATE items`)
	e.gone("item:50")
	testenv.Eventually(t, 30*time.Second, "the failed backfill logged", func() (bool, string) {
		d.alive("after the failed backfill")
		return len(logLines(d.log.String(), "backfill failed")) > 0, ""
	})
	if l := logLines(d.log.String(), "backfill failed")[0]; !strings.Contains(l, "no primary key") || !strings.Contains(l, "ADD PRIMARY KEY") || !strings.Contains(l, "retry_in") {
		t.Errorf("the failure does not name the missing primary key, its fix and the retry: %s", l)
	}
	if b := e.ruleBackfill("item"); b.State == "finished" || !strings.Contains(b.Error, "no primary key") {
		t.Errorf("status after the failure: %+v, want the error", b)
	}
	// The stream goes on.
	e.set("user:1")
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'A')`)
	e.gone("user:1")

	fixed := time.Now()
	e.exec(`ALTER TABLE items ADD PRIMARY KEY (id)`)
	testenv.Eventually(t, 60*time.Second, "the retried backfill finishes", func() (bool, string) {
		d.alive("retrying the backfill")
		b := e.ruleBackfill("item")
		return b.State == "finished" && b.Finished.After(fixed) && b.Error == "", fmt.Sprintf("%+v", b)
	})
	if n := len(logLines(d.log.String(), "backfill done")); n != 2 {
		t.Errorf("%d backfills done, want 2 (the first, and the retry after the TRUNCATE)", n)
	}
}

// TestAutoBackfillNeedsPrimaryKey: run refuses backfill = true on a table
// without a primary key, with the fix.
func TestAutoBackfillNeedsPrimaryKey(t *testing.T) {
	e := setup(t, schema+"CREATE TABLE items (id bigint NOT NULL, name text);\nALTER TABLE items REPLICA IDENTITY FULL;\n", itemRule)
	d := e.start()
	d.waitExit(60 * time.Second)
	log := d.log.String()
	if code := d.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(log, "backfill = true, but public.items has no primary key") || !strings.Contains(log, "ADD PRIMARY KEY") {
		t.Errorf("run: exit %d, want 1 and the missing primary key with its fix:\n%s", code, log)
	}
}

// TestAutoBackfillActiveOnly: only the active instance backfills; the
// passive one that takes over after it is killed finds the fill finished
// and does not run it again.
func TestAutoBackfillActiveOnly(t *testing.T) {
	e := setup(t, schema, backfillRule)
	e.insertProducts(autoBackfillRows, "p")
	active, passive := e.startTwo()
	e.backfilled(productValue)
	e.waitBackfillFinished(time.Time{})
	if l := logLines(passive.log.String(), `"message":"backfill`); len(l) > 0 {
		t.Errorf("the passive instance backfilled: %s", l[0])
	}
	if len(logLines(active.log.String(), "backfill done")) != 1 {
		t.Errorf("the active instance did not backfill once:\n%s", active.log.String())
	}
	active.kill()
	since := len(passive.log.String())
	testenv.Eventually(t, 60*time.Second, "the passive instance takes over", func() (bool, string) {
		passive.alive("taking over")
		return strings.Contains(passive.log.String()[since:], `"streaming"`), ""
	})
	// The runner checks at once when the session starts, and every second
	// while the change goes through the pipeline.
	e.exec(`UPDATE products SET name = 'after' WHERE id = 1`)
	e.backfilled(productValue)
	e.caughtUp(passive, 30*time.Second)
	if l := logLines(passive.log.String(), `"message":"backfill`); len(l) > 0 {
		t.Errorf("the new active instance backfilled a finished fill again: %s", l[0])
	}
}

// TestAutoBackfillResumesAfterKill: the daemon killed (-9) after the
// backfill's first checkpoint resumes it from there at the next start.
func TestAutoBackfillResumesAfterKill(t *testing.T) {
	e := setup(t, schema, backfillRule)
	e.insertProducts(autoBackfillRows, "p")
	d := e.start("CACHESYNC_FAILPOINT=after-backfill-checkpoint")
	d.waitExit(60 * time.Second)
	if b := e.ruleBackfill("product"); b.State != "running" || b.Rows == 0 || b.Rows >= autoBackfillRows {
		t.Fatalf("status after the kill: %+v, want an unfinished backfill with some rows done", b)
	}
	d = e.start()
	e.waitStreaming(d)
	e.backfilled(productValue)
	b := e.waitBackfillFinished(time.Time{})
	if b.Rows != autoBackfillRows {
		t.Errorf("status after the resumed backfill: %+v, want %d rows", b, autoBackfillRows)
	}
	if l := logLines(d.log.String(), "backfill resumes from its checkpoint"); len(l) != 1 {
		t.Errorf("the restarted daemon did not resume the backfill once:\n%s", d.log.String())
	}
}

// TestAutoBackfillFrozenFencedOff: the active instance freezes in the middle
// of a backfill; the passive one takes over on the lease and finishes it;
// thawed, the old one writes nothing more.
func TestAutoBackfillFrozenFencedOff(t *testing.T) {
	e, _ := setupPrivate(t, schema, backfillRule)
	e.insertProducts(autoBackfillRows, "p")
	wst := e.walSenderTimeout()
	a := e.start("CACHESYNC_DATA_DIR="+t.TempDir(), "CACHESYNC_FAILPOINT=stop:after-backfill-checkpoint")
	t.Cleanup(func() { _ = a.cmd.Process.Signal(syscall.SIGCONT) })
	testenv.Eventually(t, 60*time.Second, "the active instance stops itself after a backfill chunk", func() (bool, string) {
		return strings.Contains(a.log.String(), "failpoint after-backfill-checkpoint: stopping"), ""
	})
	b := e.start("CACHESYNC_DATA_DIR=" + t.TempDir())
	testenv.Eventually(t, wst+20*time.Second, "the passive instance takes over and finishes the backfill", func() (bool, string) {
		b.alive("passive instance")
		return len(logLines(b.log.String(), "backfill done")) == 1, ""
	})
	e.backfilled(productValue)
	// Rows the new active instance streams while the old one is frozen.
	e.exec(`UPDATE products SET name = 'after the takeover' WHERE id <= 1500`)
	e.backfilled(productValue)

	finished := e.waitBackfillFinished(time.Time{})

	woke := len(a.log.String())
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	a.awaitStandby(woke)
	e.exec(`UPDATE products SET price = 7 WHERE id = 2`)
	e.backfilled(productValue)
	e.fencedOff(a, b, woke, "thawed instance")
	// The thawed instance's next chunk would have written its checkpoint
	// over the finished one.
	if now := e.ruleBackfill("product"); !reflect.DeepEqual(now, finished) {
		t.Errorf("the backfill record changed after the thaw: %+v, was %+v", now, finished)
	}
	if l := logLines(a.log.String()[woke:], `"message":"backfill`); len(l) > 0 {
		t.Errorf("the thawed instance went on with the backfill: %s", l[0])
	}
}
