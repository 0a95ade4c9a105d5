package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachesync/cachesync/internal/shadow"
)

// ShadowObserver registers shadow mode's counters (cachesync run --shadow)
// and returns what the shadow reports its outcomes to. The rules' checked
// and missed counters start at 0, so that a rule the application
// invalidates completely shows 0 missed rather than nothing.
func (m *Metrics) ShadowObserver(rules []string) shadow.Observer {
	f := factory{m.reg}
	o := shadowObserver{
		checked:   f.counterVec("shadow_checked_total", "Shadow mode: invalidation effects whose key existed in Redis at the commit and was watched for the window (--shadow-window), by rule.", "rule"),
		missed:    f.counterVec("shadow_missed_total", "Shadow mode: checked effects the application did not perform (no del, unlink, expired, evicted, rename or set notification for the key) within the window of the commit, by rule.", "rule"),
		unchecked: f.counterVec("shadow_unchecked_total", "Shadow mode: effects on existing keys that could not be watched, by rule and reason (tracking_cap, notifications_lost, redis_error).", "rule", "reason"),
	}
	for _, r := range rules {
		o.checked.WithLabelValues(r)
		o.missed.WithLabelValues(r)
	}
	return o
}

type shadowObserver struct {
	checked, missed, unchecked *prometheus.CounterVec
}

func (o shadowObserver) Checked(rule string) { o.checked.WithLabelValues(rule).Inc() }
func (o shadowObserver) Missed(rule string)  { o.missed.WithLabelValues(rule).Inc() }
func (o shadowObserver) Unchecked(rule, reason string) {
	o.unchecked.WithLabelValues(rule, reason).Inc()
}
