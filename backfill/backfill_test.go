package backfill

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const testRules = `
rule "item" {
  table = "public.items"
  when  = row.name != "hidden"
  refresh {
    key   = "item:${row.id}"
    value = row.name
    ttl   = "1h"
  }
}
`

// TestFlushDuringChunk: a flush that begins while a chunk is written
// (between the two reads of the flush counter) makes the run undo the
// chunk's keys nothing touched since, and start over; a key the stream
// wrote meanwhile is neither undone nor overwritten. A flush between
// chunks (counter moved since the checkpoint) starts the run over too.
// Not run in parallel: it sets a package hook.
func TestFlushDuringChunk(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, name text);
		INSERT INTO items SELECT g, CASE WHEN g = 5 THEN 'hidden' ELSE 'n' || g END FROM generate_series(1, 30) g`); err != nil {
		t.Fatal(err)
	}
	cfg, diags := config.NewParser().Parse([]byte(testRules), "rules.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rdb := testenv.StartRedis(t).Client(t)
	const A = wal.LSN(0x5000)
	rdb.Set(ctx, writer.AppliedKey("s"), A.String(), 0)
	rdb.Set(ctx, "item:5", "stale", 0)
	w := writer.New(rdb, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	w.SetHistory("7/1")
	opts := Options{Rule: cfg.Rules[0], Slot: "s", ChunkRows: 10, Logger: zerolog.New(zerolog.NewTestWriter(t))}

	calls := 0
	testHookAfterFill = func() {
		calls++
		if calls != 1 {
			return
		}
		// A flush starts (its SCAN is past these keys), and the stream
		// writes item:2 for a commit the chunk did not see.
		rdb.Incr(ctx, writer.FlushCounterKey("item"))
		if err := w.Apply(ctx, []mapping.Batch{{CommitLSN: A + 1, EndLSN: A + 2, Ops: []mapping.Op{
			{Kind: mapping.OpSet, Key: "item:2", Value: []byte("stream"), LSN: A + 1, Rule: "item"}}}}); err != nil {
			t.Error(err)
		}
		if n := rdb.Exists(ctx, "item:1", "item:3").Val(); n != 2 {
			t.Errorf("the chunk wrote %d of item:1 and item:3", n)
		}
	}
	defer func() { testHookAfterFill = nil }()
	p, err := Run(ctx, conn, w, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Chunk 1 (item:1..10, item:2 already the stream's): 10 writes
	// (item:5 an unset), 9 undone; then 29 written again, item:2 skipped.
	if p.Restarts != 1 || p.Undone != 9 || p.Written != 10+29 || p.Skipped != 1 || p.Rows != 30 || !p.Done {
		t.Errorf("progress %+v, want 1 restart, 9 undone, 39 written, 1 skipped, 30 rows", p)
	}
	check := func() {
		t.Helper()
		for id := 1; id <= 30; id++ {
			key, want := fmt.Sprintf("item:%d", id), fmt.Sprintf("n%d", id)
			switch id {
			case 2:
				want = "stream"
			case 5:
				want = ""
			}
			if got := rdb.Get(ctx, key).Val(); got != want {
				t.Errorf("%s = %q, want %q", key, got, want)
			}
		}
	}
	check()

	// A flush between chunks: the next chunk sees the counter moved
	// since the checkpoint and starts from the first row.
	testHookAfterFill = nil
	checkpoints := 0
	opts.Restart = true
	opts.AfterCheckpoint = func() {
		if checkpoints++; checkpoints == 2 {
			rdb.Incr(ctx, writer.FlushCounterKey("item"))
		}
	}
	if p, err = Run(ctx, conn, w, opts); err != nil {
		t.Fatal(err)
	}
	if p.Restarts != 1 || p.Undone != 0 || p.Read != 50 || p.Rows != 30 {
		t.Errorf("progress %+v, want 1 restart, nothing undone, 20+30 rows read", p)
	}
	check()
	cp, ok, err := w.Positions().Checkpoint(ctx, "item")
	if m, _ := w.Positions().FlushCount(ctx, "item"); err != nil || !ok || cp.Flushes != m || cp.Finished.IsZero() {
		t.Errorf("checkpoint %+v (%v, %v), counter %q", cp, ok, err, m)
	}
}
