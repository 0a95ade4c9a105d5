package replication

import "testing"

func TestSnapshotRunning(t *testing.T) {
	for _, c := range []struct {
		snap string
		xids []uint32
		want int
	}{
		{"100:105:", []uint32{99, 100, 104}, 0},
		// At or above xmax: not finished (still committing).
		{"100:105:", []uint32{105, 106}, 2},
		{"728:728:", []uint32{728}, 1},
		{"100:105:100,103", []uint32{99, 100, 101, 103, 104}, 2},
		{"100:105:100,103", []uint32{101, 102}, 0},
		// In epoch 3 (xid8 = 3<<32 + 102 …): xids are rebuilt from xmax.
		{"12884901990:12884902000:12884901995", []uint32{107}, 1},
		{"12884901990:12884902000:12884901995", []uint32{106, 101}, 0},
		// xmax just past a wraparound of the low 32 bits.
		{"17179869180:17179869190:17179869183", []uint32{0xFFFFFFFF, 5}, 1},
		{"17179869180:17179869190:", []uint32{0xFFFFFFFF, 5}, 0},
		{"12884901990:12884902000:", []uint32{112, 113}, 2},
		// Early in epoch 0 a large xid cannot be recent.
		{"3:10:3", []uint32{4000000000, 3}, 1},
	} {
		s, err := ParseSnapshot(c.snap)
		if err != nil {
			t.Fatalf("%s: %v", c.snap, err)
		}
		if got := s.Running(c.xids); got != c.want {
			t.Errorf("%s Running %v = %d, want %d", c.snap, c.xids, got, c.want)
		}
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:b:", "1:2:x", "1:2:3:4"} {
		if _, err := ParseSnapshot(bad); err == nil {
			t.Errorf("ParseSnapshot(%q) accepted", bad)
		}
	}
}
