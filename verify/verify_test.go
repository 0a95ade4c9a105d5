package verify

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
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

// fixture is one test's world: a database holding schema (its URL and a
// connection), the rules parsed, and a private Redis.
type fixture struct {
	url   string
	conn  *pgx.Conn
	rules []*config.Rule
	rdb   *redis.Client
}

func newFixture(t *testing.T, schema, rules string) fixture {
	t.Helper()
	ctx := context.Background()
	f := fixture{url: testenv.Database(t)}
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	if _, err := conn.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	cfg, diags := config.NewParser().Parse([]byte(rules), "rules.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	f.conn, f.rules, f.rdb = conn, cfg.Rules, testenv.StartRedis(t).Client(t)
	return f
}

// TestRecheckAfterWindow: wrong keys are judged again after one wait of
// the window: still wrong with the same row, stale (or orphaned); right by
// then, consistent; still wrong but the row changed meanwhile,
// unverifiable. A clean cache waits for nothing.
func TestRecheckAfterWindow(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, `CREATE TABLE items (id int PRIMARY KEY, name text);
		INSERT INTO items SELECT g, CASE WHEN g = 5 THEN 'hidden' ELSE 'n' || g END FROM generate_series(1, 6) g`, testRules)
	conn, url, rdb := f.conn, f.url, f.rdb
	// item:1 right, 2 wrong for good, 3 wrong until fixed during the
	// window, 4 wrong while its row changes, 5 a filtered-out row's, 6
	// absent, 99 a key of no row.
	for k, v := range map[string]string{"item:1": "n1", "item:2": "old", "item:3": "old", "item:4": "old", "item:5": "x", "item:99": "x"} {
		rdb.Set(ctx, k, v, 0)
	}
	// Run's conn is busy with the check: the window's changes go on
	// another connection.
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	var waits []time.Duration
	opts := Options{Rules: f.rules, Window: 3 * time.Second, Wait: func(_ context.Context, d time.Duration) error {
		waits = append(waits, d)
		rdb.Set(ctx, "item:3", "n3", 0)
		if _, err := other.Exec(ctx, `UPDATE items SET name = 'changed' WHERE id = 4`); err != nil {
			t.Error(err)
		}
		return nil
	}}
	rep, err := Run(ctx, conn, rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(waits, []time.Duration{3 * time.Second}) {
		t.Errorf("waits %v, want one of the window", waits)
	}
	var got []string
	for _, f := range rep.Findings {
		got = append(got, f.Key+" "+string(f.Result)+": "+f.Reason)
	}
	slices.Sort(got)
	want := []string{
		"item:2 stale: the value differs from the row's",
		"item:5 orphaned: its row is filtered out by the rule's when",
		"item:99 orphaned: its row is gone",
	}
	if !slices.Equal(got, want) {
		t.Errorf("findings %q, want %q", got, want)
	}
	r := rep.Rules[0]
	if wantCounts := (Counts{Checked: 7, Consistent: 3, Absent: 1, Stale: 1, Orphaned: 2, Unverifiable: 1}); r.Counts != wantCounts {
		t.Errorf("counts %+v, want %+v", r.Counts, wantCounts)
	}
	if r.Notes["still wrong after the window, but its row changed meanwhile"] != 1 {
		t.Errorf("unverifiable reasons %v, want item:4's row changed", r.Notes)
	}

	rdb.Set(ctx, "item:2", "n2", 0)
	rdb.Set(ctx, "item:4", "changed", 0)
	rdb.Del(ctx, "item:5", "item:99")
	waits = nil
	if rep, err = Run(ctx, conn, rdb, opts); err != nil {
		t.Fatal(err)
	}
	if r := rep.Rules[0]; r.Checked != 6 || r.Consistent != 6 || rep.Bad() || len(waits) != 0 {
		t.Errorf("clean cache: %+v, findings %v, waits %v; want 6 consistent, no wait", r.Counts, rep.Findings, waits)
	}
	if doc, _ := json.Marshal(rep); !strings.Contains(string(doc), `"findings":[]`) {
		t.Errorf("JSON of a clean report: %s, want an empty list of findings", doc)
	}
}

// TestSampleLargeTable: a table estimated above 100 times the sample is
// sampled through TABLESAMPLE (or, when its pages hold too few rows, whole):
// exactly Sample rows either way, each checked once.
func TestSampleLargeTable(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, `CREATE TABLE items (id int PRIMARY KEY, name text);
		INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 20000) g; ANALYZE items`, testRules)
	for _, sample := range []int{10, 150} {
		rep, err := Run(ctx, f.conn, f.rdb, Options{Rules: f.rules, Sample: sample})
		if err != nil {
			t.Fatal(err)
		}
		if r := rep.Rules[0]; r.Checked != sample || r.Absent != sample {
			t.Errorf("sample %d of 20000 rows: %+v, want %d absent keys", sample, r.Counts, sample)
		}
	}
}

// TestScanSkipsInternalKeys: a key pattern that also matches cachesync's
// own keys (here "c*": guards, stamps) samples only the rule's keys.
func TestScanSkipsInternalKeys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, `CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'n1')`,
		strings.Replace(testRules, `"item:${row.id}"`, `"c${row.id}"`, 1))
	for _, k := range []string{"c1", keyspace.GuardKey("c1"), keyspace.StampKey("c1"), keyspace.FenceKey("c2")} {
		f.rdb.Set(ctx, k, "n1", 0)
	}
	rep, err := Run(ctx, f.conn, f.rdb, Options{Rules: f.rules})
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Rules[0]; r.Checked != 1 || r.Consistent != 1 {
		t.Errorf("%+v (%v), want c1 alone, consistent", r.Counts, r.Notes)
	}
}
