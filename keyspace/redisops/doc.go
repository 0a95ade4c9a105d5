// Package redisops is the Redis side of the key space that the cachesync
// daemon (writer) and the application-side client (cacheaside) share: the
// Lua scripts that change several keys atomically, loading them on every
// server that runs them (LoadScripts, OnMasters, IsNoScript), and the
// stepwise deletion of tags across cluster slots (TagDetachScript, then
// DeleteDetachedTags, or DeleteDetachedTag for one).
//
// The names of the keys these scripts touch, and the encoding of their LSN
// arguments, are in package keyspace, which depends on nothing but the
// standard library so that mapping can name keys without pulling in a Redis
// client.
//
// Every multi-key script touches only keys in one Redis Cluster hash slot
// (keyspace.GuardKey(k), FenceKey(k), LockKey(k) and StampKey(k) hash to the slot of
// k), except DeleteTagScript: see its documentation.
package redisops
