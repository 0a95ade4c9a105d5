package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
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

	wantWorkloads := map[string]bool{"Redis ceiling": false, "steady load (1-row tx)": false, backfillName: false, writeBehindName: false}
	for _, w := range workloads(false, o.Cluster) {
		wantWorkloads[w.Name] = false
	}
	for _, f := range rep.Figures {
		wantWorkloads[f.Workload] = true
		if len(f.Values) != 1 {
			t.Errorf("%s / %s: %d values, want 1", f.Workload, f.Metric, len(f.Values))
		}
		if !(f.Min > 0 && f.Median > 0 && f.Max > 0) {
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
