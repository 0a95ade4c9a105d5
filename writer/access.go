package writer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/mapping"
)

// ErrNoAccess marks a refusal that retrying cannot cure: the Redis user
// lacks a command or a key pattern cachesync needs (NOPERM), the
// credentials are wrong, or the server disabled a command.
var ErrNoAccess = errors.New("the Redis server or user refuses what cachesync needs")

// Commands returns the Redis commands cachesync sends, directly or from its
// Lua scripts (which run with the caller's permissions), in ACL syntax. A
// cluster client also reads the slot map. CONFIG GET (the eviction policy,
// proto-max-bulk-len) is the one cachesync does without when refused, with
// a warning; CheckAccess does not require it. INFO is advised, not checked
// either: the applied-position scripts read the server's run_id with it,
// and do without (less safely) when refused.
func Commands(client redis.UniversalClient) []string {
	cmds := []string{
		"get", "set", "del", "unlink", "type", "incr", "sadd", "srem", "smembers",
		"sunionstore", "hset", "hgetall", "scan", "eval", "evalsha", "script|load",
		"multi", "exec", "config|get", "info",
	}
	if _, ok := client.(*redis.ClusterClient); ok {
		cmds = append(cmds, "cluster|slots")
	}
	return cmds
}

// KeyPatterns returns the key patterns (globs, as ACL ~patterns take them)
// that cachesync reads and writes for the given key spaces: its own
// bookkeeping under cachesync:, then every rule's keys, tag sets, version
// keys and versioned entries.
func KeyPatterns(spaces []mapping.Keyspace) []string {
	patterns := []string{"cachesync:*"}
	for _, ks := range spaces {
		patterns = append(patterns, ks.Keys...)
		for _, t := range ks.Tags {
			patterns = append(patterns, keyspace.TagKey(t))
		}
		for _, v := range ks.Versions {
			patterns = append(patterns, keyspace.VersionKey(v), v+":v*")
		}
	}
	seen := map[string]bool{}
	return slices.DeleteFunc(patterns, func(p string) bool {
		dup := seen[p]
		seen[p] = true
		return dup
	})
}

// CheckAccess sends Redis one of every command cachesync uses, on scratch
// keys of its own, and touches one absent key of every pattern of
// KeyPatterns(spaces), so that a user or server that would refuse one of
// them later, halfway through a stream, refuses now. Nothing it writes
// outlives it: the scratch keys are deleted and the probe keys have random
// names that no application uses.
//
// A refusal is returned wrapping ErrNoAccess, with what to grant. Any other
// error (Redis unreachable, a timeout) is returned as it is: the writer
// rides those out by retrying.
func CheckAccess(ctx context.Context, client redis.UniversalClient, spaces []mapping.Keyspace) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	id := hex.EncodeToString(nonce[:])
	// One hash tag: on a cluster the scratch keys share a slot, and the
	// multi-key SUNIONSTORE is allowed.
	scratch := "cachesync:preflight:{" + id + "}"
	str, counter, set, union, hash := scratch+":string", scratch+":counter", scratch+":set", scratch+":union", scratch+":hash"
	type step struct {
		what string
		run  func(p redis.Pipeliner) redis.Cmder
	}
	var steps []step
	add := func(what string, run func(p redis.Pipeliner) redis.Cmder) {
		steps = append(steps, step{what, run})
	}
	add("SET", func(p redis.Pipeliner) redis.Cmder { return p.Set(ctx, str, "1", time.Minute) })
	add("GET", func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, str) })
	add("TYPE", func(p redis.Pipeliner) redis.Cmder { return p.Type(ctx, str) })
	add("INCR", func(p redis.Pipeliner) redis.Cmder { return p.Incr(ctx, counter) })
	add("SADD", func(p redis.Pipeliner) redis.Cmder { return p.SAdd(ctx, set, "a", "b") })
	add("SMEMBERS", func(p redis.Pipeliner) redis.Cmder { return p.SMembers(ctx, set) })
	add("SREM", func(p redis.Pipeliner) redis.Cmder { return p.SRem(ctx, set, "b") })
	add("SUNIONSTORE", func(p redis.Pipeliner) redis.Cmder { return p.SUnionStore(ctx, union, set, union) })
	add("HSET", func(p redis.Pipeliner) redis.Cmder { return p.HSet(ctx, hash, "f", "v") })
	add("HGETALL", func(p redis.Pipeliner) redis.Cmder { return p.HGetAll(ctx, hash) })
	add("EVAL", func(p redis.Pipeliner) redis.Cmder {
		return p.Eval(ctx, "return redis.call('GET', KEYS[1])", []string{str})
	})
	// A pipeline runs to its end whatever fails in it: these two remove
	// the scratch keys even when a command above was refused.
	add("UNLINK", func(p redis.Pipeliner) redis.Cmder { return p.Unlink(ctx, str, counter) })
	add("DEL", func(p redis.Pipeliner) redis.Cmder { return p.Del(ctx, set, union, hash) })
	for _, pattern := range KeyPatterns(spaces) {
		key := sampleKey(pattern, "cachesync-preflight-"+id)
		what := fmt.Sprintf("a key matching %q (%s)", pattern, key)
		add("TYPE on "+what, func(p redis.Pipeliner) redis.Cmder { return p.Type(ctx, key) })
		add("UNLINK on "+what, func(p redis.Pipeliner) redis.Cmder { return p.Unlink(ctx, key) })
	}
	cmds := make([]redis.Cmder, len(steps))
	_, err := client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range steps {
			cmds[i] = s.run(p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		for i, c := range cmds {
			if c != nil && c.Err() != nil && !errors.Is(c.Err(), redis.Nil) {
				return accessError(client, steps[i].what, c.Err(), spaces)
			}
		}
		return accessError(client, "a pipeline", err, spaces)
	}
	// The rules record is replaced in a transaction.
	if _, err := client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, hash, "f", "v")
		p.Del(ctx, hash)
		return nil
	}); err != nil {
		return accessError(client, "MULTI/EXEC", err, spaces)
	}
	// SCAN and SCRIPT LOAD go to every master; EVALSHA needs the load.
	script := redis.NewScript("return redis.call('GET', KEYS[1])")
	if err := redisops.LoadScripts(ctx, client, script); err != nil {
		return accessError(client, "SCRIPT LOAD", err, spaces)
	}
	if err := script.EvalSha(ctx, client, []string{str}).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return accessError(client, "EVALSHA", err, spaces)
	}
	err = redisops.OnMasters(ctx, client, func(ctx context.Context, node redis.Cmdable) error {
		return node.Scan(ctx, 0, scratch+"*", 10).Err()
	})
	if err != nil {
		return accessError(client, "SCAN", err, spaces)
	}
	return nil
}

// accessError wraps err with ErrNoAccess and what to grant when Redis
// refused; other errors are returned with what failed.
func accessError(client redis.UniversalClient, what string, err error, spaces []mapping.Keyspace) error {
	if !refused(err) {
		return fmt.Errorf("check Redis permissions, %s: %w", what, err)
	}
	members := ""
	if slices.ContainsFunc(spaces, func(ks mapping.Keyspace) bool { return len(ks.Tags) > 0 }) {
		members = ", and the patterns of every key your application registers under a tag (a tag's members are deleted with it)"
	}
	return fmt.Errorf("%w: %s: %v. The Redis user needs these commands and key patterns%s "+
		"(see docs/operations.md, Redis permissions): ACL SETUSER <user> %s %s",
		ErrNoAccess, what, err, members, "+"+strings.Join(Commands(client), " +"), "~"+strings.Join(KeyPatterns(spaces), " ~"))
}

// refused reports whether err is Redis refusing rather than failing:
// retrying it would only repeat the refusal.
func refused(err error) bool {
	for _, prefix := range []string{"NOPERM", "WRONGPASS", "NOAUTH", "ERR unknown command", "ERR unknown subcommand"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

// sampleKey returns a key that glob pattern matches, with fill for every
// wildcard and an escaped character for itself. The patterns of the key
// spaces have no character classes: their literal parts are escaped
// (keyspace.EscapeGlob).
func sampleKey(pattern, fill string) string {
	var b strings.Builder
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '\\' && i+1 < len(pattern):
			i++
			b.WriteByte(pattern[i])
		case c == '*' || c == '?':
			b.WriteString(fill)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
