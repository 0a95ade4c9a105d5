package redisops

import (
	"context"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
)

// DetachedTag is a tag that TagDetachScript detached: the tag set's key and
// the members the script returned (those of its pending set).
type DetachedTag struct {
	Key     string
	Members []string
}

// DeleteDetachedTag finishes the stepwise deletion of a tag that
// TagDetachScript detached (the daemon's and the client's path on Redis
// Cluster when the members live in other slots): DeleteDetachedTags of that
// one tag. It returns how many member keys existed. Run again after a
// failure, it is harmless: the next detach merges into the pending set.
func DeleteDetachedTag(ctx context.Context, rdb redis.UniversalClient, tagKey string, members []string) (int64, error) {
	deleted, _, err := DeleteDetachedTags(ctx, rdb, []DetachedTag{{Key: tagKey, Members: members}}, nil)
	return deleted, err
}

// DeleteDetachedTags finishes the stepwise deletion of tags that
// TagDetachScript detached, in two round trips whatever their number: one
// that unlinks every member of every tag, grouped by slot so that no command
// spans slots (a member of several tags once), then one that deletes the
// pending sets. The pending sets go only after every member is gone: a
// pending set deleted first would leave members that no later detach can
// find. A tag without members has no pending set (Redis keeps no empty set)
// and costs nothing; with no members at all, no round trip is made.
//
// last, when not nil, queues commands at the end of the round trip that
// deletes the pending sets, so that they follow every effect of the tags on
// each server (the daemon's applied position); it is not called when that
// round trip is not made (no members). Its commands' errors are the
// caller's to check: they do not count here.
//
// It returns how many member keys existed and how many tags, from the
// first, are completely deleted (all of them when err is nil). Run again
// after a failure, it is harmless: the next detach merges into the pending
// set.
func DeleteDetachedTags(ctx context.Context, rdb redis.UniversalClient, tags []DetachedTag, last func(redis.Pipeliner)) (deleted int64, done int, err error) {
	bySlot := map[int][]string{}
	seen := map[string]bool{}
	for _, t := range tags {
		for _, m := range t.Members {
			if !seen[m] {
				seen[m] = true
				bySlot[keyspace.Slot(m)] = append(bySlot[keyspace.Slot(m)], m)
			}
		}
	}
	if len(seen) == 0 {
		return 0, len(tags), nil
	}
	var unlinks []*redis.IntCmd
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, keys := range bySlot {
			for chunk := range slices.Chunk(keys, 1000) {
				unlinks = append(unlinks, p.Unlink(ctx, chunk...))
			}
		}
		return nil
	})
	if err != nil {
		// No pending set is deleted yet: every tag with members is
		// still to finish (a later detach merges into its pending set).
		for _, u := range unlinks {
			if u.Err() == nil {
				deleted += u.Val()
			}
		}
		return deleted, firstWithMembers(tags), fmt.Errorf("delete the members of %s: %w", tagNames(tags), err)
	}
	for _, u := range unlinks {
		deleted += u.Val()
	}
	dels := make([]*redis.IntCmd, len(tags))
	// The pipeline's error is the first failed command's, maybe one of
	// last's: each of ours is checked below (go-redis sets a failed
	// round trip's error on every command).
	_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range tags {
			if len(t.Members) > 0 {
				dels[i] = p.Del(ctx, keyspace.TagPendingKey(t.Key))
			}
		}
		if last != nil {
			last(p)
		}
		return nil
	})
	for i, c := range dels {
		if c == nil {
			continue
		}
		if cerr := c.Err(); cerr != nil {
			return deleted, i, fmt.Errorf("delete %s: %w", keyspace.TagPendingKey(tags[i].Key), cerr)
		}
	}
	// An error of the caller's commands alone is the caller's.
	return deleted, len(tags), nil
}

// firstWithMembers is the index of the first tag with members: the tags
// before it need no further step.
func firstWithMembers(tags []DetachedTag) int {
	for i, t := range tags {
		if len(t.Members) > 0 {
			return i
		}
	}
	return len(tags)
}

// tagNames names tags in an error: the first, and how many more.
func tagNames(tags []DetachedTag) string {
	if len(tags) == 1 {
		return tags[0].Key
	}
	return fmt.Sprintf("%s and %d more tags", tags[0].Key, len(tags)-1)
}
