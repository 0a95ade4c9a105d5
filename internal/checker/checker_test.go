package checker

import (
	"math"
	"testing"
)

func TestNines(t *testing.T) {
	for _, c := range []struct {
		checked, stale uint64
		want           float64
		ok             bool
	}{
		{0, 0, 0, false},   // nothing checked: no series
		{1000, 0, 9, true}, // nothing stale: the cap
		{1000, 1, 3, true}, // one in a thousand
		{100, 10, 1, true}, // one in ten
		{10, 10, 0, true},  // all stale
		{2e9, 1, 9, true},  // beyond the cap
	} {
		got, ok := Nines(c.checked, c.stale)
		if ok != c.ok || math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Nines(%d, %d) = %v, %v; want %v, %v", c.checked, c.stale, got, ok, c.want, c.ok)
		}
	}
}
