// Command cachesync-bench measures cachesync against its ceilings on private
// PostgreSQL and Redis servers that it starts itself on loopback ports:
//
//   - the decode ceiling: pg_recvlogical draining the same WAL with the same pgoutput
//     options to /dev/null (changes/s);
//   - the Redis ceiling: pipelined DELs from go-redis (ops/s);
//   - cachesync's throughput on each workload, from the moment its slot becomes active
//     until the slot's confirmed_flush_lsn reaches the end of the loaded WAL;
//   - commit → Redis lag at a steady offered load (p50/p99/max);
//   - the paired lag (-lag-pairs): cachesync and a bare pgoutput client
//     alternated at the same load, each pair's difference and their median,
//     with the daemon's per-stage breakdown when it exports one;
//   - cachesync's peak RSS (VmHWM) on each workload;
//   - with -cluster, the same as the first workload's with cachesync writing to a
//     private Redis Cluster (3 masters, 3 replicas), its throughput also as a ratio to
//     the standalone one's in the same run;
//   - the write-behind workload: a stream of upserts drained into PostgreSQL by
//     writebehind.Run, against the same batches sent by a plain pgx client.
//
// It prints one table (min/median/max over -runs, each figure as a ratio to its
// ceiling or budget), then the paired lag's and the stages' tables, and writes
// the same as JSON, plus a PNG chart, under -out; -compare FILE prints an
// earlier results.json's figures beside them.
//
// Usage: go run ./cmd/cachesync-bench -cachesync bin/cachesync [-runs 3] [-rows 100000] [-full] [-cluster]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cachesync/cachesync/config"
)

type options struct {
	Cachesync string `json:"-"`
	Runs      int    `json:"runs"`
	Rows      int    `json:"rows"`
	Full      bool   `json:"full"`
	Cluster   bool   `json:"cluster"`
	LagOnly   bool   `json:"lag_only,omitempty"`
	Workloads string `json:"workloads,omitempty"` // regexp selecting throughput workloads by name
	// BackfillRows is the backfill workload's table size, 0 for no backfill
	// workload; BackfillLagRate the stream's steady load meanwhile.
	BackfillRows    int           `json:"backfill_rows"`
	BackfillLagRate float64       `json:"backfill_lag_rate"`
	BackfillOnly    bool          `json:"backfill_only,omitempty"`
	BigRows         int           `json:"big_rows"`
	RedisOps        int           `json:"redis_ops"`
	LagRate         float64       `json:"lag_rate"`
	LagDuration     time.Duration `json:"lag_duration"`
	LagPairs        int           `json:"lag_pairs,omitempty"`
	Out             string        `json:"-"`
	Chart           string        `json:"-"`
	Compare         string        `json:"-"` // a previous results.json to print beside

	// WriteBehindEntries is the write-behind workload's stream length, 0 for
	// no write-behind workload; WriteBehindKeys the keys they write.
	WriteBehindEntries   int    `json:"write_behind_entries"`
	WriteBehindKeys      int    `json:"write_behind_keys"`
	WriteBehindBatchSize int    `json:"write_behind_batch_size"`
	WriteBehindOnly      bool   `json:"write_behind_only,omitempty"`
	WriteBehindProfile   string `json:"-"`
}

// figure is one line of the table: a measured value per run and its ratio to the
// ceiling (or budget) it is compared with, in the same run.
type figure struct {
	Workload  string    `json:"workload"`
	Metric    string    `json:"metric"`
	Unit      string    `json:"unit"`
	Values    []float64 `json:"values"`
	Min       float64   `json:"min"`
	Median    float64   `json:"median"`
	Max       float64   `json:"max"`
	Versus    string    `json:"versus,omitempty"` // what the ratio is to
	Ratios    []float64 `json:"ratios,omitempty"`
	RatioMin  float64   `json:"ratio_min,omitempty"`
	RatioMed  float64   `json:"ratio_median,omitempty"`
	RatioMax  float64   `json:"ratio_max,omitempty"`
	Target    string    `json:"target,omitempty"`
	TargetMet *bool     `json:"target_met,omitempty"`
	// target check on the median ratio
	atLeast, below float64
}

type report struct {
	Started  time.Time      `json:"started"`
	Seconds  float64        `json:"seconds"`
	Machine  map[string]any `json:"machine"`
	Options  options        `json:"options"`
	Figures  []*figure      `json:"figures"`
	Raw      []runResult    `json:"raw"`
	JSONPath string         `json:"-"`
	PNGPath  string         `json:"-"`

	// PairedLag is measured once, after the runs (-lag-pairs); nil in
	// results from before it and with -backfill-only or -write-behind-only.
	PairedLag *pairedLag `json:"paired_lag,omitempty"`
	// previous is the -compare report, printed beside this one.
	previous *report
}

type runResult struct {
	RedisCeiling float64               `json:"redis_ceiling_ops"`
	Throughput   map[string]throughput `json:"throughput"`
	Lag          lagResult             `json:"lag"`
	Backfill     *backfillResult       `json:"backfill,omitempty"`
	WriteBehind  *writeBehindResult    `json:"write_behind,omitempty"`
}

func main() {
	var o options
	flag.StringVar(&o.Cachesync, "cachesync", "bin/cachesync", "the cachesync binary to measure (build it without -race)")
	flag.IntVar(&o.Runs, "runs", 3, "repetitions; the table shows min/median/max")
	flag.IntVar(&o.Rows, "rows", 100_000, "rows per throughput workload")
	flag.BoolVar(&o.Full, "full", false, "add the one-transaction workload of -big-rows rows")
	// Off by default so that a bare `go run` stays as it was; `make bench` and the
	// smoke test turn it on.
	flag.BoolVar(&o.Cluster, "cluster", false, "start a Redis Cluster (3 masters, 3 replicas) and add the cluster workload")
	flag.Func("workloads", "run only the throughput workloads whose name matches this regexp (e.g. '1-row')", func(s string) error { _, err := regexp.Compile(s); o.Workloads = s; return err })
	flag.BoolVar(&o.LagOnly, "lag-only", false, "measure only the lag at a steady load (and the Redis ceiling)")
	flag.IntVar(&o.BigRows, "big-rows", 1_000_000, "rows of the single big transaction (with -full)")
	flag.IntVar(&o.RedisOps, "redis-ops", 500_000, "DELs for the Redis ceiling")
	flag.IntVar(&o.BackfillRows, "backfill-rows", 1_000_000, "rows of the backfill workload's table (0: no backfill workload)")
	flag.Float64Var(&o.BackfillLagRate, "backfill-lag-rate", 500, "single-row transactions per second that the daemon streams during the backfill")
	flag.BoolVar(&o.BackfillOnly, "backfill-only", false, "measure only the backfill workload (and the Redis ceiling)")
	flag.BoolVar(&clientOpts.Only, "client-only", false, "measure only the client, cacheaside: a hit against a raw GET, round trips per miss, a stampede across processes (client.go)")
	flag.IntVar(&clientOpts.Callers, "client-callers", 1000, "concurrent callers of one cold key in the client's stampede, spread over 4 processes")
	flag.IntVar(&o.WriteBehindEntries, "write-behind-entries", 1_000_000, "entries of the write-behind workload's stream (0: no write-behind workload)")
	flag.IntVar(&o.WriteBehindKeys, "write-behind-keys", 100_000, "keys (rows) the write-behind entries write")
	flag.IntVar(&o.WriteBehindBatchSize, "write-behind-batch-size", config.DefaultWriteBehindBatchSize, "the write_behind block's batch_size (config.DefaultWriteBehindBatchSize)")
	flag.BoolVar(&o.WriteBehindOnly, "write-behind-only", false, "measure only the write-behind workload (and the Redis ceiling)")
	flag.StringVar(&o.WriteBehindProfile, "write-behind-cpuprofile", "", "write a CPU profile of the write-behind drain to this file")
	flag.Float64Var(&o.LagRate, "lag-rate", 5000, "offered single-row transactions per second for the lag figure")
	flag.DurationVar(&o.LagDuration, "lag-duration", 10*time.Second, "how long the steady load lasts")
	flag.IntVar(&o.LagPairs, "lag-pairs", minLagPairs, "pairs of runs (floor, cachesync) of the paired lag measurement, at least 5")
	flag.StringVar(&o.Out, "out", "bench/results", "results directory (JSON and PNG per invocation)")
	flag.StringVar(&o.Chart, "chart", "", "also copy the chart PNG here (e.g. docs/benchmarks.png)")
	render := flag.String("render", "", "print the table and draw the chart again from a results.json (no servers)")
	flag.StringVar(&o.Compare, "compare", "", "a previous results.json whose figures are printed beside the new ones, with the ratio")
	flag.Parse()
	if err := checkLagPairs(o.LagPairs); err != nil {
		fmt.Fprintln(os.Stderr, "cachesync-bench:", err)
		flag.Usage()
		os.Exit(2)
	}
	if *render != "" {
		if err := rerender(*render, o.Chart, o.Compare, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "cachesync-bench:", err)
			os.Exit(1)
		}
		return
	}
	if clientMain(o) { // -client-only, or a stampede process of it
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync-bench:", err)
		os.Exit(1)
	}
	fmt.Printf("\nwrote %s and %s\n", rep.JSONPath, rep.PNGPath)
}

func run(ctx context.Context, o options, stdout, logw io.Writer) (*report, error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	if o.Runs < 1 || o.Rows < 1 || o.LagPairs < 1 {
		return nil, fmt.Errorf("-runs, -rows and -lag-pairs must be positive")
	}
	bin, err := filepath.Abs(o.Cachesync)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("cachesync binary: %w (make build)", err)
	}
	prev, err := loadReport(o.Compare)
	if err != nil {
		return nil, fmt.Errorf("-compare: %w", err)
	}
	rep := &report{Started: time.Now(), Options: o, Machine: machine(), previous: prev}
	srv, err := startServers(logf)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	ws := selectWorkloads(workloads(o.Full, o.Cluster), o.Workloads)
	if o.only() {
		ws = nil
	}
	if slices.ContainsFunc(ws, func(w workload) bool { return w.Cluster }) {
		if err := srv.startCluster(); err != nil {
			return nil, err
		}
	}
	b := &bench{srv: srv, cachesync: bin, logf: logf}
	for r := 1; r <= o.Runs; r++ {
		logf("run %d of %d", r, o.Runs)
		rr := runResult{Throughput: map[string]throughput{}}
		if rr.RedisCeiling, err = redisCeiling(ctx, srv.redisURL, o.RedisOps); err != nil {
			return nil, fmt.Errorf("redis ceiling: %w", err)
		}
		logf("Redis ceiling: %.0f DEL/s", rr.RedisCeiling)
		for _, w := range ws {
			rows := o.Rows
			if w.TxRows == 0 {
				rows = o.BigRows
			}
			t, err := b.runThroughput(ctx, w, rows)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", w.Name, err)
			}
			logf("%s: pg_recvlogical %.0f changes/s, cachesync %.0f changes/s (%.0f%%), %.0f Redis cmds/s (%.2f per change), peak RSS %.1f MiB",
				w.Name, float64(rows)/t.DecodeSeconds, float64(rows)/t.CachesyncSecs,
				100*t.DecodeSeconds/t.CachesyncSecs, float64(t.RedisCommands)/t.CachesyncSecs,
				float64(t.RedisCommands)/float64(rows), mib(t.PeakRSSBytes))
			rr.Throughput[w.Name] = t
		}
		if o.BackfillRows > 0 && !o.LagOnly && !o.WriteBehindOnly {
			bf, err := b.runBackfill(ctx, o.BackfillRows, o.BackfillLagRate)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", backfillName, err)
			}
			logf("%s: %d rows in %.1f s: %.0f rows/s, %.2f of the lower ceiling (COPY %.0f, Redis fill %.0f rows/s); stream lag p50 %.2f ms, p99 %.2f ms, max %.2f ms at %.0f tx/s; backfill peak RSS %.1f MiB",
				backfillName, bf.Rows, bf.Seconds, bf.rate(bf.Seconds), bf.rate(bf.Seconds)/bf.lowerCeiling(),
				bf.rate(bf.CopySeconds), bf.rate(bf.RedisSeconds), bf.Lag.P50, bf.Lag.P99, bf.Lag.Mx, bf.Lag.Achieved, mib(bf.PeakRSSBytes))
			rr.Backfill = &bf
		}
		if o.WriteBehindEntries > 0 && !o.LagOnly && !o.BackfillOnly {
			wb, err := b.runWriteBehind(ctx, o.WriteBehindEntries, o.WriteBehindKeys, o.WriteBehindBatchSize, o.WriteBehindProfile)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", writeBehindName, err)
			}
			logf("%s: %d entries over %d keys: ceiling %.0f entries/s, cachesync %.0f entries/s (%.2f), worker CPU %.2f µs/entry",
				writeBehindName, wb.Entries, wb.Keys, wb.rate(wb.CeilingSeconds), wb.rate(wb.Seconds), wb.CeilingSeconds/wb.Seconds, 1e6*wb.CPUSeconds/float64(wb.Entries))
			rr.WriteBehind = &wb
		}
		if o.BackfillOnly || o.WriteBehindOnly {
			rep.Raw = append(rep.Raw, rr)
			continue
		}
		if rr.Lag, err = b.runLag(ctx, o.LagRate, o.LagDuration); err != nil {
			return nil, fmt.Errorf("lag: %w", err)
		}
		logf("lag at %.0f tx/s offered (%.0f achieved): p50 %.2f ms, p99 %.2f ms, max %.2f ms; delivery floor p50 %.2f ms, p99 %.2f ms, max %.2f ms",
			rr.Lag.Offered, rr.Lag.Achieved, rr.Lag.P50, rr.Lag.P99, rr.Lag.Mx, rr.Lag.Floor.P50, rr.Lag.Floor.P99, rr.Lag.Floor.Mx)
		rep.Raw = append(rep.Raw, rr)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	if o.LagOnly || !o.only() {
		logf("paired lag: %d pairs of %s at %.0f tx/s", o.LagPairs, o.LagDuration, o.LagRate)
		if rep.PairedLag, err = b.runPairedLag(ctx, o.LagRate, o.LagDuration, o.LagPairs); err != nil {
			return nil, fmt.Errorf("paired lag: %w", err)
		}
		logf("paired lag: median over %d pairs of cachesync − floor: p50 %+.2f ms, p99 %+.2f ms",
			len(rep.PairedLag.Pairs), rep.PairedLag.MedianDiffP50, rep.PairedLag.MedianDiffP99)
	}
	rep.Figures = append(figures(ws, rep.Raw), pairedFigures(rep.PairedLag)...)
	rep.Seconds = time.Since(rep.Started).Seconds()
	return rep, writeReport(rep, filepath.Join(o.Out, rep.Started.Format("20060102-150405")), o.Chart, stdout)
}

// rerender derives the figures of a saved results.json again (after the table
// or chart changed), prints the table (with the figures of the results.json
// compare beside it, unless "") and rewrites the chart beside it.
func rerender(path, chartCopy, compare string, stdout io.Writer) error {
	js, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var rep report
	if err := json.Unmarshal(js, &rep); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ws := selectWorkloads(workloads(rep.Options.Full, rep.Options.Cluster), rep.Options.Workloads)
	if rep.Options.only() {
		ws = nil
	}
	rep.Figures = append(figures(ws, rep.Raw), pairedFigures(rep.PairedLag)...)
	if rep.previous, err = loadReport(compare); err != nil {
		return fmt.Errorf("-compare: %w", err)
	}
	return writeReport(&rep, filepath.Dir(path), chartCopy, stdout)
}

// loadReport reads the results.json at path ("": none, nil) for -compare,
// with the figures it printed. An older file loads too: what it lacks (the
// paired lag, figures added since) stays nil and is left blank.
func loadReport(path string) (*report, error) {
	if path == "" {
		return nil, nil
	}
	js, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep report
	if err := json.Unmarshal(js, &rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rep, nil
}

// writeReport prints the table and writes results.json and chart.png to dir
// (and the chart to chartCopy when set).
func writeReport(rep *report, dir, chartCopy string, stdout io.Writer) error {
	printTable(stdout, rep)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	rep.JSONPath = filepath.Join(dir, "results.json")
	if err := os.WriteFile(rep.JSONPath, append(js, '\n'), 0o644); err != nil {
		return err
	}
	png, err := chart(rep)
	if err != nil {
		return err
	}
	rep.PNGPath = filepath.Join(dir, "chart.png")
	if err := os.WriteFile(rep.PNGPath, png, 0o644); err != nil {
		return err
	}
	if chartCopy != "" {
		return os.WriteFile(chartCopy, png, 0o644)
	}
	return nil
}

// only is whether one workload alone is measured (-lag-only,
// -backfill-only, -write-behind-only): no throughput workloads.
func (o options) only() bool { return o.LagOnly || o.BackfillOnly || o.WriteBehindOnly }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// figures turns the runs into the table's lines.
func figures(ws []workload, runs []runResult) []*figure {
	var figs []*figure
	add := func(f *figure, value func(runResult) (v, ceiling float64)) {
		for _, r := range runs {
			v, c := value(r)
			f.Values = append(f.Values, v)
			if f.Versus != "" && c > 0 {
				f.Ratios = append(f.Ratios, v/c)
			}
		}
		f.Min, f.Median, f.Max = spread(f.Values)
		if f.Versus != "" {
			f.RatioMin, f.RatioMed, f.RatioMax = spread(f.Ratios)
		}
		if f.Target != "" {
			met := (f.atLeast == 0 || f.RatioMed >= f.atLeast) && (f.below == 0 || f.RatioMed < f.below)
			f.TargetMet = &met
		}
		figs = append(figs, f)
	}
	add(&figure{Workload: "Redis ceiling", Metric: "pipelined DEL (go-redis, 1000/pipeline)", Unit: "ops/s"},
		func(r runResult) (float64, float64) { return r.RedisCeiling, 0 })
	for _, w := range ws {
		name := w.Name
		// The throughput target is the standalone daemon's; the cluster figure is
		// reported against it below, without a target of its own.
		invalidate := w.Rule == invRule && !w.Cluster
		add(&figure{Workload: name, Metric: "decode ceiling (pg_recvlogical)", Unit: "changes/s"},
			func(r runResult) (float64, float64) {
				t := r.Throughput[name]
				return float64(t.Rows) / t.DecodeSeconds, 0
			})
		f := &figure{Workload: name, Metric: "cachesync throughput", Unit: "changes/s", Versus: "decode ceiling"}
		if invalidate {
			f.Target, f.atLeast = "≥ 0.80 of decode", 0.80
		}
		add(f, func(r runResult) (float64, float64) {
			t := r.Throughput[name]
			return float64(t.Rows) / t.CachesyncSecs, float64(t.Rows) / t.DecodeSeconds
		})
		if w.Cluster {
			add(&figure{Workload: name, Metric: "throughput vs standalone", Unit: "changes/s", Versus: "standalone " + clusterBaseline},
				func(r runResult) (float64, float64) {
					t, base := r.Throughput[name], r.Throughput[clusterBaseline]
					if base.CachesyncSecs == 0 {
						return float64(t.Rows) / t.CachesyncSecs, 0
					}
					return float64(t.Rows) / t.CachesyncSecs, float64(base.Rows) / base.CachesyncSecs
				})
		}
		cmds := "cachesync Redis commands"
		if w.Cluster {
			cmds += " (sum of masters)"
		}
		add(&figure{Workload: name, Metric: cmds, Unit: "cmds/s", Versus: "Redis ceiling"},
			func(r runResult) (float64, float64) {
				t := r.Throughput[name]
				return float64(t.RedisCommands) / t.CachesyncSecs, r.RedisCeiling
			})
		add(&figure{Workload: name, Metric: "cachesync CPU per change", Unit: "µs"},
			func(r runResult) (float64, float64) {
				t := r.Throughput[name]
				return 1e6 * t.CachesyncCPUSec / float64(t.Rows), 0
			})
		f = &figure{Workload: name, Metric: "cachesync peak RSS", Unit: "MiB", Versus: "200 MiB budget"}
		if w.TxRows == 0 {
			f.Target, f.below = "< 200 MiB", 1
		}
		add(f, func(r runResult) (float64, float64) { return mib(r.Throughput[name].PeakRSSBytes), 200 })
	}
	if len(runs) > 0 && runs[0].Backfill != nil {
		backfillFigures(add)
	}
	if len(runs) > 0 && runs[0].WriteBehind != nil {
		writeBehindFigures(add)
	}
	if len(runs) > 0 && runs[0].Lag.Offered == 0 {
		return figs // -backfill-only, -write-behind-only
	}
	lagName := "steady load (1-row tx)"
	add(&figure{Workload: lagName, Metric: "committed", Unit: "tx/s", Versus: "offered"},
		func(r runResult) (float64, float64) { return r.Lag.Achieved, r.Lag.Offered })
	add(&figure{Workload: lagName, Metric: "floor p99 (bare client)", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return r.Lag.Floor.P99, 10 })
	add(&figure{Workload: lagName, Metric: "floor max (bare client)", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return r.Lag.Floor.Mx, 10 })
	add(&figure{Workload: lagName, Metric: "lag p50 commit→applied", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return r.Lag.P50, 10 })
	add(&figure{Workload: lagName, Metric: "lag p99 commit→applied", Unit: "ms", Versus: "10 ms budget", Target: "< 10 ms", below: 1},
		func(r runResult) (float64, float64) { return r.Lag.P99, 10 })
	add(&figure{Workload: lagName, Metric: "lag max commit→applied", Unit: "ms", Versus: "10 ms budget"},
		func(r runResult) (float64, float64) { return r.Lag.Mx, 10 })
	add(&figure{Workload: lagName, Metric: "lag p99 over floor p99", Unit: "ms", Versus: "floor p99"},
		func(r runResult) (float64, float64) { return r.Lag.P99, r.Lag.Floor.P99 })
	add(&figure{Workload: lagName, Metric: "cachesync peak RSS", Unit: "MiB", Versus: "200 MiB budget"},
		func(r runResult) (float64, float64) { return mib(r.Lag.PeakRSSBytes), 200 })
	// The continuous checker (run --verify-rate, default on) against the same
	// load with it off: its share of the daemon's CPU and of the lag.
	add(&figure{Workload: lagName, Metric: "daemon CPU per tx, checker on (default rate)", Unit: "µs", Versus: "checker off"},
		func(r runResult) (float64, float64) { return r.Lag.CPUPerTx, r.Lag.UncheckedCPUPerTx })
	add(&figure{Workload: lagName, Metric: "daemon CPU per tx, checker off (--verify-rate 0)", Unit: "µs"},
		func(r runResult) (float64, float64) { return r.Lag.UncheckedCPUPerTx, 0 })
	add(&figure{Workload: lagName, Metric: "lag p99, checker off (--verify-rate 0)", Unit: "ms", Versus: "checker on"},
		func(r runResult) (float64, float64) { return r.Lag.Unchecked.P99, r.Lag.P99 })
	return figs
}

func spread(v []float64) (lo, med, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return s[0], med, s[n-1]
}

// printTable prints the figures, then the paired lag and stage tables; with
// a previous report, each with the previous median and new/previous beside.
func printTable(w io.Writer, rep *report) {
	fmt.Fprintf(w, "\ncachesync benchmark: %d run(s), %d rows per workload, %s\n\n", rep.Options.Runs, rep.Options.Rows, rep.Machine["cpu"])
	tw := newTable(w)
	var prev map[string]*figure
	header := "workload\tfigure\tunit\tmin\tmedian\tmax\tratio median [min–max]\tvs\ttarget\t"
	if rep.previous != nil {
		fmt.Fprintf(w, "previous: %s (%s)\n\n", rep.previous.Started.UTC().Format("2006-01-02 15:04 UTC"), rep.previous.Machine["cpu"])
		prev = map[string]*figure{}
		for _, f := range rep.previous.Figures {
			prev[f.Workload+"\x00"+f.Metric] = f
		}
		header += "previous median\tnew/previous\t"
	}
	fmt.Fprintln(tw, header)
	for _, f := range rep.Figures {
		ratio, target := "", f.Target
		if f.Versus != "" {
			ratio = fmt.Sprintf("%.2f [%.2f–%.2f]", f.RatioMed, f.RatioMin, f.RatioMax)
		}
		if f.TargetMet != nil {
			if *f.TargetMet {
				target += " met"
			} else {
				target += " MISSED"
			}
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t", f.Workload, f.Metric, f.Unit,
			num(f.Min), num(f.Median), num(f.Max), ratio, f.Versus, target)
		if prev != nil {
			if p, ok := prev[f.Workload+"\x00"+f.Metric]; ok && len(p.Values) > 0 {
				line += fmt.Sprintf("%s\t%s\t", num(p.Median), ratioOf(f.Median, p.Median))
			} else {
				line += "\t\t"
			}
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	var prevPairs *pairedLag
	if rep.previous != nil {
		prevPairs = rep.previous.PairedLag
	}
	printPairs(w, rep.PairedLag, prevPairs)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.Debug)
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// machine describes where the numbers come from.
func machine() map[string]any {
	m := map[string]any{
		"goos": runtime.GOOS, "goarch": runtime.GOARCH, "cpus": runtime.NumCPU(), "go": runtime.Version(),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m["cpu"] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if kb := procStatusKBFile("/proc/meminfo", "MemTotal:"); kb > 0 {
		m["mem_gib"] = float64(kb) / (1 << 20)
	}
	if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
		m["redis"] = strings.TrimSpace(string(out))
	}
	if d, err := findPostgresBin(); err == nil {
		if out, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output(); err == nil {
			m["postgres"] = strings.TrimSpace(string(out))
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	return m
}

func procStatusKBFile(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			var n int64
			fmt.Sscan(strings.TrimSpace(rest), &n)
			return n
		}
	}
	return 0
}
