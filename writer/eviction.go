package writer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/keyspace/redisops"
)

// ErrEvictionUnsafe marks a Redis server whose maxmemory policy may evict
// keys cachesync relies on (CheckEviction).
var ErrEvictionUnsafe = errors.New("the Redis server may evict the keys cachesync keeps its bookkeeping in")

// EvictionRisk returns what a Redis server with this maxmemory (bytes, 0 for
// none) and maxmemory-policy may evict of cachesync's bookkeeping, or "" when
// it evicts none of it.
//
// Eviction of cache entries is harmless (a miss), but cachesync also keeps
// keys whose loss is not: a tag set lost while its members survive leaves
// them out of the tag's next invalidation; a lost version key reads as
// version 0 and brings back entries cached at version 0; a lost write-through
// guard lets an older redelivered change write its value back; a lost
// applied position looks like a Redis that lost writes, and costs a
// flush. Tag sets and guards carry a TTL, version keys and the applied
// position do not.
//
//   - maxmemory 0: no limit, nothing is evicted whatever the policy.
//   - noeviction: nothing is evicted; writes fail with OOM when memory is
//     full, which the writer retries without confirming anything.
//   - volatile-*: keys with a TTL, tag sets and guards among them.
//   - allkeys-*: any key.
func EvictionRisk(maxmemory int64, policy string) string {
	switch {
	case maxmemory == 0, policy == "noeviction":
		return ""
	case strings.HasPrefix(policy, "volatile-"):
		return "keys with a TTL: tag sets (their members then escape the tag's next invalidation) and write-through guards (an older redelivered change can then write its value back)"
	case strings.HasPrefix(policy, "allkeys-"):
		return "any key: tag sets, write-through guards, version keys (readers then fall back to version 0 and old entries) and the applied position (a needless flush)"
	}
	return fmt.Sprintf("keys cachesync relies on (unknown policy %q)", policy)
}

// CheckEviction reads maxmemory and maxmemory-policy on every server that
// holds keys (every master of a cluster) and checks them with EvictionRisk.
//
// A server that may evict bookkeeping keys fails the check with an error
// wrapping ErrEvictionUnsafe that says how to fix it, unless allow is set
// (--allow-eviction): then it is logged as a warning. A server that refuses
// CONFIG GET (an ACL without it, managed services that rename CONFIG) is
// logged as a warning saying what to verify. Other errors (Redis
// unreachable) are returned as they are.
func CheckEviction(ctx context.Context, client redis.UniversalClient, allow bool, log zerolog.Logger) error {
	type finding struct{ addr, problem string }
	var (
		mu                sync.Mutex
		unsafe, unchecked []finding
	)
	err := redisops.OnMasters(ctx, client, func(ctx context.Context, node redis.Cmdable) error {
		addr := "Redis"
		if c, ok := node.(*redis.Client); ok {
			addr = c.Options().Addr
		}
		vals, err := node.ConfigGet(ctx, "maxmemory*").Result()
		if err != nil {
			if !refused(err) {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			unchecked = append(unchecked, finding{addr, err.Error()})
			return nil
		}
		maxmemory, err := strconv.ParseInt(vals["maxmemory"], 10, 64)
		if err != nil {
			return fmt.Errorf("CONFIG GET maxmemory: %q", vals["maxmemory"])
		}
		policy := vals["maxmemory-policy"]
		if risk := EvictionRisk(maxmemory, policy); risk != "" {
			mu.Lock()
			defer mu.Unlock()
			unsafe = append(unsafe, finding{addr, fmt.Sprintf("maxmemory %d and maxmemory-policy %s may evict %s", maxmemory, policy, risk)})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check the Redis eviction policy: %w", err)
	}
	for _, f := range unchecked {
		log.Warn().Str("redis", f.addr).Str("error", f.problem).
			Str("fix", "make sure maxmemory-policy is noeviction, or maxmemory 0 (docs/operations.md, Redis memory and eviction); grant +config|get to let cachesync check").
			Msg("could not read the Redis eviction policy")
	}
	if len(unsafe) == 0 {
		return nil
	}
	var b strings.Builder
	for i, f := range unsafe {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s", f.addr, f.problem)
	}
	const fix = "set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf or your service's parameter group), or maxmemory 0; or accept stale reads after an eviction with --allow-eviction (CACHESYNC_ALLOW_EVICTION=true). See docs/operations.md, Redis memory and eviction"
	if allow {
		log.Warn().Str("redis", b.String()).Str("fix", fix).
			Msg("Redis may evict cachesync's bookkeeping keys (allowed by --allow-eviction): an eviction can leave stale entries until their TTL")
		return nil
	}
	return fmt.Errorf("%w: %s. To fix: %s", ErrEvictionUnsafe, b.String(), fix)
}
