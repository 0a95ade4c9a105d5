package writer

import (
	"testing"

	"github.com/cachesync/cachesync/mapping"
)

// A round trip is bounded in commands and in bytes; a flush starts a round
// of its own, and an operation larger than the bound goes alone.
func TestPipelineLen(t *testing.T) {
	set := func(n int) *mapping.Op { return &mapping.Op{Kind: mapping.OpSet, Key: "k", Value: make([]byte, n-1)} }
	del := &mapping.Op{Kind: mapping.OpDelete, Key: "k"}
	flush := &mapping.Op{Kind: mapping.OpFlush}
	tests := []struct {
		name             string
		ops              []*mapping.Op
		maxOps, maxBytes int
		want             int
	}{
		{"small ops, bounded by count", []*mapping.Op{del, del, del, del}, 3, 1 << 20, 3},
		{"wide values, bounded by bytes", []*mapping.Op{set(400), set(400), set(400), del}, 1000, 1000, 2},
		{"exactly the bound", []*mapping.Op{set(500), set(500), del}, 1000, 1000, 2},
		{"one value past the bound goes alone", []*mapping.Op{set(5000), set(1), del}, 1000, 1000, 1},
		{"up to a flush", []*mapping.Op{del, del, flush, del}, 1000, 1000, 2},
		{"a last op", []*mapping.Op{del}, 1000, 1000, 1},
	}
	for _, tt := range tests {
		if got := pipelineLen(tt.ops, tt.maxOps, tt.maxBytes); got != tt.want {
			t.Errorf("%s: pipelineLen = %d, want %d", tt.name, got, tt.want)
		}
	}
}
