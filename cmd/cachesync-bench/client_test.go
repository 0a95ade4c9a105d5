package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be a stampede process when the client
// benchmark re-executes it (os.Executable), as the benchmark's own binary is.
func TestMain(m *testing.M) {
	if spec := os.Getenv(clientHelperEnv); spec != "" {
		if err := stampedeProcess(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "stampede process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestClientBench runs -client-only in miniature: the table is printed and
// written, a hit costs one round trip and a miss three, and the stampede's
// processes load at most once each.
func TestClientBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server and 4 processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout bytes.Buffer
	o := options{Runs: 1, Out: t.TempDir()}
	path, err := runClientBench(ctx, o, clientOptions{Only: true, Callers: 40}, &stdout, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", stdout.String())
	js, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep clientReport
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || len(rep.Figures) == 0 {
		t.Fatalf("client.json has %d runs and %d figures", len(rep.Runs), len(rep.Figures))
	}
	r := rep.Runs[0]
	if r.HitRoundTrips != 1 || r.MissRoundTrips != 3 || r.MissTagsRTs != 3 {
		t.Errorf("round trips: hit %g, miss %g, miss with a tag %g; want 1, 3, 3", r.HitRoundTrips, r.MissRoundTrips, r.MissTagsRTs)
	}
	if !(r.RawGETMicros > 0 && r.HitMicros > 0 && r.MissMicros > 0) {
		t.Errorf("times not positive: %+v", r)
	}
	s := r.Stampede
	if len(s.Processes) != stampedeProcs || s.Loads < 1 || s.MaxLoads > 1 {
		t.Errorf("stampede: %d processes, %d loads, at most %d in one; want %d processes, 1 to %d loads, at most 1 each",
			len(s.Processes), s.Loads, s.MaxLoads, stampedeProcs, stampedeProcs)
	}
	if s.Loads != 1 {
		t.Logf("the stampede made %d loads (the lock's waiters gave up: a slow machine)", s.Loads)
	}
	for _, f := range rep.Figures {
		if !strings.Contains(stdout.String(), f.Name) {
			t.Errorf("the table lacks %q", f.Name)
		}
	}
}
