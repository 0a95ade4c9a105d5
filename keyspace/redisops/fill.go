package redisops

// LockTicketScript opens the fill of a key by the process that loads it for
// everyone (cacheaside's stampede lock) in one round trip: it takes the key's
// lock, re-reads the key in case the previous holder filled it meanwhile, and
// adds the fill's token to the key's fence, as TicketScript does.
//
//	KEYS[1]  the lock (keyspace.LockKey(key))
//	KEYS[2]  the fence (keyspace.FenceKey(key))
//	KEYS[3]  optional: the key itself, to re-read after the lock is taken
//	ARGV[1]  the token, the lock's value and the fill's ticket
//	ARGV[2]  the lock's TTL in milliseconds
//	ARGV[3]  how long the fill may take, in milliseconds (the fence's TTL);
//	         "0" takes the lock without a ticket (fills without a fence)
//	returns  0 when another token holds the lock (nothing changed);
//	         the key's value when KEYS[3] holds a string (the lock is released,
//	         no ticket taken);
//	         1 when the lock is held and the ticket taken
//
// A lock that already holds ARGV[1] counts as taken, so that running the
// script again (after a NOSCRIPT in the same pipeline) is harmless. Every
// key shares the key's cluster slot.
const LockTicketScript = `
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then
  if held then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if KEYS[3] ~= nil then
  local v = redis.pcall('GET', KEYS[3])
  if type(v) == 'string' then
    redis.call('DEL', KEYS[1])
    return v
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SADD', KEYS[2], ARGV[1])
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return 1
`

// FillUnlockScript is FillScript followed by UnlockScript, in one round trip:
// it releases the key's lock if it still holds the token, then writes the
// value (and its stamp) if no invalidation deleted the token from the fence.
//
//	KEYS[1]  the cache key
//	KEYS[2]  its fence (keyspace.FenceKey(KEYS[1]))
//	KEYS[3]  its lock (keyspace.LockKey(KEYS[1]))
//	KEYS[4]  optional: its fill stamp (keyspace.StampKey(KEYS[1]))
//	ARGV[1]  the token (LockTicketScript's)
//	ARGV[2]  the value
//	ARGV[3]  the value's TTL in milliseconds, "0" for no expiry
//	ARGV[4]  with KEYS[4]: the stamp, Unix milliseconds taken before the load began
//	returns  1 when written, 0 when refused (the fence no longer holds the token)
const FillUnlockScript = `
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
  if KEYS[4] ~= nil then
    redis.call('SET', KEYS[4], ARGV[4])
  end
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if KEYS[4] ~= nil then
    redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
  end
end
return 1
`
