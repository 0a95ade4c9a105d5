package e2e

// The fault-injection suite. Every case seeds the world of checker_test.go,
// runs a fixed, deterministic workload of faultStatements transactions while
// a fault happens (a crash at a failpoint, a PostgreSQL restart, a Redis
// outage, restart or restore, a dropped slot, a second instance), waits
// until the surviving daemon caught up, and ends with the checker: no cached
// key may differ from what PostgreSQL holds.
//
// Some cases freeze the daemon (SIGSTOP, as a VM pause or a long GC stall
// would) for the moment it takes the test to change Redis under it: that
// makes "the application refilled a key before the daemon noticed" and "the
// stale snapshot is back" deterministic instead of a race with the daemon.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
)

// setupPrivate is setup on a private PostgreSQL server (for tests that
// restart it or need wal_sender_timeout = 10s): database "app", slot "app".
func setupPrivate(t *testing.T, schema, rules string) (*env, *testenv.Postgres) {
	t.Helper()
	return setupPrivateWith(t, map[string]string{"wal_sender_timeout": "10s"}, schema, rules)
}

// setupPrivateWith is setupPrivate with other server settings.
func setupPrivateWith(t *testing.T, settings map[string]string, schema, rules string) (*env, *testenv.Postgres) {
	t.Helper()
	t.Parallel()
	pg, conn := privateDatabase(t, settings, schema)
	e := &env{t: t, dbURL: pg.URL("app"), db: conn, redis: testenv.StartRedis(t), ctx: context.Background(), logDir: t.TempDir(), slot: "app"}
	e.rdb = e.redis.Client(t)
	e.redisEnv = "REDIS_URL=" + e.redis.URL()
	e.rules = filepath.Join(t.TempDir(), "rules.hcl")
	body := fmt.Sprintf("postgres {\n  slot = %q\n  publication = \"cachesync\"\n}\n%s", e.slot, rules)
	if err := os.WriteFile(e.rules, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return e, pg
}

// privateDatabase starts a private server with a database "app" holding the
// schema, and connects to it.
func privateDatabase(t *testing.T, settings map[string]string, schema string) (*testenv.Postgres, *pgx.Conn) {
	t.Helper()
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{Settings: settings})
	pg.Exec(t, "", "CREATE DATABASE app")
	conn, err := pgx.Connect(context.Background(), pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(context.Background(), schema); err != nil {
		t.Fatal(err)
	}
	return pg, conn
}

// reconnect replaces the test's connection after a server restart.
func (e *env) reconnect() {
	e.t.Helper()
	old := e.db
	var conn *pgx.Conn
	testenv.Eventually(e.t, 30*time.Second, "reconnect to PostgreSQL", func() (bool, string) {
		c, err := pgx.Connect(e.ctx, e.dbURL)
		if err != nil {
			return false, err.Error()
		}
		conn = c
		return true, ""
	})
	e.db = conn
	old.Close(context.Background())
}

// freeze stops the daemon process (SIGSTOP) until the returned function is
// called; a test that fails meanwhile still kills it at cleanup.
func (d *daemon) freeze() (thaw func()) {
	d.e.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		d.e.t.Fatal(err)
	}
	thawed := false
	thaw = func() {
		if !thawed {
			thawed = true
			_ = d.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	d.e.t.Cleanup(thaw)
	return thaw
}

// alive fails the test if the daemon exited.
func (d *daemon) alive(when string) {
	d.e.t.Helper()
	if d.exited() {
		d.e.t.Fatalf("%s: the daemon exited (%v)\n%s", when, d.err, d.log.String())
	}
}

// slotPID returns the slot's active_pid (0 when inactive or missing).
func (e *env) slotPID() int32 {
	e.t.Helper()
	var pid *int32
	err := e.db.QueryRow(e.ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&pid)
	switch {
	case err == pgx.ErrNoRows:
		return 0
	case err != nil:
		e.t.Fatal(err)
	case pid == nil:
		return 0
	}
	return *pid
}

// slotBacklog returns, for every transaction the (inactive) slot still
// holds, that is, would deliver again, the largest LSN decoding shows for
// it: its commit's end LSN (the row of a COMMIT carries the end of the
// commit record). It peeks through pgoutput without consuming anything.
func (e *env) slotBacklog() map[string]wal.LSN {
	e.t.Helper()
	backlog := map[string]wal.LSN{}
	testenv.Eventually(e.t, 30*time.Second, "peek at the slot's backlog", func() (bool, string) {
		rows, err := e.db.Query(e.ctx, `SELECT lsn::text, xid::text FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
			'proto_version', '1', 'publication_names', 'cachesync')`, e.slot)
		if err != nil {
			return false, err.Error() // still active: the killed daemon's walsender has not exited yet
		}
		var lsnText, xid string
		_, err = pgx.ForEachRow(rows, []any{&lsnText, &xid}, func() error {
			l, err := wal.ParseLSN(lsnText)
			if err != nil {
				return err
			}
			if cur, ok := backlog[xid]; !ok || l > cur {
				backlog[xid] = l
			}
			return nil
		})
		if err != nil {
			clear(backlog)
			return false, err.Error()
		}
		return true, ""
	})
	return backlog
}

// workloadInBackground runs the workload on its own connection, retrying
// statements for up to 60 s each, and closes reached once statement `at`
// committed. The result arrives on the returned channel. It stops when the
// test ends.
func (e *env) workloadInBackground(ops []faultOp, at int) (reached <-chan struct{}, done <-chan workloadResult) {
	r := make(chan struct{})
	dc := make(chan workloadResult, 1)
	ctx, cancel := context.WithCancel(e.ctx)
	e.t.Cleanup(cancel)
	go func() {
		txns, err := runWorkload(ctx, e.dbURL, ops, 60*time.Second, func(i int) {
			if i == at {
				close(r)
			}
		})
		dc <- workloadResult{txns, err}
	}()
	return r, dc
}

type workloadResult struct {
	txns []committed
	err  error
}

func (e *env) waitChan(what string, c <-chan struct{}, done <-chan workloadResult, timeout time.Duration) {
	e.t.Helper()
	select {
	case <-c:
	case res := <-done:
		e.t.Fatalf("%s: the workload ended first: %v", what, res.err)
	case <-time.After(timeout):
		e.t.Fatalf("%s: not within %s", what, timeout)
	}
}

// waitWorkload waits for the background workload and returns how many
// statement attempts failed (while a server was unreachable).
func (e *env) waitWorkload(done <-chan workloadResult, timeout time.Duration) (failedAttempts int) {
	e.t.Helper()
	select {
	case res := <-done:
		if res.err != nil {
			e.t.Fatal(res.err)
		}
		for _, c := range res.txns {
			failedAttempts += c.attempts - 1
		}
		return failedAttempts
	case <-time.After(timeout):
		e.t.Fatalf("workload not done within %s", timeout)
		return 0
	}
}

// logLines returns the daemon's log lines containing s.
func logLines(log, s string) []string {
	var out []string
	for line := range strings.Lines(log) {
		if strings.Contains(line, s) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// --- 1. SIGKILL at each failpoint of the pipeline --------------------------

func TestFaultKillBeforeApply(t *testing.T)  { testFaultKill(t, "before-apply", 101) }
func TestFaultKillAfterApply(t *testing.T)   { testFaultKill(t, "after-apply", 102) }
func TestFaultKillAfterJournal(t *testing.T) { testFaultKill(t, "after-journal", 103) }

func testFaultKill(t *testing.T, point string, seed uint64) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	names := e.seed(d)
	if code := d.stop(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, d.log.String())
	}

	crashing := e.start("CACHESYNC_FAILPOINT=" + point)
	e.waitStreaming(crashing)
	ops := faultWorkload(seed, faultStatements)
	txns, err := runWorkload(e.ctx, e.dbURL, ops, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	crashing.waitExit(30 * time.Second)
	if !strings.Contains(crashing.log.String(), "failpoint "+point) {
		t.Fatalf("the daemon exited, but not at failpoint %s:\n%s", point, crashing.log.String())
	}
	// The group that triggered the failpoint holds the workload's first
	// transaction that changed a row (nothing before it carried operations):
	// it must still be in the slot, unconfirmed, with everything after it.
	backlog := e.slotBacklog()
	var first wal.LSN
	delivered := 0
	for i, c := range txns {
		if c.rows == 0 {
			continue // an empty transaction: pgoutput sends nothing for it
		}
		l, ok := backlog[c.xid]
		if !ok {
			t.Fatalf("workload transaction %d (xid %s, %s) is no longer in the slot: it was confirmed although the daemon died at %s on the group of the first one (confirmed_flush_lsn %s)",
				i, c.xid, ops[i], point, e.confirmedLSN())
		}
		if first == 0 {
			first = l
		}
		delivered++
	}
	if first == 0 {
		t.Fatal("no workload statement changed a row")
	}
	if got := e.confirmedLSN(); got >= first {
		t.Fatalf("confirmed_flush_lsn %s is not below the end of the crashed group's first commit, %s", got, first)
	}
	t.Logf("after the crash at %s: confirmed_flush_lsn %s < end of the first workload commit %s; all %d row-changing workload transactions still in the slot",
		point, e.confirmedLSN(), first, delivered)

	// Readers refill every touched user's key from a read made before the
	// workload: for the keys the crashed group had already invalidated (after
	// apply), only the redelivery of the unconfirmed transactions removes them.
	touched := touchedUsers(ops)
	invalidated := 0
	for _, id := range touched {
		if _, seeded := names[id]; seeded && !e.exists(fmt.Sprintf("user:%d", id)) {
			invalidated++
		}
	}
	t.Logf("%d of the %d touched user keys were already invalidated by the crashed group; refilling all of them from the pre-workload read",
		invalidated, len(touched))
	e.cacheUsers(names, touched)
	e.expectStale("after the crash")

	d2 := e.start()
	e.quiesce(d2)
	d2.alive("after recovery")
	e.checkCache()
}

// --- 2. PostgreSQL restarts mid-workload ----------------------------------

func TestFaultPostgresRestartFast(t *testing.T)      { testFaultPostgresRestart(t, "fast", 201) }
func TestFaultPostgresRestartImmediate(t *testing.T) { testFaultPostgresRestart(t, "immediate", 202) }

func testFaultPostgresRestart(t *testing.T, mode string, seed uint64) {
	e, pg := setupPrivate(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	names := e.seed(d)

	ops := faultWorkload(seed, faultStatements)
	reached, done := e.workloadInBackground(ops, faultStatements/3)
	e.waitChan("a third of the workload committed", reached, done, 60*time.Second)
	pg.Restart(t, mode)
	e.reconnect()
	d.alive("right after the restart")
	if failed := e.waitWorkload(done, 120*time.Second); failed == 0 {
		t.Errorf("no workload statement failed: the %s restart did not happen mid-workload", mode)
	} else {
		t.Logf("%d workload statement attempts failed during the restart and were retried until they committed", failed)
	}
	e.quiesce(d) // fails if the daemon exits
	reconnects := logLines(d.log.String(), "reconnecting")
	if len(reconnects) == 0 {
		t.Fatalf("no reconnection logged after a %s restart:\n%s", mode, d.log.String())
	}
	t.Logf("%d reconnection(s) logged; first: %s", len(reconnects), reconnects[0])
	if n := len(logLines(d.log.String(), `"starting"`)); n != 1 {
		t.Errorf("the daemon logged %d starts, want 1 (it must reconnect by itself, not restart)", n)
	}
	e.logAtStake(names)
	e.checkCache()
}

// --- 3. Redis down for 3 × wal_sender_timeout ------------------------------

func TestFaultRedisDownLongerThanWalSenderTimeout(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)

	// The snapshot brings the seeded (soon stale) cache back with Redis.
	if err := e.rdb.Save(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	pid := e.slotPID()
	if pid == 0 {
		t.Fatal("slot not active before the outage")
	}
	down := time.Now()
	e.redis.Stop(t)
	beforeWorkload := e.currentLSN()
	ops := faultWorkload(301, faultStatements)
	if _, err := runWorkload(e.ctx, e.dbURL, ops, 0, nil); err != nil {
		t.Fatal(err)
	}
	// Redis stays down for 30 s = 3 × wal_sender_timeout: the scenario's
	// length. Meanwhile the same walsender must keep serving the slot.
	samples := 0
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for time.Since(down) < 30*time.Second {
		<-tick.C
		d.alive("while Redis was down")
		if got := e.slotPID(); got != pid {
			t.Fatalf("after %s of Redis outage the slot's active_pid is %d, was %d: the walsender was dropped (wal_sender_timeout 10s)",
				time.Since(down).Round(time.Millisecond), got, pid)
		}
		var n int
		if err := e.db.QueryRow(e.ctx, "SELECT count(*) FROM pg_stat_replication WHERE pid = $1", pid).Scan(&n); err != nil || n != 1 {
			t.Fatalf("after %s of Redis outage pg_stat_replication has %d rows for walsender %d (err %v)", time.Since(down).Round(time.Millisecond), n, pid, err)
		}
		samples++
	}
	if got := e.confirmedLSN(); got > beforeWorkload {
		t.Fatalf("the slot confirmed %s while Redis was down (workload began at %s): unapplied changes confirmed", got, beforeWorkload)
	}
	t.Logf("walsender %d served the slot through the 30 s outage (%d samples); confirmed_flush_lsn stayed at %s", pid, samples, e.confirmedLSN())

	// Redis returns with the stale snapshot. Freeze the daemon a moment, so
	// the test sees the stale keys before the daemon heals them.
	thaw := d.freeze()
	e.redis.Start(t)
	e.expectStale("Redis back from its snapshot")
	thaw()

	e.quiesce(d)
	d.alive("after the outage")
	if l := logLines(d.log.String(), "REDIS RESET"); len(l) > 0 {
		t.Logf("cache-reset detection also fired (the snapshot's applied position was older): %s", l[0])
	}
	e.checkCache()
}

// --- 4. The slot is dropped while the daemon is stopped --------------------

func TestFaultSlotDroppedWhileStopped(t *testing.T) {
	e := setup(t, schema, rules)
	e.seedAndStop()
	testenv.Eventually(t, 30*time.Second, "drop the slot", func() (bool, string) {
		_, err := e.db.Exec(e.ctx, "SELECT pg_drop_replication_slot($1)", e.slot)
		return err == nil, fmt.Sprint(err)
	})
	// Committed while no slot exists: never delivered to anyone.
	if _, err := runWorkload(e.ctx, e.dbURL, faultWorkload(401, faultStatements), 0, nil); err != nil {
		t.Fatal(err)
	}
	workloadEnd := e.currentLSN()
	e.expectStale("after the workload without a slot")

	d2 := e.start()
	// The new slot's confirmed_flush_lsn is its creation point, past the
	// workload already: wait for streaming, which follows the flush.
	e.waitStreaming(d2)
	e.quiesce(d2)
	log := d2.log.String()
	lost := logLines(log, "SLOT LOST")
	if len(lost) == 0 {
		t.Fatalf("no SLOT LOST logged after restarting on a dropped slot:\n%s", log)
	}
	if len(logLines(log, "replication slot created")) == 0 || len(logLines(log, "flushing key space")) == 0 {
		t.Errorf("the slot was not recreated and flushed:\n%s", log)
	}
	t.Logf("logged: %s", lost[0])
	m := consistentPointRE.FindStringSubmatch(strings.Join(logLines(log, "replication slot created"), "\n"))
	if m == nil {
		t.Fatalf("no consistent point logged for the new slot:\n%s", log)
	}
	if cp, err := wal.ParseLSN(m[1]); err != nil || cp < workloadEnd {
		t.Fatalf("the new slot starts at %s (%v), before the end of the workload %s", m[1], err, workloadEnd)
	}
	t.Logf("the new slot starts at %s, past the workload (ended at %s): only the flush can remove what it made stale", m[1], workloadEnd)
	e.checkCache()
}

var consistentPointRE = regexp.MustCompile(`"consistent_point":"([0-9A-F]+/[0-9A-F]+)"`)

// --- 5. Replay below confirmed_flush_lsn (Redis restored from a backup) ----

// redisBackup is every key with its TTL, as DUMP gives it.
type redisBackup map[string]struct {
	dump string
	ttl  time.Duration
}

func (e *env) backupRedis() redisBackup {
	e.t.Helper()
	b := redisBackup{}
	for _, k := range e.keys("*") {
		dump, err := e.rdb.Dump(e.ctx, k).Result()
		if err != nil {
			e.t.Fatalf("DUMP %s: %v", k, err)
		}
		ttl, err := e.rdb.PTTL(e.ctx, k).Result()
		if err != nil {
			e.t.Fatal(err)
		}
		if ttl < 0 {
			ttl = 0 // no expiry
		}
		b[k] = struct {
			dump string
			ttl  time.Duration
		}{dump, ttl}
	}
	return b
}

func (e *env) restoreRedis(b redisBackup) {
	e.t.Helper()
	if err := e.rdb.FlushAll(e.ctx).Err(); err != nil {
		e.t.Fatal(err)
	}
	for k, v := range b {
		if err := e.rdb.RestoreReplace(e.ctx, k, v.ttl, v.dump).Err(); err != nil {
			e.t.Fatalf("RESTORE %s: %v", k, err)
		}
	}
}

var replayedRE = regexp.MustCompile(`replayed (\d+) batches from `)

func TestFaultReplayBelowConfirmed(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)

	// A backup of the whole cache (values, write-through guards, applied
	// position), and the applied position before the workload.
	backup := e.backupRedis()
	appliedBefore, ok := e.appliedPosition()
	if !ok {
		t.Fatal("no applied position in the cache after seeding")
	}
	if _, err := runWorkload(e.ctx, e.dbURL, faultWorkload(501, faultStatements), 0, nil); err != nil {
		t.Fatal(err)
	}
	e.quiesce(d)
	e.checkCache()
	if code := d.stop(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, d.log.String())
	}
	confirmed := e.confirmedLSN()
	if appliedBefore >= confirmed {
		t.Fatalf("applied position before the workload %s is not below confirmed_flush_lsn %s", appliedBefore, confirmed)
	}

	// Redis restored from the backup: stale values, old guards, and the
	// applied position the backup carries, below confirmed_flush_lsn.
	e.restoreRedis(backup)
	if err := e.rdb.Set(e.ctx, "cachesync:slot:"+e.slot+":applied", appliedBefore.String(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	e.expectStale("after restoring the backup")

	out, code := e.cli("replay", "--from", appliedBefore.String())
	if code != 0 {
		t.Fatalf("replay --from %s: exit %d\n%s", appliedBefore, code, out)
	}
	m := replayedRE.FindStringSubmatch(out)
	if m == nil || m[1] == "0" {
		t.Fatalf("replay --from %s did not report replayed batches:\n%s", appliedBefore, out)
	}
	t.Logf("replay --from %s (confirmed_flush_lsn %s): %s", appliedBefore, confirmed, strings.TrimSpace(out))
	e.checkCache()

	// Before the journal: refused, pointing at --flush.
	out, code = e.cli("replay", "--from", "0/1")
	if code != 1 || !strings.Contains(out, "--flush") {
		t.Errorf("replay --from 0/1: exit %d, want 1 with a hint at --flush:\n%s", code, out)
	}
	// Past the journal's newest entry: a position this journal never saw,
	// refused as well instead of "replaying" nothing with exit 0.
	past := e.currentLSN() + 1<<32
	out, code = e.cli("replay", "--from", past.String())
	if code != 1 || !strings.Contains(out, "newest entry") || !strings.Contains(out, "Nothing was applied") {
		t.Errorf("replay --from %s (past the journal): exit %d, want 1 naming the journal's newest entry:\n%s", past, code, out)
	}
	out, code = e.cli("replay", "--flush")
	if code != 0 {
		t.Fatalf("replay --flush: exit %d\n%s", code, out)
	}
	if left := append(e.keys("user:*"), e.keys("product:*")...); len(left) > 0 {
		t.Errorf("replay --flush left %d keys: %v", len(left), left[:min(len(left), 10)])
	}
	e.checkCache()
}

// startTwo starts two instances at once on a database without a slot, each
// with its own data directory, and returns them once one streams and the
// other stands by. Only the one that takes the instance lock creates the
// slot and flushes.
func (e *env) startTwo() (active, passive *daemon) {
	e.t.Helper()
	a := e.start("CACHESYNC_DATA_DIR=" + e.t.TempDir())
	b := e.start("CACHESYNC_DATA_DIR=" + e.t.TempDir())
	testenv.Eventually(e.t, 60*time.Second, "one instance active, the other passive", func() (bool, string) {
		a.alive("instance A")
		b.alive("instance B")
		as, bs := strings.Contains(a.log.String(), `"streaming"`), strings.Contains(b.log.String(), `"streaming"`)
		ap, bp := strings.Contains(a.log.String(), "standing by as passive"), strings.Contains(b.log.String(), "standing by as passive")
		if as && bs {
			e.t.Fatalf("both instances stream from one slot\nA:\n%s\nB:\n%s", a.log.String(), b.log.String())
		}
		switch {
		case as && bp:
			active, passive = a, b
		case bs && ap:
			active, passive = b, a
		default:
			return false, fmt.Sprintf("A streaming=%v passive=%v, B streaming=%v passive=%v", as, ap, bs, bp)
		}
		return true, ""
	})
	return active, passive
}

// --- 6. Two instances on one slot; the active one is killed ----------------

func TestFaultTwoInstancesActiveKilled(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	active, passive := e.startTwo()
	if strings.Contains(passive.log.String(), "flushing key space") || strings.Contains(passive.log.String(), "replication slot created") {
		t.Errorf("the passive instance recovered the slot or the cache:\n%s", passive.log.String())
	}
	if !strings.Contains(active.log.String(), "replication slot created") {
		t.Errorf("the active instance did not create the slot:\n%s", active.log.String())
	}
	pid := e.slotPID()
	var walsenders int
	if err := e.db.QueryRow(e.ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&walsenders); err != nil {
		t.Fatal(err)
	}
	if pid == 0 || walsenders != 1 {
		t.Fatalf("slot active_pid %d, %d streaming walsenders: want exactly one", pid, walsenders)
	}
	names := e.seed(active)

	ops := faultWorkload(601, faultStatements)
	reached, done := e.workloadInBackground(ops, faultStatements/3)
	// Until the kill, the slot's walsender never changes: the passive
	// instance must not terminate the holder.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-reached:
			break wait
		case res := <-done:
			t.Fatalf("workload ended early: %v", res.err)
		case <-tick.C:
			if got := e.slotPID(); got != pid {
				t.Fatalf("the slot's active_pid changed from %d to %d before the active instance was killed", pid, got)
			}
		}
	}
	if got := e.slotPID(); got != pid {
		t.Fatalf("the slot's active_pid changed from %d to %d before the active instance was killed", pid, got)
	}
	killed := time.Now()
	active.kill()
	testenv.Eventually(t, 30*time.Second, "the passive instance takes the slot over", func() (bool, string) {
		passive.alive("passive instance")
		got := e.slotPID()
		return got != 0 && got != pid && strings.Contains(passive.log.String(), `"streaming"`), fmt.Sprintf("active_pid %d", got)
	})
	takeover := time.Since(killed)
	t.Logf("takeover %s after SIGKILL of the active instance (walsender %d → %d)", takeover.Round(time.Millisecond), pid, e.slotPID())
	if takeover > 20*time.Second {
		t.Errorf("takeover took %s, want within wal_sender_timeout (10s) + retry", takeover)
	}
	e.waitWorkload(done, 120*time.Second)
	e.quiesce(passive)

	// Neither instance ever saw an error but the 55006 standby: no
	// reconnection, no error-level line (a reset or a slot loss would be).
	for name, d := range map[string]*daemon{"active (killed)": active, "passive": passive} {
		log := d.log.String()
		for _, bad := range []string{"reconnecting", `"level":"error"`, "SLOT LOST", "REDIS RESET"} {
			if l := logLines(log, bad); len(l) > 0 {
				t.Errorf("%s instance logged %q: %s", name, bad, l[0])
			}
		}
	}
	if n := len(logLines(passive.log.String(), "standing by as passive")); n != 1 {
		t.Errorf("passive logged %d standby lines, want 1", n)
	}
	e.logAtStake(names)
	e.checkCache()
}

// --- 6b. Two instances; the active one freezes without closing a socket ---

// TestFaultTwoInstancesActiveFrozen freezes the active instance (SIGSTOP, as
// a power loss or a network partition would look to PostgreSQL: no FIN, no
// RST, the kernel even keeps acknowledging). Its walsender times out after
// wal_sender_timeout, but the backend holding its instance lock would live
// until TCP keepalive gives up: the passive instance must take over on the
// lease instead, and the old one, thawed, must stand by without writing.
func TestFaultTwoInstancesActiveFrozen(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	wst := e.walSenderTimeout()
	// wal_sender_timeout, then one standby retry (≤ 3 s) and recovery.
	bound := wst + 10*time.Second
	active, passive := e.startTwo()
	pid := e.slotPID()
	names := e.seed(active)
	e.exec(`INSERT INTO users VALUES (900001, 'frozen@x.io', 1, 'before the freeze')`)
	e.caughtUp(active, 60*time.Second)

	// docs/operations.md's query finds the holder: the active instance's
	// lock connection, stating its lease.
	holderPID, holderApp := e.lockHolder()
	if !strings.HasPrefix(holderApp, "cachesync lock lease=") {
		t.Errorf("the lock holder (pid %d) is %q, want the active instance's lock connection stating its lease", holderPID, holderApp)
	}

	ops := faultWorkload(651, faultStatements)
	reached, done := e.workloadInBackground(ops, faultStatements/3)
	e.waitChan("a third of the workload committed", reached, done, 60*time.Second)
	active.heldTheLock("before the freeze")
	frozen := time.Now()
	thaw := active.freeze()
	testenv.Eventually(t, bound, fmt.Sprintf("the passive instance takes over from the frozen one within wal_sender_timeout (%s) + 10s", wst), func() (bool, string) {
		passive.alive("passive instance")
		got := e.slotPID()
		return got != 0 && got != pid && strings.Contains(passive.log.String(), `"streaming"`), fmt.Sprintf("active_pid %d (was %d)", got, pid)
	})
	t.Logf("takeover %s after SIGSTOP of the active instance (wal_sender_timeout %s; walsender %d → %d)",
		time.Since(frozen).Round(time.Millisecond), wst, pid, e.slotPID())
	takeover := logLines(passive.log.String(), "TAKEOVER")
	if len(takeover) != 1 || !strings.Contains(takeover[0], fmt.Sprintf(`"holder_pid":%d`, holderPID)) {
		t.Errorf("the passive instance logged %d TAKEOVER lines, want one naming holder pid %d: %v", len(takeover), holderPID, takeover)
	}

	// Invalidations flow again while the old active is still frozen.
	e.set("user:900001")
	e.exec(`UPDATE users SET name = 'after the takeover' WHERE id = 900001`)
	e.gone("user:900001")

	// Thawed, the old active finds its lock connection gone and its lease
	// expired: it stands by, and never streams, applies or flushes again.
	woke := len(active.log.String())
	thaw()
	active.awaitStandby(woke)
	e.waitWorkload(done, 120*time.Second)
	e.quiesce(passive)
	e.fencedOff(active, passive, woke, "thawed instance")
	if got := e.slotPID(); got == 0 || got == pid {
		t.Errorf("after the thaw the slot's active_pid is %d, want the new active's walsender", got)
	}
	e.logAtStake(names)
	e.checkCache()
}

// TestFaultTwoInstancesActiveFrozenMidGroup freezes the active instance at
// the before-apply failpoint: a group mapped and about to be applied when the
// host froze. Thawed after the takeover, it must see its lease expired
// before it writes anything: no apply, no compare-and-set of the applied
// position (the new active's position would look like a Redis reset to it,
// and its heal would flush and move the position back under the new active).
func TestFaultTwoInstancesActiveFrozenMidGroup(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	wst := e.walSenderTimeout()
	a := e.start("CACHESYNC_DATA_DIR="+t.TempDir(), "CACHESYNC_FAILPOINT=stop:before-apply")
	t.Cleanup(func() { _ = a.cmd.Process.Signal(syscall.SIGCONT) })
	e.waitStreaming(a)
	b := e.start("CACHESYNC_DATA_DIR=" + t.TempDir())
	testenv.Eventually(t, 60*time.Second, "the second instance stands by", func() (bool, string) {
		b.alive("second instance")
		return strings.Contains(b.log.String(), "standing by as passive"), ""
	})
	pid := e.slotPID()
	a.heldTheLock("before the freeze")
	e.exec(`INSERT INTO users VALUES (900003, 'mid@x.io', 1, 'v1')`)
	testenv.Eventually(t, 30*time.Second, "the active instance stops itself before applying the INSERT", func() (bool, string) {
		return strings.Contains(a.log.String(), "failpoint before-apply: stopping"), ""
	})
	frozen := time.Now()
	testenv.Eventually(t, wst+10*time.Second, fmt.Sprintf("the passive instance takes over within wal_sender_timeout (%s) + 10s", wst), func() (bool, string) {
		b.alive("passive instance")
		got := e.slotPID()
		return got != 0 && got != pid && strings.Contains(b.log.String(), `"streaming"`), fmt.Sprintf("active_pid %d (was %d)", got, pid)
	})
	t.Logf("takeover %s after the active instance froze mid-group", time.Since(frozen).Round(time.Millisecond))
	e.set("user:900003")
	e.exec(`UPDATE users SET name = 'v2' WHERE id = 900003`)
	e.gone("user:900003")
	e.quiesce(b)

	woke := len(a.log.String())
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	a.awaitStandby(woke)
	// A group through the new active: its compare-and-set fails (REDIS
	// RESET) if the thawed instance moved the applied position.
	e.set("user:900003")
	e.exec(`UPDATE users SET name = 'v3' WHERE id = 900003`)
	e.gone("user:900003")
	e.quiesce(b)
	e.fencedOff(a, b, woke, "thawed instance")
	e.checkCache()
}

// TestFaultTwoInstancesActivePartitioned cuts the active instance off from
// PostgreSQL as a network partition does: it keeps running and reaching
// Redis, but nothing passes between it and PostgreSQL and no socket is
// closed. Its lease renewal times out, so it stops writing before the
// passive instance takes over on the lease, within wal_sender_timeout plus a
// few seconds; once the partition heals it finds the lock taken and stands by.
func TestFaultTwoInstancesActivePartitioned(t *testing.T) {
	e, pg := setupPrivate(t, schema, rules)
	wst := e.walSenderTimeout()
	link := startPartitionable(t, fmt.Sprintf("127.0.0.1:%d", pg.Port()))
	a := e.start("CACHESYNC_DATA_DIR="+t.TempDir(), "DATABASE_URL="+strings.Replace(e.dbURL, fmt.Sprintf(":%d/", pg.Port()), ":"+link.port()+"/", 1))
	e.waitStreaming(a)
	b := e.start("CACHESYNC_DATA_DIR=" + t.TempDir())
	testenv.Eventually(t, 60*time.Second, "the second instance stands by", func() (bool, string) {
		b.alive("second instance")
		return strings.Contains(b.log.String(), "standing by as passive"), ""
	})
	pid := e.slotPID()
	holder, _ := e.lockHolder()
	e.exec(`INSERT INTO users VALUES (900004, 'cut@x.io', 1, 'v1')`)
	e.caughtUp(a, 60*time.Second)

	a.heldTheLock("before the partition")
	cutAt := len(a.log.String())
	cut := time.Now()
	link.cut()
	testenv.Eventually(t, wst+10*time.Second, fmt.Sprintf("the passive instance takes over from the cut-off one within wal_sender_timeout (%s) + 10s", wst), func() (bool, string) {
		a.alive("cut-off instance")
		b.alive("passive instance")
		got := e.slotPID()
		return got != 0 && got != pid && strings.Contains(b.log.String(), `"streaming"`), fmt.Sprintf("active_pid %d (was %d)", got, pid)
	})
	t.Logf("takeover %s after the partition (wal_sender_timeout %s)", time.Since(cut).Round(time.Millisecond), wst)
	if l := logLines(b.log.String(), "TAKEOVER"); len(l) != 1 || !strings.Contains(l[0], fmt.Sprintf(`"holder_pid":%d`, holder)) {
		t.Errorf("the passive instance logged %d TAKEOVER lines, want one naming holder pid %d: %v", len(l), holder, l)
	}
	e.set("user:900004")
	e.exec(`UPDATE users SET name = 'v2' WHERE id = 900004`)
	e.gone("user:900004")
	// The cut-off instance is alive and reaches Redis, where it sees the
	// new active's applied position: it must have ended its session before
	// (its stream hears nothing, or its lease ran out).
	testenv.Eventually(t, 30*time.Second, "the cut-off instance ends its session", func() (bool, string) {
		a.alive("cut-off instance")
		after := a.log.String()[cutAt:]
		return strings.Contains(after, "INSTANCE LOCK LOST") || strings.Contains(after, "replication session ended"), after
	})

	link.heal()
	testenv.Eventually(t, 60*time.Second, "the reconnected instance stands by", func() (bool, string) {
		a.alive("reconnected instance")
		return strings.Contains(a.log.String()[cutAt:], "standing by as passive"), a.log.String()[cutAt:]
	})
	e.set("user:900004")
	e.exec(`UPDATE users SET name = 'v3' WHERE id = 900004`)
	e.gone("user:900004")
	e.quiesce(b)
	e.fencedOff(a, b, cutAt, "cut-off instance")
	if got := e.slotPID(); got == 0 || got == pid {
		t.Errorf("after the partition healed the slot's active_pid is %d, want the new active's walsender", got)
	}
	e.checkCache()
}

// partitionable relays TCP connections to a server and can cut them as a
// network partition does: while cut, no byte and no close passes in either
// direction and new connections hang, but no socket is closed, so neither
// end learns anything until its own timeouts fire. heal lets everything
// that waited through.
type partitionable struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	open   chan struct{} // closed while the link is up
	done   chan struct{}
}

func startPartitionable(t *testing.T, target string) *partitionable {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partitionable{ln: ln, target: target, open: make(chan struct{}), done: make(chan struct{})}
	close(p.open)
	var wg sync.WaitGroup
	var conns []net.Conn
	var connsMu sync.Mutex
	track := func(c net.Conn) {
		connsMu.Lock()
		conns = append(conns, c)
		connsMu.Unlock()
	}
	t.Cleanup(func() {
		close(p.done)
		ln.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			track(client)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !p.wait() {
					return
				}
				server, err := net.Dial("tcp", p.target)
				if err != nil {
					client.Close()
					return
				}
				track(server)
				wg.Add(2)
				go func() { defer wg.Done(); p.relay(server, client) }()
				go func() { defer wg.Done(); p.relay(client, server) }()
			}()
		}
	}()
	return p
}

func (p *partitionable) port() string {
	_, port, _ := net.SplitHostPort(p.ln.Addr().String())
	return port
}

// wait blocks while the link is cut; false when the test ended.
func (p *partitionable) wait() bool {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	select {
	case <-open:
		return true
	case <-p.done:
		return false
	}
}

// relay copies src to dst, holding every chunk and the final close while
// the link is cut.
func (p *partitionable) relay(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !p.wait() {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *partitionable) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = make(chan struct{})
}

func (p *partitionable) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.open)
}

// TestFaultTwoInstancesSlowRecoveryKeepsTheLock makes the active instance's
// recovery wait on Redis (CLIENT PAUSE WRITE holds the new slot's flush) for
// three times wal_sender_timeout, with a second instance standing by: a slow
// holder is not a dead one, and the lease keeps the lock where it is.
func TestFaultTwoInstancesSlowRecoveryKeepsTheLock(t *testing.T) {
	e, _ := setupPrivate(t, schema, rules)
	wst := e.walSenderTimeout()
	if err := e.rdb.Do(e.ctx, "CLIENT", "PAUSE", 600_000, "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	unpause := func() {
		if err := e.rdb.Do(e.ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(unpause)
	a := e.start("CACHESYNC_DATA_DIR=" + t.TempDir())
	testenv.Eventually(t, 60*time.Second, "the first instance holds the lock and its recovery waits on Redis", func() (bool, string) {
		a.alive("first instance")
		_, app := e.lockHolder()
		return strings.HasPrefix(app, "cachesync lock") && strings.Contains(a.log.String(), "replication slot created"), app
	})
	b := e.start("CACHESYNC_DATA_DIR=" + t.TempDir())
	testenv.Eventually(t, 60*time.Second, "the second instance stands by", func() (bool, string) {
		b.alive("second instance")
		if l := logLines(b.log.String(), "TAKEOVER"); len(l) > 0 {
			t.Fatalf("the second instance took the lock from the first, whose recovery waits on Redis: %s", l[0])
		}
		return strings.Contains(b.log.String(), "standing by as passive"), ""
	})
	holder, _ := e.lockHolder()
	began := time.Now()
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for time.Since(began) < 3*wst {
		<-tick.C
		a.alive("first instance, waiting on Redis")
		if strings.Contains(a.log.String(), `"streaming"`) {
			t.Fatalf("the first instance streams while Redis takes no writes: its recovery did not wait (the test proves nothing)")
		}
		if pid, app := e.lockHolder(); pid != holder {
			t.Fatalf("after %s of recovery waiting on Redis the lock moved from pid %d to %d (%q)\nfirst:\n%s\nsecond:\n%s",
				time.Since(began).Round(time.Millisecond), holder, pid, app, a.log.String(), b.log.String())
		}
	}
	unpause()
	e.waitStreaming(a)
	e.exec(`INSERT INTO users VALUES (900002, 'slow@x.io', 1, 'before')`)
	e.set("user:900002")
	e.exec(`UPDATE users SET name = 'after' WHERE id = 900002`)
	e.gone("user:900002")
	for name, d := range map[string]*daemon{"first": a, "second": b} {
		for _, bad := range []string{"TAKEOVER", "INSTANCE LOCK LOST"} {
			if l := logLines(d.log.String(), bad); len(l) > 0 {
				t.Errorf("the %s instance logged %q: %s", name, bad, l[0])
			}
		}
	}
	if strings.Contains(b.log.String(), `"streaming"`) {
		t.Errorf("the second instance streamed:\n%s", b.log.String())
	}
}

// heldTheLock fails the test if the instance lost the instance lock so far:
// its lease renewal stalled for ¾ of wal_sender_timeout (an overloaded
// machine), which makes the takeover that follows prove nothing.
func (d *daemon) heldTheLock(when string) {
	d.e.t.Helper()
	if l := logLines(d.log.String(), "INSTANCE LOCK LOST"); len(l) > 0 {
		d.e.t.Fatalf("%s the active instance already lost its lock: %s", when, l[0])
	}
}

// walSenderTimeout reads the server's wal_sender_timeout.
func (e *env) walSenderTimeout() time.Duration {
	e.t.Helper()
	var ms int64
	if err := e.db.QueryRow(e.ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'").Scan(&ms); err != nil {
		e.t.Fatal(err)
	}
	return time.Duration(ms) * time.Millisecond
}

// lockHolder runs docs/operations.md's query: the pid and application_name
// of the instance lock's holder (0 and "" when nobody holds it).
func (e *env) lockHolder() (int32, string) {
	e.t.Helper()
	var pid int32
	var app, state string
	err := e.db.QueryRow(e.ctx, documentedLockQuery(e.t, e.slot)).Scan(&pid, &app, &state, new(any), new(any))
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ""
	}
	if err != nil {
		e.t.Fatalf("the documented lock-holder query: %v", err)
	}
	return pid, app
}

// documentedLockQuery returns the lock-holder query of docs/operations.md
// for slot, so that the test runs exactly what the operator is told to.
func documentedLockQuery(t *testing.T, slot string) string {
	t.Helper()
	doc := mustRead(t, filepath.Join("..", "docs", "operations.md"))
	_, rest, ok := strings.Cut(doc, "Who holds the lock of slot `cachesync`")
	if ok {
		_, rest, ok = strings.Cut(rest, "```sql\n")
	}
	query, _, closed := strings.Cut(rest, "```")
	if !ok || !closed || strings.Count(query, "'cachesync slot ' || 'cachesync'") != 2 {
		t.Fatal("docs/operations.md no longer shows the lock-holder query for slot `cachesync` after \"Who holds the lock of slot `cachesync`\"")
	}
	return strings.ReplaceAll(query, "'cachesync slot ' || 'cachesync'", "'cachesync slot ' || '"+slot+"'")
}

// --- 7. Redis restarts without persistence --------------------------------

func TestFaultRedisRestartedWithoutPersistence(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	names := e.seed(d) // the application's reads, before the workload

	ops := faultWorkload(701, faultStatements)
	reached, done := e.workloadInBackground(ops, faultStatements/3)
	e.waitChan("a third of the workload committed", reached, done, 60*time.Second)

	// Redis restarts empty. Before the daemon touches it again, readers
	// refill keys from reads made before the workload's commits: the
	// invalidations of those commits went to the Redis that is gone.
	thaw := d.freeze()
	e.redis.Stop(t)
	e.redis.Start(t)
	if n, err := e.rdb.DBSize(e.ctx).Result(); err != nil || n != 0 {
		t.Fatalf("Redis restarted with %d keys (err %v), want an empty dataset", n, err)
	}
	e.cacheUsers(names, nil)
	e.expectStale("readers refilled the empty Redis from old reads")
	thaw()

	e.waitWorkload(done, 120*time.Second)
	e.quiesce(d)
	d.alive("after the Redis restart")
	log := d.log.String()
	detected := append(logLines(log, "REDIS RESET"), logLines(log, "cache holds no applied position")...)
	if len(detected) == 0 {
		t.Fatalf("the daemon did not report the emptied Redis:\n%s", log)
	}
	t.Logf("logged: %s", detected[0])
	e.checkCache()
}

// --- 8. Redis restored from an older snapshot while the daemon runs --------

func TestFaultRedisRestoredFromOlderSnapshot(t *testing.T) {
	testFaultRedisSnapshot(t, "", "replayed the journal", "on_redis_reset = flush", 801)
}

func TestFaultRedisRestoredFromOlderSnapshotFlush(t *testing.T) {
	testFaultRedisSnapshot(t, "redis {\n  on_redis_reset = \"flush\"\n}\n", "on_redis_reset = flush", "replayed the journal", 802)
}

func testFaultRedisSnapshot(t *testing.T, redisBlock, want, notWant string, seed uint64) {
	e := setup(t, schema, rules+redisBlock)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)
	// The snapshot is taken while the workload runs and the daemon applies
	// it: its applied position and its keys are those of one instant.
	reached, done := e.workloadInBackground(faultWorkload(seed, faultStatements), faultStatements/3)
	e.waitChan("a third of the workload committed", reached, done, 60*time.Second)
	if err := e.rdb.Save(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	e.waitWorkload(done, 60*time.Second)
	e.quiesce(d)
	e.checkCache()
	latest, _ := e.appliedPosition()

	// Redis comes back from the snapshot taken before the workload: stale
	// values and an older applied position. The daemon is frozen meanwhile
	// so that the test sees the stale state it must heal.
	thaw := d.freeze()
	e.redis.Stop(t)
	e.redis.Start(t)
	old, ok := e.appliedPosition()
	if !ok || old >= latest {
		t.Fatalf("the snapshot's applied position is %s (present %v), want one below %s", old, ok, latest)
	}
	e.expectStale("Redis restored from the snapshot")
	restored := time.Now()
	thaw()

	testenv.Eventually(t, 15*time.Second, "the daemon heals the restored cache", func() (bool, string) {
		d.alive("healing")
		return strings.Contains(d.log.String(), want), ""
	})
	t.Logf("healed %s after the restore: %s", time.Since(restored).Round(time.Millisecond), logLines(d.log.String(), want)[0])
	if l := logLines(d.log.String(), notWant); len(l) > 0 {
		t.Errorf("the daemon took the other path: %s", l[0])
	}
	e.quiesce(d)
	if n := len(logLines(d.log.String(), `"starting"`)); n != 1 {
		t.Errorf("the daemon logged %d starts, want 1 (heal without restart)", n)
	}
	e.checkCache()
}

// awaitStandby waits until an instance thawed after a takeover (its log
// from offset since) found its lease expired and stands by.
func (d *daemon) awaitStandby(since int) {
	testenv.Eventually(d.e.t, 30*time.Second, "the thawed instance stands by", func() (bool, string) {
		d.alive("thawed instance")
		after := d.log.String()[since:]
		return strings.Contains(after, "INSTANCE LOCK LOST") && strings.Contains(after, "standing by as passive"), after
	})
}

// fencedOff checks, once the new active instance applied groups, that the
// old one (frozen or cut off when it lost the lock) logged none of
// thawedMustNotLog from offset since, and that the new one never found its
// applied position moved under it.
func (e *env) fencedOff(old, active *daemon, since int, who string) {
	e.t.Helper()
	after := old.log.String()[since:]
	for _, bad := range thawedMustNotLog {
		if l := logLines(after, bad); len(l) > 0 {
			e.t.Errorf("the %s logged %q after the other one took over: %s", who, bad, l[0])
		}
	}
	if l := logLines(active.log.String(), "REDIS RESET"); len(l) > 0 {
		e.t.Errorf("the new active instance saw its applied position moved under it: %s", l[0])
	}
}

// thawedMustNotLog are the log lines an instance that lost the instance lock
// while frozen or cut off must never write once it runs again: each says it
// streamed, wrote Redis or confirmed. "applied" is not among them: it is
// written after a group's Redis write and journal append, so a freeze that
// strikes between the last fence check and that line leaves it to be written
// after the thaw for a group applied before the freeze.
var thawedMustNotLog = []string{`"streaming"`, "flushing key space", "REDIS RESET", "replayed the journal", "SLOT", "takes over", `"stopped"`}
