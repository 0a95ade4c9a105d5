package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

// FlushCounterKey holds how many times rule's key space was flushed: every
// flush increments it before it deletes anything (flushKeyspace), so that
// a backfill (package backfill) that reads the same value before and after
// writing a chunk knows no flush overlapped it.
func FlushCounterKey(rule string) string { return "cachesync:flushes:" + rule }

// BackfillKey holds the checkpoint of rule's backfill (Checkpoint, JSON).
func BackfillKey(rule string) string { return "cachesync:backfill:" + rule }

// countFlush increments rule's flush counter; see FlushCounterKey.
func (w *Writer) countFlush(ctx context.Context, rule string) error {
	err := w.scripts.countFlush.Run(ctx, w.client, []string{FlushCounterKey(rule)}, time.Now().UnixNano()).Err()
	if err != nil {
		return fmt.Errorf("flush of rule %q, count it in %s: %w", rule, FlushCounterKey(rule), err)
	}
	return nil
}

// FillResult counts what Fill did.
type FillResult struct {
	// Written counts the keys set or deleted; Skipped those whose guard
	// held the applied position or later (a stream effect the backfill's
	// snapshot did not see).
	Written, Skipped int
}

// Fill writes the ops (OpSet and OpUnset) of a backfill whose rows were read
// at a snapshot taken after the applied position applied was read, with
// redisops.BackfillSetScript: each key only if its guard is absent, of
// another WAL history, or below applied, and then with the guard
// applied-1. It returns nil only when Redis acknowledged every op; it does
// not retry (a backfill retries the chunk: Fill is idempotent).
func (w *Writer) Fill(ctx context.Context, applied wal.LSN, ops []mapping.Op) (FillResult, error) {
	var res FillResult
	if applied == 0 {
		return res, fmt.Errorf("writer: fill below applied position 0/0: %w", ErrInvalidOp)
	}
	for i := range ops {
		if k := ops[i].Kind; k != mapping.OpSet && k != mapping.OpUnset {
			return res, fmt.Errorf("writer: fill of %s %q (rule %q): only sets and unsets fill: %w", k, ops[i].Key, ops[i].Rule, ErrInvalidOp)
		}
	}
	guard := w.guardValue(uint64(applied) - 1)
	for start := 0; start < len(ops); {
		n := pipelineLen(ptrs(ops[start:]), w.opts.MaxPipeline, w.opts.MaxPipelineBytes)
		chunk := ops[start : start+n]
		cmds, err := w.pipelined(ctx, func(pipe redis.Pipeliner) {
			for i := range chunk {
				w.queueFill(ctx, pipe, &chunk[i], guard)
			}
		})
		if err != nil {
			w.reportAttempt(err)
			var cmdErr *commandError
			if errors.As(err, &cmdErr) {
				op := &chunk[cmdErr.index]
				return res, fmt.Errorf("writer: fill of %q (rule %q): %w", op.Key, op.Rule, cmdErr.err)
			}
			return res, fmt.Errorf("writer: fill: %w", err)
		}
		w.recovered()
		for _, cmd := range cmds {
			if scriptResult(cmd) == 1 {
				res.Written++
			} else {
				res.Skipped++
			}
		}
		start += n
	}
	return res, nil
}

func ptrs(ops []mapping.Op) []*mapping.Op {
	out := make([]*mapping.Op, len(ops))
	for i := range ops {
		out[i] = &ops[i]
	}
	return out
}

// queueFill adds op's BackfillSetScript to pipe.
func (w *Writer) queueFill(ctx context.Context, pipe redis.Pipeliner, op *mapping.Op, guard string) {
	keys := []string{op.Key, keyspace.GuardKey(op.Key), keyspace.FenceKey(op.Key)}
	if op.Kind == mapping.OpUnset || w.tooLarge(op) {
		pipe.EvalSha(ctx, w.scripts.backfillSet.Hash(), keys, "unset", guard, "", 0, w.opts.TombstoneTTL.Milliseconds())
		return
	}
	ttl := w.valueTTLMillis(op)
	guardTTL := w.opts.TombstoneTTL.Milliseconds()
	if ttl > 0 {
		guardTTL = ttl + w.opts.GuardTTL.Milliseconds()
	}
	pipe.EvalSha(ctx, w.scripts.backfillSet.Hash(), keys, "set", guard, op.Value, ttl, guardTTL)
}

// UndoFill deletes those of keys, written by Fill below applied, whose
// guard still holds exactly applied-1 of the current history: nothing
// touched them since. It returns how many it deleted.
func (w *Writer) UndoFill(ctx context.Context, applied wal.LSN, keys []string) (int, error) {
	guard := w.guardValue(uint64(applied) - 1)
	deleted := 0
	for start := 0; start < len(keys); start += w.opts.MaxPipeline {
		chunk := keys[start:min(len(keys), start+w.opts.MaxPipeline)]
		cmds, err := w.pipelined(ctx, func(pipe redis.Pipeliner) {
			for _, key := range chunk {
				pipe.EvalSha(ctx, w.scripts.backfillUndo.Hash(), []string{key, keyspace.GuardKey(key)}, guard)
			}
		})
		if err != nil {
			w.reportAttempt(err)
			return deleted, fmt.Errorf("writer: undo a backfill chunk: %w", err)
		}
		for _, cmd := range cmds {
			deleted += int(scriptResult(cmd))
		}
	}
	return deleted, nil
}

// Checkpoint is a backfill's progress, kept in Redis (BackfillKey) after
// every chunk.
type Checkpoint struct {
	// Flushes is the rule's flush counter (FlushCounterKey) when the run
	// started: a checkpoint with another value describes a key space
	// flushed since, and the backfill starts over.
	Flushes string `json:"flushes"`
	// LastKey is the primary key of the last row done, each column as
	// its text output; empty before the first chunk.
	LastKey []string `json:"last_key,omitempty"`
	// Rows counts the rows done; Total is the table's row estimate (or
	// count, TotalExact).
	Rows       int64 `json:"rows"`
	Total      int64 `json:"total"`
	TotalExact bool  `json:"total_exact,omitempty"`
	// Where is the run's row predicate, if any.
	Where    string    `json:"where,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Error is why the run stopped, if it failed.
	Error string `json:"error,omitempty"`
}

// FlushCount reads rule's flush counter: "" when it does not exist (never
// flushed since Redis was emptied).
func (r *Positions) FlushCount(ctx context.Context, rule string) (_ string, err error) {
	defer func() { r.report(ctx, err) }()
	v, err := r.client.Get(ctx, FlushCounterKey(rule)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the flush counter of rule %q: %w", rule, err)
	}
	return v, nil
}

// Checkpoint reads rule's backfill checkpoint; ok is false when there is
// none.
func (r *Positions) Checkpoint(ctx context.Context, rule string) (_ Checkpoint, ok bool, err error) {
	defer func() { r.report(ctx, err) }()
	v, err := r.client.Get(ctx, BackfillKey(rule)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("read the backfill checkpoint of rule %q: %w", rule, err)
	}
	var cp Checkpoint
	if err := json.Unmarshal(v, &cp); err != nil {
		// Unreadable progress is no progress: start over.
		return Checkpoint{}, false, nil
	}
	return cp, true, nil
}

// SetCheckpoint records rule's backfill checkpoint.
func (r *Positions) SetCheckpoint(ctx context.Context, rule string, cp Checkpoint) (err error) {
	defer func() { r.report(ctx, err) }()
	v, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := r.client.Set(ctx, BackfillKey(rule), v, 0).Err(); err != nil {
		return fmt.Errorf("write the backfill checkpoint of rule %q: %w", rule, err)
	}
	return nil
}
