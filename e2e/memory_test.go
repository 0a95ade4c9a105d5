package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
)

// plainBinary builds cachesync without -race, whose shadow memory would
// measure the detector instead of the daemon.
func plainBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cachesync")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/cachesync").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// receivedLSN is the position the daemon reported as received (write_lsn),
// 0 while it does not stream.
func (e *env) receivedLSN() wal.LSN {
	e.t.Helper()
	var s *string
	err := e.db.QueryRow(e.ctx, `SELECT r.write_lsn::text FROM pg_replication_slots s
		JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1`, e.slot).Scan(&s)
	if err != nil || s == nil {
		return 0
	}
	l, err := wal.ParseLSN(*s)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// Wide rows: a refresh rule over rows of about 1 MB of JSON text, a burst
// of 500 single-row transactions and one transaction of 300 rows, all while
// Redis takes no writes, so that every queue of the pipeline fills. The
// pipeline is bounded in bytes (--max-queued-bytes), so the daemon's peak RSS
// stays under the bound docs/operations.md states; and once Redis takes
// writes again, every key holds the committed row or is gone, never an
// older one.
func TestWideRowsBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("800 MB of rows: skipped with -short")
	}
	e := setup(t, `
CREATE TABLE docs (id bigint PRIMARY KEY, rev int NOT NULL, body text NOT NULL);
-- About 1 MB of JSON text, different for every row and revision.
CREATE FUNCTION wide(id bigint, rev int) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT '{"id":' || id || ',"rev":' || rev || ',"pad":"' || repeat(md5(id || '/' || rev), 32768) || '"}' $$;
`, `
rule "doc" {
  table = "public.docs"
  refresh {
    key   = "doc:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}
`)
	const budget = 64 << 20
	d := e.startBinary(plainBinary(t), fmt.Sprintf("CACHESYNC_MAX_QUEUED_BYTES=%d", budget))
	e.waitStreaming(d)

	// Redis takes no writes from now on: the writer retries, and whatever
	// arrives meanwhile queues up in the daemon.
	if err := e.rdb.Do(e.ctx, "CLIENT", "PAUSE", "600000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	paused := true
	unpause := func() {
		if paused {
			paused = false
			if err := e.rdb.Do(e.ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(unpause)
	const rows, burst, bigRev = 300, 500, 1000
	for i := range burst {
		e.exec(`INSERT INTO docs VALUES ($1, $2, wide($1, $2))
			ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, body = excluded.body`, i%100, i)
	}
	e.exec(`INSERT INTO docs SELECT g, $2, wide(g, $2) FROM generate_series(0, $1 - 1) g
		ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, body = excluded.body`, rows, bigRev)
	end := e.currentLSN()
	// Wait until the daemon holds what it can: all of it (unbounded), or
	// as much as its budget lets in.
	testenv.Eventually(t, 3*time.Minute, "the daemon's queues full", func() (bool, string) {
		d.alive("while Redis is paused")
		got := e.receivedLSN()
		queued := d.scrape().value("cachesync_pipeline_queued_bytes")
		return got >= end || queued >= budget/2, fmt.Sprintf("received %s of %s, %.0f bytes queued", got, end, queued)
	})
	unpause()
	e.caughtUp(d, 5*time.Minute)
	if strings.Contains(d.log.String(), "replication session ended") {
		t.Errorf("the session ended while the pipeline was full; it should have waited, sending status updates")
	}
	peak := peakRSSKiB(d.cmd.Process.Pid)
	t.Logf("peak RSS of the daemon over %d wide transactions with a %d MiB budget: %.1f MiB", burst+1, budget>>20, float64(peak)/1024)
	// docs/operations.md: peak RSS stays under 2 × --max-queued-bytes + 128 MiB.
	if bound := int64(2*budget>>10 + 128<<10); peak > bound {
		t.Errorf("peak RSS %.1f MiB, want under %.1f MiB (2 × %d MiB + 128 MiB)", float64(peak)/1024, float64(bound)/1024, budget>>20)
	}

	// Every key holds the committed row, or is gone: never an older one.
	written, deleted := 0, 0
	for id := range rows {
		var rev int
		var sum string
		if err := e.db.QueryRow(e.ctx, `SELECT rev, md5(body) FROM docs WHERE id = $1`, id).Scan(&rev, &sum); err != nil {
			t.Fatal(err)
		}
		raw, err := e.rdb.Get(e.ctx, fmt.Sprintf("doc:%d", id)).Result()
		if err == redis.Nil {
			deleted++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var cached struct {
			ID   int64  `json:"id"`
			Rev  int    `json:"rev"`
			Body string `json:"body"`
		}
		if err := json.Unmarshal([]byte(raw), &cached); err != nil {
			t.Fatalf("doc:%d: %v", id, err)
		}
		got := md5.Sum([]byte(cached.Body))
		if cached.ID != int64(id) || cached.Rev != rev || hex.EncodeToString(got[:]) != sum {
			t.Errorf("doc:%d holds rev %d (body md5 %x), PostgreSQL has rev %d (md5 %s)", id, cached.Rev, got, rev, sum)
			continue
		}
		written++
	}
	t.Logf("%d keys hold the committed row, %d were deleted instead", written, deleted)
}
