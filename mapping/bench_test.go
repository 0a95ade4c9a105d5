package mapping

import (
	"strconv"
	"testing"

	"github.com/cachesync/cachesync/wal"
)

// BenchmarkMapInvalidate maps single-row changes through a rule with two
// keys and one tag: the per-row cost of the mapper.
func BenchmarkMapInvalidate(b *testing.B) {
	m := newMapper(&testing.T{}, testRules, 0)
	rows := make([]wal.Tuple, 1000)
	for i := range rows {
		id := strconv.Itoa(i)
		rows[i] = tup(id, "U"+id+"@x.io", "7", "name")
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
		if err := m.Change(wal.Change{Relation: users, Kind: wal.Insert, New: rows[i%1000]}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapRefresh maps single-row changes through a refresh rule that
// writes the row as JSON.
func BenchmarkMapRefresh(b *testing.B) {
	m := newMapper(&testing.T{}, testRules, 0)
	rows := make([]wal.Tuple, 1000)
	for i := range rows {
		id := strconv.Itoa(i)
		rows[i] = tup(id, "Pen "+id, "42.50", "t", "blue")
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
		if err := m.Change(wal.Change{Relation: products, Kind: wal.Insert, New: rows[i%1000]}); err != nil {
			b.Fatal(err)
		}
	}
}
