package writer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// applyAdvance is Writer.ApplyAdvance where it exists (advance_test.go sets
// it), so that this file also runs on a tree without it, for comparison.
var applyAdvance func(ctx context.Context, w *writer.Writer, batches []mapping.Batch, slot string, from writer.Position, to wal.LSN) (bool, writer.Position, error)

// BenchmarkGroup applies the group of the bench's cluster workload (one
// 1000-row transaction of the invalidate rule: 2000 key deletes and 100
// tags without a hash tag, none with members, nothing cached) and advances
// the applied position, on one server and on a cluster (3 masters, 3
// replicas) started by the same run, so that cluster/standalone is a ratio
// of one run. Each iteration applies the group twice, alternating: once
// with Apply then Positions.Advance ("apart", reported as apart-ms/group),
// once with ApplyAdvance ("together", together-ms/group), so that both see
// the same load on a busy machine.
//
//	go test ./writer/ -run '^$' -bench BenchmarkGroup -benchtime 200x
func BenchmarkGroup(b *testing.B) {
	targets := []struct {
		name   string
		client redis.UniversalClient
	}{
		{"standalone", testenv.StartRedis(b).Client(b)},
		{"cluster", testenv.StartRedisCluster(b, testenv.ClusterOptions{}).Client(b)},
	}
	// In the mapper's order: each row's keys, then its tag the first time
	// the transaction meets it (rows i and i+100 share an org).
	var ops []mapping.Op
	for i := range 1000 {
		ops = append(ops,
			mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("w:%d", i), Rule: "w"},
			mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("w:email:user%d@example.com", i), Rule: "w"})
		if i < 100 {
			ops = append(ops, mapping.Op{Kind: mapping.OpDeleteTag, Key: fmt.Sprintf("org:%d", i), Rule: "w"})
		}
	}
	ctx := context.Background()
	for _, target := range targets {
		b.Run(target.name, func(b *testing.B) {
			w := writer.New(target.client, writer.Options{})
			pos := w.Positions()
			const slot = "bench"
			if _, _, err := pos.Advance(ctx, slot, writer.Position{}, 1); err != nil {
				b.Fatal(err)
			}
			from, err := pos.Applied(ctx, slot)
			if err != nil {
				b.Fatal(err)
			}
			lsn := from.LSN
			var spent [2]time.Duration // apart, together
			b.ResetTimer()
			for i := range b.N {
				for m := range 2 {
					mode := m
					if i%2 == 1 { // alternate which goes first
						mode = 1 - m
					}
					if mode == 1 && applyAdvance == nil {
						continue // a tree without ApplyAdvance
					}
					lsn += 0x1000
					batch := []mapping.Batch{{CommitLSN: lsn - 1, EndLSN: lsn, Ops: ops}}
					var swapped bool
					began := time.Now()
					if mode == 1 {
						swapped, from, err = applyAdvance(ctx, w, batch, slot, from, lsn)
					} else {
						if err := w.Apply(ctx, batch); err != nil {
							b.Fatal(err)
						}
						swapped, from, err = pos.Advance(ctx, slot, from, lsn)
					}
					spent[mode] += time.Since(began)
					if err != nil || !swapped {
						b.Fatalf("advance to %s: swapped %v, %v", lsn, swapped, err)
					}
				}
			}
			b.ReportMetric(float64(spent[0].Microseconds())/1000/float64(b.N), "apart-ms/group")
			if applyAdvance != nil {
				b.ReportMetric(float64(spent[1].Microseconds())/1000/float64(b.N), "together-ms/group")
			}
		})
	}
}
