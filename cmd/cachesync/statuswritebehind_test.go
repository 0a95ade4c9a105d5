package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/writebehind/backlogtest"
)

// TestWriteBehindReport: status says, in one line per write_behind block,
// how far its table is behind its stream, and warns about dead letters.
func TestWriteBehindReport(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		rep  writeBehindReport
		want string
	}{
		{"drained", writeBehindReport{Stream: "wb:c", DeadLetterStream: "wb:c:dead", LastApplied: "1764800000000-3"},
			"stream wb:c: backlog 0 (pending 0), dead letters 0, last applied 1764800000000-3"},
		{"behind", writeBehindReport{Stream: "wb:c", DeadLetterStream: "wb:c:dead", Backlog: 1200, Pending: 500, Lag: 700, OldestPendingSeconds: 2.5, DeadLetters: 2, LastApplied: "1764800000000-3"},
			"stream wb:c: backlog 1200 (pending 500), oldest 2.5s, dead letters 2, last applied 1764800000000-3"},
		{"never ran", writeBehindReport{Stream: "wb:c", DeadLetterStream: "wb:c:dead", Backlog: 3, Lag: 3, OldestPendingSeconds: 61},
			"stream wb:c: backlog 3 (pending 0), oldest 1m1s, dead letters 0, nothing applied yet"},
		{"started, nothing applied", writeBehindReport{Stream: "wb:c", DeadLetterStream: "wb:c:dead", LastApplied: "0-0"},
			"stream wb:c: backlog 0 (pending 0), dead letters 0, nothing applied yet"},
		{"Redis down", writeBehindReport{Stream: "wb:c", DeadLetterStream: "wb:c:dead", Error: "Redis: connection refused", LastApplied: "5-0"},
			"stream wb:c: backlog unknown: Redis: connection refused, last applied 5-0"},
		{"PostgreSQL refuses", writeBehindReport{Stream: "wb:c", DeadLetterStream: "wb:c:dead", LastAppliedError: "PostgreSQL: permission denied"},
			"stream wb:c: backlog 0 (pending 0), dead letters 0, last applied unknown: PostgreSQL: permission denied"},
	} {
		if got := tc.rep.describe(); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
		if w := tc.rep.warning(); (w != "") != (tc.rep.DeadLetters > 0) || (w != "" && !strings.Contains(w, "XRANGE wb:c:dead - +")) {
			t.Errorf("%s: warning %q", tc.name, w)
		}
	}
}

// TestWriteBehindStatus reads a stream built by hand: three entries, one
// delivered and pending, and a dead letter.
func TestWriteBehindStatus(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t).Client(t)
	stream := t.Name() + ":counters"
	backlogtest.Build(t, rdb, stream, backlogtest.Stream{IDs: []string{"1000-0", "2000-0", "3000-0"}, Group: true, Deliver: 1, Dead: 1})
	reps := writeBehindStatus(context.Background(), rdb, nil, []*config.WriteBehind{{Name: "counters", Stream: stream}}, time.UnixMilli(11_000))
	want := writeBehindReport{Name: "counters", Stream: stream, DeadLetterStream: stream + ":dead", Backlog: 3, Pending: 1, Lag: 2, Length: 3, OldestPendingSeconds: 10, DeadLetters: 1}
	if len(reps) != 1 || reps[0] != want {
		t.Fatalf("got %+v\nwant %+v", reps, want)
	}
}
