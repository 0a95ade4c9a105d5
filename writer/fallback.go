package writer

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/mapping"
)

// Reasons of a fallback (Fallback.Reason, the reason label of
// cachesync_fallbacks_total): why Redis would refuse an operation on every
// retry.
const (
	// FallbackVersionNotInteger: INCR of a version key holding something
	// that is not an integer.
	FallbackVersionNotInteger = "version_not_integer"
	// FallbackVersionOverflow: INCR of a version key at the largest integer.
	FallbackVersionOverflow = "version_overflow"
	// FallbackVersionWrongType: the version key is not a string.
	FallbackVersionWrongType = "version_wrong_type"
	// FallbackTagWrongType: the tag's set (or its pending set) is not a set.
	FallbackTagWrongType = "tag_wrong_type"
	// FallbackValueTooLarge: a write-through value larger than the
	// server's proto-max-bulk-len.
	FallbackValueTooLarge = "value_too_large"
)

// defaultMaxBulk is Redis's default proto-max-bulk-len, assumed while the
// server's own setting cannot be read (CONFIG refused, as on most managed
// services).
const defaultMaxBulk = 512 << 20

// Fallback describes an operation that Redis would refuse on every retry and
// that the writer replaced by one at least as strong (see the package
// documentation, Failures).
type Fallback struct {
	Rule, Reason, Key string
}

// permanentFailure reports whether err, Redis's reply to op's command, is
// one it would give to every retry, and why. Everything else (a lost
// connection, LOADING, READONLY, MOVED, CLUSTERDOWN, OOM, NOPERM, a busy
// script) is retried as before: it passes, or someone must fix it, and
// nothing may be confirmed meanwhile.
func permanentFailure(op *mapping.Op, err error) (string, bool) {
	if err == nil {
		return "", false
	}
	switch op.Kind {
	case mapping.OpBumpVersion:
		return versionFailure(err)
	case mapping.OpDeleteTag:
		if redis.HasErrorPrefix(err, "WRONGTYPE") {
			return FallbackTagWrongType, true
		}
	case mapping.OpSet:
		// What APPEND and SETRANGE answer past the limit; a too-large
		// argument is caught before it is sent (tooLarge): the server
		// would drop the connection rather than answer.
		if strings.Contains(err.Error(), "string exceeds maximum allowed size") ||
			strings.Contains(err.Error(), "invalid bulk length") {
			return FallbackValueTooLarge, true
		}
	}
	return "", false
}

// versionFailure classifies the errors of INCR on a version key (Redis 7's
// replies).
func versionFailure(err error) (string, bool) {
	switch {
	case redis.HasErrorPrefix(err, "value is not an integer"):
		return FallbackVersionNotInteger, true
	case redis.HasErrorPrefix(err, "increment or decrement would overflow"):
		return FallbackVersionOverflow, true
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		return FallbackVersionWrongType, true
	}
	return "", false
}

// tooLarge reports whether op carries a value that Redis would refuse to
// read: larger than proto-max-bulk-len. The server answers such a command by
// closing the connection, which looks like an outage and would be retried
// forever, so it is never sent.
func (w *Writer) tooLarge(op *mapping.Op) bool {
	return op.Kind == mapping.OpSet && int64(len(op.Value)) > w.maxBulk.Load()
}

// refreshBulkLimit reads proto-max-bulk-len from every master (the smallest
// wins). When CONFIG GET is refused or fails, the limit stays what it was
// (at first Redis's default): this check is a help, not a requirement.
func (w *Writer) refreshBulkLimit(ctx context.Context) {
	var mu sync.Mutex
	var lowest int64
	err := redisops.OnMasters(ctx, w.client, func(ctx context.Context, node redis.Cmdable) error {
		vals, err := node.ConfigGet(ctx, "proto-max-bulk-len").Result()
		if err != nil {
			return err
		}
		n, err := strconv.ParseInt(vals["proto-max-bulk-len"], 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("proto-max-bulk-len %q", vals["proto-max-bulk-len"])
		}
		mu.Lock()
		defer mu.Unlock()
		if lowest == 0 || n < lowest {
			lowest = n
		}
		return nil
	})
	if err != nil {
		w.log.Debug().Err(err).Int64("assumed", w.maxBulk.Load()).Msg("could not read proto-max-bulk-len")
		return
	}
	w.maxBulk.Store(lowest)
}

// ruleKeyspace returns the key space of rule (Options.Keyspaces), and
// whether it is known.
func (w *Writer) ruleKeyspace(rule string) (mapping.Keyspace, bool) {
	ks, ok := w.opts.Keyspaces[rule]
	return ks, ok
}

// fallback applies, in place of op, an effect at least as strong that Redis
// accepts, and reports it (error-level log, Stats.Fallbacks,
// Options.OnFallback). It is idempotent: when it fails, Apply retries op
// from the start, which fails the same way and falls back again.
func (w *Writer) fallback(ctx context.Context, op *mapping.Op, reason string, cause error) error {
	ks, known := w.ruleKeyspace(op.Rule)
	var did string
	switch op.Kind {
	case mapping.OpBumpVersion:
		// The namespace cannot be retired by INCR. Deleting the version
		// key alone would not do: readers would fall back to version 0
		// and could find entries cached at version 0 long ago. So the
		// namespace is reset (fences, then every entry, then the key:
		// resetNamespace), then the rule's whole key space is flushed,
		// which no longer meets this key.
		if err := w.resetNamespace(ctx, keyspace.VersionKey(op.Key)); err != nil {
			return fmt.Errorf("reset namespace %q: %w", op.Key, err)
		}
		if known {
			if err := w.flushKeyspace(ctx, op.Rule, &ks); err != nil {
				return err
			}
		}
		did = "deleted the version key and every entry of the namespace"
	case mapping.OpDeleteTag:
		// The set was overwritten, and its members with it: any key the
		// rule can name may be one. Flush first, delete the key last, so
		// that a retry after a failure in between still finds the
		// broken key and flushes again.
		tag := keyspace.TagKey(op.Key)
		if known {
			if err := w.flushKeyspace(ctx, op.Rule, &ks); err != nil {
				return err
			}
		}
		if err := w.client.Unlink(ctx, tag, keyspace.TagPendingKey(tag)).Err(); err != nil {
			return fmt.Errorf("UNLINK %s: %w", tag, err)
		}
		did = "deleted the tag key"
	case mapping.OpSet:
		// Not writing the new value is safe only if the old one goes:
		// an unset deletes it and leaves the change's LSN in the guard,
		// so that no older change writes a value back either.
		err := w.scripts.guardedUnset.Run(ctx, w.client,
			[]string{op.Key, keyspace.GuardKey(op.Key), keyspace.FenceKey(op.Key)},
			keyspace.EncodeLSN(uint64(op.LSN)), w.opts.GuardTTL.Milliseconds()).Err()
		if err != nil {
			return fmt.Errorf("unset %q: %w", op.Key, err)
		}
		w.reportFallback(Fallback{Rule: op.Rule, Reason: reason, Key: op.Key}, cause,
			"deleted the key and left a guard tombstone instead of writing the value", true)
		return nil
	default:
		return fmt.Errorf("%s %q (rule %q): %w", op.Kind, op.Key, op.Rule, cause)
	}
	if known {
		did += ", and flushed the rule's key space"
	}
	w.reportFallback(Fallback{Rule: op.Rule, Reason: reason, Key: op.Key}, cause, did, known)
	return nil
}

// resetNamespace retires a namespace whose version key cannot be
// incremented (not an integer, at the largest one, not a string): it
// deletes every fill fence, then every entry of the namespace, then the
// version key. In that order no reader finds an entry it should not: until
// the key goes, readers use the broken version (cacheaside refuses a
// non-integer one); entries cached meanwhile come from fills that began
// after the fences went, which the visibility gate lets read only rows
// committed after the change; and no entry of version 0 cached before is
// left for readers to fall back on.
func (w *Writer) resetNamespace(ctx context.Context, versionKey string) error {
	ns := strings.TrimPrefix(versionKey, keyspace.VersionKey(""))
	if err := w.scan(ctx, keyspace.FencePattern, "", w.unlinkPage); err != nil {
		return fmt.Errorf("fill fences: %w", err)
	}
	if err := w.scan(ctx, keyspace.EscapeGlob(ns)+":v*", "", w.unlinkPage); err != nil {
		return fmt.Errorf("entries: %w", err)
	}
	if err := w.client.Unlink(ctx, versionKey).Err(); err != nil {
		return fmt.Errorf("UNLINK %s: %w", versionKey, err)
	}
	return nil
}

// reportFallback logs a fallback at error level and counts it.
func (w *Writer) reportFallback(f Fallback, cause error, did string, covered bool) {
	w.counters.fallbacks.Add(1)
	if w.opts.OnFallback != nil {
		w.opts.OnFallback(f)
	}
	ev := w.log.Error().Str("key", f.Key).Str("rule", f.Rule).Str("reason", f.Reason).Str("fallback", did)
	if cause != nil {
		ev = ev.AnErr("redis_error", cause)
	}
	if !covered {
		ev = ev.Str("fix", "the rule's key space is unknown to this process (a journal of removed rules?): run `cachesync replay --flush` if stale entries may remain")
	}
	ev.Msg("Redis refuses this operation on every retry; applied a stronger one instead")
}
