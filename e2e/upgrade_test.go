package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestRollingRulesUpgrade replaces the rules the way a rolling deploy does:
// an instance with new rules starts beside the active one, stands by, and
// takes over when the old one stops.
//
//   - The standby must not touch the publication: the active instance still
//     needs the table the new rules drop.
//   - On takeover, the key space of the rule the new file adds on an already
//     published table is flushed, since nobody invalidated its keys before;
//     unchanged rules' keys stay.
//   - A restart with the same rules flushes nothing: the rules in force are
//     recorded in Redis.
func TestRollingRulesUpgrade(t *testing.T) {
	e := setup(t, schema, rules)
	old := e.start()
	e.waitStreaming(old)

	// The new file drops the product rule (the last one) and adds one on
	// users.
	oldRules := mustRead(t, e.rules)
	newRules := oldRules[:strings.Index(oldRules, `rule "product" {`)] + `rule "member" {
  table = "public.users"
  invalidate { keys = ["member:${row.id}"] }
}
`
	newFile := filepath.Join(t.TempDir(), "rules.hcl")
	if err := os.WriteFile(newFile, []byte(newRules), 0o644); err != nil {
		t.Fatal(err)
	}
	next := e.start("CACHESYNC_CONFIG=" + newFile)
	testenv.Eventually(t, 60*time.Second, "the new instance to stand by", func() (bool, string) {
		next.alive("new instance")
		return strings.Contains(next.log.String(), "standing by as passive"), "not standing by yet"
	})

	// The old instance still gets the products: the standby left the
	// publication alone.
	if got := strings.Join(e.publicationTables(), ","); got != "public.orders,public.products,public.users" {
		t.Errorf("publication tables while the new instance stands by: %s", got)
	}
	e.exec(`INSERT INTO products VALUES (1, 'p', 1.50, true, 'd')`)
	testenv.Eventually(t, 30*time.Second, "the old instance to refresh product:1", func() (bool, string) {
		return e.exists("product:1"), "product:1 missing"
	})

	// The application cached under the new rule before it was in force.
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'A')`)
	e.caughtUp(old, 30*time.Second)
	e.set("member:1", "user:999")
	if code := old.stop(); code != 0 {
		t.Fatalf("old instance exited %d", code)
	}
	e.waitStreaming(next)
	e.gone("member:1")
	e.present("user:999")
	if !strings.Contains(next.log.String(), `"rules":["member"]`) {
		t.Errorf("the takeover did not log the changed rules:\n%s", next.log.String())
	}
	if got := strings.Join(e.publicationTables(), ","); got != "public.orders,public.users" {
		t.Errorf("publication tables after the takeover: %s", got)
	}
	e.set("member:2")
	e.exec(`INSERT INTO users VALUES (2, 'b@x.io', 1, 'B')`)
	e.gone("member:2")

	// Same rules again: nothing to flush.
	if code := next.stop(); code != 0 {
		t.Fatalf("new instance exited %d", code)
	}
	e.set("member:3")
	again := e.start("CACHESYNC_CONFIG=" + newFile)
	e.waitStreaming(again)
	e.caughtUp(again, 30*time.Second)
	e.present("member:3", "user:999")
	if strings.Contains(again.log.String(), "flushing") {
		t.Errorf("a restart with the same rules flushed:\n%s", again.log.String())
	}
}

// TestRenamedSlotIsReported: renaming the slot in rules.hcl leaves the old one
// idle, holding WAL for ever. The next start names it, with the command that
// drops it; once dropped, nothing is reported.
func TestRenamedSlotIsReported(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	old := e.slot
	e.slot = fmt.Sprintf("%.55s_renamed", old)
	src := mustRead(t, e.rules)
	if err := os.WriteFile(e.rules, []byte(strings.Replace(src, fmt.Sprintf("slot = %q", old), fmt.Sprintf("slot = %q", e.slot), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.db.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ($1, $2) AND NOT active`, old, e.slot)
	})
	d = e.start()
	e.waitStreaming(d)
	want := fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", old)
	if !strings.Contains(d.log.String(), "ABANDONED SLOT") || !strings.Contains(d.log.String(), want) {
		t.Errorf("the old slot %s was not reported:\n%s", old, d.log.String())
	}
	e.exec(want)
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	d = e.start()
	e.waitStreaming(d)
	if strings.Contains(d.log.String(), "ABANDONED SLOT") {
		t.Errorf("a dropped slot is still reported:\n%s", d.log.String())
	}
}
