package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// RedisMarker keeps the slot marker in the cache it describes: if the cache
// is emptied, the marker goes with it and the next start flushes, which is
// what an emptied cache next to a running slot needs anyway.
type RedisMarker struct {
	Client redis.UniversalClient
}

func markerKey(slot string) string { return "cachesync:slot:" + slot + ":flushed" }

// Get returns the marker of the slot, "" when absent.
func (m RedisMarker) Get(ctx context.Context, slot string) (string, error) {
	v, err := m.Client.Get(ctx, markerKey(slot)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read slot marker from Redis: %w", err)
	}
	return v, nil
}

// Set records the marker of the slot.
func (m RedisMarker) Set(ctx context.Context, slot, value string) error {
	if err := m.Client.Set(ctx, markerKey(slot), value, 0).Err(); err != nil {
		return fmt.Errorf("write slot marker to Redis: %w", err)
	}
	return nil
}

// Delete removes the marker (teardown).
func (m RedisMarker) Delete(ctx context.Context, slot string) error {
	return m.Client.Del(ctx, markerKey(slot)).Err()
}
