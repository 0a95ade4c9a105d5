package redisops

// WriteBehindScript writes a cache key and appends its write-behind entry to
// a stream, in one step, so that the cache and the queue never disagree
// (cacheaside.WriteBehind, cacheaside.WriteBehindDelete).
//
//	KEYS[1]  the cache key
//	KEYS[2]  its fill fence (keyspace.FenceKey(KEYS[1])), deleted in any case
//	KEYS[3]  the stream
//	KEYS[4]  optional: the key's fill stamp (keyspace.StampKey(KEYS[1]))
//	ARGV[1]  "set" or "unset" (the cache side)
//	ARGV[2]  the value ("" for unset)
//	ARGV[3]  the value's TTL in milliseconds (at least 1)
//	ARGV[4]  the stamp for "set" with KEYS[4], Unix milliseconds ("" otherwise)
//	ARGV[5…] the entry's fields and values (keyspace.WriteBehindFieldOp …)
//	returns  the entry's ID
//
// With KEYS[4], "set" writes the stamp with the value and the same TTL, and
// "unset" deletes it with the value.
//
// Both or neither: XADD runs first, and it is the only command here that can
// fail (a stream key of another type, or memory full, which Redis checks only
// until a script's first write). A failed XADD ends the script before the key
// is touched; after it, SET and DEL cannot fail. Deleting the fence
// makes the write an invalidation for the fills of the key in flight, as
// cacheaside.Set is: a GetOrLoad that read an older row does not overwrite
// the value afterwards.
//
// Redis Cluster: the keys must share a slot (the fence and the stamp hash to
// the key's); the stream's name and the key's need the same hash tag
// ({counters}:wb, {counters}:42).
const WriteBehindScript = `
local id = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))
if ARGV[1] == 'unset' then
  redis.call('DEL', KEYS[1])
  if KEYS[4] ~= nil then
    redis.call('DEL', KEYS[4])
  end
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if KEYS[4] ~= nil then
    redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
  end
end
redis.call('DEL', KEYS[2])
return id
`
