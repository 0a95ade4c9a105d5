package backoff_test

import (
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/backoff"
)

// TestExponential: the bounds of every wait, at both ends of the random
// range, from the first retry to well past the cap.
func TestExponential(t *testing.T) {
	t.Parallel()
	lowest := func(int64) int64 { return 0 }
	highest := func(n int64) int64 { return n - 1 }
	tests := []struct {
		retry                   int
		ceiling, waitLo, fullLo time.Duration
	}{
		{0, 50 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond},
		{1, 100 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond},
		{3, 400 * time.Millisecond, 200 * time.Millisecond, 50 * time.Millisecond},
		{7, 5 * time.Second, 2500 * time.Millisecond, 50 * time.Millisecond},
		{1000, 5 * time.Second, 2500 * time.Millisecond, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		lo := backoff.Exponential{Min: 50 * time.Millisecond, Max: 5 * time.Second, Rand: lowest}
		hi := lo
		hi.Rand = highest
		if got := lo.Ceiling(tt.retry); got != tt.ceiling {
			t.Errorf("Ceiling(%d) = %v, want %v", tt.retry, got, tt.ceiling)
		}
		if got := lo.Wait(tt.retry); got != tt.waitLo {
			t.Errorf("Wait(%d) at its lowest = %v, want %v", tt.retry, got, tt.waitLo)
		}
		if got := hi.Wait(tt.retry); got != tt.ceiling {
			t.Errorf("Wait(%d) at its highest = %v, want %v", tt.retry, got, tt.ceiling)
		}
		if got := lo.FullJitter(tt.retry); got != tt.fullLo {
			t.Errorf("FullJitter(%d) at its lowest = %v, want %v", tt.retry, got, tt.fullLo)
		}
		if got := hi.FullJitter(tt.retry); got != tt.ceiling {
			t.Errorf("FullJitter(%d) at its highest = %v, want %v", tt.retry, got, tt.ceiling)
		}
	}
	if got := (backoff.Exponential{Min: time.Second, Max: time.Second}).FullJitter(3); got != time.Second {
		t.Errorf("FullJitter with Min = Max: %v", got)
	}
}
