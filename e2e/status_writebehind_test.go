package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/writebehind/backlogtest"
)

// TestStatusWriteBehind: status shows a write_behind block's backlog from
// Redis and its last applied ID from PostgreSQL, as text and JSON, and
// warns about dead letters. The state is built by hand: a worker that
// applied and recorded the first of three entries and crashed before
// acknowledging it, and one dead letter.
func TestStatusWriteBehind(t *testing.T) {
	e := setup(t, `CREATE TABLE counters (id int PRIMARY KEY, hits int, note text);
CREATE SCHEMA cachesync;
CREATE TABLE cachesync.write_behind (stream text PRIMARY KEY, last_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`,
		"write_behind \"counters\" {\n  stream      = \"wb:counters\"\n  table       = \"public.counters\"\n  key_columns = [\"id\"]\n}\n")
	first := time.Now().Add(-time.Minute).UnixMilli()
	ids := []string{fmt.Sprintf("%d-0", first), fmt.Sprintf("%d-0", first+1), fmt.Sprintf("%d-0", first+2)}
	backlogtest.Build(t, e.rdb, "wb:counters", backlogtest.Stream{IDs: ids, Group: true, Deliver: 1, Dead: 1})
	e.exec(`INSERT INTO cachesync.write_behind (stream, last_id) VALUES ('wb:counters', $1)`, ids[0])

	out, code := e.cli("status", "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, out)
	}
	var st struct {
		Cache struct {
			WriteBehind []struct {
				Name, Stream, LastApplied string
				Backlog, Pending, Lag     int64
				DeadLetters               int64   `json:"dead_letters"`
				Oldest                    float64 `json:"oldest_pending_seconds"`
			} `json:"write_behind"`
		} `json:"cache"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	wbs := st.Cache.WriteBehind
	if len(wbs) != 1 || wbs[0].Name != "counters" || wbs[0].Stream != "wb:counters" || wbs[0].Backlog != 3 || wbs[0].Pending != 1 ||
		wbs[0].Lag != 2 || wbs[0].DeadLetters != 1 || wbs[0].Oldest < 60 || wbs[0].Oldest > 600 {
		t.Errorf("status --json: write_behind %+v\n%s", wbs, out)
	}
	var last struct {
		Cache struct {
			WriteBehind []struct {
				LastApplied string `json:"last_applied"`
			} `json:"write_behind"`
		} `json:"cache"`
	}
	if err := json.Unmarshal([]byte(out), &last); err != nil || len(last.Cache.WriteBehind) != 1 || last.Cache.WriteBehind[0].LastApplied != ids[0] {
		t.Errorf("status --json: last_applied %+v (%v), want %s", last.Cache.WriteBehind, err, ids[0])
	}
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "XRANGE wb:counters:dead - +") {
		t.Errorf("status --json: warnings %q, want one about the dead letter", st.Warnings)
	}

	out, code = e.cli("status")
	want := "stream wb:counters: backlog 3 (pending 1), oldest 1m"
	if code != 0 || !strings.Contains(out, "write_behind counters") || !strings.Contains(out, want) ||
		!strings.Contains(out, "dead letters 1, last applied "+ids[0]) || !strings.Contains(out, "write_behind counters: dead letters (entries that could not apply) in wb:counters:dead: 1;") {
		t.Errorf("status: exit %d, want a line with %q, the last applied ID and a WARNING\n%s", code, want, out)
	}
}
