package testenv

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// RoundTrips is a go-redis hook (client.AddHook) that counts a client's
// round trips as its callers see them: one per command outside a pipeline
// and one per pipeline, whatever servers a cluster client's pipeline fans
// out to (it reaches them concurrently: one wait). A cluster client's own
// topology reads (CLUSTER …) do not count.
type RoundTrips struct{ n atomic.Int64 }

// Load returns the round trips counted so far.
func (h *RoundTrips) Load() int64 { return h.n.Load() }

// Count returns how many round trips fn made (with nothing else using the
// client meanwhile).
func (h *RoundTrips) Count(fn func()) int64 {
	before := h.n.Load()
	fn()
	return h.n.Load() - before
}

// DialHook implements redis.Hook.
func (h *RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook.
func (h *RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "cluster" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook implements redis.Hook.
func (h *RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}
