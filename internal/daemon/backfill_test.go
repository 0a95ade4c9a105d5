package daemon

import (
	"testing"
	"time"

	"github.com/cachesync/cachesync/writer"
)

// TestBackfillStateOf: the automatic backfill runs a rule whose key space
// was never filled, was flushed since its fill, or was filled only in
// part; never one filled completely since its last flush.
func TestBackfillStateOf(t *testing.T) {
	t.Parallel()
	done := time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name    string
		cp      writer.Checkpoint
		ok      bool
		flushes string
		want    BackfillState
	}{
		{"no checkpoint, never flushed", writer.Checkpoint{}, false, "", BackfillNever},
		{"no checkpoint, flushed", writer.Checkpoint{}, false, "3", BackfillNever},
		{"finished", writer.Checkpoint{Flushes: "3", Finished: done}, true, "3", BackfillFinished},
		{"finished before any flush", writer.Checkpoint{Finished: done}, true, "", BackfillFinished},
		{"finished, flushed since", writer.Checkpoint{Flushes: "3", Finished: done}, true, "4", BackfillFlushed},
		{"finished, then Redis emptied and flushed", writer.Checkpoint{Flushes: "3", Finished: done}, true, "1", BackfillFlushed},
		{"unfinished", writer.Checkpoint{Flushes: "3", LastKey: []string{"7"}}, true, "3", BackfillRunning},
		{"unfinished after an error", writer.Checkpoint{Flushes: "3", Error: "Redis down"}, true, "3", BackfillRunning},
		{"unfinished, flushed since", writer.Checkpoint{Flushes: "3"}, true, "4", BackfillFlushed},
		{"a --where run finished", writer.Checkpoint{Flushes: "3", Where: "id < 10", Finished: done}, true, "3", BackfillPartial},
	} {
		got := BackfillStateOf(tt.cp, tt.ok, tt.flushes)
		if got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
		if due := got != BackfillFinished; got.Due() != due {
			t.Errorf("%s: %s.Due() = %v", tt.name, got, got.Due())
		}
	}
}
