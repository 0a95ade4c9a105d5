package writer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/mapping"
)

// applyPipeline applies ops, none of them a flush, in one round trip and
// returns how many of them, from the first, Redis acknowledged. When a
// command fails with NOSCRIPT (Redis restarted, or SCRIPT FLUSH), it loads the
// scripts and sends the unacknowledged remainder once more at once.
func (w *Writer) applyPipeline(ctx context.Context, ops []*mapping.Op, tail *advanceTail) (int, error) {
	acked := 0
	reloaded := false
	for {
		rest := ops[acked:]
		// The position's compare-and-set follows the effects on each
		// server. A tag deleted in steps has effects after this
		// round trip: then the swap goes in its last one.
		withTail := tail != nil && !tail.off && !slices.ContainsFunc(rest, w.detaches)
		var tailCmds []redis.Cmder
		cmds, err := w.execPipeline(ctx, func(pipe redis.Pipeliner) {
			for _, op := range rest {
				w.queue(ctx, pipe, op)
			}
			if withTail {
				tail.queue(ctx, pipe)
			}
		})
		if withTail {
			cmds, tailCmds = cmds[:len(rest)], cmds[len(rest):]
			err = effectsError(err, len(rest))
			tail.answer(ctx, tailCmds, err == nil)
		}
		n := len(rest)
		if err != nil {
			n = acknowledged(err)
		}
		var last *advanceTail // the swap goes after the tags' last step
		if tail != nil && !tail.off && !withTail && err == nil {
			last = tail
		}
		// Tags detached from their set (cluster) count as applied only
		// once their members are gone too.
		if done, derr := w.finishDetached(ctx, rest[:n], cmds[:n], last); derr != nil {
			n, err = done, derr
		}
		w.record(rest[:n], cmds[:n])
		acked += n
		if err == nil {
			return acked, nil
		}
		if op, ok := w.crossSlotTag(err, rest); ok {
			// The tag's members live in other slots: delete them in
			// steps, then go on after it (what followed it in the
			// pipeline is sent again; every effect is idempotent).
			deleted, err := w.deleteTagAcross(ctx, keyspace.TagKey(op.Key), true)
			if reason, ok := permanentFailure(op, err); ok {
				deleted, err = 0, w.fallback(ctx, op, reason, err)
			}
			if err != nil {
				return acked, fmt.Errorf("%s %q (rule %q): %w", op.Kind, op.Key, op.Rule, err)
			}
			w.counters.applied[mapping.OpDeleteTag].Add(1)
			w.counters.tagKeysDeleted.Add(uint64(deleted))
			if acked++; acked == len(ops) {
				return acked, nil
			}
			continue
		}
		if needsScripts(err) && !reloaded {
			reloaded = true
			if err := w.loadScripts(ctx); err != nil {
				return acked, err
			}
			continue
		}
		var cmdErr *commandError
		if errors.As(err, &cmdErr) {
			op := rest[cmdErr.index]
			if reason, ok := permanentFailure(op, cmdErr.err); ok {
				// Redis will refuse it on every retry: apply a
				// stronger effect in its place, then go on after it
				// (what followed it is sent again, harmlessly).
				if err := w.fallback(ctx, op, reason, cmdErr.err); err != nil {
					return acked, fmt.Errorf("%s %q (rule %q): fallback after %v: %w", op.Kind, op.Key, op.Rule, cmdErr.err, err)
				}
				w.counters.applied[op.Kind].Add(1)
				if acked++; acked == len(ops) {
					return acked, nil
				}
				continue
			}
			return acked, fmt.Errorf("%s %q (rule %q): %w", op.Kind, op.Key, op.Rule, cmdErr.err)
		}
		return acked, err
	}
}

// acknowledged returns how many commands of a failed pipeline, from the
// first, Redis answered without error: those before the first failed one.
func acknowledged(err error) int {
	var cmdErr *commandError
	if errors.As(err, &cmdErr) {
		return cmdErr.index
	}
	return 0
}

// record counts acknowledged operations and their results.
func (w *Writer) record(ops []*mapping.Op, cmds []redis.Cmder) {
	for i, op := range ops {
		w.counters.applied[op.Kind].Add(1)
		switch op.Kind {
		case mapping.OpDeleteTag:
			if !w.detaches(op) { // finishDetached counted those
				w.counters.tagKeysDeleted.Add(uint64(scriptResult(cmds[i])))
			}
		case mapping.OpSet:
			if w.tooLarge(op) {
				w.reportFallback(Fallback{Rule: op.Rule, Reason: FallbackValueTooLarge, Key: op.Key},
					fmt.Errorf("a value of %d bytes, more than proto-max-bulk-len (%d)", len(op.Value), w.maxBulk.Load()),
					"deleted the key and left a guard tombstone instead of writing the value", true)
			}
			if scriptResult(cmds[i]) == 0 {
				w.counters.setsSkipped.Add(1)
			}
		case mapping.OpUnset:
			if scriptResult(cmds[i]) == 0 {
				w.counters.unsetsSkipped.Add(1)
			}
		}
	}
}

// queue adds the command of op to pipe.
func (w *Writer) queue(ctx context.Context, pipe redis.Pipeliner, op *mapping.Op) {
	switch op.Kind {
	case mapping.OpDelete:
		// The fence goes with the key: fills in flight may have read the
		// old row (keyspace.FenceKey; same slot as the key).
		pipe.Unlink(ctx, op.Key, keyspace.FenceKey(op.Key))
	case mapping.OpDeleteTag:
		if w.detaches(op) {
			tag := keyspace.TagKey(op.Key)
			pipe.EvalSha(ctx, w.scripts.tagDetach.Hash(), []string{tag, keyspace.TagPendingKey(tag)}, "strict")
			break
		}
		// Strict: a key of another type is reported, and falls back.
		pipe.EvalSha(ctx, w.scripts.deleteTag.Hash(), []string{keyspace.TagKey(op.Key)}, "strict")
	case mapping.OpBumpVersion:
		pipe.Incr(ctx, keyspace.VersionKey(op.Key))
	case mapping.OpSet:
		if w.tooLarge(op) {
			// The server would drop the connection on it, every time:
			// delete the key instead (see fallback).
			pipe.EvalSha(ctx, w.scripts.guardedUnset.Hash(),
				[]string{op.Key, keyspace.GuardKey(op.Key), keyspace.FenceKey(op.Key)},
				keyspace.EncodeLSN(uint64(op.LSN)), w.opts.GuardTTL.Milliseconds())
			break
		}
		ttl := w.valueTTLMillis(op)
		guardTTL := w.opts.TombstoneTTL.Milliseconds() // a value without expiry
		if ttl > 0 {
			guardTTL = ttl + w.opts.GuardTTL.Milliseconds()
		}
		pipe.EvalSha(ctx, w.scripts.guardedSet.Hash(),
			[]string{op.Key, keyspace.GuardKey(op.Key), keyspace.FenceKey(op.Key)},
			op.Value, w.guardValue(uint64(op.LSN)), ttl, guardTTL)
	case mapping.OpUnset:
		pipe.EvalSha(ctx, w.scripts.guardedUnset.Hash(),
			[]string{op.Key, keyspace.GuardKey(op.Key), keyspace.FenceKey(op.Key)},
			w.guardValue(uint64(op.LSN)), w.opts.TombstoneTTL.Milliseconds())
	default:
		// collectOps let through only the kinds above; a flush never reaches a pipeline.
		panic(fmt.Sprintf("writer: cannot pipeline a %s operation", op.Kind))
	}
}

// valueTTLMillis returns the TTL of an OpSet's value in milliseconds, 0 for
// no expiry: op.TTL plus a uniform jitter in [-op.Jitter, +op.Jitter], never
// below minJitteredTTL (nor below op.TTL, when op.TTL is shorter than that).
func (w *Writer) valueTTLMillis(op *mapping.Op) int64 {
	if op.TTL <= 0 {
		return 0
	}
	base := max(op.TTL.Milliseconds(), 1)
	ttl := base
	if j := op.Jitter.Milliseconds(); j > 0 {
		ttl += w.opts.Rand(2*j+1) - j
	}
	return max(ttl, min(base, minJitteredTTL.Milliseconds()))
}

// commandError is the first failed command of a pipeline.
type commandError struct {
	index    int   // in the order the commands were queued
	err      error // its error
	noScript bool  // a command, this one or a later one, failed with NOSCRIPT
}

func (e *commandError) Error() string { return fmt.Sprintf("command %d: %v", e.index, e.err) }
func (e *commandError) Unwrap() error { return e.err }

// pipelined sends the commands that fill queues in one round trip and checks
// every command's result. When a command failed with NOSCRIPT (Redis
// restarted and lost its script cache), it loads the scripts and sends all
// the commands once more: the flushes that use it repeat harmlessly. The
// error, if any, is a *commandError or the pipeline's own.
func (w *Writer) pipelined(ctx context.Context, fill func(redis.Pipeliner)) ([]redis.Cmder, error) {
	cmds, err := w.execPipeline(ctx, fill)
	if err != nil && needsScripts(err) {
		if err := w.loadScripts(ctx); err != nil {
			return nil, err
		}
		cmds, err = w.execPipeline(ctx, fill)
	}
	return cmds, err
}

// execPipeline sends the commands that fill queues in one round trip and
// checks every command's result, not only the pipeline's: the error is the
// first failed command's, as a *commandError.
func (w *Writer) execPipeline(ctx context.Context, fill func(redis.Pipeliner)) ([]redis.Cmder, error) {
	pipe := w.client.Pipeline()
	fill(pipe)
	cmds, execErr := pipe.Exec(ctx)
	var first *commandError
	for i, cmd := range cmds {
		err := cmd.Err()
		if err == nil {
			continue
		}
		if first == nil {
			first = &commandError{index: i, err: err}
		}
		if redisops.IsNoScript(err) {
			first.noScript = true
		}
	}
	if first != nil {
		return cmds, first
	}
	if execErr != nil {
		return cmds, fmt.Errorf("pipeline: %w", execErr)
	}
	return cmds, nil
}

// loadScripts loads every keyspace script into Redis's script cache (on
// every master of a cluster).
func (w *Writer) loadScripts(ctx context.Context) error {
	return redisops.LoadScripts(ctx, w.client, w.scripts.deleteTag, w.scripts.guardedSet, w.scripts.guardedUnset, w.scripts.tagDetach,
		w.scripts.backfillSet, w.scripts.backfillUndo, w.scripts.countFlush, advanceScript, appliedScript)
}

// needsScripts reports whether err, or a later failure in its pipeline, is
// NOSCRIPT: the scripts must be loaded.
func needsScripts(err error) bool {
	var cmdErr *commandError
	if errors.As(err, &cmdErr) && cmdErr.noScript {
		return true
	}
	return redisops.IsNoScript(err)
}

// scriptResult returns the integer a keyspace script returned.
func scriptResult(cmd redis.Cmder) int64 {
	c, ok := cmd.(*redis.Cmd)
	if !ok {
		return 0
	}
	n, _ := c.Int64()
	return n
}

// detaches reports whether a tag is deleted in steps: on a cluster, unless
// the tag's set has a hash tag (then its members are expected to share it,
// and the atomic script applies; see keyspace).
func (w *Writer) detaches(op *mapping.Op) bool {
	return w.cluster != nil && op.Kind == mapping.OpDeleteTag && !keyspace.HasHashTag(keyspace.TagKey(op.Key))
}

// finishDetached deletes the members of every tag of ops that
// TagDetachScript detached in this pipeline, then their pending sets, in two
// round trips for all of them (redisops.DeleteDetachedTags), and counts
// them. tail, when not nil, goes in the last of those round trips. On an
// error it returns how many ops, from the first, are complete: a tag not
// finished is detached again when retried, which merges into its pending
// set.
func (w *Writer) finishDetached(ctx context.Context, ops []*mapping.Op, cmds []redis.Cmder, tail *advanceTail) (int, error) {
	var tags []redisops.DetachedTag
	var at []int // the index in ops of each of tags
	for i, op := range ops {
		if !w.detaches(op) {
			continue
		}
		members, err := cmds[i].(*redis.Cmd).StringSlice()
		if err != nil {
			return i, fmt.Errorf("%s %q (rule %q): %w", op.Kind, op.Key, op.Rule, err)
		}
		tags = append(tags, redisops.DetachedTag{Key: keyspace.TagKey(op.Key), Members: members})
		at = append(at, i)
	}
	if len(tags) == 0 {
		return len(ops), nil
	}
	var tailCmds []redis.Cmder
	var queue func(redis.Pipeliner)
	if tail != nil {
		queue = func(pipe redis.Pipeliner) { tailCmds = tail.queue(ctx, pipe) }
	}
	deleted, done, err := redisops.DeleteDetachedTags(ctx, w.client, tags, queue)
	w.counters.tagKeysDeleted.Add(uint64(deleted))
	if tailCmds != nil {
		tail.answer(ctx, tailCmds, err == nil)
	}
	if err != nil {
		op := ops[at[done]]
		return at[done], fmt.Errorf("%s %q (rule %q): %w", op.Kind, op.Key, op.Rule, err)
	}
	return len(ops), nil
}

// crossSlotTag reports whether err is a cluster's refusal of DeleteTagScript
// because the tag's members hash to other slots, and returns that operation.
func (w *Writer) crossSlotTag(err error, ops []*mapping.Op) (*mapping.Op, bool) {
	var cmdErr *commandError
	if w.cluster == nil || !errors.As(err, &cmdErr) || !isCrossSlot(cmdErr.err) {
		return nil, false
	}
	op := ops[cmdErr.index]
	return op, op.Kind == mapping.OpDeleteTag
}

// isCrossSlot recognizes the errors of a cluster node asked to touch keys of
// other slots (from a script, or a multi-key command).
func isCrossSlot(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "CROSSSLOT") || strings.Contains(s, "non local key") ||
		strings.Contains(s, "do not hash to the same slot")
}

// deleteTagAcross deletes a tag whose members span cluster slots:
// TagDetachScript moves them to the tag's pending set and deletes the set,
// then the members are unlinked per slot, then the pending set goes. It
// returns how many member keys existed. strict refuses a tag key of another
// type (WRONGTYPE) rather than deleting it.
func (w *Writer) deleteTagAcross(ctx context.Context, tagKey string, strict bool) (int64, error) {
	n, err := w.deleteTagsAcross(ctx, []string{tagKey}, strict)
	return n, err
}

// deleteTagsAcross deletes tags whose members span cluster slots, in three
// round trips whatever their number: TagDetachScript on every tag, then
// redisops.DeleteDetachedTags. It returns how many member keys existed.
func (w *Writer) deleteTagsAcross(ctx context.Context, tagKeys []string, strict bool) (int64, error) {
	var args []any
	if strict {
		args = append(args, "strict")
	}
	cmds, err := w.pipelined(ctx, func(pipe redis.Pipeliner) {
		for _, k := range tagKeys {
			pipe.EvalSha(ctx, w.scripts.tagDetach.Hash(), []string{k, keyspace.TagPendingKey(k)}, args...)
		}
	})
	if err != nil {
		var cmdErr *commandError
		if errors.As(err, &cmdErr) {
			return 0, fmt.Errorf("detach the members of %s: %w", tagKeys[cmdErr.index], cmdErr.err)
		}
		return 0, fmt.Errorf("detach the members of %d tags: %w", len(tagKeys), err)
	}
	tags := make([]redisops.DetachedTag, len(tagKeys))
	for i, k := range tagKeys {
		members, err := cmds[i].(*redis.Cmd).StringSlice()
		if err != nil {
			return 0, fmt.Errorf("detach the members of %s: %w", k, err)
		}
		tags[i] = redisops.DetachedTag{Key: k, Members: members}
	}
	deleted, _, err := redisops.DeleteDetachedTags(ctx, w.client, tags, nil)
	return deleted, err
}

// effectsError is the error of a pipeline of n effects followed by other
// commands (the position's swap) as far as the effects go: nil when only
// the commands after them failed.
func effectsError(err error, n int) error {
	var cmdErr *commandError
	if errors.As(err, &cmdErr) && cmdErr.index >= n {
		return nil
	}
	return err
}
