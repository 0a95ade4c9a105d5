package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// lagResult is one run of the steady-load lag measurement.
type lagResult struct {
	Offered      float64 // transactions/s asked for
	Achieved     float64 // transactions/s committed
	Committed    int
	Observed     int
	P50, P99, Mx float64 // milliseconds, commit returned → Redis SET seen
	PeakRSSBytes int64
}

const warmUp = time.Second

var debugLag = os.Getenv("BENCH_DEBUG_LAG") != ""

const lagTable = `CREATE TABLE w (id int PRIMARY KEY, ts timestamptz NOT NULL DEFAULT clock_timestamp(), payload text NOT NULL)`
const lagRule = `refresh {
    key   = "lag:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }`

// runLag offers rate single-row INSERT transactions per second for dur, open loop
// (a ticker hands row ids to a few committing connections), records when each commit
// returned, and timestamps each refreshed key's arrival in Redis with keyspace
// notifications. The refresh rule writes every committed row to lag:<id>.
func (b *bench) runLag(ctx context.Context, rate float64, dur time.Duration) (lagResult, error) {
	res := lagResult{Offered: rate}
	db, rules, dataDir, drop, err := b.preparedDatabase(ctx, lagTable, lagRule)
	if err != nil {
		return res, err
	}
	defer drop()
	rc := redisFromURL(b.srv.redisURL)
	defer rc.Close()
	if err := rc.ConfigSet(ctx, "notify-keyspace-events", "K$").Err(); err != nil {
		return res, err
	}
	defer rc.ConfigSet(context.Background(), "notify-keyspace-events", "")

	conn, err := pgx.Connect(ctx, b.srv.pgURL(db))
	if err != nil {
		return res, err
	}
	defer conn.Close(context.Background())

	cs := b.cachesyncCmd("run", rules, dataDir, db)
	var csOut bytes.Buffer
	cs.Stdout, cs.Stderr = &csOut, &csOut
	if err := cs.Start(); err != nil {
		return res, err
	}
	defer func() {
		_ = cs.Process.Signal(syscall.SIGTERM)
		waitOrKill(cs, 20*time.Second, syscall.SIGKILL)
	}()
	if _, err := waitActive(ctx, conn, "cs", cs); err != nil {
		return res, fmt.Errorf("cachesync run: %w\n%s", err, tail(csOut.String()))
	}

	// Observer.
	sub := rc.PSubscribe(ctx, "__keyspace@0__:lag:*")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return res, err
	}
	var mu sync.Mutex
	arrived := map[int]time.Time{}
	obsDone := make(chan struct{})
	go func() {
		defer close(obsDone)
		for msg := range sub.Channel(redis.WithChannelSize(int(rate) * 10)) {
			now := time.Now()
			if msg.Payload != "set" {
				continue
			}
			id, err := strconv.Atoi(strings.TrimPrefix(msg.Channel, "__keyspace@0__:lag:"))
			if err != nil {
				continue
			}
			mu.Lock()
			if _, ok := arrived[id]; !ok {
				arrived[id] = now
			}
			mu.Unlock()
		}
	}()

	// Generator.
	const workers = 8
	conns := make([]*pgx.Conn, workers)
	for i := range conns {
		if conns[i], err = pgx.Connect(ctx, b.srv.pgURL(db)); err != nil {
			return res, err
		}
		defer conns[i].Close(context.Background())
	}
	// The first second is a warm-up (connections, prepared statements, the daemon's
	// first batches) and is not counted.
	warm := int(rate * warmUp.Seconds())
	total := warm + int(rate*dur.Seconds())
	committed := make([]time.Time, total+1)
	ids := make(chan int, total+1)
	var wg sync.WaitGroup
	var genErr error
	var errOnce sync.Once
	for _, c := range conns {
		wg.Go(func() {
			for id := range ids {
				_, err := c.Exec(ctx, `INSERT INTO w (id, payload) VALUES ($1, 'steady load row')`, id)
				if err != nil {
					errOnce.Do(func() { genErr = err })
					continue
				}
				committed[id] = time.Now()
			}
		})
	}
	var hwm int64
	stopHWM := watchHWM(cs.Process.Pid, &hwm)
	interval := time.Duration(float64(time.Second) / rate)
	began := time.Now()
	for id := 1; id <= total; id++ {
		next := began.Add(time.Duration(id-1) * interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		ids <- id
	}
	close(ids)
	wg.Wait()
	elapsed := time.Since(began)
	if genErr != nil {
		stopHWM()
		return res, fmt.Errorf("load generator: %w", genErr)
	}
	// Wait for the stragglers.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(arrived)
		mu.Unlock()
		if n >= total {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopHWM()
	res.PeakRSSBytes = hwm
	_ = sub.Close()
	<-obsDone

	res.Committed = total - warm
	res.Achieved = float64(total) / elapsed.Seconds()
	lags := make([]float64, 0, total)
	for id := warm + 1; id <= total; id++ {
		at, ok := arrived[id]
		if !ok {
			continue
		}
		lags = append(lags, max(0, at.Sub(committed[id]).Seconds()*1000))
	}
	res.Observed = len(lags)
	if debugLag {
		for id := 1; id <= total; id += max(1, int(rate/10)) {
			b.logf("lag debug: row %d at +%s: %s", id, committed[id].Sub(began).Round(time.Millisecond), arrived[id].Sub(committed[id]))
		}
	}
	if len(lags) < total-warm {
		return res, fmt.Errorf("only %d of %d refreshed keys were seen in Redis", len(lags), total-warm)
	}
	slices.Sort(lags)
	res.P50 = percentile(lags, 0.50)
	res.P99 = percentile(lags, 0.99)
	res.Mx = lags[len(lags)-1]
	return res, nil
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
