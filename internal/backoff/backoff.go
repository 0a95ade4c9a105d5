// Package backoff computes the waits between retries of cachesync's
// retry loops: exponential, capped, jittered so that instances and
// connections that failed together do not retry together.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Exponential doubles the wait per retry from Min up to Max.
type Exponential struct {
	Min, Max time.Duration
	// Rand returns a uniform random number in [0, n) (default math/rand/v2's
	// Int64N).
	Rand func(n int64) int64
}

// Ceiling is the longest wait before retry number retry (from 0):
// Min·2^retry, at most Max.
func (b Exponential) Ceiling(retry int) time.Duration {
	c := b.Min
	for i := 0; i < retry && c < b.Max; i++ {
		c *= 2
	}
	return min(c, b.Max)
}

// Wait is the wait before retry number retry: uniform in [c/2, c], c the
// Ceiling.
func (b Exponential) Wait(retry int) time.Duration {
	c := b.Ceiling(retry)
	return c/2 + b.uniform(c-c/2)
}

// FullJitter is the wait before retry number retry: uniform in [Min, c], c
// the Ceiling.
func (b Exponential) FullJitter(retry int) time.Duration {
	c := b.Ceiling(retry)
	return b.Min + b.uniform(c-b.Min)
}

// uniform returns a duration uniform in [0, d].
func (b Exponential) uniform(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	r := b.Rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(d) + 1))
}

// Sleep waits for d or until ctx is done, and reports whether it waited d.
func Sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
