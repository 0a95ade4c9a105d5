// Package keyspace is what the cachesync daemon and the application-side
// client (cacheaside) must agree on: the names of the Redis keys each side
// reads and writes, their Redis Cluster hash slots, and the LSN encoding of
// write-through guards. It is pure naming: it depends on nothing but the
// standard library, so that mapping can name keys without a Redis client.
// The Lua scripts that change several keys atomically, and the helpers that
// load and run them, are in package keyspace/redisops.
//
// # Naming scheme
//
//	<key>                       a cache entry, named by the application (rules.hcl templates)
//	tag:<tag>                   a SET of cache keys registered under <tag>; TagKey
//	version:<ns>                the current version of namespace <ns>, an integer
//	                            string INCR'd by the daemon; absent means 0; VersionKey
//	<ns>:v<n>:<key>             an entry of namespace <ns> cached at version <n>; VersionedKey
//	cachesync:lsn:{<slot>}...   the guard of a write-through key: the commit LSN and
//	                            WAL history of the last write-through effect on it
//	                            (EncodeGuard); always with a TTL; GuardKey
//	cachesync:fence:{<slot>}... the tokens of the fills of a key in flight; FenceKey
//	cachesync:lock:{<slot>}...  the lock of the one process loading a key; LockKey
//
// Tags: the client adds every key it caches under a tag to the tag's set; the
// daemon deletes the members and the set in one script (redisops.DeleteTagScript).
//
// Versions: the client reads version:<ns> (absent = 0) and then reads or
// writes <ns>:v<n>:<key>. Bumping the version retires every entry of the
// namespace at once; the old entries are left to expire, or are dropped by a
// flush. Version keys are never deleted: a client would fall back to version 0
// and could read entries cached at version 0 long ago. (The one exception is a
// version INCR can no longer increment, which the daemon deletes after every
// fill fence and every entry of its namespace.)
//
// Fenced fills: an application that fills a key after reading the database
// can lose a race with the daemon (it reads the old row, the row changes, the
// daemon deletes the key, then the old value is written). The client first
// adds a random token to FenceKey(key) (and registers the fence key under the
// key's tags), then reads the database, then writes the value with
// redisops.FillScript, which writes only if the token is still there. Every
// invalidation of the key deletes the fence, so a fill that may have read a
// row older than the invalidation is refused.
//
// Write-through keys (refresh rules) are written only by the daemon, through
// redisops.GuardedSetScript and redisops.GuardedUnsetScript, which compare the commit LSN of the
// change with the one stored in the key's guard so that a redelivered older
// change never overwrites a newer one. A guard records the WAL history of its
// LSN too (History: the server's system identifier and timeline), and one of
// another history counts as absent, so that a restored or new server, whose
// positions may lie below the old ones, writes from its first change.
//
// Companion keys (GuardKey, FenceKey, LockKey, TagPendingKey) hash to the
// Redis Cluster slot of the key they serve, so that one script may use both.
package keyspace

import (
	"fmt"
	"strconv"
	"strings"
)

const (
	tagPrefix     = "tag:"
	versionPrefix = "version:"
	guardPrefix   = "cachesync:lsn:"
	fencePrefix   = "cachesync:fence:"
	lockPrefix    = "cachesync:lock:"
	stampPrefix   = "cachesync:stamp:"
	tagDelPrefix  = "cachesync:tagdel:"
)

// FencePattern matches every fence key (FenceKey): a flush deletes them all
// before it drops the flushed keys, which refuses every fill in flight.
const FencePattern = fencePrefix + "*"

// TagKey returns the name of the Redis SET that holds the keys registered
// under tag.
func TagKey(tag string) string { return tagPrefix + tag }

// VersionKey returns the name of the counter holding the current version of
// namespace ns. The daemon INCRs it; an absent key means version 0.
func VersionKey(ns string) string { return versionPrefix + ns }

// VersionedKey returns the name under which key is cached in namespace ns at
// version: ns + ":v" + version + ":" + key. A namespace's entries therefore
// all match the glob pattern EscapeGlob(ns) + ":v*".
func VersionedKey(ns string, version int64, key string) string {
	return ns + ":v" + strconv.FormatInt(version, 10) + ":" + key
}

// GuardKey returns the key that stores the commit LSN (EncodeLSN) of the last
// write-through effect on key. It always hashes to the same Redis Cluster slot
// as key, so that a script may use both:
//
//   - key has a hash tag {T} (the first '{' followed later by a '}' with at
//     least one character between): "cachesync:lsn:{T}:" + key.
//   - key has no hash tag and no '}' (most keys): "cachesync:lsn:{" + key + "}".
//   - key has no hash tag but contains a '}' (such as "a}b" or "x{}y"), or is
//     empty, so that wrapping it in braces would not make it the hash tag:
//     "cachesync:lsn:{S}:" + key, where S is a short fixed string of letters
//     and digits that hashes to Slot(key).
//
// Distinct keys have distinct guards.
func GuardKey(key string) string { return sameSlot(guardPrefix, key) }

// FenceKey returns the fill fence of key: a SET of the tokens of the fills of
// key in flight (cacheaside). Every invalidation of key deletes it (the
// daemon's UNLINK, the guarded scripts, a tag's deletion, since fills register
// it under the key's tags, and a flush), and a fill writes its value only if
// its token is still in the set (redisops.FillScript). It hashes to the slot of key,
// named like GuardKey.
func FenceKey(key string) string { return sameSlot(fencePrefix, key) }

// LockKey returns the key of the short lock that lets one process load key
// while the others wait (cacheaside's stampede protection). It hashes to the
// slot of key, named like GuardKey.
func LockKey(key string) string { return sameSlot(lockPrefix, key) }

// StampKey returns the fill stamp of key: when cacheaside loaded the value
// key holds, as Unix milliseconds taken before the load began, written with
// the value and living as long as it (redisops.FillScript). cachesync verify
// compares it with the row's last change to find values filled from an older
// row (docs/operations.md, Verifying). It hashes to the slot of key, named
// like GuardKey.
func StampKey(key string) string { return sameSlot(stampPrefix, key) }

// HasHashTag reports whether key has a Redis Cluster hash tag: the part
// between its first '{' and the next '}', when not empty, is all that is
// hashed.
func HasHashTag(key string) bool {
	_, ok := hashTag(key)
	return ok
}

// TagPendingKey returns where a tag's members wait while they are deleted
// across cluster slots (redisops.TagDetachScript); it hashes to the slot of the tag
// set tagKey.
func TagPendingKey(tagKey string) string { return sameSlot(tagDelPrefix, tagKey) }

// sameSlot names prefix's companion of key so that it hashes to key's slot
// (see GuardKey).
func sameSlot(prefix, key string) string {
	if tag, ok := hashTag(key); ok {
		return prefix + "{" + tag + "}:" + key
	}
	if key != "" && !strings.Contains(key, "}") {
		return prefix + "{" + key + "}"
	}
	return prefix + "{" + slotTag(Slot(key)) + "}:" + key
}

// History names a WAL history: a server's system identifier and timeline
// (IDENTIFY_SYSTEM). LSNs of different histories cannot be compared: a
// restore, a promoted standby or a move to another server starts a history
// whose positions may lie below those already seen.
func History(systemID string, timeline int32) string {
	return systemID + "/" + strconv.FormatInt(int64(timeline), 10)
}

// EncodeGuard is the value of a write-through guard (GuardKey) and the LSN
// argument of the guarded scripts: EncodeLSN(lsn), then "@" and history
// when history is not empty. The scripts order guards of one history by
// LSN, and take a guard of another history for no guard at all.
func EncodeGuard(lsn uint64, history string) string {
	if history == "" {
		return EncodeLSN(lsn)
	}
	return EncodeLSN(lsn) + "@" + history
}

// EncodeLSN formats a PostgreSQL LSN as 16 zero-padded upper-case hex digits.
// Encoded LSNs of equal length order the same way as the LSNs, which lets the
// scripts compare them without converting them to Lua numbers (doubles, which
// cannot hold every 64-bit LSN exactly).
func EncodeLSN(lsn uint64) string { return fmt.Sprintf("%016X", lsn) }

// EscapeGlob escapes the characters that are special in a Redis glob pattern
// (SCAN MATCH, KEYS): * ? [ ] and the backslash, so that s matches only
// itself. Append "*" to the result to match every key that starts with s.
func EscapeGlob(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
