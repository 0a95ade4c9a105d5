package e2e

// The backfill's consistency proof (issue 15, item 3; the argument is
// "Backfill" in docs/ARCHITECTURE.md). `cachesync backfill` loads a refresh
// rule's table in small chunks while `cachesync run` streams, and writers
// update, delete, insert and publish/unpublish random rows throughout, half
// of them just ahead of the backfill's position, where a chunk is about to
// read. Midway, one transaction is held committed-but-invisible by a
// synchronous standby that never answers: its commit record is in the WAL
// (its commit LSN below anything the backfill reads later), yet no snapshot
// sees it until the standby requirement is dropped. Its rows lie ahead of
// the backfill, which reads their old versions while it is held. Once the
// stream caught up, every product key must equal its current row's value,
// and no key may exist for a deleted or unpublished row; and, the backfill
// being done, every published row has its key.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/wal"
)

const (
	backfillRows  = 3000
	backfillChunk = 50
	// backfillRate (rows/s) stretches the backfill over about ten seconds,
	// so that the writers and the held transaction overlap many chunks.
	backfillRate    = 300
	backfillWriters = 4
)

// backfillSeed is BACKFILL_SEED, or the clock: every run logs it, and a
// failure reruns with BACKFILL_SEED=<seed>.
func backfillSeed(t *testing.T) uint64 {
	if s := os.Getenv("BACKFILL_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("BACKFILL_SEED=%q: %v", s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// backfillProgress is what the test reads of the backfill's checkpoint
// (writer.Checkpoint, in cachesync:backfill:<rule>).
type checkpointView struct {
	LastKey  []string  `json:"last_key"`
	Rows     int64     `json:"rows"`
	Finished time.Time `json:"finished"`
	Error    string    `json:"error"`
}

// progress reads the product rule's checkpoint: the last id done (0 before
// the first chunk) and the rows done.
func (e *env) backfillProgress(rule string) (lastID, rows int64) {
	raw, err := e.rdb.Get(e.ctx, "cachesync:backfill:"+rule).Bytes()
	if err != nil {
		return 0, 0
	}
	var p checkpointView
	if json.Unmarshal(raw, &p) != nil || len(p.LastKey) == 0 {
		return 0, p.Rows
	}
	id, _ := strconv.ParseInt(p.LastKey[0], 10, 64)
	return id, p.Rows
}

func TestBackfillConsistentUnderConcurrentWrites(t *testing.T) {
	seed := backfillSeed(t)
	t.Logf("seed %d (rerun with BACKFILL_SEED=%d)", seed, seed)
	// A synchronous standby that never connects ("ghost"); only the held
	// transaction waits for it (synchronous_commit = on for it alone).
	e, _ := setupPrivateWith(t, map[string]string{
		"synchronous_standby_names": "ghost",
		"synchronous_commit":        "local",
	}, schema, rules)
	// The rows exist before the slot does: only the backfill can cache them.
	e.exec(`INSERT INTO products SELECT g, 'p' || g, (g * 1.25)::numeric(10,2), g % 5 <> 0, 'd' || g FROM generate_series(1, $1::int) g`, backfillRows)
	d := e.start()
	e.waitStreaming(d)
	e.quiesce(d) // the applied position exists

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()

	// The backfill's position, for the writers to aim at.
	var position atomic.Int64
	// held are the ids the held transaction locked: the writers leave
	// them alone while it waits (they would only queue behind it).
	var heldMu sync.Mutex
	held := map[int64]bool{}
	isHeld := func(id int64) bool { heldMu.Lock(); defer heldMu.Unlock(); return held[id] }

	type backfillExit struct {
		out  string
		code int
		err  error
	}
	started := time.Now()
	backfillDone := make(chan backfillExit, 1)
	cmd := exec.CommandContext(ctx, binary, "backfill", "--rule", "product",
		"--chunk-rows", strconv.Itoa(backfillChunk), "--rate", strconv.Itoa(backfillRate))
	cmd.Env = append(os.Environ(), "DATABASE_URL="+e.dbURL, e.redisEnv, "CACHESYNC_CONFIG="+e.rules)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := cmd.Wait()
		code := 0
		if exit, ok := err.(*exec.ExitError); ok {
			code, err = exit.ExitCode(), nil
		}
		backfillDone <- backfillExit{out.String(), code, err}
	}()
	stopPolling := make(chan struct{})
	var pollers sync.WaitGroup
	pollers.Go(func() {
		for {
			select {
			case <-stopPolling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if id, _ := e.backfillProgress("product"); id > 0 {
				position.Store(id)
			}
		}
	})

	// The writers.
	var writes atomic.Int64
	writerErrs := make(chan error, backfillWriters)
	stopWriters := make(chan struct{})
	var writers sync.WaitGroup
	for w := range backfillWriters {
		conn, err := pgx.Connect(ctx, e.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		writers.Go(func() {
			for {
				select {
				case <-stopWriters:
					return
				default:
				}
				if err := backfillWrite(ctx, conn, rng, position.Load(), isHeld); err != nil && !isDeadlock(err) {
					writerErrs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				writes.Add(1)
				// Pacing, not waiting for an effect: a few hundred
				// writes per second in all, on a shared machine.
				time.Sleep(time.Duration(2+rng.IntN(6)) * time.Millisecond)
			}
		})
	}
	var stopOnce sync.Once
	stopAll := func() {
		stopOnce.Do(func() {
			close(stopWriters)
			writers.Wait()
			close(stopPolling)
			pollers.Wait()
		})
	}
	defer stopAll() // before the writers' connections close

	// The held transaction, once a quarter of the table is done: rows well
	// ahead of the backfill, so that it reads their old versions while the
	// transaction is committed in the WAL but invisible.
	testenv.Eventually(t, 60*time.Second, "the backfill to do a quarter of the table", func() (bool, string) {
		select {
		case x := <-backfillDone:
			t.Fatalf("backfill exited before a quarter of the table (exit %d, %v):\n%s", x.code, x.err, x.out)
		default:
		}
		_, rows := e.backfillProgress("product")
		return rows >= backfillRows/4, fmt.Sprintf("%d rows done", rows)
	})
	heldFrom := position.Load() + 300
	var ids []int64
	rows, err := e.db.Query(e.ctx, `SELECT id FROM products WHERE id > $1 ORDER BY id LIMIT 3`, heldFrom)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { ids = append(ids, id); return nil }); err != nil || len(ids) != 3 {
		t.Fatalf("rows for the held transaction: %v (%v)", ids, err)
	}
	newID := int64(backfillRows + 10_000)
	heldMu.Lock()
	for _, id := range append(ids, newID) {
		held[id] = true
	}
	heldMu.Unlock()
	holder, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	var pid int
	if err := holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	heldCommitted := make(chan error, 1)
	heldReturned := make(chan struct{})
	defer func() { cancel(); <-heldReturned }() // before holder closes
	go func() {
		defer close(heldReturned)
		heldCommitted <- pgx.BeginFunc(ctx, holder, func(tx pgx.Tx) error {
			for _, q := range []string{
				`SET LOCAL synchronous_commit = on`,
				fmt.Sprintf(`UPDATE products SET name = 'held', price = price + 1000, published = true WHERE id = %d`, ids[0]),
				fmt.Sprintf(`UPDATE products SET published = NOT published, name = 'held-flip' WHERE id = %d`, ids[1]),
				fmt.Sprintf(`DELETE FROM products WHERE id = %d`, ids[2]),
				fmt.Sprintf(`INSERT INTO products VALUES (%d, 'held-new', 1.50, true, 'held')`, newID),
			} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	testenv.Eventually(t, 30*time.Second, "the held transaction to wait for the synchronous standby", func() (bool, string) {
		select {
		case err := <-heldCommitted:
			t.Fatalf("the held transaction returned without waiting for the standby: %v", err)
		default:
		}
		var ev *string
		err := e.db.QueryRow(e.ctx, `SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&ev)
		return err == nil && ev != nil && *ev == "SyncRep", fmt.Sprint(err, ev)
	})
	heldAt := time.Now()
	heldLSN := e.currentLSN()
	_, rowsAtHold := e.backfillProgress("product")
	// It stays held until the backfill read past its rows (their old
	// versions), and then some chunks more.
	heldUntil := ids[2] + 4*backfillChunk
	testenv.Eventually(t, 60*time.Second, fmt.Sprintf("the backfill to pass id %d", heldUntil), func() (bool, string) {
		var ev *string
		if err := e.db.QueryRow(e.ctx, `SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&ev); err != nil || ev == nil || *ev != "SyncRep" {
			t.Fatalf("the held transaction stopped waiting before its release: %v %v", ev, err)
		}
		return position.Load() >= heldUntil, fmt.Sprintf("at id %d", position.Load())
	})
	_, rowsAtRelease := e.backfillProgress("product")
	// The standby wait ends (cancelled: the commit stands, as when a
	// standby answers or the requirement is dropped); the transaction
	// becomes visible.
	e.exec(`SELECT pg_cancel_backend($1)`, pid)
	select {
	case err := <-heldCommitted:
		if err != nil {
			t.Fatalf("the held transaction: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the held transaction did not return within 30s of its standby wait being cancelled")
	}
	heldFor := time.Since(heldAt)

	var x backfillExit
	select {
	case x = <-backfillDone:
	case err := <-writerErrs:
		stopAll()
		t.Fatal(err)
	case <-time.After(90 * time.Second):
		stopAll()
		t.Fatalf("backfill still running after 90s:\n%s", out.String())
	}
	stopAll()
	select {
	case err := <-writerErrs:
		t.Fatal(err)
	default:
	}
	if x.err != nil || x.code != 0 {
		t.Fatalf("backfill: exit %d (%v)\n%s", x.code, x.err, x.out)
	}
	took := time.Since(started)
	_, rowsDone := e.backfillProgress("product")

	// Every commit so far, including the held transaction and whatever the
	// writers did last, is applied once the slot confirms the WAL position
	// taken now.
	e.quiesce(d)

	mismatches, checked := e.cacheMismatches()
	var published []int64
	rows, err = e.db.Query(e.ctx, `SELECT id FROM products WHERE published ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { published = append(published, id); return nil }); err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, id := range published {
		if key := fmt.Sprintf("product:%d", id); !e.exists(key) {
			missing = append(missing, key)
		}
	}
	var total int
	if err := e.db.QueryRow(e.ctx, `SELECT count(*) FROM products`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	t.Logf("backfill: %d rows read in %d chunks of %d in %s; %d writes during it; held transaction (ids %v, new %d) at WAL %s for %s, while the backfill read %d rows; now %d rows, %d published, %d keys checked",
		rowsDone, (rowsDone+backfillChunk-1)/backfillChunk, backfillChunk, took.Round(time.Millisecond), writes.Load(),
		ids, newID, heldLSN, heldFor.Round(time.Millisecond), rowsAtRelease-rowsAtHold, total, len(published), checked)
	for line := range strings.SplitSeq(x.out, "\n") {
		if strings.HasPrefix(line, "backfilled rule") {
			t.Logf("cachesync backfill: %s", line) // keys written, and left to newer stream writes
		}
	}
	if len(mismatches) > 0 {
		t.Errorf("%d of %d product keys differ from their rows after the backfill and the stream caught up (seed %d):\n%s",
			len(mismatches), checked, seed, strings.Join(head(mismatches, 20), "\n"))
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d published rows have no key after the backfill (seed %d): %s",
			len(missing), len(published), seed, strings.Join(head(missing, 20), " "))
	}
}

// head returns the first n lines of s, and a count of the rest.
func head(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("... and %d more", len(s)-n))
}

// backfillWrite commits one random change to products: half of them within
// 150 ids ahead of the backfill's position (where its next chunks read),
// the rest anywhere, including ids past the seeded rows.
func backfillWrite(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, position int64, isHeld func(int64) bool) error {
	pick := func() int64 {
		for {
			var id int64
			if rng.IntN(2) == 0 {
				id = position + 1 + rng.Int64N(150)
			} else {
				id = 1 + rng.Int64N(backfillRows+200)
			}
			if !isHeld(id) {
				return id
			}
		}
	}
	id := pick()
	var err error
	switch r := rng.IntN(100); {
	case r < 35:
		_, err = conn.Exec(ctx, `UPDATE products SET name = $2, price = $3::numeric(10,2) WHERE id = $1`,
			id, fmt.Sprintf("n%d", rng.IntN(1_000_000)), fmt.Sprintf("%d.%02d", rng.IntN(10_000), rng.IntN(100)))
	case r < 50:
		_, err = conn.Exec(ctx, `UPDATE products SET published = NOT published WHERE id = $1`, id)
	case r < 65:
		_, err = conn.Exec(ctx, `DELETE FROM products WHERE id = $1`, id)
	case r < 85:
		_, err = conn.Exec(ctx, `INSERT INTO products VALUES ($1, $2, $3::numeric(10,2), $4, 'w')
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, price = excluded.price, published = excluded.published`,
			id, fmt.Sprintf("i%d", rng.IntN(1_000_000)), fmt.Sprintf("%d.%d", rng.IntN(1000), rng.IntN(10)), rng.IntN(3) > 0)
	default:
		// Three rows in one transaction, in id order (no deadlocks
		// between writers).
		a, b, c := pick(), pick(), pick()
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE products SET name = 'tx' || id, published = NOT published
				WHERE id IN ($1, $2, $3)`, a, b, c)
			if err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE products SET price = price + 0.01 WHERE id IN ($1, $2, $3)`, a, b, c)
			return err
		})
	}
	return err
}

// isDeadlock: two writers' multi-row transactions may still lock rows in
// opposite orders; PostgreSQL aborts one, which is just one write fewer.
func isDeadlock(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40P01"
}

// TestBackfillHeldCommitAtAppliedPosition is the edge of the fill's guard:
// a transaction held committed-but-invisible whose commit record starts
// exactly at the applied position A the backfill reads (the commit record
// right after the last applied transaction's). Its commit LSN is A, so the
// fill must leave the guard below A: at A, the stream's effect of that
// transaction, applied once it is visible, would be refused as not newer,
// and the key would keep the old row the chunk read. The concurrent test
// above hits this only by chance.
func TestBackfillHeldCommitAtAppliedPosition(t *testing.T) {
	e, _ := setupPrivateWith(t, map[string]string{
		"synchronous_standby_names": "ghost",
		"synchronous_commit":        "local",
	}, schema, rules)
	e.exec(`INSERT INTO products SELECT g, 'p' || g, (g * 1.25)::numeric(10,2), true, 'd' || g FROM generate_series(1, 200) g`)
	d := e.start()
	e.waitStreaming(d)
	e.quiesce(d)

	for attempt, id := range []int{50, 100, 150} {
		key := fmt.Sprintf("product:%d", id)
		holder, err := pgx.Connect(e.ctx, e.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := holder.Begin(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{`SET LOCAL synchronous_commit = on`, fmt.Sprintf(`UPDATE products SET name = 'held' WHERE id = %d`, id)} {
			if _, err := tx.Exec(e.ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		var pid int
		if err := tx.QueryRow(e.ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		// Another transaction commits after the held one's changes, and the
		// daemon applies it: A is then the end of its commit record, which
		// is where the WAL ends, and where the held commit record will start.
		var a, end wal.LSN
		testenv.Eventually(t, 30*time.Second, "the applied position to reach the end of the WAL", func() (bool, string) {
			if end == 0 {
				e.exec(`UPDATE products SET price = price + 1 WHERE id = $1`, id+1)
				end = e.currentLSN()
			}
			a, _ = e.appliedPosition()
			if a < end {
				return false, fmt.Sprintf("applied %s, the other commit ends at %s", a, end)
			}
			var insert string
			if err := e.db.QueryRow(e.ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&insert); err != nil {
				t.Fatal(err)
			}
			if a.String() != insert {
				end = 0 // another record came after it: commit another
				return false, fmt.Sprintf("applied %s, WAL insert position %s", a, insert)
			}
			return true, ""
		})
		committed := make(chan error, 1)
		go func() { committed <- tx.Commit(context.Background()) }()
		testenv.Eventually(t, 30*time.Second, "the held commit to wait for the synchronous standby", func() (bool, string) {
			var ev *string
			err := e.db.QueryRow(e.ctx, `SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&ev)
			return err == nil && ev != nil && *ev == "SyncRep", fmt.Sprint(err, ev)
		})
		// The backfill reads the old row (the commit is invisible) under A.
		if out, code := e.cli("backfill", "--rule", "product"); code != 0 {
			t.Fatalf("backfill: exit %d\n%s", code, out)
		}
		// A heartbeat written before the held commit may have moved A.
		aAfter, _ := e.appliedPosition()
		e.exec(`SELECT pg_cancel_backend($1)`, pid)
		if err := <-committed; err != nil {
			t.Fatalf("held commit: %v", err)
		}
		holder.Close(e.ctx)
		e.quiesce(d)
		raw, err := e.rdb.Get(e.ctx, key).Result()
		if err != nil {
			t.Fatalf("%s after the backfill and the held commit: %v", key, err)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(raw), &got); err != nil || got["name"] != "held" {
			t.Fatalf("%s = %s after the held commit (at or past the applied position %s the backfill read) was applied: the backfill's guard kept the stream's newer value out", key, raw, a)
		}
		// Did the commit record start at A? The stream's guard holds its
		// commit LSN. If something else wrote WAL first, try again.
		guard, err := e.rdb.Get(e.ctx, keyspace.GuardKey(key)).Result()
		if err != nil || len(guard) < 16 {
			t.Fatalf("guard of %s: %q (%v)", key, guard, err)
		}
		commitLSN, err := strconv.ParseUint(guard[:16], 16, 64)
		if err != nil {
			t.Fatalf("guard of %s: %q: %v", key, guard, err)
		}
		if wal.LSN(commitLSN) == a && aAfter == a {
			t.Logf("attempt %d: the held commit's LSN was the applied position %s; %s = %s", attempt+1, a, key, raw)
			return
		}
		t.Logf("attempt %d: the held commit's LSN %s is not the applied position %s (then %s): another record came first; again", attempt+1, wal.LSN(commitLSN), a, aAfter)
	}
	t.Fatal("no attempt placed the held commit record at the applied position")
}
