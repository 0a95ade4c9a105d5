package cacheaside

import "sync/atomic"

// Stats are a Client's counters since it was made. They only grow.
type Stats struct {
	Hits         uint64 // reads answered from the cache
	NotFoundHits uint64 // reads answered by a cached "not found"
	Misses       uint64 // reads that found nothing usable
	Loads        uint64 // calls of a loader
	LoadErrors   uint64 // loader errors other than ErrNotFound (never cached)
	LockWaits    uint64 // loads that waited for another process's fill
	LockTimeouts uint64 // of those, the ones that then loaded themselves
	StaleServed  uint64 // values returned after their soft TTL
	Refreshes    uint64 // background refreshes started
	Fills        uint64 // values (or "not found") written
	FencedFills  uint64 // fills refused because the key was invalidated meanwhile
	DecodeErrors uint64 // cached values that did not decode (treated as misses)
	RedisErrors  uint64 // Redis failures (each answered from the source)
	Bypassed     uint64 // reads sent straight to the source after a Redis failure
	// Hit verification (Options.VerifyHits): sampled hits found consistent
	// within Options.VerifyWindow, found stale beyond it, and dropped
	// because maxVerifications were running. A verification whose load or
	// re-read failed counts in none.
	VerifiedConsistent uint64
	VerifiedStale      uint64
	VerifyDropped      uint64
}

type counters struct {
	hits, notFoundHits, misses, loads, loadErrors, lockWaits, lockTimeouts,
	staleServed, refreshes, fills, fencedFills, decodeErrors, redisErrors, bypassed,
	verifiedConsistent, verifiedStale, verifyDropped atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	s := &c.stats
	return Stats{
		Hits: s.hits.Load(), NotFoundHits: s.notFoundHits.Load(), Misses: s.misses.Load(),
		Loads: s.loads.Load(), LoadErrors: s.loadErrors.Load(), LockWaits: s.lockWaits.Load(),
		LockTimeouts: s.lockTimeouts.Load(), StaleServed: s.staleServed.Load(),
		Refreshes: s.refreshes.Load(), Fills: s.fills.Load(), FencedFills: s.fencedFills.Load(),
		DecodeErrors: s.decodeErrors.Load(), RedisErrors: s.redisErrors.Load(), Bypassed: s.bypassed.Load(),
		VerifiedConsistent: s.verifiedConsistent.Load(), VerifiedStale: s.verifiedStale.Load(),
		VerifyDropped: s.verifyDropped.Load(),
	}
}
