package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

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
}

// RedisCacheState is CacheState on a Redis client.
type RedisCacheState struct {
	Client redis.UniversalClient
}

// AppliedKey holds the slot's applied position in the cache.
func AppliedKey(slot string) string { return "cachesync:slot:" + slot + ":applied" }

// Applied returns the slot's applied position; ok is false when the cache has
// none (new or emptied).
func (r RedisCacheState) Applied(ctx context.Context, slot string) (wal.LSN, bool, error) {
	v, err := r.Client.Get(ctx, AppliedKey(slot)).Result()
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
	return lsn, true, nil
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

// Advance implements CacheState.
func (r RedisCacheState) Advance(ctx context.Context, slot string, from wal.LSN, fromOK bool, to wal.LSN) (bool, wal.LSN, bool, error) {
	expected := ""
	if fromOK {
		expected = from.String()
	}
	res, err := advanceScript.Run(ctx, r.Client, []string{AppliedKey(slot)}, expected, to.String()).Slice()
	if err != nil {
		return false, 0, false, fmt.Errorf("advance the applied position in Redis: %w", err)
	}
	if len(res) != 2 {
		return false, 0, false, fmt.Errorf("advance the applied position in Redis: unexpected reply %v", res)
	}
	if n, _ := res[0].(int64); n == 1 {
		return true, to, true, nil
	}
	s, _ := res[1].(string)
	cur, perr := wal.ParseLSN(s)
	return false, cur, s != "" && perr == nil, nil
}

// Forget removes the slot's applied position (teardown).
func (r RedisCacheState) Forget(ctx context.Context, slot string) error {
	return r.Client.Del(ctx, AppliedKey(slot)).Err()
}
