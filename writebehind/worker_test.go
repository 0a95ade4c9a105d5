package writebehind

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// rig is a table with an audit trigger that records every write the
// worker makes, so that a test can count applications.
type rig struct {
	t   *testing.T
	url string
	db  *pgx.Conn
	rdb *redis.Client
}

func newRig(t *testing.T) *rig {
	ctx := context.Background()
	url := testenv.Database(t)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	if _, err := db.Exec(ctx, `
CREATE TABLE counters (id int PRIMARY KEY, hits int NOT NULL CHECK (hits >= 0), note text, seq int);
CREATE TABLE audit (id int, seq int);
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (NEW.id, NEW.seq); RETURN NEW; END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON counters FOR EACH ROW EXECUTE FUNCTION audit();`); err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, url: url, db: db, rdb: testenv.StartRedis(t).Client(t)}
}

func (r *rig) options(o Options) Options {
	if o.Spec == nil {
		o.Spec = testSpec()
	}
	o.Redis = r.rdb
	o.Connect = func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, r.url) }
	o.Logger = zerolog.New(zerolog.NewTestWriter(r.t))
	return o
}

// start runs a worker until the test ends (or stop is called).
func (r *rig) start(o Options) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, r.options(o)) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	r.t.Cleanup(func() { _ = stop() })
	return stop
}

func (r *rig) add(op, row string) string {
	id, err := r.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "wb", Values: []any{FieldOp, op, FieldRow, row}}).Result()
	if err != nil {
		r.t.Fatal(err)
	}
	return id
}

// waitApplied polls until the recorded position reaches id.
func (r *rig) waitApplied(id string) {
	r.t.Helper()
	want, _ := ParseID(id)
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := ReadPosition(context.Background(), r.db, "wb")
		if err == nil && got != "" {
			if g, _ := ParseID(got); !g.Less(want) {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("position %q (%v) did not reach %s", got, err, id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *rig) query(sql string) string {
	var s string
	if err := r.db.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		r.t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func (r *rig) noDuplicateApplications() {
	r.t.Helper()
	if dup := r.query(`SELECT count(*)::text FROM (SELECT id, seq FROM audit GROUP BY 1, 2 HAVING count(*) > 1) d`); dup != "0" {
		r.t.Errorf("%s (id, seq) pairs were applied more than once", dup)
	}
}

// TestWorkerAppliesInOrder: upserts and deletes land as the last write per
// key, the stream is acknowledged and trimmed, and the position recorded.
func TestWorkerAppliesInOrder(t *testing.T) {
	r := newRig(t)
	for i := 1; i <= 300; i++ {
		r.add("upsert", fmt.Sprintf(`{"id":%d,"hits":%d,"seq":%d}`, i%50, i, i))
	}
	r.add("delete", `{"id":7}`)
	last := r.add("upsert", `{"id":8,"note":"partial","seq":302}`)
	r.start(Options{})
	r.waitApplied(last)
	if got := r.query(`SELECT string_agg(id || ':' || hits || ':' || coalesce(note, '-'), ',' ORDER BY id) FROM counters WHERE id IN (0, 7, 8, 49)`); got != "0:300:-,8:258:partial,49:299:-" {
		t.Errorf("rows: %s", got)
	}
	r.noDuplicateApplications()
	r.waitPendingZero()
	if n, err := r.rdb.XLen(context.Background(), "wb").Result(); err != nil || n != 0 {
		t.Errorf("%d entries left in the stream after the drain (%v): applied ones are trimmed", n, err)
	}
}

// TestWorkerDeadLetters: an entry that cannot apply goes to <stream>:dead
// with its error, and the rest of its batch applies.
func TestWorkerDeadLetters(t *testing.T) {
	r := newRig(t)
	r.add("upsert", `{"id":1,"hits":1,"seq":1}`)
	r.add("upsert", `{"id":2,"hits":"abc"}`) // type error
	r.add("upsert", `{"id":3,"hits":-1}`)    // CHECK violation
	r.add("upsert", `{"id":4,`)              // not JSON
	r.add("upsert", `{"hits":4}`)            // no key
	r.add("frobnicate", `{"id":5,"hits":5}`) // bad op
	last := r.add("upsert", `{"id":6,"hits":6,"seq":6}`)
	r.start(Options{})
	r.waitApplied(last)
	if got := r.query(`SELECT string_agg(id::text, ',' ORDER BY id) FROM counters`); got != "1,6" {
		t.Errorf("rows %s, want 1,6", got)
	}
	dead, err := r.rdb.XRange(context.Background(), DeadLetterStream("wb"), "-", "+").Result()
	if err != nil || len(dead) != 5 {
		t.Fatalf("dead letters %d (%v), want 5", len(dead), err)
	}
	var reasons []string
	for _, d := range dead {
		reasons = append(reasons, fmt.Sprint(d.Values[FieldError]))
		if d.Values[FieldID] == nil || d.Values[FieldRow] == nil && d.Values[FieldOp] == nil {
			t.Errorf("dead letter lacks the entry: %v", d.Values)
		}
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{"invalid input syntax for type integer", "check constraint", "not a JSON object", `key column "id"`, `field op is "frobnicate"`} {
		if !strings.Contains(all, want) {
			t.Errorf("no dead letter says %q:\n%s", want, all)
		}
	}
}

// TestWorkerCrashAfterCommit: a worker that dies after committing a batch
// and before acknowledging it leaves the entries pending; the next worker
// claims them, finds them at or below the recorded position and skips
// them: nothing is applied twice.
func TestWorkerCrashAfterCommit(t *testing.T) {
	r := newRig(t)
	var last string
	for i := 1; i <= 20; i++ {
		last = r.add("upsert", fmt.Sprintf(`{"id":%d,"hits":%d,"seq":%d}`, i, i, i))
	}
	crashed, release := make(chan struct{}), make(chan struct{})
	r.start(Options{Consumer: "first", Failpoint: func(name string) {
		if name == "write-behind-after-commit" {
			close(crashed)
			<-release // acknowledges nothing until the test ends
		}
	}})
	t.Cleanup(func() { close(release) })
	<-crashed
	// The first worker hangs holding its lock's connection: a second one
	// waits (the lock), so end the first's connection as a crash would.
	if _, err := r.db.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	pending, _ := r.rdb.XPending(context.Background(), "wb", Group).Result()
	if pending.Count != 20 {
		t.Fatalf("pending %d, want 20 (committed, not acknowledged)", pending.Count)
	}
	more := r.add("upsert", `{"id":1,"hits":100,"seq":100}`)
	r.start(Options{Consumer: "second"})
	r.waitApplied(more)
	r.waitPendingZero()
	if got := r.query(`SELECT count(*)::text FROM audit`); got != "21" {
		t.Errorf("%s applications, want 21 (20 once, then one more)", got)
	}
	r.noDuplicateApplications()
	_ = last
}

func (r *rig) waitPendingZero() {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p, err := r.rdb.XPending(context.Background(), "wb", Group).Result()
		if err == nil && p.Count == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("still pending: %+v %v", p, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWorkerOneDrains: a second worker on the same stream stands by while
// the first holds the stream's lock, and takes over when it stops.
func TestWorkerOneDrains(t *testing.T) {
	r := newRig(t)
	stop1 := r.start(Options{Consumer: "one"})
	first := r.add("upsert", `{"id":1,"hits":1,"seq":1}`)
	r.waitApplied(first)
	r.start(Options{Consumer: "two"})
	for i := 2; i <= 50; i++ {
		first = r.add("upsert", fmt.Sprintf(`{"id":%d,"hits":%d,"seq":%d}`, i, i, i))
	}
	r.waitApplied(first)
	consumers, err := r.rdb.XInfoConsumers(context.Background(), "wb", Group).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range consumers {
		if c.Name == "two" {
			t.Errorf("the standby worker joined the group: %+v", consumers)
		}
	}
	if err := stop1(); !errors.Is(err, context.Canceled) {
		t.Errorf("stop: %v", err)
	}
	last := r.add("upsert", `{"id":99,"hits":99,"seq":99}`)
	r.waitApplied(last)
	r.noDuplicateApplications()
}

// TestWorkerFenced: a worker whose fence refuses commits nothing and
// returns the fence's error; its entries stay pending for the next one.
func TestWorkerFenced(t *testing.T) {
	r := newRig(t)
	r.add("upsert", `{"id":1,"hits":1,"seq":1}`)
	lost := errors.New("lease lost")
	err := Run(context.Background(), r.options(Options{Fence: func() error { return lost }}))
	if !errors.Is(err, lost) {
		t.Fatalf("Run returned %v, want the fence's error", err)
	}
	if n := r.query(`SELECT count(*)::text FROM counters`); n != "0" {
		t.Errorf("%s rows written by a fenced worker", n)
	}
	if p, _ := r.rdb.XPending(context.Background(), "wb", Group).Result(); p.Count != 1 {
		t.Errorf("pending %d, want 1", p.Count)
	}
}

// TestWorkerPositionMoved: when the recorded position moves under a
// worker (another worker applied entries), its commit is refused by the
// compare-and-set; it starts over from the recorded position and skips
// what that covers.
func TestWorkerPositionMoved(t *testing.T) {
	r := newRig(t)
	first := r.add("upsert", `{"id":1,"hits":1,"seq":1}`)
	other, err := pgx.Connect(context.Background(), r.url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	calls := 0
	r.start(Options{Failpoint: func(name string) {
		if name != "write-behind-before-begin" {
			return
		}
		if calls++; calls == 2 {
			// The worker has read entry 2 and not begun its transaction:
			// someone else records it as applied.
			if _, err := other.Exec(context.Background(), `UPDATE `+PositionsTable+` SET last_id = $1`, r.lastEntry()); err != nil {
				t.Error(err)
			}
		}
	}})
	r.waitApplied(first)
	r.add("upsert", `{"id":2,"hits":2,"seq":2}`)
	r.waitApplied(r.lastEntry())
	last := r.add("upsert", `{"id":3,"hits":3,"seq":3}`)
	r.waitApplied(last)
	r.waitPendingZero()
	if got := r.query(`SELECT string_agg(id::text, ',' ORDER BY id) FROM counters`); got != "1,3" {
		t.Errorf("rows %s, want 1,3: the entry recorded by another worker is not applied again", got)
	}
}

// lastEntry is the stream's last entry ID.
func (r *rig) lastEntry() string {
	info, err := r.rdb.XInfoStream(context.Background(), "wb").Result()
	if err != nil {
		r.t.Fatal(err)
	}
	return info.LastGeneratedID
}
