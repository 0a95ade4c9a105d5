package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
)

// CacheState keeps the daemon's bookkeeping inside the cache it describes:
// the position up to which effects were applied to it. It is advanced with
// compare-and-set after every applied group, before the position is
// confirmed, so a cache that lost applied effects (restarted without
// persistence, restored from an older backup, failed over to a replica that
// missed writes) shows itself at once: its position is missing or older than
// the one last written.
type CacheState interface {
	// Applied returns the slot's applied position; ok is false when the
	// cache has none (new or emptied).
	Applied(ctx context.Context, slot string) (lsn wal.LSN, ok bool, err error)
	// Advance sets the position to `to` if it still is `from` (fromOK
	// false: absent). When it is not, it changes nothing and returns what
	// it found.
	Advance(ctx context.Context, slot string, from wal.LSN, fromOK bool, to wal.LSN) (swapped bool, cur wal.LSN, curOK bool, err error)
	// Set overwrites the position (after the cache was healed).
	Set(ctx context.Context, slot string, lsn wal.LSN) error
	// Rules returns the fingerprints of the rules (name → fingerprint)
	// applied to the cache by the instance that streamed last; ok is false
	// when none are recorded.
	Rules(ctx context.Context, slot string) (rules map[string]string, ok bool, err error)
	// SetRules records the rules now applied, after their key spaces were
	// brought in line.
	SetRules(ctx context.Context, slot string, rules map[string]string) error
	// Partitions returns the partition trees of the rule tables as the
	// instance that streamed last saw them after flushing for them; ok is
	// false when none are recorded.
	Partitions(ctx context.Context, slot string) (trees replication.PartitionTrees, ok bool, err error)
	// SetPartitions records the partition trees whose changes were flushed
	// (or written to the WAL as a flush).
	SetPartitions(ctx context.Context, slot string, trees replication.PartitionTrees) error
	// Slots records slot as used with this cache for the database scope
	// (server identity and database name) and returns every slot recorded
	// for it.
	Slots(ctx context.Context, scope, slot string) ([]string, error)
	// ForgetSlot removes a slot that no longer exists from the record.
	ForgetSlot(ctx context.Context, scope, slot string) error
}

// RedisCacheState is CacheState on a Redis client.
//
// On Redis Cluster one key cannot describe the cache: a failover of one
// shard can lose that shard's acknowledged writes and nobody else's. So the
// position is kept in ClusterMarkers keys spread over the slot space (every
// master that owns a range of at least SlotCount/ClusterMarkers slots holds
// one), each written after the effects before it were acknowledged. A shard
// that failed over to a replica which missed writes shows an older (or no)
// position, since replication keeps a master's order; Applied reports the
// oldest, so healing replays from there.
type RedisCacheState struct {
	Client redis.UniversalClient
}

// ClusterMarkers is how many keys hold the applied position on a cluster.
const ClusterMarkers = 16

// AppliedKey holds the slot's applied position in the cache.
func AppliedKey(slot string) string { return "cachesync:slot:" + slot + ":applied" }

// RulesKey holds the fingerprints of the rules applied to the cache, a hash
// of rule name → config.Rule.Fingerprint.
func RulesKey(slot string) string { return "cachesync:slot:" + slot + ":rules" }

// keys are the keys that hold the position: one, or ClusterMarkers on a
// cluster, hash-tagged into slots 0, 1024, 2048, ...
func (r RedisCacheState) keys(slot string) []string {
	if _, ok := r.Client.(*redis.ClusterClient); !ok {
		return []string{AppliedKey(slot)}
	}
	keys := make([]string, ClusterMarkers)
	for i := range keys {
		keys[i] = AppliedKey(slot) + ":{" + keyspace.SlotTag(i*keyspace.SlotCount/ClusterMarkers) + "}"
	}
	return keys
}

// Applied returns the slot's applied position; ok is false when the cache has
// none (new or emptied). On a cluster it is the oldest of the markers, and
// ok is false when any is missing.
func (r RedisCacheState) Applied(ctx context.Context, slot string) (wal.LSN, bool, error) {
	keys := r.keys(slot)
	cmds, err := r.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, false, fmt.Errorf("read the applied position from Redis: %w", err)
	}
	var oldest wal.LSN
	for i, c := range cmds {
		v, err := c.(*redis.StringCmd).Result()
		if errors.Is(err, redis.Nil) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("read the applied position from Redis: %w", err)
		}
		lsn, err := wal.ParseLSN(v)
		if err != nil {
			// Unreadable bookkeeping is as good as none: heal from scratch.
			return 0, false, nil
		}
		if i == 0 || lsn < oldest {
			oldest = lsn
		}
	}
	return oldest, true, nil
}

// Set implements CacheState.
func (r RedisCacheState) Set(ctx context.Context, slot string, lsn wal.LSN) error {
	_, err := r.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range r.keys(slot) {
			p.Set(ctx, k, lsn.String(), 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set the applied position in Redis: %w", err)
	}
	return nil
}

// advanceScript swaps the applied position when it holds the expected value
// ("" for absent) and otherwise returns what it holds.
var advanceScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return {1, ''}
end
if cur == false then cur = '' end
return {0, cur}
`)

// Advance implements CacheState. On a cluster every marker must hold from
// (a marker already at to counts as swapped: a retry after a partial
// advance); otherwise the oldest value found is returned.
func (r RedisCacheState) Advance(ctx context.Context, slot string, from wal.LSN, fromOK bool, to wal.LSN) (bool, wal.LSN, bool, error) {
	expected := ""
	if fromOK {
		expected = from.String()
	}
	keys := r.keys(slot)
	advance := func() ([]redis.Cmder, error) {
		return r.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				advanceScript.EvalSha(ctx, p, []string{k}, expected, to.String())
			}
			return nil
		})
	}
	// The script is loaded only when a server lacks it (first use, a
	// restart, a promoted replica), not before every advance: a load
	// costs a round trip to every master.
	cmds, err := advance()
	if keyspace.IsNoScript(err) {
		if err = keyspace.LoadScripts(ctx, r.Client, advanceScript); err == nil {
			cmds, err = advance()
		}
	}
	if err != nil {
		return false, 0, false, fmt.Errorf("advance the applied position in Redis: %w", err)
	}
	swapped, oldestOK := true, true
	var oldest wal.LSN
	first := true
	for _, c := range cmds {
		res, err := c.(*redis.Cmd).Slice()
		if err != nil || len(res) != 2 {
			return false, 0, false, fmt.Errorf("advance the applied position in Redis: unexpected reply %v (%v)", res, err)
		}
		if n, _ := res[0].(int64); n == 1 {
			continue
		}
		s, _ := res[1].(string)
		if s == to.String() {
			continue
		}
		swapped = false
		cur, perr := wal.ParseLSN(s)
		if s == "" || perr != nil {
			oldestOK = false
			continue
		}
		if first || cur < oldest {
			oldest, first = cur, false
		}
	}
	if swapped {
		return true, to, true, nil
	}
	return false, oldest, oldestOK && !first, nil
}

// Rules implements CacheState.
func (r RedisCacheState) Rules(ctx context.Context, slot string) (map[string]string, bool, error) {
	rules, err := r.Client.HGetAll(ctx, RulesKey(slot)).Result()
	if err != nil {
		return nil, false, fmt.Errorf("read the rules in force from Redis: %w", err)
	}
	return rules, len(rules) > 0, nil
}

// SetRules implements CacheState: the hash is replaced in one transaction.
func (r RedisCacheState) SetRules(ctx context.Context, slot string, rules map[string]string) error {
	key := RulesKey(slot)
	_, err := r.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		if len(rules) > 0 {
			p.HSet(ctx, key, rules)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the rules in force in Redis: %w", err)
	}
	return nil
}

// PartitionsKey holds the partition trees of the rule tables that the cache
// has seen flushed, as JSON (replication.PartitionTrees: root → digest).
func PartitionsKey(slot string) string { return "cachesync:slot:" + slot + ":partitions" }

// Partitions implements CacheState. An unreadable record counts as none.
func (r RedisCacheState) Partitions(ctx context.Context, slot string) (replication.PartitionTrees, bool, error) {
	v, err := r.Client.Get(ctx, PartitionsKey(slot)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the recorded partition trees from Redis: %w", err)
	}
	var trees replication.PartitionTrees
	if json.Unmarshal(v, &trees) != nil || trees == nil {
		return nil, false, nil
	}
	return trees, true, nil
}

// SetPartitions implements CacheState.
func (r RedisCacheState) SetPartitions(ctx context.Context, slot string, trees replication.PartitionTrees) error {
	if trees == nil {
		trees = replication.PartitionTrees{}
	}
	v, err := json.Marshal(trees)
	if err != nil {
		return err
	}
	if err := r.Client.Set(ctx, PartitionsKey(slot), v, 0).Err(); err != nil {
		return fmt.Errorf("record the partition trees in Redis: %w", err)
	}
	return nil
}

// SlotsKey holds the names of the slots used with the cache for one database
// (scope: system identifier and database name).
func SlotsKey(scope string) string { return "cachesync:slots:" + scope }

// Slots implements CacheState.
func (r RedisCacheState) Slots(ctx context.Context, scope, slot string) ([]string, error) {
	var members *redis.StringSliceCmd
	_, err := r.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, SlotsKey(scope), slot)
		members = p.SMembers(ctx, SlotsKey(scope))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record the slot in Redis: %w", err)
	}
	return members.Val(), nil
}

// ForgetSlot implements CacheState.
func (r RedisCacheState) ForgetSlot(ctx context.Context, scope, slot string) error {
	return r.Client.SRem(ctx, SlotsKey(scope), slot).Err()
}

// Forget removes the slot's applied position, rules and partitions records
// (teardown).
func (r RedisCacheState) Forget(ctx context.Context, slot string) error {
	_, err := r.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range r.keys(slot) {
			p.Del(ctx, k)
		}
		p.Del(ctx, RulesKey(slot))
		p.Del(ctx, PartitionsKey(slot))
		return nil
	})
	return err
}
