// Package cacheaside is the read side of cachesync: cache-aside reads of
// PostgreSQL rows through Redis that agree with the cachesync daemon on key
// names, tags and versions, so that the two together never leave a stale
// value behind.
//
// The daemon deletes (or rewrites) cache keys when rows change; this package
// fills them (this is Example, which go test runs against a real Redis):
//
//	c, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour})
//	if err != nil {
//		panic(err)
//	}
//	defer c.Close() // stops background refreshes and waits for them
//	user, err := cacheaside.GetOrLoad(ctx, c, "user:"+id, func(ctx context.Context) (User, error) {
//		return loadUser(ctx, db, id) // cacheaside.ErrNotFound for a missing row
//	}, cacheaside.Tags("org:"+orgID))
//	if err != nil {
//		panic(err)
//	}
//	fmt.Println(user.Name)
//
// Make one Client per application (per set of Options) and share it; Close
// it when the application stops. The key and tag names are the ones
// rules.hcl declares, so that the daemon's invalidations reach what the
// application cached. They must be the same bytes: the daemon builds a key
// from the committed text as PostgreSQL prints it, unnormalised, when the
// template only interpolates columns (and lower, upper or jsonencode of
// them), and Unicode NFC-normalised when it goes through any other function,
// operator or conditional; literal text of rules.hcl is NFC. See
// docs/rules.md, "Exact values".
//
// Get reads a key without loading or filling it: for the keys the daemon's
// refresh rules write, which belong to the daemon. Set writes a value the
// application already has, as a fill would, and refuses the fills of the key
// in flight; its doc says what it cannot guarantee. WriteBehind writes one
// that cachesync then writes to PostgreSQL (see Write-behind below).
//
// # What a read does
//
//   - A hit is one GET (with Options.SoftTTL, a PTTL in the same pipeline),
//     and decodes the value (JSON by default, Options.Codec otherwise). A
//     cached "not found" returns ErrNotFound.
//   - A miss is loaded once per process (singleflight) and, across
//     processes, by the holder of a short lock on LockKey, taken in the same
//     script as the fill's ticket; a miss costs three round trips. The
//     others re-read the key until it appears, for at most Options.LockWait,
//     then load from the source themselves.
//   - The value is written with a TTL of Options.TTL ± Options.Jitter; a
//     loader's ErrNotFound is cached for Options.NotFoundTTL.
//   - With Options.SoftTTL set, a value older than SoftTTL is returned at once
//     and refreshed by one background load (stale-while-revalidate), which
//     Client.Close cancels and waits for.
//   - When Redis fails, the read loads from the source and returns; the
//     failure is counted in Stats and logged at most once per
//     Options.ErrorLogInterval. A read never fails because the cache is down.
//
// # Fenced fills
//
// The race every cache-aside client has: a reader misses, reads the row from
// the database, a writer commits a change, the daemon deletes the key, and
// only then the reader writes the value it read, which is now stale and lives
// until its TTL. This package prevents it with a fence per key:
//
//  1. Before it reads the database, a fill adds a random token to the key's
//     fence, a Redis set (keyspace.FenceKey, in the key's cluster slot), and
//     then registers the key and its fence under the key's tags (in that
//     order: a tag invalidation between a registration and a later ticket
//     would leave the fill written and out of the tag).
//  2. It reads the database.
//  3. It writes the value with one script that first removes its token from
//     the fence and writes only if the token was still there.
//
// Every invalidation deletes the fence: the daemon's delete removes the key
// and its fence in one UNLINK, its write-through scripts delete it, a tag's
// deletion deletes the fences registered under the tag, and a flush deletes
// every fence before it drops any key. If the fill's database read could have
// seen a row older than a change, then that change became visible after step
// 1, so its invalidation (which the daemon applies only once the change is
// visible to new snapshots) deleted the token before step 3, and the fill is
// refused: the key stays missing, a cache miss, never a stale value. A
// refused fill is counted in Stats.FencedFills.
//
// The loader must therefore read from a snapshot taken after it is called:
// the primary, or a replica that has replayed past every change the daemon has
// applied, and not a transaction opened before GetOrLoad. Options.DisableFencing
// turns the fence off (plain SET), which is only for showing the race.
//
// # Versions and tags
//
// Versioned(ns) caches the key under keyspace.VersionedKey(ns, n, key), n
// being read from version:<ns> first; the daemon's bump makes every entry of
// the namespace unreachable at once. Tags(...) registers the key in
// tag:<tag> sets, which the daemon deletes with their members. The tag sets
// get a TTL no shorter than any member's.
//
// # Write-behind
//
// For write-heavy rows (counters, sessions, carts) the application can write
// to the cache first and let cachesync write PostgreSQL behind it. A
// write_behind block of rules.hcl names a Redis Stream and a table;
// WriteBehind writes the cache key and appends the row to the stream in one
// Lua script, so that the cache and the queue never disagree:
//
//	wb := c.WriteBehindStream("{counters}:wb")
//	_, err := cacheaside.WriteBehind(ctx, wb, "{counters}:42", n, n) // value, row
//	_, err = cacheaside.WriteBehindDelete(ctx, wb, "{counters}:42", map[string]int{"id": 42})
//
// The entries are the public format any client may append
// (XADD <stream> * op upsert|delete row '<JSON object>'), with the field
// names in package keyspace (keyspace.WriteBehindFieldOp …). cachesync
// applies them in batched, ordered upserts and deletes, exactly once in
// effect. The cache side is Set's: the TTL ± jitter and the tags apply, and
// the write refuses the fills of the key in flight. Unlike a read, a write
// does not go around a failed Redis: it returns the error, since nothing
// else would carry the write to PostgreSQL. On Redis Cluster the key and the
// stream must share a slot: give them the same hash tag, or the write is
// refused with ErrCrossSlot.
//
// The upsert's own change comes back through cachesync: give the table a
// refresh rule whose value is, byte for byte, what the application writes
// to the key (its LSN guard keeps an older change from overwriting a newer
// one), not an invalidate rule, which would delete the value just written.
// See docs/rules.md, "Rules for a write_behind table".
//
// # Fill stamps
//
// Every write of a value (a fill, a background refresh, Set, WriteBehind)
// also writes keyspace.StampKey(key): the Unix milliseconds taken before the
// value was loaded (for Set and WriteBehind, the time of the call), in the
// same script as the value and with its TTL. cachesync verify compares it
// with the row's last change to find values loaded from an older row. A
// refused fill writes neither; Invalidate and WriteBehindDelete delete the
// stamp with the key. The cost is one more key per cached value (about 150
// bytes of Redis memory); Options.NoFillStamps turns them off.
//
// # Verifying hits
//
// Options.VerifyHits checks a sampled fraction of GetOrLoad's hits against
// the source in the background: the loader runs again and, if its value
// encodes to other bytes than the cached ones, again after
// Options.VerifyWindow, after the key is re-read. A key that still holds a
// value differing from the source then is a stale read
// (Stats.VerifiedStale); one invalidated or refilled within the window was
// consistent within it (Stats.VerifiedConsistent). This catches staleness
// from any cause, including writes that bypass PostgreSQL, at the price of
// one more load per sampled hit (two when it differed). At most a few checks
// run at once, a sampled hit that finds them busy is dropped
// (Stats.VerifyDropped), the caller never waits, and Close stops them.
//
// # Redis Cluster
//
// Every script touches one cluster slot: the key with its fence and its
// stamp, or its lock.
// Tag sets live in their own slots; the daemon deletes a tag's members
// atomically only when they share the tag's slot (a hash tag), see the
// keyspace and keyspace/redisops packages.
package cacheaside
