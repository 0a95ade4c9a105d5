package redisops

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// DeleteTagScript deletes every key registered under a tag, then the tag's
// set, atomically, so that no reader sees some members gone and others not.
//
//	KEYS[1]  the tag set (keyspace.TagKey)
//	ARGV[1]  optional: "strict" refuses a key of another type (see below)
//	returns  the number of member keys that existed and were deleted
//
// Members are UNLINKed in chunks of at most 1000 (Lua's unpack has a stack
// limit). A key of another type at KEYS[1] is deleted and 0 is returned: the
// tag: prefix belongs to cachesync, and failing forever on it would stop
// invalidation. In strict mode (the daemon's) it is left in place and the
// script fails with a WRONGTYPE error instead: the members of that tag are
// unknown (whatever overwrote the set dropped them), so the caller must drop
// every key they could be, a flush of the rule's key space, before it
// deletes the key. Deleting it here first would let a retry find no key and
// forget the flush.
//
// Redis Cluster: the members are not declared in KEYS, so the script works on
// a cluster only when every member hashes to the tag set's slot (members
// named with the tag as their hash tag); otherwise the server refuses it
// before deleting anything, and the writer falls back to TagDetachScript.
// Standalone and Sentinel deployments have no such restriction.
const DeleteTagScript = `
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  return 0
end
if kind ~= 'set' then
  if ARGV[1] == 'strict' then
    return redis.error_reply('WRONGTYPE cachesync: ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a tag set: its members are unknown')
  end
  redis.call('UNLINK', KEYS[1])
  return 0
end
local members = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for first = 1, #members, 1000 do
  local last = math.min(first + 999, #members)
  deleted = deleted + redis.call('UNLINK', unpack(members, first, last))
end
redis.call('DEL', KEYS[1])
return deleted
`

// lsnHelpers is the Lua shared by the guarded scripts.
//
// A guard's value is keyspace.EncodeGuard's: the commit LSN as 16 hex digits, then
// the WAL history (keyspace.History) it belongs to. LSNs are compared as two exact
// 32-bit halves rather than as strings: Lua numbers are doubles (53-bit),
// and Lua compares strings with strcoll, which follows the server's locale.
// A guard that is missing, of another type, not 16 hex digits, or of another
// WAL history than the change counts as no guard (the value is then
// overwritten): positions of another history say nothing about this one's
// order, and keeping them would refuse every write of a restored or new
// server until its WAL passed the old positions.
const lsnHelpers = `
local function lsn_halves(s)
  if type(s) ~= 'string' or #s < 16 or string.find(string.sub(s, 1, 16), '^%x+$') == nil then
    return nil
  end
  return tonumber(string.sub(s, 1, 8), 16), tonumber(string.sub(s, 9, 16), 16)
end

-- the guard's LSN halves, or nil when it holds none of the change's history
-- (arg: the change's EncodeGuard value)
local function guard_halves(guard, arg)
  local v = redis.pcall('GET', guard)
  if type(v) ~= 'string' or string.sub(v, 17) ~= string.sub(arg, 17) then
    return nil
  end
  return lsn_halves(v)
end

-- A write-through effect is an invalidation too: fills of the key that are
-- in flight may have read an older row (FenceKey, FillScript).
local function unfence()
  if KEYS[3] ~= nil then
    redis.call('DEL', KEYS[3])
  end
end

local function set_with_ttl(key, value, ttl_ms)
  if ttl_ms == '0' then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'PX', ttl_ms)
  end
end
`

// GuardedSetScript writes a write-through value unless the key's guard holds
// the same or a later commit LSN.
//
//	KEYS[1]  the cache key
//	KEYS[2]  its guard (keyspace.GuardKey(KEYS[1]))
//	KEYS[3]  its fill fence (keyspace.FenceKey(KEYS[1])), deleted in any case
//	ARGV[1]  the value
//	ARGV[2]  the commit LSN of the change and its WAL history (keyspace.EncodeGuard)
//	ARGV[3]  the value's TTL in milliseconds, "0" for no expiry
//	ARGV[4]  the guard's TTL in milliseconds, "0" for no expiry
//	returns  1 when written, 0 when the guard held an LSN >= ARGV[2]'s, of its history
//
// Redelivering a change is therefore harmless, and an older change never
// overwrites a newer one of its WAL history while the guard lives.
const GuardedSetScript = lsnHelpers + `
local hi, lo = lsn_halves(ARGV[2])
if hi == nil then
  return redis.error_reply('ERR cachesync: the guard argument must start with 16 hex digits (keyspace.EncodeGuard)')
end
unfence()
local ghi, glo = guard_halves(KEYS[2], ARGV[2])
if ghi ~= nil and (ghi > hi or (ghi == hi and glo >= lo)) then
  return 0
end
set_with_ttl(KEYS[1], ARGV[1], ARGV[3])
set_with_ttl(KEYS[2], ARGV[2], ARGV[4])
return 1
`

// GuardedUnsetScript deletes a write-through key and records the change's
// commit LSN in the guard (a tombstone), so that a redelivered older
// GuardedSetScript cannot bring the value back.
//
//	KEYS[1]  the cache key
//	KEYS[2]  its guard (keyspace.GuardKey(KEYS[1]))
//	KEYS[3]  its fill fence (keyspace.FenceKey(KEYS[1])), deleted in any case
//	ARGV[1]  the commit LSN of the change and its WAL history (keyspace.EncodeGuard)
//	ARGV[2]  the guard's TTL in milliseconds, "0" for no expiry
//	returns  1 when applied, 0 when the guard held a later LSN of its history
//
// Unlike a set, an unset also applies when the guard holds the same LSN: two
// effects of one transaction on one key share its commit LSN, and deleting a
// cache entry is always safe, so the delete wins the tie.
const GuardedUnsetScript = lsnHelpers + `
local hi, lo = lsn_halves(ARGV[1])
if hi == nil then
  return redis.error_reply('ERR cachesync: the guard argument must start with 16 hex digits (keyspace.EncodeGuard)')
end
unfence()
local ghi, glo = guard_halves(KEYS[2], ARGV[1])
if ghi ~= nil and (ghi > hi or (ghi == hi and glo > lo)) then
  return 0
end
redis.call('DEL', KEYS[1])
set_with_ttl(KEYS[2], ARGV[1], ARGV[2])
return 1
`

// TicketScript opens a fill: it adds the fill's token to the key's fence and
// makes sure the fence lives at least as long as the fill may take.
//
//	KEYS[1]  the fence (keyspace.FenceKey(key))
//	ARGV[1]  the fill's token (random, unique)
//	ARGV[2]  how long the fill may take, in milliseconds
//	returns  1
const TicketScript = `
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
`

// FillScript writes a value loaded from the database unless the key was
// invalidated after the fill's ticket (TicketScript) was taken: every
// invalidation deletes the fence, and with it the token.
//
//	KEYS[1]  the cache key
//	KEYS[2]  its fence (keyspace.FenceKey(KEYS[1]))
//	KEYS[3]  optional: its fill stamp (keyspace.StampKey(KEYS[1]))
//	ARGV[1]  the fill's token
//	ARGV[2]  the value
//	ARGV[3]  the value's TTL in milliseconds, "0" for no expiry
//	ARGV[4]  with KEYS[3]: the stamp, Unix milliseconds taken before the load began
//	returns  1 when written, 0 when refused (the fence no longer holds the token)
//
// The stamp is written with the value and the same TTL, or not at all, so
// that it never outlives nor predates the value it describes.
const FillScript = `
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
  if KEYS[3] ~= nil then
    redis.call('SET', KEYS[3], ARGV[4])
  end
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if KEYS[3] ~= nil then
    redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
  end
end
return 1
`

// TagAddScript registers members (a cache key and its fence) under a tag and
// keeps the tag's set alive at least as long as the members may live: a set
// that expired before a member would leave that member out of the tag's next
// invalidation. A set without a TTL keeps none.
//
//	KEYS[1]  the tag set (keyspace.TagKey(tag))
//	ARGV[1]  the longest time a member may live from now, in milliseconds
//	ARGV[2…] the members
//	returns  1
const TagAddScript = `
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
local ttl = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if existed == 0 or (left >= 0 and left < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
`

// UnlockScript releases a keyspace.LockKey only if it still holds the caller's token.
//
//	KEYS[1]  the lock
//	ARGV[1]  the caller's token
//	returns  1 when released, 0 when the lock had expired or was taken over
const UnlockScript = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`

// TagDetachScript starts the deletion of a tag whose members live in other
// cluster slots: it moves the tag's members into the tag's pending set and
// deletes the tag set, atomically, then returns every pending member. The
// caller deletes those members (grouped by slot), then the pending set.
// Members registered after this point go into a new tag set and stay: they
// were filled after the invalidation began. A deletion interrupted before
// the pending set is gone is finished by the next one, which merges into it.
//
//	KEYS[1]  the tag set (keyspace.TagKey)
//	KEYS[2]  its pending set (keyspace.TagPendingKey(KEYS[1]))
//	ARGV[1]  optional: "strict" refuses a tag set or pending set of another
//	         type with a WRONGTYPE error, changing nothing (as DeleteTagScript)
//	returns  the members to delete
const TagDetachScript = `
local kind = redis.call('TYPE', KEYS[1]).ok
if ARGV[1] == 'strict' then
  local pending = redis.call('TYPE', KEYS[2]).ok
  if (kind ~= 'set' and kind ~= 'none') or (pending ~= 'set' and pending ~= 'none') then
    return redis.error_reply('WRONGTYPE cachesync: ' .. KEYS[1] .. ' or ' .. KEYS[2] .. ' is not a set: the tag\'s members are unknown')
  end
end
if kind == 'set' then
  redis.call('SUNIONSTORE', KEYS[2], KEYS[2], KEYS[1])
end
if kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
return redis.call('SMEMBERS', KEYS[2])
`

// LoadScripts loads scripts into the script cache of every server that runs
// them: the client's server, or every master of a cluster.
//
// A cluster's replicas are left out on purpose. go-redis's
// ClusterClient.ScriptLoad waits for every replica as well, so one hung or
// unreachable replica would fail every load, and with it every
// invalidation, although no script ever runs on a replica. A replica that
// is promoted later starts with an empty script cache; the first EVALSHA it
// receives fails with NOSCRIPT (IsNoScript), and callers load again.
func LoadScripts(ctx context.Context, rdb redis.UniversalClient, scripts ...*redis.Script) error {
	load := func(ctx context.Context, c redis.Scripter) error {
		for _, s := range scripts {
			if err := s.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("SCRIPT LOAD: %w", err)
			}
		}
		return nil
	}
	return OnMasters(ctx, rdb, func(ctx context.Context, node redis.Cmdable) error {
		return load(ctx, node)
	})
}

// OnMasters runs fn on every server that holds keys: the client itself, or
// each master of a cluster (concurrently, and naming the master in an
// error), never a replica.
func OnMasters(ctx context.Context, rdb redis.UniversalClient, fn func(ctx context.Context, node redis.Cmdable) error) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			if err := fn(ctx, m); err != nil {
				return fmt.Errorf("%s: %w", m.Options().Addr, err)
			}
			return nil
		})
	}
	return fn(ctx, rdb)
}

// IsNoScript reports whether err says a script is missing from the
// server's script cache (a restart, SCRIPT FLUSH, a promoted replica).
func IsNoScript(err error) bool {
	return errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")
}

// BackfillSetScript writes a value, or deletes the key, for a backfill
// (package backfill) that read the row at a snapshot taken after the
// applied position A was read: it writes only if the key's guard is absent,
// of another WAL history, or holds an LSN below A, then records A-1 in the
// guard. A stream effect of a transaction the snapshot did not see
// (commit LSN >= A) therefore wins over the backfill, one applied later
// passes the guard A-1 and overwrites it, and an older one (which the
// snapshot saw) cannot write back over it.
//
//	KEYS[1]  the cache key
//	KEYS[2]  its guard (keyspace.GuardKey(KEYS[1]))
//	KEYS[3]  its fill fence (keyspace.FenceKey(KEYS[1])), deleted when written
//	ARGV[1]  "set" or "unset"
//	ARGV[2]  A-1 and the WAL history (keyspace.EncodeGuard)
//	ARGV[3]  the value ("" for unset)
//	ARGV[4]  the value's TTL in milliseconds, "0" for no expiry
//	ARGV[5]  the guard's TTL in milliseconds, "0" for no expiry
//	returns  1 when written, 0 when the guard held A or later, of its history
const BackfillSetScript = lsnHelpers + `
local hi, lo = lsn_halves(ARGV[2])
if hi == nil then
  return redis.error_reply('ERR cachesync: the guard argument must start with 16 hex digits (keyspace.EncodeGuard)')
end
local ghi, glo = guard_halves(KEYS[2], ARGV[2])
if ghi ~= nil and (ghi > hi or (ghi == hi and glo > lo)) then
  return 0
end
unfence()
if ARGV[1] == 'unset' then
  redis.call('DEL', KEYS[1])
else
  set_with_ttl(KEYS[1], ARGV[3], ARGV[4])
end
set_with_ttl(KEYS[2], ARGV[2], ARGV[5])
return 1
`

// BackfillUndoScript deletes a key a backfill wrote if nothing touched it
// since: its guard still holds exactly what the backfill recorded.
//
//	KEYS[1]  the cache key
//	KEYS[2]  its guard (keyspace.GuardKey(KEYS[1]))
//	ARGV[1]  the guard the backfill wrote (A-1 and the history)
//	returns  1 when deleted, 0 when left alone
const BackfillUndoScript = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
`

// CountFlushScript moves a rule's flush counter before a flush
// (writer.FlushCounterKey) to max(counter+1, ARGV[1]), ARGV[1] being the
// time in nanoseconds. A counter lost with the rest of Redis, or rolled
// back with it to a snapshot, therefore never comes back to a value a
// backfill read before: after a restore to X, a counter that had reached
// X+1 moves to the time, not to X+1 again.
//
//	KEYS[1]  the counter
//	ARGV[1]  the time in nanoseconds
//	returns  the new value
const CountFlushScript = `
local cur = redis.call('GET', KEYS[1])
local now = ARGV[1]
-- Both are decimal integers without leading zeros, too large for Lua's
-- doubles: the longer is the larger, else the lexically larger.
if not cur or #now > #cur or (#now == #cur and now > cur) then
  redis.call('SET', KEYS[1], now)
  return now
end
return redis.call('INCR', KEYS[1])
`
