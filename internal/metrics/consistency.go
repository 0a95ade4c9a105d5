package metrics

import "github.com/prometheus/client_golang/prometheus"

// Consistency holds the figures of the continuous checker (run --verify-rate,
// package internal/checker).
type Consistency struct {
	checks  *prometheus.CounterVec
	nines   *prometheus.GaugeVec
	dropped prometheus.Counter
	pending prometheus.Gauge
}

// Consistency registers and returns the continuous checker's metrics.
func (m *Metrics) Consistency() *Consistency {
	c := &Consistency{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "consistency_checks_total",
			Help: "Sampled effects re-checked in Redis after the window (run --verify-rate), by rule and result (consistent, stale, orphaned, unverifiable)."}, []string{"rule", "result"}),
		nines: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "consistency_nines",
			Help: "-log10 of the stale fraction of the rule's checks over the last 10 minutes, capped at 9 (9 when none was stale); absent while the period holds no verifiable check."}, []string{"rule"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "consistency_samples_dropped_total",
			Help: "Samples the continuous checker did not take because its queue was full."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "consistency_samples_pending",
			Help: "Sampled effects waiting for their re-check."}),
	}
	m.reg.MustRegister(c.checks, c.nines, c.dropped, c.pending)
	return c
}

// Check counts one check of rule with its result.
func (c *Consistency) Check(rule, result string) { c.checks.WithLabelValues(rule, result).Inc() }

// Nines sets rule's nines; ok false removes the series (nothing to show).
func (c *Consistency) Nines(rule string, nines float64, ok bool) {
	if !ok {
		c.nines.DeleteLabelValues(rule)
		return
	}
	c.nines.WithLabelValues(rule).Set(nines)
}

// Dropped counts samples not taken (queue full).
func (c *Consistency) Dropped() { c.dropped.Inc() }

// Pending sets the number of samples waiting.
func (c *Consistency) Pending(n int) { c.pending.Set(float64(n)) }
