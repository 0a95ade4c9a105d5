package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two scrapes of a daemon's /metrics around a load: "received" had 20
// observations before and 120 after; "applied" appears only after (a
// HistogramVec child exists from its first observation); the other families
// are noise the parser must skip.
const metricsBefore = `# HELP cachesync_changes_total Changes received.
# TYPE cachesync_changes_total counter
cachesync_changes_total 20
# HELP cachesync_stage_seconds Time from the commit's receipt to each stage.
# TYPE cachesync_stage_seconds histogram
cachesync_stage_seconds_bucket{stage="received",le="0.001"} 20
cachesync_stage_seconds_bucket{stage="received",le="0.002"} 20
cachesync_stage_seconds_bucket{stage="received",le="0.004"} 20
cachesync_stage_seconds_bucket{stage="received",le="+Inf"} 20
cachesync_stage_seconds_sum{stage="received"} 0.01
cachesync_stage_seconds_count{stage="received"} 20
`

const metricsAfter = `# HELP cachesync_changes_total Changes received.
# TYPE cachesync_changes_total counter
cachesync_changes_total 120
# HELP cachesync_stage_seconds Time from the commit's receipt to each stage.
# TYPE cachesync_stage_seconds histogram
cachesync_stage_seconds_bucket{stage="applied",le="0.001"} 0
cachesync_stage_seconds_bucket{stage="applied",le="0.002"} 50
cachesync_stage_seconds_bucket{stage="applied",le="0.004"} 50
cachesync_stage_seconds_bucket{stage="applied",le="+Inf"} 50
cachesync_stage_seconds_sum{stage="applied"} 0.075
cachesync_stage_seconds_count{stage="applied"} 50
cachesync_stage_seconds_bucket{stage="received",le="0.001"} 60
cachesync_stage_seconds_bucket{stage="received",le="0.002"} 100
cachesync_stage_seconds_bucket{stage="received",le="0.004"} 118
cachesync_stage_seconds_bucket{stage="received",le="+Inf"} 120
cachesync_stage_seconds_sum{stage="received"} 0.16
cachesync_stage_seconds_count{stage="received"} 120
# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
`

// TestStageDeltas checks the bucket-delta arithmetic and the quantile
// interpolation on canned /metrics texts.
func TestStageDeltas(t *testing.T) {
	before, err := parseStages(strings.NewReader(metricsBefore))
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseStages(strings.NewReader(metricsAfter))
	if err != nil {
		t.Fatal(err)
	}
	acc := map[string]*stageStat{}
	addStageDeltas(acc, before, after)
	got := sortedStages(acc)
	if len(got) != 2 || got[0].Stage != "received" || got[1].Stage != "applied" {
		t.Fatalf("stages %+v, want received then applied (pipeline order)", got)
	}
	// received, deltas: 40 ≤ 1 ms, 80 ≤ 2 ms, 98 ≤ 4 ms, 100 in all; sum 0.15 s.
	r := got[0]
	if r.Count != 100 || !near(r.MeanMs, 1.5) {
		t.Errorf("received: count %v mean %v ms, want 100 and 1.5", r.Count, r.MeanMs)
	}
	wantBuckets := []bucket{{0.001, 40}, {0.002, 80}, {0.004, 98}}
	if len(r.Buckets) != len(wantBuckets) {
		t.Fatalf("received buckets %v, want %v (+Inf left out)", r.Buckets, wantBuckets)
	}
	for i, b := range wantBuckets {
		if !near(r.Buckets[i].Le, b.Le) || !near(r.Buckets[i].Count, b.Count) {
			t.Errorf("received bucket %d: %v, want %v", i, r.Buckets[i], b)
		}
	}
	// p50: rank 50 lies in (1 ms, 2 ms], 10 of its 40: 1.25 ms. p99: rank 99
	// is above the last finite bound (98): that bound, 4 ms.
	if !near(r.P50Ms, 1.25) || !near(r.P99Ms, 4) {
		t.Errorf("received p50 %v p99 %v ms, want 1.25 and 4", r.P50Ms, r.P99Ms)
	}
	if q := 1000 * bucketQuantile(0.9, r.Buckets, r.Count); !near(q, 2+2*10.0/18) {
		t.Errorf("received p90 %v ms, want %v", q, 2+2*10.0/18)
	}
	// applied, absent before: all 50 in (1 ms, 2 ms].
	a := got[1]
	if a.Count != 50 || !near(a.MeanMs, 1.5) || !near(a.P50Ms, 1.5) || !near(a.P99Ms, 1.99) {
		t.Errorf("applied %+v, want count 50, mean 1.5, p50 1.5, p99 1.99 ms", a)
	}

	// A second pair's deltas add up.
	addStageDeltas(acc, before, after)
	if got := sortedStages(acc); got[0].Count != 200 || !near(got[0].P50Ms, 1.25) || !near(got[0].Buckets[2].Count, 196) {
		t.Errorf("two pairs: %+v, want count 200, same p50, 196 ≤ 4 ms", got[0])
	}

	// An older daemon without the metric: no stages, no error.
	none, err := parseStages(strings.NewReader("# TYPE go_goroutines gauge\ngo_goroutines 42\n"))
	if err != nil || len(none) != 0 {
		t.Fatalf("no stage metric: %v, %v", none, err)
	}
	acc = map[string]*stageStat{}
	addStageDeltas(acc, none, none)
	if s := sortedStages(acc); len(s) != 0 {
		t.Errorf("stages from nothing: %v", s)
	}
	if q := bucketQuantile(0.5, nil, 0); !math.IsNaN(q) {
		t.Errorf("quantile of nothing: %v, want NaN", q)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestCheckLagPairs(t *testing.T) {
	for n, ok := range map[int]bool{0: false, 1: false, 4: false, 5: true, 9: true} {
		if err := checkLagPairs(n); (err == nil) != ok {
			t.Errorf("checkLagPairs(%d) = %v", n, err)
		}
	}
	if err := checkLagPairs(3); !strings.Contains(err.Error(), "at least 5") {
		t.Errorf("the error does not say how many: %v", err)
	}
}

// testPairs is a paired lag of 5 pairs with a stage table.
func testPairs(diff50, diff99 float64) *pairedLag {
	pl := &pairedLag{Rate: 5000, Seconds: 5}
	for i := 1; i <= 5; i++ {
		f := lagSpread{P50: 0.05, P99: 0.5, Mx: 3}
		c := lagSpread{P50: f.P50 + diff50 + float64(i-3)*0.1, P99: f.P99 + diff99 + float64(3-i), Mx: 20}
		pl.Pairs = append(pl.Pairs, lagPair{FloorFirst: i%2 == 1, Floor: f, Cachesync: c, Achieved: 5000,
			DiffP50: c.P50 - f.P50, DiffP99: c.P99 - f.P99})
	}
	pl.summarize()
	pl.Stages = []stageStat{{Stage: "visible", Count: 100, MeanMs: diff50, P50Ms: diff50, P99Ms: diff99}}
	return pl
}

// TestPairedTable checks the median over pairs, the verdicts against the
// targets and that the paired lag goes to results.json and back.
func TestPairedTable(t *testing.T) {
	rep := &report{Started: time.Date(2026, 12, 4, 8, 0, 0, 0, time.UTC), Options: options{Runs: 1, LagOnly: true, LagPairs: 5},
		Machine: map[string]any{"cpu": "test"}, PairedLag: testPairs(0.4, 5)}
	derive(rep)
	if pl := rep.PairedLag; !near(pl.MedianDiffP50, 0.4) || !near(pl.MedianDiffP99, 5) {
		t.Fatalf("medians %v %v, want 0.4 and 5", pl.MedianDiffP50, pl.MedianDiffP99)
	}
	var out bytes.Buffer
	dir := t.TempDir()
	if err := writeReport(rep, dir, "", &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"median of 5", "+0.40 (≤ 0.5 met)", "+5.00 (≤ 3 MISSED)", "visible", "p50 difference cachesync − floor"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	var met, missed int
	for _, f := range pairedFigures(rep.PairedLag) {
		if f.TargetMet != nil && *f.TargetMet {
			met++
		} else if f.TargetMet != nil {
			missed++
		}
	}
	if met != 1 || missed != 1 {
		t.Errorf("%d targets met and %d missed, want 1 and 1 (p50 and p99 difference)", met, missed)
	}
	back, err := loadReport(filepath.Join(dir, "results.json"))
	derive(back)
	if err != nil {
		t.Fatal(err)
	}
	if back.PairedLag == nil || len(back.PairedLag.Pairs) != 5 || back.PairedLag.Stages[0].Stage != "visible" || len(back.Figures) != len(rep.Figures) {
		t.Errorf("results.json round trip: %+v", back.PairedLag)
	}
}

// TestCompare prints a new report beside an old results.json (from before
// the paired lag: it has neither options.lag_pairs nor paired_lag) and beside
// a new one, through -render.
func TestCompare(t *testing.T) {
	const oldPath = "testdata/results-before-pairs.json"
	old, err := loadReport(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	if old.PairedLag != nil || old.Options.LagPairs != 0 || len(old.Raw) != 1 || old.Raw[0].Lag.P50 != 2.15 {
		t.Fatalf("old results.json read as %+v", old)
	}
	rep := &report{Started: time.Date(2026, 12, 4, 8, 0, 0, 0, time.UTC), Options: options{Runs: 1, LagOnly: true, LagPairs: 5},
		Machine: map[string]any{"cpu": "test"}, PairedLag: testPairs(0.4, 5),
		Raw: []runResult{{RedisCeiling: 1e6, Lag: lagResult{Offered: 5000, Achieved: 5000, P50: 1.075, P99: 7.6, Mx: 20,
			Floor: lagSpread{P50: 0.04, P99: 0.5, Mx: 3}, CPUPerTx: 20, UncheckedCPUPerTx: 18}}}}
	derive(rep)
	dir := t.TempDir()
	if err := writeReport(rep, dir, "", new(bytes.Buffer)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := rerender(filepath.Join(dir, "results.json"), "", oldPath, &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.Contains(s, "previous: 2026-12-03 23:53 UTC") || !strings.Contains(s, "previous median") {
		t.Errorf("no previous columns:\n%s", s)
	}
	// lag p50 1.075 ms now, 2.15 before: 0.50×; the paired lines have no
	// previous figure.
	line := lineWith(s, "lag p50 commit→applied")
	if !strings.Contains(line, "|2.15 ") || !strings.Contains(line, "0.50×") {
		t.Errorf("lag p50 line lacks the previous median and the ratio: %q", line)
	}
	if line := lineWith(s, "p50 difference cachesync − floor"); strings.Contains(line, "×") {
		t.Errorf("a ratio to a figure the old file lacks: %q", line)
	}
	if strings.Contains(s, "previous median of") {
		t.Errorf("a previous paired median from a file without pairs:\n%s", s)
	}

	// Beside a report that has pairs and stages.
	prev := &report{Started: time.Date(2026, 12, 4, 7, 0, 0, 0, time.UTC), Options: rep.Options, Machine: rep.Machine,
		PairedLag: testPairs(2, 20), Raw: rep.Raw}
	derive(prev)
	prevDir := t.TempDir()
	if err := writeReport(prev, prevDir, "", new(bytes.Buffer)); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := rerender(filepath.Join(dir, "results.json"), "", filepath.Join(prevDir, "results.json"), &out); err != nil {
		t.Fatal(err)
	}
	s = out.String()
	if line := lineWith(s, "p99 difference cachesync − floor"); !strings.Contains(line, "|20.0 ") || !strings.Contains(line, "0.25×") {
		t.Errorf("p99 difference line: %q", line)
	}
	if line := lineWith(s, "previous median of 5"); !strings.Contains(line, "+2.00") || !strings.Contains(line, "+20.0") {
		t.Errorf("previous paired medians: %q", line)
	}
	if line := lineWith(s, "new − previous"); !strings.Contains(line, "−1.60") || !strings.Contains(line, "−15.0") {
		t.Errorf("paired medians' change: %q", line)
	}
	// visible: mean 0.4 against 2, p99 5 against 20.
	if line := lineWith(s, "visible"); !strings.Contains(line, "0.20×") || !strings.Contains(line, "0.25×") {
		t.Errorf("stage line: %q", line)
	}
	if _, err := os.Stat(filepath.Join(dir, "chart.png")); err != nil {
		t.Error(err)
	}
}

// derive sets a -lag-only report's figures as run and rerender do.
func derive(rep *report) {
	rep.Figures = append(figures(nil, rep.Raw), pairedFigures(rep.PairedLag)...)
}

func lineWith(s, sub string) string {
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}
