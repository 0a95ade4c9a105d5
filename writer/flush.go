package writer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/mapping"
)

// flush drops a rule's key space: see the package documentation.
func (w *Writer) flush(ctx context.Context, op *mapping.Op) error {
	return w.flushKeyspace(ctx, op.Rule, op.Keyspace)
}

// flushKeyspace drops the key space ks of rule.
func (w *Writer) flushKeyspace(ctx context.Context, rule string, ks *mapping.Keyspace) error {
	// Counted before anything goes: a backfill that read the counter
	// before this point and reads it again after writing a chunk sees it
	// moved, and undoes the chunk (package backfill).
	if err := w.countFlush(ctx, rule); err != nil {
		return err
	}
	// Fences first: a fill in flight is refused from here on, and one that
	// landed before this point is dropped by the passes below.
	if err := w.scan(ctx, keyspace.FencePattern, "", w.unlinkPage); err != nil {
		return fmt.Errorf("flush of rule %q, fill fences: %w", rule, err)
	}
	for _, pattern := range ks.Keys {
		if err := w.scan(ctx, pattern, "", w.unlinkPage); err != nil {
			return fmt.Errorf("flush of rule %q, keys %q: %w", rule, pattern, err)
		}
	}
	for _, pattern := range ks.Tags {
		if err := w.scan(ctx, keyspace.TagKey(pattern), "set", w.deleteTagsPage); err != nil {
			return fmt.Errorf("flush of rule %q, tags %q: %w", rule, pattern, err)
		}
	}
	for _, pattern := range ks.Versions {
		// Bump first: that retires the namespaces at once for every reader;
		// dropping the entries afterwards only frees their memory.
		bump := func(ctx context.Context, keys []string) error { return w.bumpVersionsPage(ctx, rule, keys) }
		if err := w.scan(ctx, keyspace.VersionKey(pattern), "string", bump); err != nil {
			return fmt.Errorf("flush of rule %q, versions %q: %w", rule, pattern, err)
		}
		if err := w.scan(ctx, pattern+":v*", "", w.unlinkPage); err != nil {
			return fmt.Errorf("flush of rule %q, entries of namespaces %q: %w", rule, pattern, err)
		}
	}
	return nil
}

// scan calls page with every page of keys that SCAN MATCH match (TYPE
// keyType, unless empty) returns, on every master of a cluster. Pages of
// different masters are handled concurrently.
func (w *Writer) scan(ctx context.Context, match, keyType string, page func(context.Context, []string) error) error {
	return redisops.OnMasters(ctx, w.client, func(ctx context.Context, node redis.Cmdable) error {
		return w.scanNode(ctx, node, match, keyType, page)
	})
}

func (w *Writer) scanNode(ctx context.Context, node redis.Cmdable, match, keyType string, page func(context.Context, []string) error) error {
	count := int64(w.opts.ScanCount)
	var cursor uint64
	for {
		var cmd *redis.ScanCmd
		if keyType == "" {
			cmd = node.Scan(ctx, cursor, match, count)
		} else {
			cmd = node.ScanType(ctx, cursor, match, count, keyType)
		}
		keys, next, err := cmd.Result()
		if err != nil {
			return fmt.Errorf("SCAN: %w", err)
		}
		if len(keys) > 0 {
			if err := page(ctx, keys); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// unlinkPage deletes keys found by a flush.
func (w *Writer) unlinkPage(ctx context.Context, keys []string) error {
	if w.cluster == nil {
		n, err := w.client.Unlink(ctx, keys...).Result()
		if err != nil {
			return fmt.Errorf("UNLINK: %w", err)
		}
		w.counters.flushKeysDeleted.Add(uint64(n))
		return nil
	}
	// A cluster refuses a multi-key UNLINK across slots: one command per key.
	return w.perKey(ctx, keys, func(pipe redis.Pipeliner, key string) { pipe.Unlink(ctx, key) },
		&w.counters.flushKeysDeleted, true)
}

// deleteTagsPage runs DeleteTagScript on tag sets found by a flush; on a
// cluster, members may live in other slots, so the page's tags go in steps,
// all of them together (deleteTagsAcross).
func (w *Writer) deleteTagsPage(ctx context.Context, tagKeys []string) error {
	if w.cluster != nil {
		n, err := w.deleteTagsAcross(ctx, tagKeys, false)
		w.counters.flushKeysDeleted.Add(uint64(n))
		return err
	}
	return w.perKey(ctx, tagKeys, func(pipe redis.Pipeliner, key string) {
		pipe.EvalSha(ctx, w.scripts.deleteTag.Hash(), []string{key})
	}, &w.counters.flushKeysDeleted, true)
}

// bumpVersionsPage increments version keys found by a flush of rule's key
// space. A version that cannot be incremented (not an integer, or at the
// largest one) would fail the flush on every retry: its namespace is reset
// instead (resetNamespace), which retires it as surely.
func (w *Writer) bumpVersionsPage(ctx context.Context, rule string, versionKeys []string) error {
	for chunk := range slices.Chunk(versionKeys, w.opts.MaxPipeline) {
		cmds, err := w.pipelined(ctx, func(pipe redis.Pipeliner) {
			for _, key := range chunk {
				pipe.Incr(ctx, key)
			}
		})
		var cmdErr *commandError
		if err != nil && !errors.As(err, &cmdErr) {
			return err
		}
		bumped := 0
		for i, cmd := range cmds {
			cerr := cmd.Err()
			if cerr == nil {
				bumped++
				continue
			}
			reason, ok := versionFailure(cerr)
			if !ok {
				return fmt.Errorf("key %q: %w", chunk[i], cerr)
			}
			if err := w.resetNamespace(ctx, chunk[i]); err != nil {
				return fmt.Errorf("reset the namespace of %q: %w", chunk[i], err)
			}
			ns := strings.TrimPrefix(chunk[i], keyspace.VersionKey(""))
			w.reportFallback(Fallback{Rule: rule, Reason: reason, Key: ns}, cerr,
				"deleted the version key and every entry of the namespace, within a flush of the rule's key space", true)
		}
		w.counters.flushVersionsBumped.Add(uint64(bumped))
	}
	return nil
}

// perKey pipelines one command per key, MaxPipeline at a time, and adds to
// counter either the commands' integer results (sumResults) or the number of
// commands.
func (w *Writer) perKey(ctx context.Context, keys []string, queue func(redis.Pipeliner, string),
	counter *atomic.Uint64, sumResults bool,
) error {
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), w.opts.MaxPipeline)]
		keys = keys[len(chunk):]
		cmds, err := w.pipelined(ctx, func(pipe redis.Pipeliner) {
			for _, key := range chunk {
				queue(pipe, key)
			}
		})
		if err != nil {
			var cmdErr *commandError
			if errors.As(err, &cmdErr) {
				return fmt.Errorf("key %q: %w", chunk[cmdErr.index], cmdErr.err)
			}
			return err
		}
		if !sumResults {
			counter.Add(uint64(len(cmds)))
			continue
		}
		for _, cmd := range cmds {
			if c, ok := cmd.(*redis.IntCmd); ok {
				counter.Add(uint64(c.Val()))
			} else {
				counter.Add(uint64(scriptResult(cmd)))
			}
		}
	}
	return nil
}
