package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
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
	// Floor is the same load observed by a bare pgoutput client that only
	// timestamps each INSERT as it arrives: the walsender's delivery latency
	// on this machine, below which no consumer's lag can go.
	Floor lagSpread
	// CPUPerTx is the daemon's CPU (user+system) per committed transaction
	// during the load, in microseconds, with run's default --verify-rate;
	// Unchecked and UncheckedCPUPerTx are the same load with --verify-rate
	// 0: the continuous checker's overhead is the difference.
	CPUPerTx          float64
	Unchecked         lagSpread
	UncheckedCPUPerTx float64
}

// lagSpread is a lag distribution in milliseconds.
type lagSpread struct {
	P50, P99, Mx float64
}

const warmUp = time.Second

var debugLag = os.Getenv("BENCH_DEBUG_LAG") != ""

const lagTable = `CREATE TABLE w (id int PRIMARY KEY, ts timestamptz NOT NULL DEFAULT clock_timestamp(), payload text NOT NULL)`
const lagRule = `refresh {
    key   = "lag:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }`

// arrivals records when each row id was first seen by an observer.
type arrivals struct {
	mu sync.Mutex
	at map[int]time.Time
}

func newArrivals() *arrivals { return &arrivals{at: map[int]time.Time{}} }

func (a *arrivals) see(id int, now time.Time) {
	a.mu.Lock()
	if _, ok := a.at[id]; !ok {
		a.at[id] = now
	}
	a.mu.Unlock()
}

func (a *arrivals) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at)
}

// runLag measures the delivery floor and then cachesync under the same offered
// load, each on a fresh database.
func (b *bench) runLag(ctx context.Context, rate float64, dur time.Duration) (lagResult, error) {
	res, err := b.runLagCachesync(ctx, rate, dur, nil)
	if err != nil {
		return res, err
	}
	off, err := b.runLagCachesync(ctx, rate, dur, nil, "CACHESYNC_VERIFY_RATE=0")
	if err != nil {
		return res, fmt.Errorf("with --verify-rate 0: %w", err)
	}
	res.Unchecked = lagSpread{P50: off.P50, P99: off.P99, Mx: off.Mx}
	res.UncheckedCPUPerTx = off.CPUPerTx
	floor, err := b.runLagFloor(ctx, rate, dur)
	if err != nil {
		return res, fmt.Errorf("delivery floor: %w", err)
	}
	res.Floor = floor
	return res, err
}

// runLagCachesync offers the load with cachesync running and timestamps each
// refreshed key's arrival in Redis with keyspace notifications. The refresh
// rule writes every committed row to lag:<id>. env is added to the daemon's
// environment. With stages set, the daemon's /metrics is scraped at the end
// of the load's warm-up and once the load has drained (stageScrapes), and its
// stage histograms' deltas are added to stages.
func (b *bench) runLagCachesync(ctx context.Context, rate float64, dur time.Duration, stages map[string]*stageStat, env ...string) (lagResult, error) {
	res := lagResult{Offered: rate}
	db, rules, dataDir, drop, err := b.preparedDatabase(ctx, lagTable, lagRule, false)
	if err != nil {
		return res, err
	}
	defer drop()
	var metricsAddr string
	if stages != nil {
		port, err := freePort()
		if err != nil {
			return res, err
		}
		metricsAddr = fmt.Sprintf("127.0.0.1:%d", port)
		env = append(env, "CACHESYNC_LISTEN="+metricsAddr) // the last value wins
	}
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

	obs, err := b.runObserved(ctx, conn, rc, rules, dataDir, db, rate, env...)
	if err != nil {
		return res, err
	}
	defer obs.stop()
	seen := obs.seen

	scrapes := stageScrapes(ctx, metricsAddr)
	var hwm int64
	stopHWM := watchHWM(obs.cs.Process.Pid, &hwm)
	cpu0 := cpuSeconds(obs.cs.Process.Pid)
	load, err := b.offerLoad(ctx, db, rate, dur, nil)
	if err != nil {
		stopHWM()
		return res, err
	}
	load.waitFor(seen)
	if metricsAddr != "" {
		if before, after, err := scrapes(); err != nil {
			b.logf("no stage breakdown: %v", err)
		} else {
			addStageDeltas(stages, before, after)
		}
	}
	if load.total > 0 {
		res.CPUPerTx = 1e6 * (cpuSeconds(obs.cs.Process.Pid) - cpu0) / float64(load.total)
	}
	stopHWM()
	res.PeakRSSBytes = hwm
	obs.stopObserving()

	lags, err := load.lags(seen)
	if debugLag {
		load.debug(b.logf, seen)
	}
	res.Committed, res.Achieved, res.Observed = load.total-load.warm, load.achieved(), len(lags)
	if err != nil {
		return res, err
	}
	s := spreadOf(lags)
	res.P50, res.P99, res.Mx = s.P50, s.P99, s.Mx
	return res, nil
}

// observedRun is `cachesync run` with an observer that records when each
// lag:<id> key is set in Redis (keyspace notifications, which the caller
// turned on).
type observedRun struct {
	cs       *exec.Cmd
	seen     *arrivals
	sub      *redis.PubSub
	obsDone  chan struct{}
	stopOnce sync.Once
}

// runObserved starts `cachesync run` on db, waits until its slot is active,
// and starts the observer; rate sizes its buffer; env is added to the
// daemon's environment.
func (b *bench) runObserved(ctx context.Context, conn *pgx.Conn, rc *redis.Client, rules, dataDir, db string, rate float64, env ...string) (*observedRun, error) {
	o := &observedRun{cs: b.cachesyncCmd("run", rules, dataDir, db, false), seen: newArrivals(), obsDone: make(chan struct{})}
	o.cs.Env = append(o.cs.Env, env...)
	var csOut bytes.Buffer
	o.cs.Stdout, o.cs.Stderr = &csOut, &csOut
	if err := o.cs.Start(); err != nil {
		return nil, err
	}
	fail := func(err error) (*observedRun, error) {
		_ = o.cs.Process.Signal(syscall.SIGTERM)
		waitOrKill(o.cs, 20*time.Second, syscall.SIGKILL)
		return nil, err
	}
	if _, err := waitActive(ctx, conn, "cs", o.cs); err != nil {
		return fail(fmt.Errorf("cachesync run: %w\n%s", err, tail(csOut.String())))
	}
	o.sub = rc.PSubscribe(ctx, "__keyspace@0__:lag:*")
	if _, err := o.sub.Receive(ctx); err != nil {
		_ = o.sub.Close()
		return fail(err)
	}
	go func() {
		defer close(o.obsDone)
		for msg := range o.sub.Channel(redis.WithChannelSize(int(rate)*10 + 100)) {
			now := time.Now()
			if msg.Payload != "set" {
				continue
			}
			if id, err := strconv.Atoi(strings.TrimPrefix(msg.Channel, "__keyspace@0__:lag:")); err == nil {
				o.seen.see(id, now)
			}
		}
	}()
	return o, nil
}

// stopObserving ends the observer; seen is complete once it returns.
func (o *observedRun) stopObserving() {
	o.stopOnce.Do(func() {
		_ = o.sub.Close()
		<-o.obsDone
	})
}

// stop ends the observer, then the daemon.
func (o *observedRun) stop() {
	o.stopObserving()
	_ = o.cs.Process.Signal(syscall.SIGTERM)
	waitOrKill(o.cs, 20*time.Second, syscall.SIGKILL)
}

// runLagFloor offers the load to a database whose only consumer is a bare
// pgoutput client (same plugin options as cachesync) that records when each
// INSERT arrives and does nothing else.
func (b *bench) runLagFloor(ctx context.Context, rate float64, dur time.Duration) (lagSpread, error) {
	db, _, _, drop, err := b.preparedDatabase(ctx, lagTable, lagRule, false)
	if err != nil {
		return lagSpread{}, err
	}
	defer drop()
	rconn, err := pgconn.Connect(ctx, b.srv.pgURL(db)+"&replication=database")
	if err != nil {
		return lagSpread{}, err
	}
	defer rconn.Close(context.Background())
	if _, err := pglogrepl.CreateReplicationSlot(ctx, rconn, "floor", "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT"}); err != nil {
		return lagSpread{}, err
	}
	if err := pglogrepl.StartReplication(ctx, rconn, "floor", 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'bench'", "messages 'true'"},
	}); err != nil {
		return lagSpread{}, err
	}
	seen := newArrivals()
	rctx, stop := context.WithCancel(ctx)
	recvDone := make(chan error, 1)
	go func() { recvDone <- receiveInserts(rctx, rconn, seen) }()

	load, err := b.offerLoad(ctx, db, rate, dur, nil)
	if err == nil {
		load.waitFor(seen)
	}
	stop()
	if rerr := <-recvDone; rerr != nil && !errors.Is(rerr, context.Canceled) && err == nil {
		err = rerr
	}
	if err != nil {
		return lagSpread{}, err
	}
	lags, err := load.lags(seen)
	if debugLag {
		load.debug(b.logf, seen)
	}
	if err != nil {
		return lagSpread{}, err
	}
	return spreadOf(lags), nil
}

// receiveInserts reads the replication stream until ctx ends, timestamps every
// INSERT by its first column (the row id), and confirms what it received so
// the server never waits on it.
func receiveInserts(ctx context.Context, conn *pgconn.PgConn, seen *arrivals) error {
	var pos pglogrepl.LSN
	lastStatus := time.Now()
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		now := time.Now()
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				return pgconn.ErrorResponseToPgError(e)
			}
			continue
		}
		reply := false
		switch cd.Data[0] {
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return err
			}
			if id, ok := insertID(x.WALData); ok {
				seen.see(id, now)
			}
			pos = max(pos, x.WALStart+pglogrepl.LSN(len(x.WALData)))
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return err
			}
			pos = max(pos, k.ServerWALEnd)
			reply = k.ReplyRequested
		}
		if reply || time.Since(lastStatus) > time.Second {
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos}); err != nil {
				return err
			}
			lastStatus = time.Now()
		}
	}
}

// insertID reads the first column of a pgoutput v1 INSERT ('I', relation oid,
// 'N', column count, then 't' + length + text per column).
func insertID(m []byte) (int, bool) {
	if len(m) < 1+4+1+2+1+4 || m[0] != 'I' || m[5] != 'N' || m[8] != 't' {
		return 0, false
	}
	n := int(binary.BigEndian.Uint32(m[9:13]))
	if len(m) < 13+n {
		return 0, false
	}
	id, err := strconv.Atoi(string(m[13 : 13+n]))
	return id, err == nil
}

// offered is the record of one steady load: when each row's commit returned.
type offered struct {
	committed   []time.Time // by row id
	warm, total int
	elapsed     time.Duration
}

// offerLoad commits single-row INSERT transactions at rate per second for
// warm-up plus dur, open loop: a ticker hands row ids to 8 connections, each
// records the wall time at which its commit returned. The warm-up rows
// (connections, prepared statements, a consumer's first batches) are not
// counted. A close of stop (nil: never) ends the load early, after the warm-up.
func (b *bench) offerLoad(ctx context.Context, db string, rate float64, dur time.Duration, stop <-chan struct{}) (*offered, error) {
	const workers = 8
	conns := make([]*pgx.Conn, workers)
	for i := range conns {
		c, err := pgx.Connect(ctx, b.srv.pgURL(db))
		if err != nil {
			return nil, err
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	o := &offered{warm: int(rate * warmUp.Seconds())}
	o.total = o.warm + int(rate*dur.Seconds())
	o.committed = make([]time.Time, o.total+1)
	ids := make(chan int, o.total+1)
	var wg sync.WaitGroup
	var genErr error
	var errOnce sync.Once
	for _, c := range conns {
		wg.Go(func() {
			for id := range ids {
				if _, err := c.Exec(ctx, `INSERT INTO w (id, payload) VALUES ($1, 'steady load row')`, id); err != nil {
					errOnce.Do(func() { genErr = err })
					continue
				}
				o.committed[id] = time.Now()
			}
		})
	}
	interval := time.Duration(float64(time.Second) / rate)
	began := time.Now()
	for id := 1; id <= o.total; id++ {
		if d := time.Until(began.Add(time.Duration(id-1) * interval)); d > 0 {
			time.Sleep(d)
		}
		if id > o.warm && stopped(stop) {
			o.total = id - 1
			break
		}
		ids <- id
	}
	close(ids)
	wg.Wait()
	o.elapsed = time.Since(began)
	if genErr != nil {
		return nil, fmt.Errorf("load generator: %w", genErr)
	}
	return o, nil
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

func (o *offered) achieved() float64 { return float64(o.total) / o.elapsed.Seconds() }

// waitFor gives the observer up to 10 s to see the stragglers.
func (o *offered) waitFor(seen *arrivals) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && seen.count() < o.total {
		time.Sleep(20 * time.Millisecond)
	}
}

// lags is commit returned → seen, in ms, for every counted row; an arrival
// before the commit returned counts as 0.
func (o *offered) lags(seen *arrivals) ([]float64, error) {
	seen.mu.Lock()
	defer seen.mu.Unlock()
	lags := make([]float64, 0, o.total-o.warm)
	for id := o.warm + 1; id <= o.total; id++ {
		if at, ok := seen.at[id]; ok {
			lags = append(lags, max(0, at.Sub(o.committed[id]).Seconds()*1000))
		}
	}
	if len(lags) < o.total-o.warm {
		return lags, fmt.Errorf("only %d of %d rows were seen", len(lags), o.total-o.warm)
	}
	return lags, nil
}

func (o *offered) debug(logf func(string, ...any), seen *arrivals) {
	seen.mu.Lock()
	defer seen.mu.Unlock()
	step := max(1, o.total/200)
	for id := 1; id <= o.total; id += step {
		logf("lag debug: row %d: %s", id, seen.at[id].Sub(o.committed[id]))
	}
}

func spreadOf(lags []float64) lagSpread {
	slices.Sort(lags)
	if len(lags) == 0 {
		return lagSpread{}
	}
	return lagSpread{P50: percentile(lags, 0.50), P99: percentile(lags, 0.99), Mx: lags[len(lags)-1]}
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
