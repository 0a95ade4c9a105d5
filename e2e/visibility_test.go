package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestInvalidationWaitsForVisibility: a commit reaches the WAL, and so the
// daemon, before other sessions can see it. PostgreSQL flushes the commit
// record, then (after waiting for synchronous standbys, or merely after being
// descheduled on a busy machine) makes the transaction visible. A reader that
// misses the key in between loads the old row and caches it after the
// invalidation: stale until its TTL. The daemon must therefore apply a
// transaction's effects only once new snapshots see it.
//
// A synchronous standby that never answers holds a commit in exactly that
// state, for as long as the test needs: flushed and decodable, invisible.
func TestInvalidationWaitsForVisibility(t *testing.T) {
	e, _ := setupPrivateWith(t, map[string]string{
		"synchronous_standby_names": "ghost",
		"synchronous_commit":        "local", // only the writer below waits for the ghost
	}, schema, rules)
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'old')`)
	d := e.start()
	e.waitStreaming(d)
	e.caughtUp(d, 30*time.Second)

	writer, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	if _, err := writer.Exec(e.ctx, `SET synchronous_commit = on`); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := writer.QueryRow(e.ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := writer.Exec(context.Background(), `UPDATE users SET name = 'new' WHERE id = 1`)
		committed <- err
	}()
	testenv.Eventually(t, 30*time.Second, "the UPDATE to wait for the synchronous standby", func() (bool, string) {
		var ev *string
		err := e.db.QueryRow(e.ctx, `SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&ev)
		return err == nil && ev != nil && *ev == "SyncRep", fmt.Sprint(err, ev)
	})
	// The commit is in the WAL. Either the daemon applied it already (the
	// bug: the slot confirms it), or it holds it until it is visible.
	target := e.currentLSN()
	testenv.Eventually(t, 30*time.Second, "the daemon to receive the commit", func() (bool, string) {
		return e.confirmedLSN() >= target || strings.Contains(d.log.String(), "not visible yet"), "confirmed " + e.confirmedLSN().String()
	})

	// A reader misses user:1 now: it reads the old row and caches it.
	var name string
	if err := e.db.QueryRow(e.ctx, `SELECT name FROM users WHERE id = 1`).Scan(&name); err != nil || name != "old" {
		t.Fatalf("before the commit is visible the reader sees %q (%v), want \"old\"", name, err)
	}
	if err := e.rdb.Set(e.ctx, "user:1", name, 0).Err(); err != nil {
		t.Fatal(err)
	}

	// The standby wait ends (cancelled); the commit becomes visible.
	e.exec(`SELECT pg_cancel_backend($1)`, pid)
	select {
	case <-committed:
	case <-time.After(30 * time.Second):
		t.Fatal("the UPDATE did not return after its standby wait was cancelled")
	}
	if err := e.db.QueryRow(e.ctx, `SELECT name FROM users WHERE id = 1`).Scan(&name); err != nil || name != "new" {
		t.Fatalf("after the wait the reader sees %q (%v), want \"new\"", name, err)
	}
	e.quiesce(d)
	if e.exists("user:1") {
		v, _ := e.rdb.Get(e.ctx, "user:1").Result()
		t.Errorf("user:1 still holds %q after the daemon caught up: the invalidation ran before the commit was visible", v)
	}
}
