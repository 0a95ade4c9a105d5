package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestFaultRollbackBeforeAdvance rolls Redis back (a restore from a backup
// taken a moment earlier) after a group's effects were acknowledged and
// before its applied position moved: the daemon stops itself there
// (CACHESYNC_FAILPOINT=stop:before-advance). The daemon then finds an older
// position and heals the cache; the heal must bring back the effects of the
// group in flight too, the newest ones and exactly those the rollback lost,
// before that group is confirmed.
func TestFaultRollbackBeforeAdvance(t *testing.T) {
	e, d := setupInFlight(t)
	backup := e.backupRedis()
	backupAt, ok := e.appliedPosition()
	if !ok {
		t.Fatal("no applied position in the backup")
	}
	// A group without effects moves the position past the backup's.
	e.quiesce(d)
	if at, _ := e.appliedPosition(); at <= backupAt {
		t.Fatalf("applied position %s did not move past the backup's %s", at, backupAt)
	}
	thaw := e.stopInFlight(d)
	// The restore brings back the cached name, the old product value and
	// the backup's applied position.
	e.restoreRedis(backup)
	thaw()
	e.expectInFlightApplied(d, "REDIS RESET")
}

// TestFaultRestartBeforeAdvance: Redis restarts, between a group's apply and
// its advance, from a snapshot that lacks the group's effects but holds
// exactly the position last written (as a failover to a replica one group
// behind, or an AOF everysec loss, leaves it). The position's value cannot
// tell; the server's identity must.
func TestFaultRestartBeforeAdvance(t *testing.T) {
	e, d := setupInFlight(t)
	e.quiesce(d)
	if err := e.rdb.Save(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	thaw := e.stopInFlight(d)
	// The position last written: the daemon stopped before moving it.
	written, ok := e.appliedPosition()
	if !ok {
		t.Fatal("no applied position")
	}
	e.redis.Stop(t)
	e.redis.Start(t) // from the snapshot
	if !e.exists("user:1") {
		t.Fatal("the restarted Redis lacks user:1: it did not load the snapshot")
	}
	// Anything applied between the snapshot and the group (keepalive
	// barriers move the position too) reached this server: only the
	// group in flight is missing.
	if err := e.rdb.Set(e.ctx, "cachesync:slot:"+e.slot+":applied", written.String(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	thaw()
	e.expectInFlightApplied(d, "applying it again")
}

// setupInFlight starts a daemon that stops itself at its first group with
// effects, before the group's advance, on a cache where the application
// cached user 1 and a product value the refresh rule will overwrite.
func setupInFlight(t *testing.T) (*env, *daemon) {
	t.Helper()
	e := setup(t, schema, rules)
	// Rows from before the slot: no group with effects precedes the one the
	// failpoint stops.
	e.exec(`INSERT INTO users VALUES (1, 'ann@x.io', 1, 'Ann'), (2, 'bob@x.io', 1, 'Bob')`)
	e.exec(`INSERT INTO products VALUES (1, 'pen', 1.50, true, 'blue')`)
	d := e.start("CACHESYNC_FAILPOINT=stop:before-advance")
	e.waitStreaming(d)
	e.quiesce(d)
	e.set("user:1")
	if err := e.rdb.Set(e.ctx, "product:1", `{"stale":true}`, 0).Err(); err != nil {
		t.Fatal(err)
	}
	return e, d
}

// stopInFlight commits the transaction that invalidates user:1 and
// refreshes product:1 and waits until the daemon stopped between its apply
// and its advance; thaw lets the daemon go on.
func (e *env) stopInFlight(d *daemon) (thaw func()) {
	e.t.Helper()
	e.exec(`BEGIN; UPDATE users SET name = 'Ann 2' WHERE id = 1; UPDATE products SET price = 2.50 WHERE id = 1; COMMIT`)
	testenv.Eventually(e.t, 60*time.Second, "the daemon stopped at before-advance", func() (bool, string) {
		if d.exited() {
			e.t.Fatalf("daemon exited: %v\n%s", d.err, d.log.String())
		}
		state := processState(d.cmd.Process.Pid)
		return state == "T", "state " + state
	})
	thaw = func() { _ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGCONT) }
	e.t.Cleanup(thaw)
	// Redis acknowledged the group's effects.
	if e.exists("user:1") {
		e.t.Fatal("user:1 still cached at before-advance: the group was not applied")
	}
	return thaw
}

// expectInFlightApplied checks, once the daemon confirmed past the group
// that stopInFlight stopped, that its effects are in the cache, and that
// the daemon logged why it healed.
func (e *env) expectInFlightApplied(d *daemon, logged string) {
	e.t.Helper()
	e.quiesce(d)
	if e.exists("user:1") {
		e.t.Errorf("user:1 still holds the name cached before the rollback: the group in flight was confirmed without its effects")
	}
	e.checkCache()
	if !strings.Contains(d.log.String(), logged) {
		e.t.Errorf("the daemon did not log %q", logged)
	}
}

// processState returns the state letter of /proc/<pid>/stat (R, S, T...),
// or the error.
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return err.Error()
	}
	// pid (comm) state ...: comm may hold spaces, so cut after its ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return "unparsable: " + s
}
