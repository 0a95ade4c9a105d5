package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/wal"
)

// The same cache and data directory move to a new server (a dump/restore, a
// point-in-time restore: another WAL history) whose WAL position lies far
// below the old server's. The guards the old history left in Redis must not
// fence the new server's refresh writes: they land from the first change.
func TestGuardsOfAnOldWALHistoryDoNotFence(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	dataDir := t.TempDir()
	d := e.start("CACHESYNC_DATA_DIR=" + dataDir)
	e.waitStreaming(d)
	// Move the first server's WAL far ahead: each switch ends a segment
	// (16 MB) that holds a record.
	for range 8 {
		e.exec(`SELECT pg_logical_emit_message(false, 'cachesync-test', 'pad')`)
		e.exec(`SELECT pg_switch_wal()`)
	}
	e.exec(`INSERT INTO products VALUES (1, 'Pen', 42.50, true, 'blue')`)
	e.waitValue("product:1", productJSON(1, "Pen", "42.50", true, "blue"))
	guard, err := e.rdb.Get(e.ctx, keyspace.GuardKey("product:1")).Result()
	if err != nil {
		t.Fatalf("guard of product:1: %v", err)
	}
	oldLSN := lsnOfGuard(t, guard)
	// Guards expire: the value's TTL (1h ± 5m) plus one hour.
	if pttl := e.rdb.PTTL(e.ctx, keyspace.GuardKey("product:1")).Val(); pttl < 115*time.Minute-time.Minute || pttl > 125*time.Minute {
		t.Errorf("guard of product:1: PTTL %v, want within [1h55m, 2h5m]", pttl)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, d.log.String())
	}

	// The replacement server: fresh, its WAL far behind the first's.
	pg2, conn2 := privateDatabase(t, map[string]string{"wal_sender_timeout": "10s"}, schema)
	e.dbURL, e.db = pg2.URL("app"), conn2
	if cur := e.currentLSN(); cur >= oldLSN {
		t.Fatalf("the second server is at %s, not below the first's guard %s: the test proves nothing", cur, oldLSN)
	}
	e.exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", e.slot)
	d2 := e.start("CACHESYNC_DATA_DIR=" + dataDir)
	e.waitStreaming(d2)
	if log := d2.log.String(); !strings.Contains(log, "system identifier") {
		t.Fatalf("the new system identifier was not noticed:\n%s", log)
	}
	e.exec(`INSERT INTO products VALUES (1, 'Pencil', 1.00, true, 'red')`)
	e.waitValue("product:1", productJSON(1, "Pencil", "1.00", true, "red"))
	e.exec(`UPDATE products SET name = 'Quill' WHERE id = 1`)
	e.waitValue("product:1", productJSON(1, "Quill", "1.00", true, "red"))
	// Within the new history the guards order changes again: the delete's
	// tombstone keeps the key gone.
	e.exec(`DELETE FROM products WHERE id = 1`)
	e.gone("product:1")
	e.exec(`INSERT INTO products VALUES (2, 'Ink', 3.00, true, 'black')`)
	e.waitValue("product:2", productJSON(2, "Ink", "3.00", true, "black"))
	if e.exists("product:1") {
		t.Fatal("product:1 came back after its delete")
	}
}

// lsnOfGuard returns the LSN a guard records (keyspace.EncodeGuard).
func lsnOfGuard(t *testing.T, guard string) wal.LSN {
	t.Helper()
	if len(guard) < 16 {
		t.Fatalf("guard %q: want 16 hex digits first", guard)
	}
	n, err := strconv.ParseUint(guard[:16], 16, 64)
	if err != nil {
		t.Fatalf("guard %q: %v", guard, err)
	}
	return wal.LSN(n)
}

// `replay` beside a running daemon writes in the WAL history the journal
// recorded: its older refresh writes meet the daemon's guards and are
// refused, rather than taking guards of no history for absent ones.
func TestReplayKeepsTheGuardsHistory(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	before := e.currentLSN()
	e.exec(`INSERT INTO products VALUES (1, 'Pen', 42.50, true, 'blue')`)
	e.exec(`UPDATE products SET name = 'Quill' WHERE id = 1`)
	e.waitValue("product:1", productJSON(1, "Quill", "42.50", true, "blue"))
	e.caughtUp(d, 30*time.Second)
	guard, err := e.rdb.Get(e.ctx, keyspace.GuardKey("product:1")).Result()
	if err != nil || !strings.Contains(guard, "@") {
		t.Fatalf("guard of product:1 = %q (%v), want an LSN and a WAL history", guard, err)
	}

	out, code := e.cli("replay", "--from", before.String())
	if code != 0 {
		t.Fatalf("replay --from %s: exit %d\n%s", before, code, out)
	}
	if m := replayedRE.FindStringSubmatch(out); m == nil || m[1] == "0" {
		t.Fatalf("replay --from %s replayed nothing:\n%s", before, out)
	}
	// Both replayed sets were refused by the guard: it is unchanged.
	if after := e.rdb.Get(e.ctx, keyspace.GuardKey("product:1")).Val(); after != guard {
		t.Errorf("guard of product:1 went from %q to %q: the replay rewrote the value", guard, after)
	}
	e.waitValue("product:1", productJSON(1, "Quill", "42.50", true, "blue"))
}
