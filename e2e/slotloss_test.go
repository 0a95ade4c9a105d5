package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// A slot invalidated by max_slot_wal_keep_size while the daemon was down:
// it is dropped, recreated, and every key space flushed.
func TestFaultSlotInvalidatedWhileStopped(t *testing.T) {
	e, _ := setupPrivateWith(t, map[string]string{"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB"},
		schema+`CREATE TABLE filler (id bigserial PRIMARY KEY, payload text);`, rules)
	e.seedAndStop()
	if _, err := runWorkload(e.ctx, e.dbURL, faultWorkload(901, faultStatements), 0, nil); err != nil {
		t.Fatal(err)
	}
	e.expectStale("after the workload while stopped")
	testenv.Eventually(t, 2*time.Minute, "the slot is invalidated", func() (bool, string) {
		e.exec(`INSERT INTO filler (payload) SELECT repeat(md5(g::text), 16) FROM generate_series(1, 20000) g`)
		e.exec(`CHECKPOINT`)
		var status string
		e.db.QueryRow(e.ctx, "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&status)
		return status == "lost", "wal_status " + status
	})
	d2 := e.start()
	e.waitStreaming(d2)
	e.quiesce(d2)
	log := d2.log.String()
	if len(logLines(log, "SLOT LOST")) == 0 || !strings.Contains(log, "wal_status = lost") {
		t.Fatalf("no SLOT LOST for the invalidated slot:\n%s", log)
	}
	e.checkCache()
}

// Someone advanced the slot past changes the daemon never received: no
// replay can bring them back, so every key space is flushed.
func TestFaultSlotAdvancedBehindOurBack(t *testing.T) {
	e := setup(t, schema, rules)
	e.seedAndStop()
	if _, err := runWorkload(e.ctx, e.dbURL, faultWorkload(902, faultStatements), 0, nil); err != nil {
		t.Fatal(err)
	}
	e.exec("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", e.slot)
	e.expectStale("after the slot was advanced past the workload")
	d2 := e.start()
	e.waitStreaming(d2)
	e.quiesce(d2)
	if len(logLines(d2.log.String(), "SLOT AHEAD")) == 0 {
		t.Fatalf("no SLOT AHEAD logged:\n%s", d2.log.String())
	}
	e.checkCache()
}

// The database was replaced (a restore, a promoted standby: another system
// identifier) under the same slot name and data directory: flush.
func TestFaultSystemIdentifierChanged(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	dataDir := t.TempDir()
	d := e.start("CACHESYNC_DATA_DIR=" + dataDir)
	e.waitStreaming(d)
	names := e.seed(d)
	if code := d.stop(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, d.log.String())
	}
	// A second server with the same schema and the same rows, but whose rows
	// then differ: the cache's entries from the first server are stale.
	pg2, conn2 := privateDatabase(t, map[string]string{"wal_sender_timeout": "10s"}, schema)
	e.dbURL, e.db = pg2.URL("app"), conn2
	for id := range names {
		e.exec(`INSERT INTO users VALUES ($1, $2, 1, 'renamed') ON CONFLICT DO NOTHING`, id, fmt.Sprintf("u%d@x.io", id))
	}
	e.expectStale("against the replacement database")
	// Give the new server a slot at its current position, as a restored
	// backup that carried the slot would have.
	e.exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", e.slot)
	d2 := e.start("CACHESYNC_DATA_DIR=" + dataDir)
	e.waitStreaming(d2)
	e.quiesce(d2)
	log := d2.log.String()
	if len(logLines(log, "SLOT LOST")) == 0 || !strings.Contains(log, "system identifier") {
		t.Fatalf("no SLOT LOST for the changed system identifier:\n%s", log)
	}
	e.checkCache()
}

// seedAndStop starts the daemon, seeds the cache and stops the daemon
// cleanly: the starting point of the cases that change things while it is
// down.
func (e *env) seedAndStop(extraEnv ...string) {
	e.t.Helper()
	d := e.start(extraEnv...)
	e.waitStreaming(d)
	e.seed(d)
	if code := d.stop(); code != 0 {
		e.t.Fatalf("SIGTERM: exit %d\n%s", code, d.log.String())
	}
}
