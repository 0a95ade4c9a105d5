package metrics_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/wal"
)

// TestChangeCounts: changes are counted by table and kind, whatever the
// order of the tables, and a table announced again (a new *wal.Relation
// after a schema change) keeps its counters.
func TestChangeCounts(t *testing.T) {
	m := metrics.New()
	users := &wal.Relation{Namespace: "public", Name: "users"}
	orders := &wal.Relation{Namespace: "shop", Name: "orders"}
	usersAgain := &wal.Relation{Namespace: "public", Name: "users"}
	for _, c := range []struct {
		rel  *wal.Relation
		kind wal.Kind
	}{
		{users, wal.Insert}, {users, wal.Insert}, {users, wal.Update}, {orders, wal.Insert},
		{users, wal.Delete}, {orders, wal.Truncate}, {usersAgain, wal.Insert}, {usersAgain, wal.Insert},
		{nil, wal.Insert}, {users, wal.Kind(99)},
	} {
		m.Change(c.rel, c.kind)
	}
	if n, err := testutil.GatherAndCount(m.Registry(), "cachesync_changes_received_total"); err != nil || n != 8 {
		t.Fatalf("%d series of changes_received_total (%v), want 8 (2 tables × 4 kinds)", n, err)
	}
	for _, want := range []struct {
		table, kind string
		n           float64
	}{
		{"public.users", "insert", 4}, {"public.users", "update", 1}, {"public.users", "delete", 1}, {"public.users", "truncate", 0},
		{"shop.orders", "insert", 1}, {"shop.orders", "truncate", 1},
	} {
		if n := counterValue(t, m, want.table, want.kind); n != want.n {
			t.Errorf("changes_received_total{table=%q,kind=%q} = %v, want %v", want.table, want.kind, n, want.n)
		}
	}
}

func counterValue(t *testing.T, m *metrics.Metrics, table, kind string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cachesync_changes_received_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["table"] == table && labels["kind"] == kind {
				return s.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no changes_received_total{table=%q,kind=%q}", table, kind)
	return 0
}

// BenchmarkChange is the per-change count of a stream of single-row
// transactions to one table.
func BenchmarkChange(b *testing.B) {
	m := metrics.New()
	rel := &wal.Relation{Namespace: "public", Name: "w"}
	b.ReportAllocs()
	for b.Loop() {
		m.Change(rel, wal.Insert)
	}
}
