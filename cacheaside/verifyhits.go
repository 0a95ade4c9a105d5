package cacheaside

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// maxVerifications bounds the hit verifications (Options.VerifyHits) of a
// Client running at once; a sampled hit that finds them all busy is dropped.
const maxVerifications = 4

// sampleHit reports whether a cache hit is to be verified.
func (c *Client) sampleHit() bool {
	return c.opts.VerifyHits > 0 && rand.Float64() < c.opts.VerifyHits
}

// verifyInBackground checks a cache hit of key, whose cached bytes are
// cached, against the source in a goroutine that Close stops and waits for,
// unless maxVerifications already run.
func verifyInBackground[T any](c *Client, key string, cached []byte, load func(context.Context) (T, error)) {
	select {
	case c.verifySlots <- struct{}{}:
	default:
		c.stats.verifyDropped.Add(1)
		return
	}
	if !c.enter() {
		<-c.verifySlots
		return
	}
	go func() {
		defer c.leave()
		defer func() { <-c.verifySlots }()
		c.verifyHit(key, cached, func(ctx context.Context) ([]byte, bool) {
			ctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout)
			defer cancel()
			v, err := callLoad(ctx, c, load)
			switch {
			case errors.Is(err, ErrNotFound):
				return []byte(notFound), true
			case err != nil:
				return nil, false
			}
			b, err := c.opts.Codec.Marshal(v)
			return b, err == nil
		})
	}()
}

// verifyHit compares a cached value with the source's: load returns the
// source's value encoded as a fill would write it, or false when the load
// failed (which proves nothing either way). A value that differs is checked
// again after Options.VerifyWindow: the key re-read, then the source. It is
// a stale read only if the key still holds a value and that value differs
// from the source's then; a key invalidated, expired or re-filled with the
// source's value within the window was consistent within it.
func (c *Client) verifyHit(key string, cached []byte, load func(context.Context) ([]byte, bool)) {
	ctx := c.stop
	fresh, ok := load(ctx)
	if !ok {
		return
	}
	if bytes.Equal(fresh, cached) {
		c.stats.verifiedConsistent.Add(1)
		return
	}
	t := time.NewTimer(c.opts.VerifyWindow)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return
	}
	rctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout)
	now, _, err := c.read(rctx, key, false)
	cancel()
	if err != nil {
		return
	}
	if now == nil {
		c.stats.verifiedConsistent.Add(1)
		return
	}
	if fresh, ok = load(ctx); !ok {
		return
	}
	if bytes.Equal(now, fresh) {
		c.stats.verifiedConsistent.Add(1)
		return
	}
	c.stats.verifiedStale.Add(1)
	c.errLog.report(fmt.Sprintf("stale read: %s still differs from the source %s after a hit found it different; "+
		"something changed the source without invalidating the key (see docs/cacheaside.md, Verifying hits)",
		key, c.opts.VerifyWindow), nil)
}
