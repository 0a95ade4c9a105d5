package mapping

import (
	"strconv"
	"testing"

	"github.com/cachesync/cachesync/wal"
)

// benchmarkMap maps single-row inserts into rel, 1,000 per transaction: the
// per-row cost of the mapper.
func benchmarkMap(b *testing.B, rel *wal.Relation, row func(id string) wal.Tuple) {
	m := newMapper(&testing.T{}, testRules, 0)
	rows := make([]wal.Tuple, 1000)
	for i := range rows {
		rows[i] = row(strconv.Itoa(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%1000 == 0 {
			if i > 0 {
				if _, err := m.Commit(wal.Commit{XID: 1}); err != nil {
					b.Fatal(err)
				}
			}
			if err := m.Begin(wal.Begin{XID: 1}); err != nil {
				b.Fatal(err)
			}
		}
		if err := m.Change(wal.Change{Relation: rel, Kind: wal.Insert, New: rows[i%1000]}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapInvalidate: a rule with two keys and one tag.
func BenchmarkMapInvalidate(b *testing.B) {
	benchmarkMap(b, users, func(id string) wal.Tuple { return tup(id, "U"+id+"@x.io", "7", "name") })
}

// BenchmarkMapRefresh: a refresh rule that writes the row as JSON.
func BenchmarkMapRefresh(b *testing.B) {
	benchmarkMap(b, products, func(id string) wal.Tuple { return tup(id, "Pen "+id, "42.50", "t", "blue") })
}
