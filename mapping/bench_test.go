package mapping

import (
	"strconv"
	"testing"

	"github.com/cachesync/cachesync/wal"
)

// benchmarkMap maps single-row inserts into rel, 1,000 per transaction: the
// per-row cost of the mapper.
func benchmarkMap(b *testing.B, rel *wal.Relation, row func(id string) wal.Tuple) {
	benchmarkChanges(b, func(id string) wal.Change { return wal.Change{Relation: rel, Kind: wal.Insert, New: row(id)} })
}

// benchmarkChanges maps the changes change makes, 1,000 per transaction.
func benchmarkChanges(b *testing.B, change func(id string) wal.Change) {
	m := newMapper(&testing.T{}, testRules, 0)
	rows := make([]wal.Change, 1000)
	for i := range rows {
		rows[i] = change(strconv.Itoa(i))
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
		if err := m.Change(rows[i%1000]); err != nil {
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

// BenchmarkMapInvalidateUpdate: an UPDATE under REPLICA IDENTITY FULL that
// moves a row to another org: the keys of both images.
func BenchmarkMapInvalidateUpdate(b *testing.B) {
	benchmarkChanges(b, func(id string) wal.Change {
		return wal.Change{Relation: users, Kind: wal.Update, OldKind: wal.OldFull,
			Old: tup(id, "U"+id+"@x.io", "7", "name"), New: tup(id, "U"+id+"@x.io", "8", "name")}
	})
}

// BenchmarkMapRefreshUpdate: an UPDATE of a refreshed row whose key did
// not change (no old tuple sent).
func BenchmarkMapRefreshUpdate(b *testing.B) {
	benchmarkChanges(b, func(id string) wal.Change {
		return wal.Change{Relation: products, Kind: wal.Update, New: tup(id, "Pen "+id, "42.50", "t", "blue")}
	})
}
