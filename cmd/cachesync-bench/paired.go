package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// minLagPairs is the fewest pairs -lag-pairs accepts: the median of 5
// differences withstands two noisy pairs, that of 3 only one.
const minLagPairs = 5

// The targets of issue 18 on the median over pairs of cachesync − floor.
const (
	pairTargetP50 = 0.5 // ms
	pairTargetP99 = 3.0 // ms
)

// pairedLag is the paired lag measurement: cachesync and the bare-client floor
// alternated under the same offered load, each run on a fresh database, and
// the difference of each pair's percentiles.
type pairedLag struct {
	Rate    float64   `json:"rate"`    // offered tx/s
	Seconds float64   `json:"seconds"` // counted load per run, after the warm-up
	Pairs   []lagPair `json:"pairs"`
	// Medians over pairs, in ms.
	MedianDiffP50 float64 `json:"median_diff_p50_ms"`
	MedianDiffP99 float64 `json:"median_diff_p99_ms"`
	// Stages is the daemon's cachesync_stage_seconds histogram, the deltas
	// over every pair's load summed; empty when the daemon has no such metric.
	Stages []stageStat `json:"stages,omitempty"`
}

// lagPair is one pair: the same load offered to the floor and to cachesync,
// in the order FloorFirst says; the differences are cachesync − floor in ms.
type lagPair struct {
	FloorFirst bool      `json:"floor_first"`
	Floor      lagSpread `json:"floor"`
	Cachesync  lagSpread `json:"cachesync"`
	Achieved   float64   `json:"cachesync_achieved"` // tx/s committed during cachesync's run
	DiffP50    float64   `json:"diff_p50_ms"`
	DiffP99    float64   `json:"diff_p99_ms"`
}

// stageStat is one stage's histogram delta and what the table shows of it.
type stageStat struct {
	Stage   string   `json:"stage"`
	Count   float64  `json:"count"`
	Sum     float64  `json:"sum_seconds"`
	Buckets []bucket `json:"buckets"` // finite upper bounds, cumulative counts
	MeanMs  float64  `json:"mean_ms"`
	P50Ms   float64  `json:"p50_ms"`
	P99Ms   float64  `json:"p99_ms"`
}

type bucket struct {
	Le    float64 `json:"le"` // seconds
	Count float64 `json:"count"`
}

// stageMetric is the daemon's per-stage latency histogram, labelled stage;
// stageOrder the order of its stages in the pipeline (others follow, sorted).
const stageMetric = "cachesync_stage_seconds"

var stageOrder = []string{"received", "mapped", "visible", "applied", "positioned", "journaled", "confirmed"}

// checkLagPairs is the usage check of -lag-pairs.
func checkLagPairs(n int) error {
	if n < minLagPairs {
		return fmt.Errorf("-lag-pairs %d: at least %d pairs are needed (the median of 5 differences withstands two noisy pairs, that of 3 only one)", n, minLagPairs)
	}
	return nil
}

// runPairedLag runs n pairs, the floor first in odd pairs and cachesync first
// in even ones, so that whatever the first run of a pair leaves behind (WAL,
// dirty pages, a warmer cache) does not always favour the same side.
func (b *bench) runPairedLag(ctx context.Context, rate float64, dur time.Duration, n int) (*pairedLag, error) {
	pl := &pairedLag{Rate: rate, Seconds: dur.Seconds()}
	stages := map[string]*stageStat{}
	for i := 1; i <= n; i++ {
		p := lagPair{FloorFirst: i%2 == 1}
		floor := func() (err error) {
			p.Floor, err = b.runLagFloor(ctx, rate, dur)
			if err != nil {
				err = fmt.Errorf("pair %d, floor: %w", i, err)
			}
			return err
		}
		cs := func() error {
			r, err := b.runLagCachesync(ctx, rate, dur, stages)
			if err != nil {
				return fmt.Errorf("pair %d, cachesync: %w", i, err)
			}
			p.Cachesync, p.Achieved = lagSpread{P50: r.P50, P99: r.P99, Mx: r.Mx}, r.Achieved
			return nil
		}
		first, second := floor, cs
		if !p.FloorFirst {
			first, second = cs, floor
		}
		if err := first(); err != nil {
			return nil, err
		}
		if err := second(); err != nil {
			return nil, err
		}
		p.DiffP50, p.DiffP99 = p.Cachesync.P50-p.Floor.P50, p.Cachesync.P99-p.Floor.P99
		b.logf("lag pair %d of %d (%s first): floor p50 %.2f p99 %.2f ms, cachesync p50 %.2f p99 %.2f ms, difference p50 %+.2f p99 %+.2f ms",
			i, n, p.first(), p.Floor.P50, p.Floor.P99, p.Cachesync.P50, p.Cachesync.P99, p.DiffP50, p.DiffP99)
		pl.Pairs = append(pl.Pairs, p)
	}
	pl.summarize()
	pl.Stages = sortedStages(stages)
	return pl, nil
}

func (p lagPair) first() string {
	if p.FloorFirst {
		return "floor"
	}
	return "cachesync"
}

// summarize sets the medians over pairs.
func (pl *pairedLag) summarize() {
	var d50, d99 []float64
	for _, p := range pl.Pairs {
		d50, d99 = append(d50, p.DiffP50), append(d99, p.DiffP99)
	}
	_, pl.MedianDiffP50, _ = spread(d50)
	_, pl.MedianDiffP99, _ = spread(d99)
}

// pairedFigures are the paired lag's lines of the main table: each figure's
// values are per pair, so its min/median/max are over pairs.
func pairedFigures(pl *pairedLag) []*figure {
	if pl == nil || len(pl.Pairs) == 0 {
		return nil
	}
	const name = "steady load, paired"
	var figs []*figure
	add := func(f *figure, target float64, value func(lagPair) float64) {
		for _, p := range pl.Pairs {
			f.Values = append(f.Values, value(p))
		}
		f.Min, f.Median, f.Max = spread(f.Values)
		if target > 0 {
			f.Versus = fmt.Sprintf("%g ms target", target)
			f.Target = fmt.Sprintf("≤ %g ms", target)
			for _, v := range f.Values {
				f.Ratios = append(f.Ratios, v/target)
			}
			f.RatioMin, f.RatioMed, f.RatioMax = spread(f.Ratios)
			met := f.Median <= target
			f.TargetMet = &met
		}
		figs = append(figs, f)
	}
	add(&figure{Workload: name, Metric: "floor p50 (bare client)", Unit: "ms"}, 0, func(p lagPair) float64 { return p.Floor.P50 })
	add(&figure{Workload: name, Metric: "cachesync p50 commit→applied", Unit: "ms"}, 0, func(p lagPair) float64 { return p.Cachesync.P50 })
	add(&figure{Workload: name, Metric: "p50 difference cachesync − floor", Unit: "ms"}, pairTargetP50, func(p lagPair) float64 { return p.DiffP50 })
	add(&figure{Workload: name, Metric: "floor p99 (bare client)", Unit: "ms"}, 0, func(p lagPair) float64 { return p.Floor.P99 })
	add(&figure{Workload: name, Metric: "cachesync p99 commit→applied", Unit: "ms"}, 0, func(p lagPair) float64 { return p.Cachesync.P99 })
	add(&figure{Workload: name, Metric: "p99 difference cachesync − floor", Unit: "ms"}, pairTargetP99, func(p lagPair) float64 { return p.DiffP99 })
	return figs
}

// scrapeStages reads the daemon's /metrics at addr and returns its stage
// histograms by stage (none when the daemon does not have the metric).
func scrapeStages(ctx context.Context, addr string) (map[string]*dto.Histogram, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseStages(resp.Body)
}

// stageScrapes scrapes the stage histograms at addr ("": never) once the
// load that starts now is past its warm-up, in the background; the function
// it returns scrapes again, once the daemon's histograms stopped moving (the
// last groups confirmed, at most 3 s), and returns both.
func stageScrapes(ctx context.Context, addr string) func() (before, after map[string]*dto.Histogram, err error) {
	if addr == "" {
		return nil
	}
	var before map[string]*dto.Histogram
	var beforeErr error
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		select {
		case <-time.After(warmUp):
		case <-ctx.Done():
		}
		before, beforeErr = scrapeStages(ctx, addr)
	}()
	return func() (map[string]*dto.Histogram, map[string]*dto.Histogram, error) {
		<-scraped
		if beforeErr != nil {
			return nil, nil, beforeErr
		}
		after, err := scrapeStages(ctx, addr)
		for deadline := time.Now().Add(3 * time.Second); err == nil && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			var again map[string]*dto.Histogram
			if again, err = scrapeStages(ctx, addr); err == nil {
				if observations(again) == observations(after) {
					break
				}
				after = again
			}
		}
		return before, after, err
	}
}

// observations is the count of every stage's observations.
func observations(hs map[string]*dto.Histogram) float64 {
	var n float64
	for _, h := range hs {
		n += histCount(h)
	}
	return n
}

// parseStages picks the stage histograms out of a /metrics text.
func parseStages(r io.Reader) (map[string]*dto.Histogram, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	out := map[string]*dto.Histogram{}
	for _, m := range fams[stageMetric].GetMetric() {
		if h := m.GetHistogram(); h != nil {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stage" {
					out[l.GetValue()] = h
				}
			}
		}
	}
	return out, nil
}

// addStageDeltas adds after − before of every stage to acc (a stage absent
// before had no observations yet).
func addStageDeltas(acc map[string]*stageStat, before, after map[string]*dto.Histogram) {
	for stage, a := range after {
		bh := before[stage]
		s := acc[stage]
		if s == nil {
			s = &stageStat{Stage: stage}
			acc[stage] = s
		}
		s.Count += histCount(a) - histCount(bh)
		s.Sum += a.GetSampleSum() - bh.GetSampleSum()
		prev := map[float64]float64{}
		for _, bk := range bh.GetBucket() {
			prev[bk.GetUpperBound()] = bucketCount(bk)
		}
		for _, bk := range a.GetBucket() {
			le := bk.GetUpperBound()
			if math.IsInf(le, +1) {
				continue
			}
			d := bucketCount(bk) - prev[le]
			if i := slices.IndexFunc(s.Buckets, func(x bucket) bool { return x.Le == le }); i >= 0 {
				s.Buckets[i].Count += d
			} else {
				s.Buckets = append(s.Buckets, bucket{Le: le, Count: d})
			}
		}
		slices.SortFunc(s.Buckets, func(x, y bucket) int { return cmpFloat(x.Le, y.Le) })
	}
}

func histCount(h *dto.Histogram) float64 {
	if f := h.GetSampleCountFloat(); f != 0 {
		return f
	}
	return float64(h.GetSampleCount())
}

func bucketCount(b *dto.Bucket) float64 {
	if f := b.GetCumulativeCountFloat(); f != 0 {
		return f
	}
	return float64(b.GetCumulativeCount())
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// bucketQuantile estimates the q-quantile of a histogram from its cumulative
// bucket counts and total count the way Prometheus's histogram_quantile does:
// linear interpolation inside the bucket that holds the rank, 0 as the lower
// bound of the first bucket, and the highest finite bound when the rank falls
// above it (the +Inf bucket).
func bucketQuantile(q float64, buckets []bucket, total float64) float64 {
	if total <= 0 || len(buckets) == 0 {
		return math.NaN()
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range buckets {
		if b.Count >= rank {
			if b.Count == below {
				return b.Le
			}
			return lower + (b.Le-lower)*(rank-below)/(b.Count-below)
		}
		lower, below = b.Le, b.Count
	}
	return buckets[len(buckets)-1].Le
}

// sortedStages finishes the stage statistics, in pipeline order.
func sortedStages(acc map[string]*stageStat) []stageStat {
	var out []stageStat
	for _, s := range acc {
		if s.Count <= 0 {
			continue
		}
		s.MeanMs = 1000 * s.Sum / s.Count
		s.P50Ms = 1000 * bucketQuantile(0.50, s.Buckets, s.Count)
		s.P99Ms = 1000 * bucketQuantile(0.99, s.Buckets, s.Count)
		out = append(out, *s)
	}
	rank := func(stage string) int {
		if i := slices.Index(stageOrder, stage); i >= 0 {
			return i
		}
		return len(stageOrder)
	}
	slices.SortFunc(out, func(a, b stageStat) int {
		if d := rank(a.Stage) - rank(b.Stage); d != 0 {
			return d
		}
		if a.Stage < b.Stage {
			return -1
		}
		return 1
	})
	return out
}

// printPairs prints the paired lag table and the stage table, with the
// previous run's figures beside them when prev is set.
func printPairs(w io.Writer, pl, prev *pairedLag) {
	if pl == nil || len(pl.Pairs) == 0 {
		return
	}
	fmt.Fprintf(w, "\npaired lag at %.0f tx/s offered, %.0f s counted per run, fresh database each (ms; difference = cachesync − floor)\n\n", pl.Rate, pl.Seconds)
	tw := newTable(w)
	fmt.Fprintln(tw, "pair\tfirst\tfloor p50\tcachesync p50\tdifference p50\tfloor p99\tcachesync p99\tdifference p99\t")
	for i, p := range pl.Pairs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", i+1, p.first(), num(p.Floor.P50), num(p.Cachesync.P50), signed(p.DiffP50),
			num(p.Floor.P99), num(p.Cachesync.P99), signed(p.DiffP99))
	}
	fmt.Fprintf(tw, "median of %d\t\t\t\t%s %s\t\t\t%s %s\t\n", len(pl.Pairs),
		signed(pl.MedianDiffP50), verdict(pl.MedianDiffP50, pairTargetP50), signed(pl.MedianDiffP99), verdict(pl.MedianDiffP99, pairTargetP99))
	if prev != nil && len(prev.Pairs) > 0 {
		fmt.Fprintf(tw, "previous median of %d\t\t\t\t%s\t\t\t%s\t\n", len(prev.Pairs), signed(prev.MedianDiffP50), signed(prev.MedianDiffP99))
		fmt.Fprintf(tw, "new − previous\t\t\t\t%s\t\t\t%s\t\n", signed(pl.MedianDiffP50-prev.MedianDiffP50), signed(pl.MedianDiffP99-prev.MedianDiffP99))
	}
	tw.Flush()
	if len(pl.Stages) == 0 {
		return
	}
	fmt.Fprintf(w, "\ndaemon stages (%s, summed over the %d cachesync runs; p50/p99 interpolated in the buckets)\n\n", stageMetric, len(pl.Pairs))
	tw = newTable(w)
	var prevStages map[string]stageStat
	if prev != nil && len(prev.Stages) > 0 {
		prevStages = map[string]stageStat{}
		for _, s := range prev.Stages {
			prevStages[s.Stage] = s
		}
		fmt.Fprintln(tw, "stage\tcount\tmean ms\tp50 ms\tp99 ms\tprevious mean\tprevious p99\tmean ratio\tp99 ratio\t")
	} else {
		fmt.Fprintln(tw, "stage\tcount\tmean ms\tp50 ms\tp99 ms\t")
	}
	for _, s := range pl.Stages {
		line := fmt.Sprintf("%s\t%.0f\t%s\t%s\t%s\t", s.Stage, s.Count, num(s.MeanMs), num(s.P50Ms), num(s.P99Ms))
		if prevStages != nil {
			if ps, ok := prevStages[s.Stage]; ok {
				line += fmt.Sprintf("%s\t%s\t%s\t%s\t", num(ps.MeanMs), num(ps.P99Ms), ratioOf(s.MeanMs, ps.MeanMs), ratioOf(s.P99Ms, ps.P99Ms))
			} else {
				line += "\t\t\t\t"
			}
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

func signed(v float64) string {
	if v >= 0 {
		return "+" + num(v)
	}
	return "−" + num(-v)
}

func verdict(v, target float64) string {
	if v <= target {
		return fmt.Sprintf("(≤ %g met)", target)
	}
	return fmt.Sprintf("(≤ %g MISSED)", target)
}

// ratioOf is new/old as the tables print it, empty when old is not positive.
func ratioOf(v, old float64) string {
	if !(old > 0) || math.IsNaN(v) {
		return ""
	}
	return fmt.Sprintf("%.2f×", v/old)
}
