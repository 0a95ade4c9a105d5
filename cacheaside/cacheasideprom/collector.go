// Package cacheasideprom exports a cacheaside.Client's counters to
// Prometheus. It lives apart so that cacheaside itself does not depend on
// the Prometheus client.
//
//	reg.MustRegister(cacheasideprom.NewCollector(client, "users"))
package cacheasideprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachesync/cachesync/cacheaside"
)

// stat is one counter of cacheaside.Stats.
type stat struct {
	name, help string
	value      func(cacheaside.Stats) uint64
	result     string // the result label, for the counters of one metric split by result
}

var stats = []stat{
	{"hits", "Reads answered from the cache.", func(s cacheaside.Stats) uint64 { return s.Hits }, ""},
	{"not_found_hits", "Reads answered by a cached \"not found\".", func(s cacheaside.Stats) uint64 { return s.NotFoundHits }, ""},
	{"misses", "Reads that found nothing usable in the cache.", func(s cacheaside.Stats) uint64 { return s.Misses }, ""},
	{"loads", "Calls of a loader (reads from the source).", func(s cacheaside.Stats) uint64 { return s.Loads }, ""},
	{"load_errors", "Loader errors other than not found; never cached.", func(s cacheaside.Stats) uint64 { return s.LoadErrors }, ""},
	{"lock_waits", "Loads that waited for another process's fill of the key.", func(s cacheaside.Stats) uint64 { return s.LockWaits }, ""},
	{"lock_timeouts", "Lock waits that ended by loading from the source.", func(s cacheaside.Stats) uint64 { return s.LockTimeouts }, ""},
	{"stale_served", "Values returned after their soft TTL.", func(s cacheaside.Stats) uint64 { return s.StaleServed }, ""},
	{"refreshes", "Background refreshes of soft-expired values.", func(s cacheaside.Stats) uint64 { return s.Refreshes }, ""},
	{"fills", "Values (or not found) written to the cache.", func(s cacheaside.Stats) uint64 { return s.Fills }, ""},
	{"fenced_fills", "Fills refused because the key was invalidated while loading.", func(s cacheaside.Stats) uint64 { return s.FencedFills }, ""},
	{"decode_errors", "Cached values that did not decode and were loaded again.", func(s cacheaside.Stats) uint64 { return s.DecodeErrors }, ""},
	{"redis_errors", "Redis failures; each read was answered from the source.", func(s cacheaside.Stats) uint64 { return s.RedisErrors }, ""},
	{"bypassed", "Reads sent straight to the source shortly after a Redis failure.", func(s cacheaside.Stats) uint64 { return s.Bypassed }, ""},
	{"verified_hits", verifiedHelp, func(s cacheaside.Stats) uint64 { return s.VerifiedConsistent }, "consistent"},
	{"verified_hits", verifiedHelp, func(s cacheaside.Stats) uint64 { return s.VerifiedStale }, "stale"},
	{"verify_dropped", "Sampled cache hits not verified because the verifications were busy.", func(s cacheaside.Stats) uint64 { return s.VerifyDropped }, ""},
}

const verifiedHelp = "Sampled cache hits checked against the source (Options.VerifyHits): consistent within the window, or stale beyond it."

// Collector is a prometheus.Collector of one Client's counters.
type Collector struct {
	client *cacheaside.Client
	descs  []*prometheus.Desc
}

// NewCollector returns the counters of client as
// cachesync_cacheaside_<stat>_total{cache="<name>"}; name tells apart the
// clients of one process. The hit verifications are one metric,
// cachesync_cacheaside_verified_hits_total{cache,result="consistent|stale"}.
func NewCollector(client *cacheaside.Client, name string) *Collector {
	c := &Collector{client: client}
	for _, s := range stats {
		labels := prometheus.Labels{"cache": name}
		if s.result != "" {
			labels["result"] = s.result
		}
		c.descs = append(c.descs, prometheus.NewDesc(
			prometheus.BuildFQName("cachesync", "cacheaside", s.name+"_total"),
			s.help, nil, labels))
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.client.Stats()
	for i, s := range stats {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(s.value(snap)))
	}
}
