package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/writebehind"
)

// Outcomes of a write-behind entry, the values of
// cachesync_write_behind_entries_total{result}.
const (
	WriteBehindApplied = "applied" // written to the table (or merged into a later write of its batch)
	WriteBehindSkipped = "skipped" // at or below the recorded ID: applied before a crash or takeover
	WriteBehindDead    = "dead"    // moved to the dead-letter stream
)

// writeBehindMetrics are what the workers report per batch.
type writeBehindMetrics struct {
	entries      *prometheus.CounterVec
	batches      *prometheus.CounterVec
	batchSeconds *prometheus.HistogramVec
}

func newWriteBehindMetrics(f factory) writeBehindMetrics {
	batchSeconds := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "write_behind_batch_seconds",
		Help:    "Time a write-behind batch took, from reading its entries to acknowledging them after the commit, by write_behind block.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	}, []string{"name"})
	f.reg.MustRegister(batchSeconds)
	return writeBehindMetrics{
		entries:      f.counterVec("write_behind_entries_total", "Write-behind stream entries read by the worker, by write_behind block and outcome: applied, skipped (at or below the recorded ID: applied before a crash) or dead (moved to <stream>:dead).", "name", "result"),
		batches:      f.counterVec("write_behind_batches_total", "Write-behind batches committed, by write_behind block.", "name"),
		batchSeconds: batchSeconds,
	}
}

// WriteBehindObserver returns what the write-behind workers report their
// batches to (writebehind.Options.Observer).
func (m *Metrics) WriteBehindObserver() writebehind.Observer {
	return writeBehindObserver{m.writeBehind}
}

type writeBehindObserver struct{ m writeBehindMetrics }

// Batch counts a committed batch's entries by outcome (entries, not the
// rows they merged into).
func (o writeBehindObserver) Batch(name string, entries, applied, skipped, dead int, took time.Duration) {
	o.m.entries.WithLabelValues(name, WriteBehindApplied).Add(float64(max(0, entries-skipped-dead)))
	o.m.entries.WithLabelValues(name, WriteBehindSkipped).Add(float64(max(0, skipped)))
	o.m.entries.WithLabelValues(name, WriteBehindDead).Add(float64(max(0, dead)))
	o.m.batches.WithLabelValues(name).Inc()
	o.m.batchSeconds.WithLabelValues(name).Observe(took.Seconds())
}

// WriteBehindReadTimeout bounds the Redis reads of one scrape of the
// write-behind backlog.
const WriteBehindReadTimeout = 2 * time.Second

// WriteBehindCollector exports each write_behind block's backlog, read from
// Redis (writebehind.ReadBacklog) when Prometheus scrapes, within
// WriteBehindReadTimeout. A block whose read fails has no backlog series in
// that scrape, and counts in cachesync_write_behind_backlog_errors_total.
func WriteBehindCollector(rdb redis.UniversalClient, blocks []*config.WriteBehind) prometheus.Collector {
	return &writeBehindCollector{rdb: rdb, blocks: blocks, errors: map[string]uint64{}}
}

type writeBehindCollector struct {
	rdb    redis.UniversalClient
	blocks []*config.WriteBehind

	mu     sync.Mutex
	errors map[string]uint64 // by block name
}

var (
	wbBacklogDesc = prometheus.NewDesc(namespace+"_write_behind_backlog_entries",
		"Write-behind entries not yet applied, by write_behind block: not yet delivered to the worker (the consumer group's lag) plus delivered and not acknowledged (pending).", []string{"name"}, nil)
	wbPendingDesc = prometheus.NewDesc(namespace+"_write_behind_pending_entries",
		"Write-behind entries delivered to the worker and not yet acknowledged (the consumer group's pending entries), by write_behind block.", []string{"name"}, nil)
	wbOldestDesc = prometheus.NewDesc(namespace+"_write_behind_oldest_pending_seconds",
		"Age of the oldest write-behind entry not yet applied (from its stream ID), by write_behind block; 0 when none waits.", []string{"name"}, nil)
	wbDeadDesc = prometheus.NewDesc(namespace+"_write_behind_dead_letters",
		"Entries in a write_behind block's dead-letter stream <stream>:dead (entries that could not apply; inspect and replay them, then trim).", []string{"name"}, nil)
	wbErrorsDesc = prometheus.NewDesc(namespace+"_write_behind_backlog_errors_total",
		"Scrapes that could not read a write_behind block's backlog from Redis (its backlog series are missing from those scrapes).", []string{"name"}, nil)
)

func (c *writeBehindCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- wbBacklogDesc
	ch <- wbPendingDesc
	ch <- wbOldestDesc
	ch <- wbDeadDesc
	ch <- wbErrorsDesc
}

func (c *writeBehindCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), WriteBehindReadTimeout)
	defer cancel()
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, wb := range c.blocks {
		b, err := writebehind.ReadBacklog(ctx, c.rdb, wb.Stream, now)
		if err != nil {
			c.errors[wb.Name]++
		} else {
			gauge := func(d *prometheus.Desc, v float64) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, wb.Name)
			}
			gauge(wbBacklogDesc, float64(b.Entries()))
			gauge(wbPendingDesc, float64(b.Pending))
			gauge(wbOldestDesc, b.OldestPending.Seconds())
			gauge(wbDeadDesc, float64(b.DeadLetters))
		}
		ch <- prometheus.MustNewConstMetric(wbErrorsDesc, prometheus.CounterValue, float64(c.errors[wb.Name]), wb.Name)
	}
}
