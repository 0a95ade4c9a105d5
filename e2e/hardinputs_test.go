package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TRUNCATE of a partitioned root, of one partition (not published under
// publish_via_partition_root: a trigger announces it) and with CASCADE.
func TestTruncateRootPartitionCascade(t *testing.T) {
	e := setup(t, `
CREATE TABLE events (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
CREATE TABLE accounts (id bigint PRIMARY KEY);
CREATE TABLE sessions (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts);
`, `
rule "event" {
  table = "public.events"
  invalidate { keys = ["event:${row.id}"] }
}
rule "account" {
  table = "public.accounts"
  invalidate { keys = ["account:${row.id}"] }
}
rule "session" {
  table = "public.sessions"
  invalidate { keys = ["session:${row.id}"] }
}
`)
	d := e.start()
	e.waitStreaming(d)

	// Changes of a partition arrive under the root's name.
	e.set("event:1", "event:2")
	e.exec(`INSERT INTO events VALUES (1, 'eu'), (2, 'us')`)
	e.gone("event:1", "event:2")

	e.set("event:1", "event:2", "event:77", "account:5")
	e.exec(`TRUNCATE events_eu`)
	e.gone("event:1", "event:2", "event:77")
	e.present("account:5")

	e.exec(`INSERT INTO events VALUES (3, 'us')`)
	e.caughtUp(d, 30*time.Second)
	e.set("event:3", "event:88")
	e.exec(`TRUNCATE events`)
	e.gone("event:3", "event:88")

	e.exec(`INSERT INTO accounts VALUES (1); INSERT INTO sessions VALUES (1, 1)`)
	e.caughtUp(d, 30*time.Second)
	e.set("account:1", "session:1", "event:4")
	e.exec(`TRUNCATE accounts CASCADE`)
	e.gone("account:1", "session:1")
	e.present("event:4")
}

// Columns added, dropped and renamed while streaming: the relation is
// replaced; a rule whose column disappeared flushes its key space (and says
// so) instead of missing invalidations.
func TestAlterTableWhileStreaming(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'Ann'), (2, 'b@x.io', 1, 'Bo')`)
	e.caughtUp(d, 30*time.Second)

	e.exec(`ALTER TABLE users ADD COLUMN nickname text`)
	e.set("user:1", "user:2")
	e.exec(`UPDATE users SET nickname = 'annie' WHERE id = 1`)
	e.gone("user:1")
	e.present("user:2")

	e.exec(`ALTER TABLE users DROP COLUMN name`)
	e.set("user:1")
	e.exec(`UPDATE users SET nickname = 'an' WHERE id = 1`)
	e.gone("user:1")
	e.present("user:2")

	// The rule reads email, which is now called mail: its keys cannot be
	// computed, so its whole key space goes.
	e.exec(`ALTER TABLE users RENAME COLUMN email TO mail`)
	e.set("user:1", "user:2", "user:email:b@x.io")
	e.exec(`UPDATE users SET nickname = 'a' WHERE id = 1`)
	e.gone("user:1", "user:2", "user:email:b@x.io")
	testenv.Eventually(t, 10*time.Second, "eval_error flush logged", func() (bool, string) {
		return strings.Contains(d.log.String(), "flush(user: eval_error)"), d.log.String()
	})
	if d.exited() {
		t.Fatalf("daemon exited\n%s", d.log.String())
	}
}

// A 1M-row transaction: the key set is capped, the rule's key space flushed,
// and the daemon's memory stays bounded (built without -race, whose shadow
// memory would measure the detector).
func TestMillionRowTransactionBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("1M rows: skipped with -short")
	}
	e := setup(t, schema, rules)
	d := e.startBinary(plainBinary(t))
	e.waitStreaming(d)
	e.set("user:999999999", "product:1")
	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', g % 100, 'n' FROM generate_series(1, 1000000) g`)
	var peak int64
	testenv.Eventually(t, 5*time.Minute, "the 1M-row transaction applied", func() (bool, string) {
		if kb := peakRSSKiB(d.cmd.Process.Pid); kb > peak {
			peak = kb
		}
		return !e.exists("user:999999999"), fmt.Sprintf("peak RSS %d KiB", peak)
	})
	e.caughtUp(d, 2*time.Minute)
	if kb := peakRSSKiB(d.cmd.Process.Pid); kb > peak {
		peak = kb
	}
	e.present("product:1")
	t.Logf("peak RSS of the daemon over a 1M-row transaction: %.1f MiB", float64(peak)/1024)
	if peak > 200*1024 {
		t.Errorf("peak RSS %.1f MiB, want under 200 MiB", float64(peak)/1024)
	}
	if !strings.Contains(d.log.String(), "flush(user: key_cap)") {
		t.Errorf("no key_cap flush logged")
	}
}

// peakRSSKiB reads a process's peak resident set size (VmHWM).
func peakRSSKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// Quoted names that hold dots and capitals, for the schema and the table, a
// partitioned one included: setup quotes each part, and changes, partition
// truncates and the publication all find them.
func TestQuotedNamesWithDots(t *testing.T) {
	e := setup(t, `
CREATE SCHEMA "my.app";
CREATE TABLE "my.app"."Users.v2" (id bigint PRIMARY KEY, name text);
CREATE TABLE "my.app"."Events" (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE "my.app"."Events.eu" PARTITION OF "my.app"."Events" FOR VALUES IN ('eu');
`, `
rule "user" {
  table = "\"my.app\".\"Users.v2\""
  invalidate { keys = ["user:${row.id}"] }
}
rule "event" {
  table = "\"my.app\".\"Events\""
  invalidate { keys = ["event:${row.id}"] }
}
`)
	if out, code := e.cli("setup"); code != 0 {
		t.Fatalf("setup: exit %d\n%s", code, out)
	}
	if got := strings.Join(e.publicationTables(), ","); got != "my.app.Events,my.app.Users.v2" {
		t.Errorf("publication tables %s", got)
	}
	d := e.start()
	e.waitStreaming(d)
	e.set("user:1", "event:1", "event:2")
	e.exec(`INSERT INTO "my.app"."Users.v2" VALUES (1, 'a')`)
	e.exec(`INSERT INTO "my.app"."Events" VALUES (1, 'eu')`)
	e.gone("user:1", "event:1")
	e.present("event:2")
	e.exec(`TRUNCATE "my.app"."Events.eu"`)
	e.gone("event:2")
}

// The partition truncate triggers follow the rules: installed with the rule,
// removed with it (once no publication lists the root) and by teardown.
func TestPartitionTriggersFollowTheRules(t *testing.T) {
	const partitioned = `
rule "event" {
  table = "public.events"
  invalidate { keys = ["event:${row.id}"] }
}
`
	e := setup(t, schema+`
CREATE TABLE events (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
`, rules+partitioned)
	count := func() (triggers, functions int) {
		t.Helper()
		err := e.db.QueryRow(e.ctx, `SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'cachesync_truncate'),
		       (SELECT count(*) FROM pg_proc WHERE proname = 'cachesync_truncate_notify')`).Scan(&triggers, &functions)
		if err != nil {
			t.Fatal(err)
		}
		return triggers, functions
	}
	setupWith := func(body string) string {
		t.Helper()
		src := mustRead(t, e.rules)
		if err := os.WriteFile(e.rules, []byte(src[:strings.Index(src, `rule "`)]+body), 0o644); err != nil {
			t.Fatal(err)
		}
		out, code := e.cli("setup")
		if code != 0 {
			t.Fatalf("setup: exit %d\n%s", code, out)
		}
		return out
	}
	setupWith(rules + partitioned)
	if tr, fn := count(); tr != 2 || fn != 1 {
		t.Fatalf("with the rule: %d triggers, %d functions; want 2, 1", tr, fn)
	}
	setupWith(rules)
	if tr, fn := count(); tr != 0 || fn != 0 {
		t.Errorf("without the rule: %d triggers, %d functions left", tr, fn)
	}
	setupWith(rules + partitioned)
	if tr, _ := count(); tr != 2 {
		t.Fatalf("with the rule again: %d triggers", tr)
	}
	out, code := e.cli("teardown", "--yes")
	if code != 0 || !strings.Contains(out, "partition truncate triggers: 2 dropped") {
		t.Errorf("teardown: exit %d\n%s", code, out)
	}
	if tr, fn := count(); tr != 0 || fn != 0 {
		t.Errorf("after teardown: %d triggers, %d functions left", tr, fn)
	}
}
