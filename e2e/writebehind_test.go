package e2e

// Write-behind end to end (issue 16): the test appends entries to a
// write_behind stream with plain XADD, as any producer would, and the built
// binary drains them into PostgreSQL while a fault happens: a crash between
// a batch's commit and its acknowledgement, a Redis crash (AOF on), a
// PostgreSQL outage under load, poison entries, a second worker, and
// direct SQL updates of the same rows while the table's own WAL refreshes
// the cache.
//
// Every case ends with the same proof. The rows equal the last write of
// every key, in stream order (each entry carries a write_seq, unique and
// increasing), and no entry was applied twice: a trigger appends (id,
// write_seq) to wb_audit for every row the worker inserts or updates, and
// no pair may appear twice. Within a batch the worker merges the writes to
// one key, so not every write_seq is audited: only duplicates fail.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
)

// wbSchema is the write_behind table, its audit and an unrelated table for
// the rule every rules file needs. sql_seq counts the direct SQL updates
// (TestWriteBehindClosingTheLoop); those run with wbtest.direct = on, which
// keeps them out of the audit, so that the audit holds the worker's writes
// only.
const wbSchema = `
CREATE TABLE counters (
  id        bigint PRIMARY KEY,
  hits      bigint NOT NULL CHECK (hits >= 0),
  write_seq bigint NOT NULL,
  note      text,
  sql_seq   bigint NOT NULL DEFAULT 0
);
CREATE TABLE wb_audit (id bigint NOT NULL, write_seq bigint NOT NULL);
CREATE FUNCTION wb_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('wbtest.direct', true) IS DISTINCT FROM 'on' THEN
    INSERT INTO wb_audit VALUES (NEW.id, NEW.write_seq);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER counters_audit AFTER INSERT OR UPDATE ON counters FOR EACH ROW EXECUTE FUNCTION wb_audit();
CREATE TABLE unrelated (id bigint PRIMARY KEY, v text);
`

const wbStreamName = "wb:counters"

// wbRules is a write_behind block for counters with the given batch size,
// after extra rules (the unrelated table's rule when extra is "").
func wbRules(batchSize int, extra string) string {
	if extra == "" {
		extra = `
rule "unrelated" {
  table = "public.unrelated"
  invalidate { keys = ["unrelated:${row.id}"] }
}
`
	}
	return extra + fmt.Sprintf(`
write_behind "counters" {
  stream      = %q
  table       = "public.counters"
  key_columns = ["id"]
  batch_size  = %d
}
`, wbStreamName, batchSize)
}

// wbWrite is one entry's row; deleted marks an op delete entry.
type wbWrite struct {
	ID, Hits, Seq int64 // Seq is the column write_seq
	Note          string
	deleted       bool
}

// row is the entry's row field: the whole row, or the key for a delete.
// An upsert's is also what the application caches: the bytes the refresh
// rule's jsonencode writes for the row (keys in alphabetical order, no
// spaces; docs/rules.md, Rules for a write_behind table).
func (w wbWrite) row() string {
	if w.deleted {
		return fmt.Sprintf(`{"id":%d}`, w.ID)
	}
	b, err := json.Marshal(map[string]any{"id": w.ID, "hits": w.Hits, "write_seq": w.Seq, "note": w.Note})
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (w wbWrite) op() string {
	if w.deleted {
		return "delete"
	}
	return "upsert"
}

// wbStream is what a test appended to the stream: the last write to every
// key in stream order, and the last entry's ID. One producer at a time
// appends (stream order is then write_seq order).
type wbStream struct {
	mu      sync.Mutex
	rng     *rand.Rand
	seq     int64
	last    map[int64]wbWrite
	lastID  string
	entries int
}

func newWBStream(seed uint64) *wbStream {
	return &wbStream{rng: rand.New(rand.NewPCG(seed, 16)), last: map[int64]wbWrite{}}
}

// next makes a write to one of keys ids (0..keys-1): a delete one time in
// deleteOneIn (never when 0), else an upsert whose note is noteSize bytes.
func (s *wbStream) next(keys, deleteOneIn, noteSize int) wbWrite {
	return s.write(s.key(keys), deleteOneIn, noteSize)
}

// key picks one of keys ids.
func (s *wbStream) key(keys int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Int64N(int64(keys))
}

// write makes a write to key id with the next write_seq (see next).
func (s *wbStream) write(id int64, deleteOneIn, noteSize int) wbWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	w := wbWrite{ID: id, Seq: s.seq, Hits: s.rng.Int64N(1000)}
	if deleteOneIn > 0 && s.rng.IntN(deleteOneIn) == 0 {
		w.deleted = true
		return w
	}
	w.Note = fmt.Sprintf("seq %d ", s.seq)
	if pad := noteSize - len(w.Note); pad > 0 {
		w.Note += strings.Repeat("n", pad)
	}
	return w
}

// record notes that w was appended as entry id.
func (s *wbStream) record(w wbWrite, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last[w.ID] = w
	s.lastID = id
	s.entries++
}

func (s *wbStream) snapshot() (last map[int64]wbWrite, lastID string, entries int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	last = make(map[int64]wbWrite, len(s.last))
	for k, v := range s.last {
		last[k] = v
	}
	return last, s.lastID, s.entries
}

// produce appends n writes to keys ids in one pipeline (in order).
func (e *env) produce(s *wbStream, n, keys, deleteOneIn, noteSize int) {
	e.t.Helper()
	ws := make([]wbWrite, n)
	for i := range ws {
		ws[i] = s.next(keys, deleteOneIn, noteSize)
	}
	if err := e.appendWrites(s, ws); err != nil {
		e.t.Fatal(err)
	}
}

// appendWrites XADDs the writes in one pipeline and records those Redis
// acknowledged.
func (e *env) appendWrites(s *wbStream, ws []wbWrite) error {
	cmds := make([]*redis.StringCmd, len(ws))
	_, err := e.rdb.Pipelined(e.ctx, func(p redis.Pipeliner) error {
		for i, w := range ws {
			cmds[i] = p.XAdd(e.ctx, &redis.XAddArgs{Stream: wbStreamName, Values: []any{"op", w.op(), "row", w.row()}})
		}
		return nil
	})
	for i, c := range cmds {
		if c.Err() != nil {
			break
		}
		s.record(ws[i], c.Val())
	}
	if err != nil {
		return fmt.Errorf("XADD %s: %w", wbStreamName, err)
	}
	return nil
}

// xadd appends one raw entry (a bad one: not recorded as a write).
func (e *env) xadd(op, row string) string {
	e.t.Helper()
	id, err := e.rdb.XAdd(e.ctx, &redis.XAddArgs{Stream: wbStreamName, Values: []any{"op", op, "row", row}}).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// producer appends per writes (in one pipeline) every interval in the
// background until the returned stop is called (stop waits for it and
// fails the test on an error).
func (e *env) producer(s *wbStream, interval time.Duration, per, keys, noteSize int) (stop func()) {
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- nil
				return
			case <-tick.C:
			}
			ws := make([]wbWrite, per)
			for i := range ws {
				ws[i] = s.next(keys, 0, noteSize)
			}
			if err := e.appendWrites(s, ws); err != nil {
				done <- err
				return
			}
		}
	}()
	stopped := false
	stop = func() {
		e.t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			e.t.Fatalf("producer: %v", err)
		}
	}
	e.t.Cleanup(func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	})
	return stop
}

// wbGroup returns the stream's consumer group "cachesync" (ok false while
// the stream or the group does not exist).
func (e *env) wbGroup() (g redis.XInfoGroup, ok bool) {
	e.t.Helper()
	groups, err := e.rdb.XInfoGroups(e.ctx, wbStreamName).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return g, false
		}
		e.t.Fatalf("XINFO GROUPS %s: %v", wbStreamName, err)
	}
	for _, g := range groups {
		if g.Name == "cachesync" {
			return g, true
		}
	}
	return g, false
}

// waitGroup waits until a worker created the consumer group.
func (e *env) waitGroup(ds ...*daemon) {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, "the worker creates the consumer group of "+wbStreamName, func() (bool, string) {
		for _, d := range ds {
			d.alive("starting the worker")
		}
		_, ok := e.wbGroup()
		return ok, "no group cachesync"
	})
}

// wbRows reads the counters table.
func (e *env) wbRows() map[int64]wbWrite {
	e.t.Helper()
	rows, err := e.db.Query(e.ctx, `SELECT id, hits, write_seq, coalesce(note, '') FROM counters`)
	if err != nil {
		e.t.Fatal(err)
	}
	got := map[int64]wbWrite{}
	var w wbWrite
	if _, err := pgx.ForEachRow(rows, []any{&w.ID, &w.Hits, &w.Seq, &w.Note}, func() error {
		got[w.ID] = w
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	return got
}

// rowMismatches compares the table with the last write of every key.
func rowMismatches(got, last map[int64]wbWrite) []string {
	var bad []string
	for id, w := range last {
		g, ok := got[id]
		switch {
		case w.deleted && ok:
			bad = append(bad, fmt.Sprintf("id %d: row with write_seq %d, want none (deleted by write_seq %d)", id, g.Seq, w.Seq))
		case !w.deleted && !ok:
			bad = append(bad, fmt.Sprintf("id %d: no row, want write_seq %d", id, w.Seq))
		case !w.deleted && (g.Seq != w.Seq || g.Hits != w.Hits || g.Note != w.Note):
			bad = append(bad, fmt.Sprintf("id %d: write_seq %d hits %d, want write_seq %d hits %d", id, g.Seq, g.Hits, w.Seq, w.Hits))
		}
	}
	for id, g := range got {
		if _, ok := last[id]; !ok {
			bad = append(bad, fmt.Sprintf("id %d: row with write_seq %d that no write made", id, g.Seq))
		}
	}
	sort.Strings(bad)
	return bad
}

// drained waits until every entry appended so far was delivered and
// acknowledged and the rows equal the last write of every key, then checks
// the audit; the daemons must stay up meanwhile.
func (e *env) drained(s *wbStream, timeout time.Duration, ds ...*daemon) {
	e.t.Helper()
	last, lastID, entries := s.snapshot()
	testenv.Eventually(e.t, timeout, fmt.Sprintf("all %d entries up to %s applied", entries, lastID), func() (bool, string) {
		for _, d := range ds {
			d.alive("draining")
		}
		g, ok := e.wbGroup()
		if !ok {
			return false, "no consumer group"
		}
		if g.LastDeliveredID != lastID || g.Pending != 0 {
			return false, fmt.Sprintf("group delivered up to %s with %d pending, want %s with 0", g.LastDeliveredID, g.Pending, lastID)
		}
		if bad := rowMismatches(e.wbRows(), last); len(bad) > 0 {
			return false, fmt.Sprintf("%d rows differ from their last write: %s", len(bad), strings.Join(head(bad, 5), "; "))
		}
		return true, ""
	})
	e.appliedOnce()
}

// appliedOnce fails the test if the audit holds an (id, write_seq) twice:
// an entry applied twice.
func (e *env) appliedOnce() {
	e.t.Helper()
	rows, err := e.db.Query(e.ctx, `SELECT id, write_seq, count(*) FROM wb_audit GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1, 2`)
	if err != nil {
		e.t.Fatal(err)
	}
	var dup []string
	var id, seq, n int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &seq, &n}, func() error {
		dup = append(dup, fmt.Sprintf("(id %d, write_seq %d) ×%d", id, seq, n))
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	if len(dup) > 0 {
		e.t.Errorf("%d entries were applied more than once: %s", len(dup), strings.Join(head(dup, 10), ", "))
		return
	}
	e.t.Logf("audit: %d row writes by the worker, none twice", e.audited())
}

// audited counts the row writes the worker made.
func (e *env) audited() int64 {
	e.t.Helper()
	var n int64
	if err := e.db.QueryRow(e.ctx, `SELECT count(*) FROM wb_audit`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// waitAudited waits until the worker wrote at least n rows.
func (e *env) waitAudited(n int64, ds ...*daemon) {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, fmt.Sprintf("the worker wrote %d rows", n), func() (bool, string) {
		for _, d := range ds {
			d.alive("applying")
		}
		got := e.audited()
		return got >= n, fmt.Sprintf("%d written", got)
	})
}

// --- 1. kill -9 between a batch's commit and its acknowledgement ----------

// TestWriteBehindKillMidBatch crashes the worker at its first batch, after
// the commit (the entries are committed and still pending in the group) and
// before it; a new process, reading batches of another size, drains
// everything, the crashed batch at most once.
func TestWriteBehindKillMidBatch(t *testing.T) {
	for i, point := range []string{"write-behind-after-commit", "write-behind-before-commit"} {
		t.Run(point, func(t *testing.T) { testWriteBehindKill(t, point, uint64(1601+i)) })
	}
}

func testWriteBehindKill(t *testing.T, point string, seed uint64) {
	e := setup(t, wbSchema, wbRules(50, ""))
	s := newWBStream(seed)
	// 2000 writes over 1000 keys: many keys are written once, so that an
	// entry lost is a row missing, not one a later write hides.
	const keys = 1000
	e.produce(s, 1000, keys, 10, 32)

	crashing := e.start("CACHESYNC_FAILPOINT=" + point)
	crashing.waitExit(60 * time.Second)
	if !strings.Contains(crashing.log.String(), "failpoint "+point) {
		t.Fatalf("the daemon exited, but not at failpoint %s:\n%s", point, crashing.log.String())
	}
	// The crash came at the first batch, before any acknowledgement: every
	// entry delivered is still pending.
	g, ok := e.wbGroup()
	if !ok || g.Pending == 0 || g.Pending != g.EntriesRead {
		t.Fatalf("after the crash at %s the group has %d entries pending of %d delivered (present %v): entries were acknowledged before their commit", point, g.Pending, g.EntriesRead, ok)
	}
	written := e.audited()
	switch point {
	case "write-behind-after-commit":
		if written == 0 {
			t.Fatalf("crashed after the commit, but no row was written")
		}
	case "write-behind-before-commit":
		if written != 0 {
			t.Fatalf("crashed before the commit, but %d rows were written", written)
		}
	}
	t.Logf("crashed at %s: %d entries pending, %d rows written", point, g.Pending, written)

	// The next worker reads 80 entries at a time: its first batch holds the
	// crashed one's 50 and entries never applied, so only skipping what is
	// at or below the recorded ID keeps the 50 from being applied again.
	if err := os.WriteFile(e.rules, []byte(strings.Replace(mustRead(t, e.rules), "batch_size  = 50", "batch_size  = 80", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	// More entries while no worker runs, and while the next one drains.
	e.produce(s, 500, keys, 10, 32)
	d := e.start()
	e.produce(s, 500, keys, 10, 32)
	e.drained(s, 60*time.Second, d)
	// The crashed batch (the first 50 entries) was skipped once committed,
	// never when not.
	want := 0.0
	if point == "write-behind-after-commit" {
		want = 50
	}
	if got := d.wbEntries("skipped"); got != want {
		t.Errorf("the restarted worker skipped %.0f entries, want %.0f (the crashed batch's, when it had committed)", got, want)
	}
}

// wbEntries is cachesync_write_behind_entries_total of the counters block
// for result (applied, skipped or dead).
func (d *daemon) wbEntries(result string) float64 {
	d.e.t.Helper()
	return d.scrape().value("cachesync_write_behind_entries_total", "name", "counters", "result", result)
}

// --- 2. Redis crashes mid-drain, AOF with appendfsync always ---------------

// TestWriteBehindRedisRestartAOF kills Redis (SIGKILL) while the worker
// holds a batch it read and cannot commit yet (the table is locked), and
// starts it again on the same port and directory: with appendfsync always
// the stream, the group and its pending entries come back, and every entry
// is applied exactly once.
func TestWriteBehindRedisRestartAOF(t *testing.T) {
	redisAOF := testenv.StartRedisArgs(t, "--appendonly", "yes", "--appendfsync", "always")
	e := setupWith(t, wbSchema, "", wbRules(100, ""), func(e *env) {
		e.redis, e.rdb, e.redisEnv = redisAOF, redisAOF.Client(t), "REDIS_URL="+redisAOF.URL()
	})
	s := newWBStream(1620)
	d := e.start()
	e.produce(s, 300, 200, 10, 64)
	e.drained(s, 60*time.Second, d)

	// The worker reads the next batch and blocks on the table.
	locker, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.Background())
	tx, err := locker.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }() // a no-op once committed
	if _, err := tx.Exec(e.ctx, `LOCK TABLE counters IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	e.produce(s, 2000, 200, 10, 64)
	testenv.Eventually(t, 30*time.Second, "the worker holds a batch", func() (bool, string) {
		d.alive("reading")
		g, _ := e.wbGroup()
		return g.Pending > 0, fmt.Sprintf("%d pending", g.Pending)
	})
	// Frozen, the worker reads no more (it reads ahead while a batch
	// applies): the group the test sees is the one Redis must bring back.
	thaw := d.freeze()
	before, _ := e.wbGroup()
	xlen := e.rdb.XLen(e.ctx, wbStreamName).Val()
	e.redis.Stop(t)
	e.redis.Start(t)
	thaw()
	after, ok := e.wbGroup()
	if !ok || after.Pending != before.Pending || after.LastDeliveredID != before.LastDeliveredID {
		t.Fatalf("after the restart the group is %+v (present %v), want %+v: the AOF lost what Redis acknowledged", after, ok, before)
	}
	if n := e.rdb.XLen(e.ctx, wbStreamName).Val(); n != xlen {
		t.Fatalf("after the restart the stream holds %d entries, want %d", n, xlen)
	}
	t.Logf("Redis restarted with the stream (%d entries) and the group (%d pending up to %s)", xlen, after.Pending, after.LastDeliveredID)
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.produce(s, 500, 200, 10, 64)
	e.drained(s, 60*time.Second, d)
	if n := len(logLines(d.log.String(), `"starting"`)); n != 1 {
		t.Errorf("the daemon logged %d starts, want 1 (the worker reconnects to Redis by itself)", n)
	}
}

// --- 3. PostgreSQL down for 30 s under a steady producer -------------------

// wbOutage is how long PostgreSQL stays down (issue 16: 30 s).
const wbOutage = 30 * time.Second

// TestWriteBehindPostgresDown stops PostgreSQL for 30 s while a producer
// appends 100 entries of 16 KiB a second: the backlog grows in Redis, the daemon's peak RSS
// does not grow with it (the worker holds one batch), and once PostgreSQL
// is back everything drains exactly once.
// The worker runs in `cachesync run` (stopped and started again with the
// replication session) and alone in `cachesync write-behind` (its own
// retries), in parallel.
func TestWriteBehindPostgresDown(t *testing.T) {
	if testing.Short() {
		t.Skip("PostgreSQL down for 30 s: skipped with -short")
	}
	t.Run("run", func(t *testing.T) { testWriteBehindPostgresDown(t, 1630, (*env).start) })
	t.Run("write-behind", func(t *testing.T) { testWriteBehindPostgresDown(t, 1631, (*env).startWriteBehind) })
}

func testWriteBehindPostgresDown(t *testing.T, seed uint64, start func(e *env, extraEnv ...string) *daemon) {
	e, pg := setupPrivate(t, wbSchema, wbRules(100, ""))
	s := newWBStream(seed)
	d := start(e)
	e.waitGroup(d)
	const keys, noteSize = 500, 16 << 10
	stop := e.producer(s, 20*time.Millisecond, 2, keys, noteSize)
	e.waitAudited(200, d)
	baseline := peakRSSKiB(d.cmd.Process.Pid)

	pg.Stop(t, "immediate")
	_, _, before := s.snapshot()
	lenBefore := e.rdb.XLen(e.ctx, wbStreamName).Val()
	down := time.Now()
	tick := time.NewTicker(time.Second)
	for time.Since(down) < wbOutage {
		<-tick.C
		d.alive("PostgreSQL down")
	}
	tick.Stop()
	_, _, during := s.snapshot()
	lenAfter := e.rdb.XLen(e.ctx, wbStreamName).Val()
	g, _ := e.wbGroup()
	peak := peakRSSKiB(d.cmd.Process.Pid)
	backlogMiB := float64((during-before)*noteSize) / (1 << 20)
	t.Logf("PostgreSQL down %s: %d entries appended (%.0f MiB), stream %d → %d entries, %d pending; peak RSS %.1f → %.1f MiB",
		wbOutage, during-before, backlogMiB, lenBefore, lenAfter, g.Pending, float64(baseline)/1024, float64(peak)/1024)
	if grown := lenAfter - lenBefore; grown < int64(during-before)-200 {
		t.Errorf("the stream grew by %d entries while %d were appended and PostgreSQL was down: entries left Redis unapplied", grown, during-before)
	}
	// The worker holds at most three batches of 100 × 16 KiB; the backlog
	// is about 45 MiB, which a worker that read on would hold at least once
	// more in its heap.
	if grown := float64(peak-baseline) / 1024; grown > 32 || backlogMiB < 32 {
		t.Errorf("peak RSS grew by %.1f MiB over a %.0f MiB backlog: want under 32 MiB over at least 32 MiB", grown, backlogMiB)
	}

	pg.Start(t)
	e.reconnect()
	// The producer goes on until the worker applies again.
	e.waitAudited(e.audited()+200, d)
	stop()
	e.drained(s, 90*time.Second, d)
}

// --- 4. Poison entries ------------------------------------------------------

// TestWriteBehindPoisonEntry puts five entries that can never apply among
// good ones in one batch: they go to wb:counters:dead with their error, the
// good ones of the batch apply, and the worker goes on with the next batch.
func TestWriteBehindPoisonEntry(t *testing.T) {
	e := setup(t, wbSchema, wbRules(500, ""))
	s := newWBStream(1640)
	good := func(n int) {
		ws := make([]wbWrite, n)
		for i := range ws {
			ws[i] = s.write(int64(i%5), 0, 16)
		}
		if err := e.appendWrites(s, ws); err != nil {
			t.Fatal(err)
		}
	}
	// Each bad entry is on a key of its own (10..14), between good writes to
	// keys 0..4, and what its error must name.
	type poison struct {
		row, names string
	}
	bad := map[string]poison{}
	for _, p := range []poison{
		{`{"id": 10, "hits": 1, "write_seq": 1`, "json"},
		{`{"hits": 1, "write_seq": 2, "note": "no key"}`, "id"},
		{`{"id": 12, "hits": "abc", "write_seq": 3}`, "abc"},
		{`{"id": 13, "hits": -1, "write_seq": 4}`, "counters_hits_check"},
		{`{"id": 14, "hits": 1, "write_seq": 5, "nope": 1}`, "nope"},
	} {
		good(3)
		bad[e.xadd("upsert", p.row)] = p
	}
	good(3)

	d := e.start()
	e.drained(s, 60*time.Second, d)
	checkDead := func(bad map[string]poison) {
		t.Helper()
		dead, err := e.rdb.XRange(e.ctx, wbStreamName+":dead", "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, m := range dead {
			id, _ := m.Values["id"].(string)
			p, ok := bad[id]
			switch {
			case !ok:
				t.Errorf("dead letter %s is for entry %q, not a bad one: %v", m.ID, id, m.Values)
				continue
			case seen[id]:
				t.Errorf("entry %s was dead-lettered twice", id)
			}
			seen[id] = true
			errText, _ := m.Values["error"].(string)
			if m.Values["op"] != "upsert" || m.Values["row"] != p.row {
				t.Errorf("dead letter of %s carries op %v row %v, want upsert %s", id, m.Values["op"], m.Values["row"], p.row)
			}
			if !strings.Contains(strings.ToLower(errText), strings.ToLower(p.names)) {
				t.Errorf("dead letter of %s (row %s): error %q does not name %q", id, p.row, errText, p.names)
			}
			if !strings.Contains(d.log.String(), id) {
				t.Errorf("entry %s was dead-lettered without a log line naming it", id)
			}
		}
		for id, p := range bad {
			if !seen[id] {
				t.Errorf("bad entry %s (row %s) is not in %s:dead", id, p.row, wbStreamName)
			}
		}
		if len(dead) > 0 {
			t.Logf("%d dead letters, e.g. %v", len(dead), dead[0].Values)
		}
	}
	checkDead(bad)

	// The worker goes on: the next batch, with one more bad entry.
	good(5)
	bad[e.xadd("upsert", `{"id": 15, "hits": 1.5, "write_seq": 6}`)] = poison{`{"id": 15, "hits": 1.5, "write_seq": 6}`, "bigint"}
	good(5)
	e.drained(s, 60*time.Second, d)
	checkDead(bad)
	if got := d.wbEntries("dead"); got != float64(len(bad)) {
		t.Errorf("cachesync_write_behind_entries_total{result=\"dead\"} is %.0f, want %d", got, len(bad))
	}
}

// --- 5. Two workers on one stream ------------------------------------------

// startWriteBehind runs `cachesync write-behind`: the workers alone.
func (e *env) startWriteBehind(extraEnv ...string) *daemon {
	e.t.Helper()
	return e.launchCommand(binary, []string{"write-behind", "--config", e.rules, "--log-level", "debug"}, extraEnv)
}

// consumers returns the group's consumers by name with their pending count.
func (e *env) consumers() map[string]int64 {
	e.t.Helper()
	cs, err := e.rdb.XInfoConsumers(e.ctx, wbStreamName, "cachesync").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, c := range cs {
		out[c.Name] = c.Pending
	}
	return out
}

// consumerOf reports whether a consumer name is process pid's (the default
// name carries the process ID).
func consumerOf(name string, pid int) bool {
	return regexp.MustCompile(`(^|\D)` + strconv.Itoa(pid) + `(\D|$)`).MatchString(name)
}

// TestWriteBehindTwoInstances runs `cachesync run` and `cachesync
// write-behind` on one stream: only one reads it (the group has a single
// consumer) while a producer appends, and the other says it stands by;
// killing the first, the other takes over, claims what the dead one held
// and drains the rest, exactly once.
func TestWriteBehindTwoInstances(t *testing.T) {
	e := setup(t, wbSchema, wbRules(50, ""))
	s := newWBStream(1650)
	a := e.start()
	b := e.startWriteBehind()
	e.waitGroup(a, b)
	stop := e.producer(s, 2*time.Millisecond, 1, 300, 32)
	e.waitAudited(500, a, b)
	e.waitAudited(e.audited()+500, a, b)

	cs := e.consumers()
	if len(cs) != 1 {
		t.Fatalf("the group has %d consumers, want 1 (only one worker drains): %v", len(cs), cs)
	}
	var name string
	for n := range cs {
		name = n
	}
	var active, standby *daemon
	switch {
	case consumerOf(name, a.cmd.Process.Pid):
		active, standby = a, b
	case consumerOf(name, b.cmd.Process.Pid):
		active, standby = b, a
	default:
		t.Fatalf("consumer %q is neither run (pid %d) nor write-behind (pid %d)", name, a.cmd.Process.Pid, b.cmd.Process.Pid)
	}
	t.Logf("%s drains (consumer %s); %s stands by", active.cmd.Args[1], name, standby.cmd.Args[1])
	if len(logLines(standby.log.String(), "standing by")) == 0 {
		t.Errorf("the %s that does not drain does not say it stands by:\n%s", standby.cmd.Args[1], standby.log.String())
	}

	active.kill()
	e.waitAudited(e.audited()+500, standby)
	stop()
	e.drained(s, 60*time.Second, standby)
	// The survivor claimed what the killed worker held.
	for c, pending := range e.consumers() {
		if c == name && pending > 0 {
			t.Errorf("the killed worker's consumer %s still holds %d entries", name, pending)
		}
		if c != name && !consumerOf(c, standby.cmd.Process.Pid) {
			t.Errorf("consumer %s is neither the killed worker's nor the survivor's (pid %d)", c, standby.cmd.Process.Pid)
		}
	}
}

// --- 6. Closing the loop ----------------------------------------------------

// loopRules: the recommended rule for a write_behind table, a refresh whose
// value is what the application writes to the key.
const loopRules = `
rule "counter" {
  table = "public.counters"
  refresh {
    key   = "counter:${row.id}"
    value = jsonencode({id = row.id, hits = row.hits, write_seq = row.write_seq, note = row.note})
    ttl   = "1h"
  }
}
`

// TestWriteBehindClosingTheLoop makes a burst of write-behind writes (SET
// the key and XADD the entry in one MULTI, as cacheaside.WriteBehind does)
// while direct SQL updates change the same rows; the table's WAL comes back
// through the refresh rule. Afterwards every row holds its last write
// (write_seq) and every direct update (sql_seq counts them), every cached
// key equals its row's refresh value, and nothing was applied twice.
func TestWriteBehindClosingTheLoop(t *testing.T) {
	const keys, writes, updates = 50, 3000, 600
	e := setup(t, wbSchema, wbRules(100, loopRules))
	// Every row exists (for the direct updates) before the daemon streams;
	// the test's own session is kept out of the audit.
	e.exec(`SET wbtest.direct = 'on'`)
	e.exec(`INSERT INTO counters (id, hits, write_seq, note) SELECT g, 0, 0, 'initial' FROM generate_series(0, $1 - 1) g`, keys)
	s := newWBStream(1660)
	for id := range int64(keys) {
		s.last[id] = wbWrite{ID: id, Note: "initial"}
	}
	d := e.start()
	e.waitStreaming(d)

	// Direct updates, on their own connection, while the application writes.
	sqlDone := make(chan error, 1)
	sqlCount := map[int64]int64{}
	go func() {
		sqlDone <- func() error {
			conn, err := pgx.Connect(e.ctx, e.dbURL)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(e.ctx, `SET wbtest.direct = 'on'`); err != nil {
				return err
			}
			rng := rand.New(rand.NewPCG(1661, 16))
			for range updates {
				id := rng.Int64N(keys)
				if _, err := conn.Exec(e.ctx, `UPDATE counters SET sql_seq = sql_seq + 1 WHERE id = $1`, id); err != nil {
					return err
				}
				sqlCount[id]++
			}
			return nil
		}()
	}()
	writeBehind := func(w wbWrite) {
		t.Helper()
		var add *redis.StringCmd
		_, err := e.rdb.TxPipelined(e.ctx, func(p redis.Pipeliner) error {
			p.Set(e.ctx, fmt.Sprintf("counter:%d", w.ID), w.row(), 0)
			add = p.XAdd(e.ctx, &redis.XAddArgs{Stream: wbStreamName, Values: []any{"op", "upsert", "row", w.row()}})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		s.record(w, add.Val())
	}
	// Every key once, then random keys, half of the writes on five hot ones.
	for i := range writes {
		id := int64(i)
		if i >= keys {
			id = s.key(keys)
			if id%2 == 0 {
				id %= 5
			}
		}
		writeBehind(s.write(id, 0, 16))
	}
	if err := <-sqlDone; err != nil {
		t.Fatal(err)
	}
	e.drained(s, 60*time.Second, d)
	e.caughtUp(d, 60*time.Second)

	var stale []string
	rows, err := e.db.Query(e.ctx, `SELECT id, hits, write_seq, note, sql_seq FROM counters ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var w wbWrite
	var sqlSeq int64
	if _, err := pgx.ForEachRow(rows, []any{&w.ID, &w.Hits, &w.Seq, &w.Note, &sqlSeq}, func() error {
		if sqlSeq != sqlCount[w.ID] {
			stale = append(stale, fmt.Sprintf("id %d: sql_seq %d, want %d: a write-behind upsert overwrote a direct update", w.ID, sqlSeq, sqlCount[w.ID]))
		}
		raw, err := e.rdb.Get(e.ctx, fmt.Sprintf("counter:%d", w.ID)).Result()
		if errors.Is(err, redis.Nil) {
			stale = append(stale, fmt.Sprintf("counter:%d: missing, row has write_seq %d", w.ID, w.Seq))
			return nil
		}
		if err != nil {
			return err
		}
		if want := w.row(); raw != want {
			stale = append(stale, fmt.Sprintf("counter:%d: %s, want the row's %s", w.ID, raw, want))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(stale) > 0 {
		t.Errorf("%d keys or rows differ after the burst:\n%s", len(stale), strings.Join(head(stale, 10), "\n"))
	}
	t.Logf("%d write-behind writes and %d direct updates on %d keys: every row holds both, every key its row", writes, updates, keys)
}
