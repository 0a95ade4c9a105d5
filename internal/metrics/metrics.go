// Package metrics defines the daemon's Prometheus metrics (all named
// cachesync_*) and the HTTP endpoints that serve them with the health checks
// and pprof.
//
// The pipeline updates counters, gauges and histograms as it goes; the
// writer's and the mapper's own counters are read when Prometheus scrapes.
package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

const namespace = "cachesync"

// States of the daemon, the values of cachesync_state{state}.
const (
	StateStarting     = "starting"     // preflight, publication, slot
	StateStandby      = "standby"      // another instance holds the slot
	StateStreaming    = "streaming"    // the pipeline runs
	StateReconnecting = "reconnecting" // a session ended; waiting to retry
	StateStopped      = "stopped"
)

var states = []string{StateStarting, StateStandby, StateStreaming, StateReconnecting, StateStopped}

// WAL statuses of a slot (pg_replication_slots.wal_status).
var walStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// Metrics are the daemon's metrics and its registry.
type Metrics struct {
	reg *prometheus.Registry

	changes *prometheus.CounterVec
	// changeCache holds each table's counters, so that a change costs a
	// map lookup rather than a label hash. Only the goroutine that calls
	// Change touches it. Keyed by name, not by *wal.Relation: a relation
	// is announced again after every schema invalidation.
	changeCache map[relKey]*[wal.Truncate + 1]prometheus.Counter
	// lastRel and lastCounters are the relation Change last counted and
	// its counters: a stream of changes to one table skips the map too.
	lastRel      *wal.Relation
	lastCounters *[wal.Truncate + 1]prometheus.Counter
	Transactions prometheus.Counter

	GroupTransactions prometheus.Histogram
	GroupOperations   prometheus.Histogram
	ApplySeconds      prometheus.Histogram
	VisibilitySeconds prometheus.Histogram
	CommitToApplied   prometheus.Histogram
	// stageSeconds is cachesync_stage_seconds, one observer per stage
	// (stages.go).
	stageSeconds [stages]prometheus.Observer

	AppliedLSN   prometheus.Gauge
	ConfirmedLSN prometheus.Gauge
	HeartbeatRTT prometheus.Gauge

	flushes     *prometheus.CounterVec
	fallbacks   *prometheus.CounterVec
	Reconnects  prometheus.Counter
	CacheResets prometheus.Counter

	SlotRetained    prometheus.Gauge
	slotWALStatus   *prometheus.GaugeVec
	JournalBytes    prometheus.Gauge
	JournalSegments prometheus.Gauge
	state           *prometheus.GaugeVec

	// What the lag gauges are computed from at scrape time.
	lastCommit atomic.Int64 // unix ns: commit time of the last applied transaction
	applied    atomic.Uint64
	// positions reports the WAL position received and the server's WAL end
	// (the running session's stream), read at scrape time.
	positions atomic.Pointer[func() (received, serverEnd wal.LSN)]

	cur    atomic.Value // string: the current state
	detail atomic.Value // string: why (the last error while reconnecting)

	// What /healthz judges progress by (health.go): the highest confirmed
	// position, and when (unix ns) it last moved, the state last changed
	// and an outage was last seen (Redis failing, or PostgreSQL holding
	// commits invisible).
	confirmed                     atomic.Uint64
	progressAt, stateAt, outageAt atomic.Int64

	mapperStats atomic.Pointer[mapping.Stats]
	// queued reports the bytes the running session's pipeline holds.
	queued atomic.Pointer[func() int64]

	backfillRows      *prometheus.CounterVec
	backfillRemaining *prometheus.GaugeVec
	// backfills holds each rule's last backfill run, for the duration
	// and running gauges computed at scrape time.
	backfillMu sync.Mutex
	backfills  map[string]backfillRun

	writeBehind writeBehindMetrics
}

// backfillRun is one backfill run of a rule: when it started and, once it
// stopped (finished or failed), when.
type backfillRun struct{ started, stopped time.Time }

// New returns the metrics, registered with a registry of their own together
// with the Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), backfills: map[string]backfillRun{}}
	f := factory{m.reg}
	m.changes = f.counterVec("changes_received_total", "Row changes received from the replication stream, by table and kind (insert, update, delete, truncate).", "table", "kind")
	m.Transactions = f.counter("transactions_received_total", "Committed transactions received from the replication stream.")
	m.GroupTransactions = f.histogram("apply_group_transactions", "Transactions applied to Redis together, per group.", prometheus.ExponentialBuckets(1, 4, 6))
	m.GroupOperations = f.histogram("apply_group_operations", "Redis operations applied together, per group.", prometheus.ExponentialBuckets(1, 4, 8))
	m.ApplySeconds = f.histogram("apply_duration_seconds", "Time to apply a group to Redis, retries included.", prometheus.ExponentialBuckets(0.0001, 4, 10))
	m.VisibilitySeconds = f.histogram("visibility_wait_seconds", "Time a group with effects waited, before its apply, for PostgreSQL to show its transactions to new snapshots (one snapshot query when they already are; a synchronous standby's round trip when it is set).", prometheus.ExponentialBuckets(0.0001, 4, 10))
	m.CommitToApplied = f.histogram("commit_to_applied_seconds", "From the commit of a group's oldest transaction in PostgreSQL to its effects acknowledged by Redis.", prometheus.ExponentialBuckets(0.0005, 2.5, 14))
	m.stageSeconds = newStageSeconds(f)
	m.AppliedLSN = f.gauge("applied_lsn", "WAL position (bytes) up to which every effect is applied to Redis.")
	m.ConfirmedLSN = f.gauge("confirmed_lsn", "WAL position (bytes) confirmed to PostgreSQL: applied and journaled.")
	m.HeartbeatRTT = f.gauge("heartbeat_rtt_seconds", "From writing the last heartbeat message to the WAL to receiving it back on the replication stream.")
	m.flushes = f.counterVec("keyspace_flushes_total", "Flushes of a rule's key space, by rule and cause (truncate, key_cap, not_sent, slot_created, cache_reset, ...).", "rule", "reason")
	m.fallbacks = f.counterVec("fallbacks_total", "Operations Redis would refuse on every retry (or journal records too large to write), replaced by stronger ones, by rule and reason (version_not_integer, version_overflow, version_wrong_type, tag_wrong_type, value_too_large, journal_record_too_large). Each is also logged at error level.", "rule", "reason")
	m.Reconnects = f.counter("reconnects_total", "Replication sessions that ended with an error and were retried.")
	m.CacheResets = f.counter("cache_resets_total", "Times the cache was found to have lost applied effects (restart, restore, failover) and was healed.")
	m.SlotRetained = f.gauge("slot_retained_wal_bytes", "WAL the server retains for the slot: current WAL position minus the slot's restart_lsn.")
	m.slotWALStatus = f.gaugeVec("slot_wal_status", "The slot's wal_status: 1 for the current one.", "status")
	m.JournalBytes = f.gauge("journal_bytes", "Size of the replay journal's segment files.")
	m.JournalSegments = f.gauge("journal_segments", "Segment files of the replay journal.")
	m.state = f.gaugeVec("state", "The daemon's state: 1 for the current one (starting, standby, streaming, reconnecting, stopped).", "state")
	m.backfillRows = f.counterVec("backfill_rows_total", "Rows read from PostgreSQL and written to Redis by the automatic backfill (refresh { backfill = true }), by rule.", "rule")
	m.backfillRemaining = f.gaugeVec("backfill_remaining_rows", "Rows the running or last backfill of a rule has still to load: its total estimate (pg_class.reltuples, then counted) minus the rows done; 0 once finished.", "rule")
	m.writeBehind = newWriteBehindMetrics(f)
	m.SetState(StateStarting, "")

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		lagCollector{m},
		mapperCollector{m},
		backfillCollector{m},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: namespace + "_pipeline_queued_bytes",
			Help: "Row data the pipeline holds between the replication connection and the journal (decoded events and mapped batches), bounded by --max-queued-bytes; reading from PostgreSQL waits while it is full.",
		}, func() float64 {
			if fn := m.queued.Load(); fn != nil {
				return float64((*fn)())
			}
			return 0
		}),
	)
	return m
}

// QueuedBytes sets where the pipeline_queued_bytes gauge reads from (the
// session's budgets).
func (m *Metrics) QueuedBytes(fn func() int64) { m.queued.Store(&fn) }

// Registry is where the metrics are registered (for /metrics, and for more
// collectors such as the writer's).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

type relKey struct{ ns, name string }

// Change counts a received row change. It is not safe for concurrent use:
// the pipeline calls it from its mapping goroutine only.
func (m *Metrics) Change(rel *wal.Relation, kind wal.Kind) {
	if rel == nil || kind < wal.Insert || kind > wal.Truncate {
		return
	}
	if rel == m.lastRel {
		m.lastCounters[kind].Inc()
		return
	}
	k := relKey{rel.Namespace, rel.Name}
	cs := m.changeCache[k]
	if cs == nil {
		cs = new([wal.Truncate + 1]prometheus.Counter)
		for kd := wal.Insert; kd <= wal.Truncate; kd++ {
			cs[kd] = m.changes.WithLabelValues(rel.QualifiedName(), kd.String())
		}
		if m.changeCache == nil {
			m.changeCache = map[relKey]*[wal.Truncate + 1]prometheus.Counter{}
		}
		m.changeCache[k] = cs
	}
	m.lastRel, m.lastCounters = rel, cs
	cs[kind].Inc()
}

// Flush counts a key-space flush.
func (m *Metrics) Flush(rule, reason string) { m.flushes.WithLabelValues(rule, reason).Inc() }

// Fallback counts an operation replaced by a stronger one (writer.Fallback,
// or a journal record replaced by flushes).
func (m *Metrics) Fallback(rule, reason string) { m.fallbacks.WithLabelValues(rule, reason).Inc() }

// Applied records a group acknowledged by Redis: its end and the commit time
// of its oldest and newest transactions (zero for barriers only).
func (m *Metrics) Applied(end wal.LSN, oldest, newest time.Time, now time.Time) {
	m.applied.Store(uint64(end))
	m.AppliedLSN.Set(float64(end))
	if !oldest.IsZero() {
		m.CommitToApplied.Observe(now.Sub(oldest).Seconds())
	}
	if !newest.IsZero() {
		m.lastCommit.Store(newest.UnixNano())
	}
}

// Positions sets where the lag gauges read the WAL position received and
// the server's WAL end from (the session's stream).
func (m *Metrics) Positions(fn func() (received, serverEnd wal.LSN)) { m.positions.Store(&fn) }

// SetState records the daemon's state, and why (for readiness).
func (m *Metrics) SetState(state, detail string) {
	m.cur.Store(state)
	m.detail.Store(detail)
	m.stateAt.Store(time.Now().UnixNano())
	for _, s := range states {
		v := 0.0
		if s == state {
			v = 1
		}
		m.state.WithLabelValues(s).Set(v)
	}
}

// State returns the current state and why.
func (m *Metrics) State() (state, detail string) {
	return m.cur.Load().(string), m.detail.Load().(string)
}

// SlotWALStatus records the slot's wal_status.
func (m *Metrics) SlotWALStatus(status string) {
	for _, s := range walStatuses {
		v := 0.0
		if s == status {
			v = 1
		}
		m.slotWALStatus.WithLabelValues(s).Set(v)
	}
}

// MapperStats publishes a snapshot of the mapper's counters (the mapper is
// single-threaded; its goroutine hands over copies).
func (m *Metrics) MapperStats(s mapping.Stats) { m.mapperStats.Store(&s) }

// BackfillStarted records that a rule's backfill started (or resumed) at
// at, with remaining rows still to load.
func (m *Metrics) BackfillStarted(rule string, at time.Time, remaining int64) {
	m.backfillMu.Lock()
	defer m.backfillMu.Unlock()
	m.backfills[rule] = backfillRun{started: at}
	m.backfillRows.WithLabelValues(rule).Add(0)
	m.backfillRemaining.WithLabelValues(rule).Set(float64(max(remaining, 0)))
}

// BackfillRows records rows loaded by a rule's running backfill, and how
// many remain.
func (m *Metrics) BackfillRows(rule string, rows, remaining int64) {
	m.backfillRows.WithLabelValues(rule).Add(float64(max(rows, 0)))
	m.backfillRemaining.WithLabelValues(rule).Set(float64(max(remaining, 0)))
}

// BackfillStopped records that a rule's backfill stopped at at: finished
// (nothing remains) or not (failed or interrupted; it is resumed later).
func (m *Metrics) BackfillStopped(rule string, at time.Time, finished bool) {
	m.backfillMu.Lock()
	defer m.backfillMu.Unlock()
	run := m.backfills[rule]
	if run.started.IsZero() {
		run.started = at
	}
	run.stopped = at
	m.backfills[rule] = run
	if finished {
		m.backfillRemaining.WithLabelValues(rule).Set(0)
	}
}

// backfillCollector computes each rule's backfill duration and running
// gauges when scraped.
type backfillCollector struct{ m *Metrics }

var (
	backfillSecondsDesc = prometheus.NewDesc(namespace+"_backfill_duration_seconds",
		"Time the running backfill of a rule has run so far, or the last one ran, in this process.", []string{"rule"}, nil)
	backfillRunningDesc = prometheus.NewDesc(namespace+"_backfill_running",
		"1 while a rule's backfill runs, else 0.", []string{"rule"}, nil)
)

func (c backfillCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backfillSecondsDesc
	ch <- backfillRunningDesc
}

func (c backfillCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.backfillMu.Lock()
	defer c.m.backfillMu.Unlock()
	now := time.Now()
	for rule, run := range c.m.backfills {
		end, running := run.stopped, 0.0
		if end.IsZero() {
			end, running = now, 1
		}
		ch <- prometheus.MustNewConstMetric(backfillSecondsDesc, prometheus.GaugeValue, max(0, end.Sub(run.started).Seconds()), rule)
		ch <- prometheus.MustNewConstMetric(backfillRunningDesc, prometheus.GaugeValue, running, rule)
	}
}

// lagCollector computes the lag gauges when scraped.
type lagCollector struct{ m *Metrics }

var (
	lagSecondsDesc = prometheus.NewDesc(namespace+"_replication_lag_seconds",
		"How far the cache is behind PostgreSQL in time: 0 when everything received is applied, else now minus the commit time of the last applied transaction (an upper bound of the oldest pending one's wait).", nil, nil)
	lagBytesDesc = prometheus.NewDesc(namespace+"_replication_lag_bytes",
		"How far the cache is behind PostgreSQL in WAL: the server's WAL end minus the applied position.", nil, nil)
)

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lagSecondsDesc
	ch <- lagBytesDesc
}

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	applied := c.m.applied.Load()
	var received, end uint64
	if fn := c.m.positions.Load(); fn != nil {
		r, e := (*fn)()
		received, end = uint64(r), uint64(e)
	}
	secs := 0.0
	if received > applied {
		if last := c.m.lastCommit.Load(); last > 0 {
			secs = max(0, time.Since(time.Unix(0, last)).Seconds())
		}
	}
	bytes := 0.0
	if end > applied {
		bytes = float64(end - applied)
	}
	ch <- prometheus.MustNewConstMetric(lagSecondsDesc, prometheus.GaugeValue, secs)
	ch <- prometheus.MustNewConstMetric(lagBytesDesc, prometheus.GaugeValue, bytes)
}

// mapperCollector exports the mapper's counters from the last snapshot.
type mapperCollector struct{ m *Metrics }

var (
	nullKeysDesc   = prometheus.NewDesc(namespace+"_null_keys_total", "Keys not produced because a template evaluated to NULL.", nil, nil)
	notSentDesc    = prometheus.NewDesc(namespace+"_refresh_not_sent_total", "Write-through refreshes turned into deletes because a value was not sent (unchanged TOAST).", nil, nil)
	tooLargeDesc   = prometheus.NewDesc(namespace+"_refresh_too_large_total", "Write-through refreshes turned into deletes because the transaction's values went past a quarter of --max-queued-bytes.", nil, nil)
	evalErrorsDesc = prometheus.NewDesc(namespace+"_template_errors_total", "Template evaluations that failed (the rule acted conservatively: flush or delete).", nil, nil)
	unmappedDesc   = prometheus.NewDesc(namespace+"_unmapped_changes_total", "Changes of tables that no rule reads.", nil, nil)
)

func (c mapperCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nullKeysDesc
	ch <- notSentDesc
	ch <- tooLargeDesc
	ch <- evalErrorsDesc
	ch <- unmappedDesc
}

func (c mapperCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.mapperStats.Load()
	if s == nil {
		s = &mapping.Stats{}
	}
	ch <- prometheus.MustNewConstMetric(nullKeysDesc, prometheus.CounterValue, float64(s.NullKeys))
	ch <- prometheus.MustNewConstMetric(notSentDesc, prometheus.CounterValue, float64(s.Incomplete))
	ch <- prometheus.MustNewConstMetric(tooLargeDesc, prometheus.CounterValue, float64(s.TooLarge))
	ch <- prometheus.MustNewConstMetric(evalErrorsDesc, prometheus.CounterValue, float64(s.EvalErrors))
	ch <- prometheus.MustNewConstMetric(unmappedDesc, prometheus.CounterValue, float64(s.UnmappedTable))
}

// WriterCollector exports a writer's counters: Redis operations by kind and
// result, retries, keys deleted through tags and flushes, and whether Redis
// is reachable.
func WriterCollector(stats func() writer.Stats) prometheus.Collector { return writerCollector{stats} }

type writerCollector struct{ stats func() writer.Stats }

var (
	redisOpsDesc = prometheus.NewDesc(namespace+"_redis_operations_total",
		"Operations acknowledged by Redis, by kind (delete, delete_tag, bump_version, set, unset, flush) and result (applied, or skipped: a write-through effect older than the key's guard).", []string{"kind", "result"}, nil)
	redisRetriesDesc = prometheus.NewDesc(namespace+"_redis_retries_total", "Failed attempts to apply to Redis that were retried.", nil, nil)
	redisUpDesc      = prometheus.NewDesc(namespace+"_redis_up", "1 while Redis acknowledges, 0 from the first failed attempt until one succeeds.", nil, nil)
	redisKeysDesc    = prometheus.NewDesc(namespace+"_redis_keys_deleted_total", "Keys deleted indirectly, by cause: tag (members of deleted tags) and flush.", []string{"by"}, nil)
)

func (c writerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- redisOpsDesc
	ch <- redisRetriesDesc
	ch <- redisUpDesc
	ch <- redisKeysDesc
}

func (c writerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	op := func(kind, result string, v uint64) {
		ch <- prometheus.MustNewConstMetric(redisOpsDesc, prometheus.CounterValue, float64(v), kind, result)
	}
	op("delete", "applied", s.Deletes)
	op("delete_tag", "applied", s.TagDeletes)
	op("bump_version", "applied", s.VersionBumps)
	op("set", "applied", s.Sets-min(s.Sets, s.SetsSkipped))
	op("set", "skipped", s.SetsSkipped)
	op("unset", "applied", s.Unsets-min(s.Unsets, s.UnsetsSkipped))
	op("unset", "skipped", s.UnsetsSkipped)
	op("flush", "applied", s.Flushes)
	ch <- prometheus.MustNewConstMetric(redisRetriesDesc, prometheus.CounterValue, float64(s.Retries))
	up := 1.0
	if s.Failing {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(redisUpDesc, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(redisKeysDesc, prometheus.CounterValue, float64(s.KeysDeletedByTags), "tag")
	ch <- prometheus.MustNewConstMetric(redisKeysDesc, prometheus.CounterValue, float64(s.KeysDeletedByFlushes), "flush")
}

// factory makes metrics in the cachesync namespace and registers them.
type factory struct{ reg prometheus.Registerer }

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}
