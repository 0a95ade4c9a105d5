package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the whole benchmark in a tiny configuration: every figure must be
// positive, the table printed and the JSON and PNG written. `make bench` is the real run.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and Redis and builds cachesync")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "cachesync")
	build := exec.Command("go", "build", "-o", bin, "github.com/cachesync/cachesync/cmd/cachesync")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build cachesync: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, logs bytes.Buffer
	o := options{
		Cachesync: bin, Runs: 1, Rows: 2000, RedisOps: 20_000,
		LagRate: 500, LagDuration: 2 * time.Second,
		// Two pairs, one in each order (at least 5 in a real run).
		LagPairs: 2,
		// The backfill workload in miniature (1M rows in make bench).
		BackfillRows: 2000, BackfillLagRate: 200,
		// The write-behind workload in miniature (1M entries over 100k keys in
		// make bench).
		WriteBehindEntries: 5000, WriteBehindKeys: 1000, WriteBehindBatchSize: 500,
		Out: filepath.Join(dir, "results"), Chart: filepath.Join(dir, "chart.png"),
		// The cluster workload is on here too, though not by default in the flag: it
		// is the only run of the cluster path end to end (a cluster block in the rules
		// file, REDIS_URL emptied, commands summed over the masters), and it adds about
		// 5 s (a 2 s cluster start, one more 2k-row workload).
		Cluster: true,
	}
	rep, err := run(ctx, o, &stdout, &logs)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, logs.String())
	}
	t.Logf("\n%s", stdout.String())

	wantWorkloads := map[string]bool{"Redis ceiling": false, "steady load (1-row tx)": false, "steady load, paired": false, backfillName: false, writeBehindName: false}
	for _, w := range workloads(false, o.Cluster) {
		wantWorkloads[w.Name] = false
	}
	for _, f := range rep.Figures {
		wantWorkloads[f.Workload] = true
		if strings.Contains(f.Metric, "difference") {
			// per pair, and a difference may be negative
			if len(f.Values) != o.LagPairs || math.IsNaN(f.Median) {
				t.Errorf("%s / %s: values %v, want %d numbers", f.Workload, f.Metric, f.Values, o.LagPairs)
			}
			continue
		}
		want := 1 // one run
		if f.Workload == "steady load, paired" {
			want = o.LagPairs
		}
		if len(f.Values) != want {
			t.Errorf("%s / %s: %d values, want %d", f.Workload, f.Metric, len(f.Values), want)
		}
		switch {
		case strings.Contains(f.Metric, "floor p50"):
			// The bare client can see a row before the generator sees its
			// commit acknowledged: the lag is clipped to 0, and on a quiet
			// machine the median is often that.
			if !(f.Min >= 0 && f.Median >= 0 && f.Max >= 0) {
				t.Errorf("%s / %s: negative: %v", f.Workload, f.Metric, f.Values)
			}
		case !(f.Min > 0 && f.Median > 0 && f.Max > 0):
			t.Errorf("%s / %s: not positive: %v", f.Workload, f.Metric, f.Values)
		}
		if f.Versus != "" && !(f.RatioMed > 0) {
			t.Errorf("%s / %s: ratio to %s not positive: %v", f.Workload, f.Metric, f.Versus, f.Ratios)
		}
		if !strings.Contains(stdout.String(), f.Metric) {
			t.Errorf("the table lacks %q", f.Metric)
		}
	}
	for w, seen := range wantWorkloads {
		if !seen {
			t.Errorf("no figure for %q", w)
		}
	}
	if pl := rep.PairedLag; pl == nil || len(pl.Pairs) != 2 || !pl.Pairs[0].FloorFirst || pl.Pairs[1].FloorFirst {
		t.Errorf("paired lag: %+v, want 2 pairs, the floor first in the first", pl)
	} else if !strings.Contains(stdout.String(), "median of 2") {
		t.Errorf("the output lacks the paired lag table")
	}

	js, err := os.ReadFile(rep.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var back report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("results JSON: %v", err)
	}
	if len(back.Figures) != len(rep.Figures) || len(back.Raw) != 1 {
		t.Errorf("results JSON has %d figures and %d runs, want %d and 1", len(back.Figures), len(back.Raw), len(rep.Figures))
	}
	for _, p := range []string{rep.PNGPath, o.Chart} {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("%s: not a PNG (%v)", p, err)
		}
	}
}

// flagDef matches a flag's definition in this package's source, such as
// flag.IntVar(&o.Runs, "runs", …) or flag.String("render", …), wherever it
// is registered.
var flagDef = regexp.MustCompile(`\bflag\.[A-Z][A-Za-z0-9]*\((?:[^,"()]+,\s*)?"([a-z0-9-]+)"`)

// TestDocsListEveryFlag checks that the flags line of docs/benchmarks.md
// names every flag the benchmark defines, and no other.
func TestDocsListEveryFlag(t *testing.T) {
	srcs, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, src := range srcs {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range flagDef.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
		}
	}
	if !defined["runs"] || !defined["render"] || !defined["lag-pairs"] || !defined["compare"] {
		t.Fatalf("flags found in the source: %v; the pattern misses some", defined)
	}
	docs, err := os.ReadFile("../../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for line := range strings.SplitSeq(string(docs), "\n") {
		if _, rest, ok := strings.Cut(line, "# flags:"); ok {
			listed = strings.Fields(rest)
			break
		}
	}
	if listed == nil {
		t.Fatal(`docs/benchmarks.md has no "# flags:" line`)
	}
	inDocs := map[string]bool{}
	for _, f := range listed {
		inDocs[strings.TrimPrefix(f, "-")] = true
		if !defined[strings.TrimPrefix(f, "-")] {
			t.Errorf("docs/benchmarks.md lists %s, which the benchmark does not define", f)
		}
	}
	for f := range defined {
		if !inDocs[f] {
			t.Errorf("docs/benchmarks.md's flags line lacks -%s", f)
		}
	}
}
