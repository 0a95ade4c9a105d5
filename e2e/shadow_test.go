package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

const shadowSchema = `
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL);
CREATE PUBLICATION cachesync FOR TABLE users, products;
`

const shadowRules = `
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
rule "product" {
  table = "public.products"
  invalidate { keys = ["product:${row.id}"] }
}
`

// TestShadowReportsWhatTheApplicationMisses: an application caches users
// and products and, on its writes, deletes the users' keys by hand but
// forgets the products'. run --shadow counts the products' keys as missed
// and none of the users', logs the missed keys, and touches nothing: the
// keys it reports are still there, and no slot of the rules' name exists.
func TestShadowReportsWhatTheApplicationMisses(t *testing.T) {
	e := setup(t, shadowSchema, shadowRules)
	// A class already set stays set: the shadow merges, not replaces.
	if err := e.rdb.ConfigSet(e.ctx, "notify-keyspace-events", "Elz").Err(); err != nil {
		t.Fatal(err)
	}
	d := e.startArgs([]string{"--shadow", "--shadow-window", "1s"})
	testenv.Eventually(t, 60*time.Second, "shadow streaming", func() (bool, string) {
		if d.exited() {
			t.Fatalf("shadow exited: %v\n%s", d.err, d.log.String())
		}
		return strings.Contains(d.log.String(), "shadow mode: nothing is applied") && strings.Contains(d.log.String(), `"streaming"`), ""
	})
	flags, err := e.rdb.ConfigGet(e.ctx, "notify-keyspace-events").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range "ElzKg$xe" {
		if !strings.ContainsRune(flags["notify-keyspace-events"], c) {
			t.Errorf("notify-keyspace-events = %q, lacks %q", flags["notify-keyspace-events"], c)
		}
	}

	// The application: rows in, cached, then written again.
	const n = 5
	for i := 1; i <= n; i++ {
		e.exec(`INSERT INTO users VALUES ($1, 'u')`, i)
		e.exec(`INSERT INTO products VALUES ($1, 'p')`, i)
	}
	// Let the inserts' effects (keys not cached yet: nothing tracked) pass.
	testenv.Eventually(t, 30*time.Second, "inserts seen", func() (bool, string) {
		return d.scrape().value("cachesync_transactions_received_total") >= 2*n, ""
	})
	// The fills' notifications are timed when received: wait until they
	// are delivered (to a subscriber of the test's own, on the same
	// channels as the shadow's) so that none arrives after the commits
	// below and passes for an invalidation.
	ps := e.rdb.PSubscribe(e.ctx, "__keyspace@0__:product:*")
	defer ps.Close()
	if _, err := ps.Receive(e.ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		e.set(fmt.Sprintf("user:%d", i), fmt.Sprintf("product:%d", i))
	}
	for i := 0; i < n; i++ {
		if _, err := ps.ReceiveTimeout(e.ctx, 10*time.Second); err != nil {
			t.Fatalf("the fills' notifications: %v", err)
		}
	}
	for i := 1; i <= n; i++ {
		e.exec(`UPDATE users SET name = 'u2' WHERE id = $1`, i)
		if err := e.rdb.Del(e.ctx, fmt.Sprintf("user:%d", i)).Err(); err != nil { // by hand
			t.Fatal(err)
		}
		e.exec(`UPDATE products SET name = 'p2' WHERE id = $1`, i) // forgotten
	}

	testenv.Eventually(t, 30*time.Second, "product keys missed", func() (bool, string) {
		s := d.scrape()
		got := s.value("cachesync_shadow_missed_total", "rule", "product")
		return got == n, fmt.Sprintf("missed{product} = %v", got)
	})
	s := d.scrape()
	if got := s.value("cachesync_shadow_checked_total", "rule", "product"); got != n {
		t.Errorf("checked{product} = %v, want %d", got, n)
	}
	if got := s.value("cachesync_shadow_missed_total", "rule", "user"); got != 0 {
		t.Errorf("missed{user} = %v, want 0: the application deleted every user key", got)
	}
	if _, ok := s["cachesync_shadow_missed_total"]; !ok {
		t.Error("no cachesync_shadow_missed_total series")
	}
	log := d.log.String()
	for i := 1; i <= n; i++ {
		if !strings.Contains(log, fmt.Sprintf(`"key":"product:%d"`, i)) {
			t.Errorf("no log line for the missed key product:%d", i)
		}
	}
	if strings.Contains(log, `"key":"user:`) {
		t.Error("a user key logged as missed")
	}
	if !strings.Contains(log, `"commit_time"`) || !strings.Contains(log, `"age"`) {
		t.Error("the missed-key lines lack commit_time or age")
	}

	// Nothing applied: the reported keys are still there; the rules'
	// slot was never created, only the shadow's temporary one.
	for i := 1; i <= n; i++ {
		e.present(fmt.Sprintf("product:%d", i))
	}
	if got := e.rdb.Keys(e.ctx, "*").Val(); len(got) != n {
		t.Errorf("Redis holds %v: the shadow wrote or deleted something", got)
	}
	var slots int
	if err := e.db.QueryRow(e.ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&slots); err != nil || slots != 0 {
		t.Errorf("the rules' slot exists (%d, err %v): the shadow must stream from its own", slots, err)
	}
	if code := d.stop(); code != 0 {
		t.Errorf("shadow stopped with exit %d, want 0", code)
	}
}

// TestShadowWithoutConfigSaysWhatToSet: a Redis user that may not run
// CONFIG gets the redis.conf line to add, and exit 1; so does a missing
// publication, with how to create it without setup's flush.
func TestShadowWithoutConfigSaysWhatToSet(t *testing.T) {
	e := setup(t, shadowSchema, shadowRules)
	if err := e.rdb.Do(e.ctx, "ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "&*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	out, code := e.cliEnv([]string{"REDIS_URL=redis://noconfig:pw@" + e.redis.Addr() + "/0"}, "run", "--shadow")
	if code != 1 {
		t.Fatalf("run --shadow without CONFIG: exit %d, want 1\n%s", code, out)
	}
	if !strings.Contains(out, "notify-keyspace-events Kg$xe") || !strings.Contains(out, "redis.conf") {
		t.Errorf("the refusal does not say what to put in redis.conf:\n%s", out)
	}
	// Without the publication: how to create it without a flush.
	e.exec(`DROP PUBLICATION cachesync`)
	out, code = e.cli("run", "--shadow")
	if code != 1 || !strings.Contains(out, "or create it by hand") {
		t.Errorf("run --shadow without the publication: exit %d, want 1 saying how to create it\n%s", code, out)
	}
}
