package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/writer"
)

// The backfill workload: `cachesync backfill` of a refresh rule over a table of
// -backfill-rows rows that existed before the slot, while `cachesync run` streams a
// small steady load on another table of the same database; against two ceilings
// measured in the same run on the same rows: PostgreSQL's COPY of them and Redis's
// rate for the same guarded fill writes.

const backfillName = "backfill, refresh JSON"

// backfillSchema is the refresh workload's table (as b) beside the lag table (w).
const backfillSchema = `CREATE TABLE b (id int PRIMARY KEY, email text NOT NULL, org_id int NOT NULL,
  name text NOT NULL, price numeric(10,2) NOT NULL, published bool NOT NULL);
` + lagTable

const backfillRules = `rule "b" {
  table = "public.b"
  refresh {
    key   = "b:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}

rule "w" {
  table = "public.w"
  ` + lagRule + `
}
`

// backfillColumns are b's columns, in the order of the table (and of the COPY).
const backfillColumns = "id, email, org_id, name, price, published"

// backfillChunk is the backfill's default chunk (rows per chunk), which the Redis
// ceiling's pipelines copy.
const backfillChunk = 1000

// backfillResult is one run of the backfill workload.
type backfillResult struct {
	Rows         int
	CopySeconds  float64 // COPY (SELECT …) TO STDOUT of the rows, to nowhere
	RedisSeconds float64 // the same fill writes, pipelined, without PostgreSQL
	Seconds      float64 // cachesync backfill, process start to exit
	CPUSeconds   float64 // its user+system CPU
	// RedisBusySeconds is the CPU time of Redis's main thread during the
	// backfill (the stream's commands included), and
	// RedisCeilingBusySeconds the same during the Redis ceiling: where the
	// backfill's time goes (INFO cpu).
	RedisBusySeconds, RedisCeilingBusySeconds float64
	PeakRSSBytes                              int64
	// Lag is the stream's commit → applied lag for a steady load on another
	// table while the backfill ran (the warm-up before it not counted).
	Lag lagResult
}

func (r backfillResult) rate(secs float64) float64 { return float64(r.Rows) / secs }

// lowerCeiling is the smaller of the two ceilings, rows/s.
func (r backfillResult) lowerCeiling() float64 {
	return min(r.rate(r.CopySeconds), r.rate(r.RedisSeconds))
}

func (b *bench) runBackfill(ctx context.Context, rows int, lagRate float64) (backfillResult, error) {
	res := backfillResult{Rows: rows, Lag: lagResult{Offered: lagRate}}
	db, rules, dataDir, conn, drop, err := b.connectedDatabase(ctx, backfillSchema, backfillRules)
	if err != nil {
		return res, err
	}
	defer drop()

	// The rows come before the slot: only a backfill can cache them.
	began := time.Now()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO b SELECT g, 'User' || g || '@Example.com', g %% 100,
  'product ' || g, (g %% 1000) + 0.99, true FROM generate_series(1, %d) g`, rows)); err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	if _, err := conn.Exec(ctx, `VACUUM (ANALYZE) b`); err != nil {
		return res, err
	}
	b.logf("%s: loaded %d rows in %s", backfillName, rows, time.Since(began).Round(time.Millisecond))
	if err := b.setup(ctx, rules, dataDir, db, false); err != nil {
		return res, err
	}

	// PostgreSQL's ceiling: the same rows and columns, in the same order, in one COPY.
	began = time.Now()
	tag, err := conn.PgConn().CopyTo(ctx, io.Discard, `COPY (SELECT `+backfillColumns+` FROM b ORDER BY id) TO STDOUT`)
	if err != nil {
		return res, fmt.Errorf("COPY: %w", err)
	}
	res.CopySeconds = time.Since(began).Seconds()
	if tag.RowsAffected() != int64(rows) {
		return res, fmt.Errorf("COPY sent %d rows, want %d", tag.RowsAffected(), rows)
	}

	// The stream, with its steady load, observed as in runLagCachesync.
	rc := redisFromURL(b.srv.redisURL)
	defer rc.Close()
	if err := rc.ConfigSet(ctx, "notify-keyspace-events", "K$").Err(); err != nil {
		return res, err
	}
	defer rc.ConfigSet(context.Background(), "notify-keyspace-events", "")
	obs, err := b.runObserved(ctx, conn, rc, rules, dataDir, db, lagRate)
	if err != nil {
		return res, err
	}
	defer obs.stop()
	seen := obs.seen
	// Redis's ceiling, in the conditions of the backfill: keyspace
	// notifications on and the lag subscriber listening (each of the fill's
	// SETs publishes a notification that Redis matches against its pattern),
	// the stream idle.
	busy0, err := redisBusy(ctx, rc)
	if err != nil {
		return res, err
	}
	if res.RedisSeconds, err = fillCeiling(ctx, b.srv.redisURL, rows); err != nil {
		return res, fmt.Errorf("redis fill ceiling: %w", err)
	}
	busy1, err := redisBusy(ctx, rc)
	if err != nil {
		return res, err
	}
	res.RedisCeilingBusySeconds = busy1 - busy0
	b.logf("%s: COPY %.0f rows/s, Redis fill script %.0f rows/s", backfillName, res.rate(res.CopySeconds), res.rate(res.RedisSeconds))

	b.logf("%s: COPY %.0f rows/s, Redis fill script %.0f rows/s", backfillName, res.rate(res.CopySeconds), res.rate(res.RedisSeconds))
	stopLoad := make(chan struct{})
	type loadDone struct {
		o   *offered
		err error
	}
	loaded := make(chan loadDone, 1)
	go func() {
		o, err := b.offerLoad(ctx, db, lagRate, 30*time.Minute, stopLoad)
		loaded <- loadDone{o, err}
	}()
	// The backfill starts once the stream applied the load's warm-up rows.
	warm := int(lagRate * warmUp.Seconds())
	for seen.count() < warm {
		select {
		case l := <-loaded:
			return res, fmt.Errorf("steady load ended during its warm-up: %v", l.err)
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}

	bf := b.cachesyncCmd("backfill", rules, dataDir, db, false)
	bf.Args = append(bf.Args, "--rule", "b")
	var bfOut bytes.Buffer
	bf.Stdout, bf.Stderr = &bfOut, &bfOut
	if busy0, err = redisBusy(ctx, rc); err != nil {
		close(stopLoad)
		<-loaded
		return res, err
	}
	began = time.Now()
	if err := bf.Start(); err != nil {
		close(stopLoad)
		<-loaded
		return res, err
	}
	var hwm int64
	stopHWM := watchHWM(bf.Process.Pid, &hwm)
	bfErr := bf.Wait()
	res.Seconds = time.Since(began).Seconds()
	stopHWM()
	close(stopLoad)
	l := <-loaded
	res.PeakRSSBytes = hwm
	res.CPUSeconds = (bf.ProcessState.UserTime() + bf.ProcessState.SystemTime()).Seconds()
	if busy1, err = redisBusy(ctx, rc); err != nil {
		return res, err
	}
	res.RedisBusySeconds = busy1 - busy0
	if bfErr != nil {
		return res, fmt.Errorf("cachesync backfill: %v\n%s", bfErr, tail(bfOut.String()))
	}
	if l.err != nil {
		return res, l.err
	}
	l.o.waitFor(seen)
	obs.stopObserving()
	lags, err := l.o.lags(seen)
	if err != nil {
		return res, err
	}
	s := spreadOf(lags)
	res.Lag.Committed, res.Lag.Achieved, res.Lag.Observed = l.o.total-l.o.warm, l.o.achieved(), len(lags)
	res.Lag.P50, res.Lag.P99, res.Lag.Mx = s.P50, s.P99, s.Mx

	// It did fill: the first, middle and last rows have their values.
	for _, id := range []int{1, rows/2 + 1, rows} {
		if n, err := rc.Exists(ctx, "b:"+strconv.Itoa(id)).Result(); err != nil || n != 1 {
			return res, fmt.Errorf("after the backfill b:%d is missing (%v)\n%s", id, err, tail(bfOut.String()))
		}
	}
	return res, nil
}

// redisBusy is the CPU time of Redis's main thread (INFO cpu), in seconds: the
// thread that parses, executes and answers every command.
func redisBusy(ctx context.Context, rc *redis.Client) (float64, error) {
	info, err := rc.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, f := range []string{"used_cpu_user_main_thread", "used_cpu_sys_main_thread"} {
		v, err := strconv.ParseFloat(infoField(info, f), 64)
		if err != nil {
			return 0, fmt.Errorf("INFO cpu: %s: %w", f, err)
		}
		sum += v
	}
	return sum, nil
}

// backfillValue is the value the rule writes for row id of b: jsonencode(row), keys
// sorted, numeric as a string, as the daemon renders it.
func backfillValue(id int) string {
	return fmt.Sprintf(`{"email":"User%d@Example.com","id":%d,"name":"product %d","org_id":%d,"price":"%d.99","published":true}`,
		id, id, id, id%100, id%1000)
}

// fillCeiling writes rows values with the backfill's fill script
// (redisops.BackfillSetScript), on keys of their own in database 1 of the same
// server, sequentially in pipelines of backfillChunk as the backfill sends a
// chunk: the rate Redis and the client allow for the backfill's writes, without
// PostgreSQL. The values are made before the clock starts.
func fillCeiling(ctx context.Context, url string, rows int) (float64, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return 0, err
	}
	opts.DB = 1
	rc := redis.NewClient(opts)
	defer rc.Close()
	// Emptied before the backfill starts, not in the background beside it.
	defer rc.FlushDB(context.Background())
	script := redis.NewScript(redisops.BackfillSetScript)
	if err := script.Load(ctx, rc).Err(); err != nil {
		return 0, err
	}
	type fill struct{ key, guardKey, fenceKey, value string }
	fills := make([]fill, rows)
	for i := range fills {
		key := "ceiling:b:" + strconv.Itoa(i+1)
		fills[i] = fill{key, keyspace.GuardKey(key), keyspace.FenceKey(key), backfillValue(i + 1)}
	}
	guard := keyspace.EncodeGuard(0x1_6B37_4D48-1, keyspace.History("7312345678901234567", 1))
	ttl := time.Hour.Milliseconds()
	guardTTL := ttl + writer.DefaultGuardTTL.Milliseconds()
	began := time.Now()
	for start := 0; start < rows; start += backfillChunk {
		pipe := rc.Pipeline()
		for _, f := range fills[start:min(rows, start+backfillChunk)] {
			pipe.EvalSha(ctx, script.Hash(), []string{f.key, f.guardKey, f.fenceKey}, "set", guard, f.value, ttl, guardTTL)
		}
		cmds, err := pipe.Exec(ctx)
		if err != nil {
			return 0, err
		}
		if n, _ := cmds[0].(*redis.Cmd).Int64(); n != 1 {
			return 0, fmt.Errorf("the fill script did not write %s (returned %d)", fills[start].key, n)
		}
	}
	return time.Since(began).Seconds(), nil
}

// backfillFigures adds the backfill workload's lines to the table.
func backfillFigures(add func(*figure, func(runResult) (float64, float64))) {
	bf := func(r runResult) backfillResult {
		if r.Backfill == nil {
			return backfillResult{}
		}
		return *r.Backfill
	}
	add(&figure{Workload: backfillName, Metric: "PostgreSQL ceiling (COPY (SELECT …) TO STDOUT)", Unit: "rows/s"},
		func(r runResult) (float64, float64) { b := bf(r); return b.rate(b.CopySeconds), 0 })
	add(&figure{Workload: backfillName, Metric: "Redis ceiling (fill script, 1000/pipeline)", Unit: "rows/s"},
		func(r runResult) (float64, float64) { b := bf(r); return b.rate(b.RedisSeconds), 0 })
	add(&figure{Workload: backfillName, Metric: "cachesync backfill throughput", Unit: "rows/s", Versus: "lower ceiling",
		Target: "≥ 0.50 of the lower ceiling", atLeast: 0.50},
		func(r runResult) (float64, float64) { b := bf(r); return b.rate(b.Seconds), b.lowerCeiling() })
	add(&figure{Workload: backfillName, Metric: "cachesync backfill CPU per row", Unit: "µs"},
		func(r runResult) (float64, float64) { b := bf(r); return 1e6 * b.CPUSeconds / float64(b.Rows), 0 })
	add(&figure{Workload: backfillName, Metric: "Redis main-thread CPU per row, ceiling", Unit: "µs"},
		func(r runResult) (float64, float64) {
			b := bf(r)
			return 1e6 * b.RedisCeilingBusySeconds / float64(b.Rows), 0
		})
	add(&figure{Workload: backfillName, Metric: "Redis main-thread CPU per row, backfill", Unit: "µs"},
		func(r runResult) (float64, float64) { b := bf(r); return 1e6 * b.RedisBusySeconds / float64(b.Rows), 0 })
	add(&figure{Workload: backfillName, Metric: "cachesync backfill peak RSS", Unit: "MiB", Versus: "200 MiB budget"},
		func(r runResult) (float64, float64) { return mib(bf(r).PeakRSSBytes), 200 })
	add(&figure{Workload: backfillName, Metric: "stream load committed meanwhile", Unit: "tx/s", Versus: "offered"},
		func(r runResult) (float64, float64) { b := bf(r); return b.Lag.Achieved, b.Lag.Offered })
	add(&figure{Workload: backfillName, Metric: "stream lag p50 during backfill", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return bf(r).Lag.P50, 10 })
	add(&figure{Workload: backfillName, Metric: "stream lag p99 during backfill", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return bf(r).Lag.P99, 10 })
	add(&figure{Workload: backfillName, Metric: "stream lag max during backfill", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return bf(r).Lag.Mx, 10 })
}
