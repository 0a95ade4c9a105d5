package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stage is a step of the pipeline, the label of cachesync_stage_seconds. Each
// is timed from the end of the one before it, so that the stages of a
// transaction add up to its way from the commit to the confirmation.
type Stage int

// The stages, in pipeline order.
const (
	// StageReceived: commit in PostgreSQL (its commit timestamp, the
	// server's clock) → its commit message read from the replication
	// connection. The walsender's share; per transaction.
	StageReceived Stage = iota
	// StageMapped: received → mapped into a batch and queued for the
	// writer. Per transaction.
	StageMapped
	// StageVisible: mapped → its group cleared to apply (PostgreSQL shows
	// its transactions to new snapshots, and the group before it is
	// applied). Per transaction.
	StageVisible
	// StageApplied: cleared → Redis acknowledged the group's effects
	// (together with the applied position when the writer sends both in one
	// pipeline). Per group with effects.
	StageApplied
	// StagePositioned: applied → the cache's applied position moved past
	// the group (0 when it went in the effects' pipeline). Per group.
	StagePositioned
	// StageJournaled: positioned → the group is in the journal (fsync
	// included, shared by the groups that queued meanwhile). Per group.
	StageJournaled
	// StageConfirmed: journaled → a standby status update carrying the
	// group's end sent to PostgreSQL. Per group.
	StageConfirmed
	stages
)

var stageNames = [stages]string{"received", "mapped", "visible", "applied", "positioned", "journaled", "confirmed"}

func (s Stage) String() string { return stageNames[s] }

// stageBuckets resolve the sub-millisecond stages as well as a slow Redis or
// a synchronous standby: 25 µs to 2.5 s.
var stageBuckets = []float64{
	0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
}

func newStageSeconds(f factory) [stages]prometheus.Observer {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "stage_seconds",
		Help:      "Time a transaction (received, mapped, visible) or a group of them (applied, positioned, journaled, confirmed) spends in each stage of the pipeline, each from the end of the one before: commit → received → mapped → visible → applied → positioned → journaled → confirmed.",
		Buckets:   stageBuckets,
	}, []string{"stage"})
	f.reg.MustRegister(vec)
	var obs [stages]prometheus.Observer
	for s := range stages {
		obs[s] = vec.WithLabelValues(s.String())
	}
	return obs
}

// StageDone observes that stage took from `from` to `to` (nothing when from
// is zero; a negative time, across clocks, counts as 0). Safe for concurrent
// use.
func (m *Metrics) StageDone(stage Stage, from, to time.Time) {
	if from.IsZero() {
		return
	}
	m.stageSeconds[stage].Observe(max(to.Sub(from), 0).Seconds())
}
