package writer

import "testing"

// TestPositionSince: what a failed or idle check compares with the
// position last written. A marker new to the placement (a master that just
// got slots) is no loss; a known one missing or older is.
func TestPositionSince(t *testing.T) {
	t.Parallel()
	written := newPosition(map[string]marker{"a": {"0/20", "s1"}, "b": {"0/20", "s2"}})
	tests := []struct {
		name              string
		cur               map[string]marker
		wantLSN           string
		wantOK, same, set bool
	}{
		{"unchanged", map[string]marker{"a": {"0/20", "s1"}, "b": {"0/20", "s2"}}, "0/20", true, true, true},
		{"restarted with everything", map[string]marker{"a": {"0/20", "s9"}, "b": {"0/20", "s2"}}, "0/20", true, true, false},
		{"one shard went back", map[string]marker{"a": {"0/20", "s1"}, "b": {"0/10", "s3"}}, "0/10", true, false, false},
		{"one shard lost its marker", map[string]marker{"a": {"0/20", "s1"}, "b": {"", "s3"}}, "0/20", false, false, false},
		{"a new master's marker, empty", map[string]marker{"a": {"0/20", "s1"}, "b": {"0/20", "s2"}, "c": {"", "s4"}}, "0/20", true, true, false},
		{"a new master's marker, left from long ago", map[string]marker{"a": {"0/20", "s1"}, "b": {"0/20", "s2"}, "c": {"0/5", "s4"}}, "0/20", true, true, false},
		{"a marker no longer placed", map[string]marker{"a": {"0/20", "s1"}}, "0/20", true, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := newPosition(tt.cur)
			since := cur.Since(written)
			if since.LSN.String() != tt.wantLSN || since.OK != tt.wantOK {
				t.Errorf("Since = %s, %v; want %s, %v", since.LSN, since.OK, tt.wantLSN, tt.wantOK)
			}
			if got := cur.SameValues(written); got != tt.same {
				t.Errorf("SameValues = %v, want %v", got, tt.same)
			}
			if got := cur.Settled(written); got != tt.set {
				t.Errorf("Settled = %v, want %v", got, tt.set)
			}
		})
	}
	if p := newPosition(map[string]marker{"a": {"garbage", ""}}); p.OK {
		t.Errorf("an unreadable marker reads as a position: %+v", p)
	}
}
