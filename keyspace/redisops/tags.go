package redisops

import (
	"context"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
)

// DeleteDetachedTag finishes the stepwise deletion of a tag that
// TagDetachScript detached (the daemon's and the client's path on Redis
// Cluster when the members live in other slots): it unlinks the members,
// grouped by slot so that no command spans slots, then deletes the tag's
// pending set. It returns how many member keys existed. Run again after a
// failure, it is harmless: the next detach merges into the pending set.
func DeleteDetachedTag(ctx context.Context, rdb redis.UniversalClient, tagKey string, members []string) (int64, error) {
	var deleted int64
	if len(members) > 0 {
		bySlot := map[int][]string{}
		for _, m := range members {
			bySlot[keyspace.Slot(m)] = append(bySlot[keyspace.Slot(m)], m)
		}
		cmds, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, keys := range bySlot {
				for chunk := range slices.Chunk(keys, 1000) {
					p.Unlink(ctx, chunk...)
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("delete the members of %s: %w", tagKey, err)
		}
		for _, c := range cmds {
			deleted += c.(*redis.IntCmd).Val()
		}
	}
	pending := keyspace.TagPendingKey(tagKey)
	if err := rdb.Del(ctx, pending).Err(); err != nil {
		return deleted, fmt.Errorf("delete %s: %w", pending, err)
	}
	return deleted, nil
}
