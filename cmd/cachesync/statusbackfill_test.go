package main

import (
	"testing"
	"time"

	"github.com/cachesync/cachesync/writer"
)

// TestBackfillReport: status says, in one line per rule, where each
// backfill is, from its checkpoint and the rule's flush counter.
func TestBackfillReport(t *testing.T) {
	t.Parallel()
	started := time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)
	finished := started.Add(38 * time.Second)
	for _, tc := range []struct {
		name      string
		automatic bool
		cp        writer.Checkpoint
		ok        bool
		flushes   string
		want      string
	}{
		{"never, automatic", true, writer.Checkpoint{}, false, "", "never run (cachesync run starts it)"},
		{"finished", true, writer.Checkpoint{Flushes: "7", Rows: 2500, Total: 2500, Started: started, Finished: finished}, true, "7",
			"finished: 2500 rows, 2026-12-03T20:00:00Z .. 2026-12-03T20:00:38Z (38s)"},
		{"running", true, writer.Checkpoint{Flushes: "7", Rows: 1000, Total: 2480, Started: started}, true, "7",
			"running (or interrupted, resumed by the next run): 1000/~2480 rows since 2026-12-03T20:00:00Z"},
		{"failed", true, writer.Checkpoint{Flushes: "7", Rows: 1000, Total: 2500, TotalExact: true, Started: started, Error: "Redis: connection refused"}, true, "7",
			"running (or interrupted, resumed by the next run): 1000/2500 rows since 2026-12-03T20:00:00Z; last error: Redis: connection refused"},
		{"flushed since", true, writer.Checkpoint{Flushes: "7", Rows: 2500, Total: 2500, Started: started, Finished: finished}, true, "8",
			"flushed since its last run (2500/~2500 rows, started 2026-12-03T20:00:00Z); cachesync run starts it again"},
		{"partial, on demand", false, writer.Checkpoint{Flushes: "7", Where: "id < 10", Rows: 9, Total: 9, TotalExact: true, Started: started, Finished: finished}, true, "7",
			"partial: only rows where id < 10, 9/9 rows, started 2026-12-03T20:00:00Z"},
	} {
		got := newBackfillReport("product", tc.automatic, tc.cp, tc.ok, tc.flushes).describe()
		if got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
