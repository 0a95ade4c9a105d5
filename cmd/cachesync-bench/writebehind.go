package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/writebehind"
)

// The write-behind workload: -write-behind-entries upserts over
// -write-behind-keys keys appended to a stream before the clock starts, then
// drained into PostgreSQL by writebehind.Run (the worker `cachesync run`
// runs), timed until the recorded position reaches the last entry's ID;
// against the database's ceiling for the same upserts: the same batches,
// merged as the worker merges them, sent with the same statements by a
// plain pgx client with no Redis in the loop, in the same run.

const writeBehindName = "write-behind, upserts"

// writeBehindSchema is the drained table (c) and the ceiling's copy of it.
// Autovacuum is off for both: the ceiling runs first, and a vacuum of its
// million dead tuples would otherwise run during, and be charged to, the
// drain.
const writeBehindSchema = `CREATE TABLE c (id int PRIMARY KEY, hits bigint NOT NULL, note text NOT NULL) WITH (autovacuum_enabled = off);
CREATE TABLE c_ceiling (LIKE c INCLUDING ALL) WITH (autovacuum_enabled = off)`

// writeBehindResult is one run of the write-behind workload.
type writeBehindResult struct {
	Entries, Keys, BatchSize int
	// Batches are the batches the ceiling sent (as the worker cuts them
	// from a full stream).
	Batches int
	// CeilingSeconds: the ceiling's transactions, first BEGIN to last
	// COMMIT; Seconds: writebehind.Run's start to the recorded position
	// reaching the last entry's ID.
	CeilingSeconds, Seconds float64
	// CPUSeconds is this process's user+system CPU while the worker drained
	// (the worker's, with its Redis and PostgreSQL clients).
	CPUSeconds float64
	// RedisBusySeconds is Redis's main-thread CPU meanwhile.
	RedisBusySeconds float64
	// WorkerBatches and WorkerBatchSeconds are the batches the worker
	// reported to its Observer and the sum of their latencies (from the
	// read to the acknowledgement; the worker reads, applies and
	// acknowledges successive batches in parallel, so they overlap).
	WorkerBatches      int
	WorkerBatchSeconds float64
}

// batchTimes is the drain's writebehind.Observer: it sums the batches'
// latencies.
type batchTimes struct {
	mu      sync.Mutex
	batches int
	took    time.Duration
}

func (b *batchTimes) Batch(_ string, _, _, _, _ int, took time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches++
	b.took += took
}

func (r writeBehindResult) rate(secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return float64(r.Entries) / secs
}

// wbEntry is one stream entry: an upsert of row id.
type wbEntry struct {
	id  int
	row []byte // JSON object
}

// writeBehindEntries makes n upserts over keys keys, in a fixed pseudo-random
// order; every entry carries every column.
func writeBehindEntries(n, keys int) []wbEntry {
	rng := rand.New(rand.NewPCG(16, 16))
	out := make([]wbEntry, n)
	for i := range out {
		id := 1 + rng.IntN(keys)
		out[i] = wbEntry{id, fmt.Appendf(nil, `{"id":%d,"hits":%d,"note":"n%d"}`, id, i, i)}
	}
	return out
}

func (b *bench) runWriteBehind(ctx context.Context, entries, keys, batchSize int, cpuProfile string) (writeBehindResult, error) {
	res := writeBehindResult{Entries: entries, Keys: keys, BatchSize: batchSize}
	db, _, _, conn, drop, err := b.connectedDatabase(ctx, writeBehindSchema, "")
	if err != nil {
		return res, err
	}
	defer drop()
	es := writeBehindEntries(entries, keys)

	// The stream, filled before the clock starts.
	rc := redisFromURL(b.srv.redisURL)
	defer rc.Close()
	stream := "wb:" + db
	defer rc.Del(context.Background(), stream, writebehind.DeadLetterStream(stream))
	began := time.Now()
	var lastID string
	for start := 0; start < len(es); start += 1000 {
		pipe := rc.Pipeline()
		var last *redis.StringCmd
		for _, e := range es[start:min(len(es), start+1000)] {
			last = pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []string{writebehind.FieldOp, writebehind.OpUpsert, writebehind.FieldRow, string(e.row)}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return res, fmt.Errorf("XADD: %w", err)
		}
		lastID = last.Val()
	}
	b.logf("%s: %d entries over %d keys appended to %s in %s", writeBehindName, entries, keys, stream, time.Since(began).Round(time.Millisecond))

	// The ceiling: the same batches, the same statements, no Redis.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return res, err
	}
	if res.Batches, res.CeilingSeconds, err = writeBehindCeiling(ctx, conn, es, batchSize); err != nil {
		return res, fmt.Errorf("ceiling: %w", err)
	}
	b.logf("%s: ceiling (pgx, %d batches of %d) %.0f entries/s", writeBehindName, res.Batches, batchSize, res.rate(res.CeilingSeconds))

	// The worker.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return res, err
	}
	spec := &config.WriteBehind{Name: "c", Stream: stream, Table: config.TableName{Schema: "public", Name: "c"},
		KeyColumns: []string{"id"}, BatchSize: batchSize, FlushInterval: config.DefaultWriteBehindFlushInterval, Delete: true}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	busy0, err := redisBusy(ctx, rc)
	if err != nil {
		return res, err
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := processCPU()
	began = time.Now()
	done := make(chan error, 1)
	times := &batchTimes{}
	go func() {
		done <- writebehind.Run(wctx, writebehind.Options{
			Spec:     spec,
			Redis:    rc,
			Connect:  func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, b.srv.pgURL(db)) },
			Consumer: "bench",
			Observer: times,
			Logger:   zerolog.Nop(),
		})
	}()
	if err := waitApplied(ctx, conn, stream, lastID, done); err != nil {
		return res, err
	}
	res.Seconds = time.Since(began).Seconds()
	res.CPUSeconds = processCPU() - cpu0
	times.mu.Lock()
	res.WorkerBatches, res.WorkerBatchSeconds = times.batches, times.took.Seconds()
	times.mu.Unlock()
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return res, fmt.Errorf("writebehind.Run: %w", err)
	}
	busy1, err := redisBusy(ctx, rc)
	if err != nil {
		return res, err
	}
	res.RedisBusySeconds = busy1 - busy0
	b.logf("%s: drained in %.1f s: %.0f entries/s, %.2f of the ceiling", writeBehindName, res.Seconds, res.rate(res.Seconds), res.CeilingSeconds/res.Seconds)

	// Both tables hold every key's last write.
	var rows, differ int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM c FULL JOIN c_ceiling x USING (id) WHERE c IS DISTINCT FROM x OR c.id IS NULL OR x.id IS NULL)`).Scan(&rows, &differ); err != nil {
		return res, err
	}
	want := map[int]bool{}
	for _, e := range es {
		want[e.id] = true
	}
	if rows != len(want) || differ != 0 {
		return res, fmt.Errorf("after the drain c has %d rows (want %d), %d differ from the ceiling's", rows, len(want), differ)
	}
	last := es[len(es)-1]
	var hits int64
	if err := conn.QueryRow(ctx, `SELECT hits FROM c WHERE id = $1`, last.id).Scan(&hits); err != nil || hits != int64(len(es)-1) {
		return res, fmt.Errorf("after the drain c's row %d has hits %d (%v), want the last write's %d", last.id, hits, err, len(es)-1)
	}
	return res, nil
}

// waitApplied polls the recorded position of stream until it is lastID.
func waitApplied(ctx context.Context, conn *pgx.Conn, stream, lastID string, done <-chan error) error {
	deadline := time.Now().Add(30 * time.Minute)
	for {
		id, err := writebehind.ReadPosition(ctx, conn, stream)
		if err != nil {
			return err
		}
		if id == lastID {
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("writebehind.Run returned before the drain ended (at %q, want %q): %v", id, lastID, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the drain did not reach %s in 30 minutes (at %q)", lastID, id)
		}
	}
}

// writeBehindCeiling sends es to c_ceiling as the worker would from a full
// stream: batches of batchSize entries in stream order, each merged (the last
// write to a key wins) and applied in one transaction with the position's
// compare-and-set. The batches' parameters are made before the clock starts.
func writeBehindCeiling(ctx context.Context, conn *pgx.Conn, es []wbEntry, batchSize int) (batches int, secs float64, err error) {
	if _, err := conn.Exec(ctx, ceilingPositionsDDL); err != nil {
		return 0, 0, err
	}
	type batch struct {
		rows   []byte // JSON array of the merged rows
		lastID string
	}
	var bs []batch
	for start, n := 0, 0; start < len(es); start, n = start+batchSize, n+1 {
		part := es[start:min(len(es), start+batchSize)]
		last := map[int]int{}
		for i, e := range part {
			last[e.id] = i
		}
		var rows []json.RawMessage
		for i, e := range part {
			if last[e.id] == i {
				rows = append(rows, e.row)
			}
		}
		js, err := json.Marshal(rows)
		if err != nil {
			return 0, 0, err
		}
		bs = append(bs, batch{js, strconv.Itoa(start+len(part)) + "-0"})
	}
	prev := "0-0"
	if _, err := conn.Exec(ctx, ceilingSeed, ceilingStream, prev); err != nil {
		return 0, 0, err
	}
	began := time.Now()
	for _, bt := range bs {
		if err := ceilingBatch(ctx, conn, prev, bt.lastID, bt.rows); err != nil {
			return 0, 0, err
		}
		prev = bt.lastID
	}
	return len(bs), time.Since(began).Seconds(), nil
}

// ceilingBatch is one batch's transaction as the worker sends it
// (writebehind's begin and end): BEGIN, the position's compare-and-set and
// the batch's statements (here one upsert) in one round trip, then COMMIT.
func ceilingBatch(ctx context.Context, conn *pgx.Conn, prev, last string, rows []byte) error {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(ceilingAdvance, ceilingStream, prev, last)
	b.Queue(ceilingUpsert, string(rows))
	res := conn.SendBatch(ctx, b)
	_, err := res.Exec()
	var moved pgconn.CommandTag
	if err == nil {
		moved, err = res.Exec()
	}
	if err == nil {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err == nil && moved.RowsAffected() != 1 {
		err = fmt.Errorf("the position did not move from %q", prev)
	}
	if err != nil {
		_, _ = conn.Exec(context.Background(), "ROLLBACK")
		return err
	}
	_, err = conn.Exec(ctx, "COMMIT")
	return err
}

// The ceiling's statements: those the worker sends for a batch of upserts
// of every column (writebehind's upsertSQL and begin), on c_ceiling.
const (
	ceilingStream       = "ceiling"
	ceilingPositionsDDL = `CREATE SCHEMA IF NOT EXISTS cachesync;
CREATE TABLE IF NOT EXISTS ` + writebehind.PositionsTable + ` (stream text PRIMARY KEY, last_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`
	ceilingSeed    = `INSERT INTO ` + writebehind.PositionsTable + ` (stream, last_id) VALUES ($1, $2) ON CONFLICT (stream) DO NOTHING`
	ceilingAdvance = `UPDATE ` + writebehind.PositionsTable + ` SET last_id = $3, updated_at = now() WHERE stream = $1 AND last_id = $2`
	ceilingUpsert  = `INSERT INTO "public"."c_ceiling" ("hits", "id", "note") SELECT "hits", "id", "note" FROM jsonb_populate_recordset(NULL::"public"."c_ceiling", $1::jsonb) ON CONFLICT ("id") DO UPDATE SET "hits" = EXCLUDED."hits", "note" = EXCLUDED."note"`
)

// processCPU is this process's user+system CPU time, in seconds.
func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// writeBehindFigures adds the write-behind workload's lines to the table.
func writeBehindFigures(add func(*figure, func(runResult) (float64, float64))) {
	wb := func(r runResult) writeBehindResult {
		if r.WriteBehind == nil {
			return writeBehindResult{}
		}
		return *r.WriteBehind
	}
	add(&figure{Workload: writeBehindName, Metric: "PostgreSQL ceiling (pgx, same batches and SQL)", Unit: "entries/s"},
		func(r runResult) (float64, float64) { w := wb(r); return w.rate(w.CeilingSeconds), 0 })
	add(&figure{Workload: writeBehindName, Metric: "cachesync write-behind drain", Unit: "entries/s", Versus: "PostgreSQL ceiling",
		Target: "≥ 0.70 of the ceiling", atLeast: 0.70},
		func(r runResult) (float64, float64) { w := wb(r); return w.rate(w.Seconds), w.rate(w.CeilingSeconds) })
	add(&figure{Workload: writeBehindName, Metric: "ceiling time per batch", Unit: "ms"},
		func(r runResult) (float64, float64) {
			w := wb(r)
			return 1e3 * w.CeilingSeconds / float64(max(1, w.Batches)), 0
		})
	add(&figure{Workload: writeBehindName, Metric: "drain time per batch", Unit: "ms", Versus: "ceiling time per batch"},
		func(r runResult) (float64, float64) {
			w := wb(r)
			return 1e3 * w.Seconds / float64(max(1, w.WorkerBatches)), 1e3 * w.CeilingSeconds / float64(max(1, w.Batches))
		})
	add(&figure{Workload: writeBehindName, Metric: "batch latency, read → acknowledged (mean)", Unit: "ms"},
		func(r runResult) (float64, float64) {
			w := wb(r)
			return 1e3 * w.WorkerBatchSeconds / float64(max(1, w.WorkerBatches)), 0
		})
	add(&figure{Workload: writeBehindName, Metric: "worker CPU per entry", Unit: "µs"},
		func(r runResult) (float64, float64) {
			w := wb(r)
			return 1e6 * w.CPUSeconds / float64(max(1, w.Entries)), 0
		})
	add(&figure{Workload: writeBehindName, Metric: "Redis main-thread CPU per entry, drain", Unit: "µs"},
		func(r runResult) (float64, float64) {
			w := wb(r)
			return 1e6 * w.RedisBusySeconds / float64(max(1, w.Entries)), 0
		})
}
