package metrics_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/writebehind/backlogtest"
)

// TestWriteBehindMetrics: the observer counts a batch's entries by outcome,
// and the collector reads each block's backlog from Redis when scraped; a
// block whose Redis cannot be read is counted, not fatal.
func TestWriteBehindMetrics(t *testing.T) {
	rdb := testenv.Redis(t).Client(t)
	stream := t.Name() + ":counters"
	// Five entries an hour old; two delivered and still pending; one dead
	// letter.
	old := time.Now().Add(-time.Hour).UnixMilli()
	var ids []string
	for i := range int64(5) {
		ids = append(ids, fmt.Sprintf("%d-0", old+i))
	}
	backlogtest.Build(t, rdb, stream, backlogtest.Stream{IDs: ids, Group: true, Deliver: 2, Dead: 1})

	m := metrics.New()
	obs := m.WriteBehindObserver()
	obs.Batch("counters", 10, 4, 3, 1, 20*time.Millisecond)
	obs.Batch("counters", 5, 5, 0, 0, 40*time.Millisecond)
	m.Registry().MustRegister(metrics.WriteBehindCollector(rdb, []*config.WriteBehind{{Name: "counters", Stream: stream}}))
	unreachable := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = unreachable.Close() })
	down := prometheus.NewRegistry()
	down.MustRegister(metrics.WriteBehindCollector(unreachable, []*config.WriteBehind{{Name: "elsewhere", Stream: "wb:elsewhere"}}))

	got := gather(t, m.Registry())
	for k, want := range map[string]float64{
		`cachesync_write_behind_entries_total{name="counters",result="applied"}`: 11,
		`cachesync_write_behind_entries_total{name="counters",result="skipped"}`: 3,
		`cachesync_write_behind_entries_total{name="counters",result="dead"}`:    1,
		`cachesync_write_behind_batches_total{name="counters"}`:                  2,
		`cachesync_write_behind_batch_seconds_count{name="counters"}`:            2,
		`cachesync_write_behind_batch_seconds_sum{name="counters"}`:              0.06,
		`cachesync_write_behind_backlog_entries{name="counters"}`:                5,
		`cachesync_write_behind_pending_entries{name="counters"}`:                2,
		`cachesync_write_behind_dead_letters{name="counters"}`:                   1,
		`cachesync_write_behind_backlog_errors_total{name="counters"}`:           0,
	} {
		if v, ok := got[k]; !ok || v < want-1e-9 || v > want+1e-9 {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, want)
		}
	}
	if age := got[`cachesync_write_behind_oldest_pending_seconds{name="counters"}`]; age < 3600 || age > 3600+300 {
		t.Errorf("oldest pending age %vs, want an hour", age)
	}
	for scrape := 1; scrape <= 2; scrape++ {
		got := gather(t, down)
		if v := got[`cachesync_write_behind_backlog_errors_total{name="elsewhere"}`]; v != float64(scrape) {
			t.Errorf("scrape %d of an unreachable Redis: errors %v, want %d", scrape, v, scrape)
		}
		if _, ok := got[`cachesync_write_behind_backlog_entries{name="elsewhere"}`]; ok {
			t.Errorf("a backlog that could not be read is exported:\n%v", got)
		}
	}
}

// gather scrapes reg: each sample's value by name{labels} (a histogram
// as its _count and _sum).
func gather(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var labels []string
			for _, l := range mt.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			ls := "{" + strings.Join(labels, ",") + "}"
			switch {
			case mt.Counter != nil:
				out[mf.GetName()+ls] = mt.GetCounter().GetValue()
			case mt.Gauge != nil:
				out[mf.GetName()+ls] = mt.GetGauge().GetValue()
			case mt.Histogram != nil:
				out[mf.GetName()+"_count"+ls] = float64(mt.GetHistogram().GetSampleCount())
				out[mf.GetName()+"_sum"+ls] = mt.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}
