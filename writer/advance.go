package writer

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

// ErrNotAdvanced reports that ApplyAdvance applied every effect but could
// not advance the position (a Redis error on the compare-and-set): advance
// it apart, with Positions.Advance, as after Apply.
var ErrNotAdvanced = errors.New("effects applied, applied position not advanced")

// ApplyAdvance is Apply followed by Positions.Advance(ctx, slot, from, to),
// one round trip shorter: the compare-and-set of the applied position goes at
// the end of the last pipeline of the effects, instead of in a round trip of
// its own after them.
//
// Every marker still follows the effects it vouches for on its server:
// commands to one server run in the order they were sent, so a marker is
// swapped only after every effect before it on its server was executed (on
// a cluster, go-redis splits the pipeline by master, each marker going after
// its master's effects). When the group's last round trip is not a plain
// pipeline (a flush, or tags deleted in steps on a cluster, whose members
// are unlinked in later round trips), the swap goes in the last round trip
// of those steps, or apart after them.
//
// When an effect of the round trip that carried the swap failed, the swap
// does not count: the markers it swapped are set back to what from read at
// once (one more round trip, on the failure path only), and the swap goes
// apart, after the effects, for the rest of the call. So does it while
// Redis is failing (Stats.Failing) and after any failed attempt of the
// call: a marker is swapped in the effects' pipeline only when no failure
// was seen. The position is reported advanced only once every effect is
// acknowledged. What remains is the window of that one failed round trip:
// a marker swapped after an effect its server refused (a key the ACL
// denies, a fallback's WRONGTYPE) is visible until the undo lands, and
// stays if the process dies in between; the group is then not confirmed,
// so it is delivered and applied again, as after a crash between an
// advance and its confirm. Likewise, while slots migrate, an effect that a
// server redirects (MOVED, ASK) is sent again by go-redis after the first
// pass, so within that one Exec it may land after its new master's marker;
// if it then fails, the undo applies.
//
// The results are Positions.Advance's: swapped is false when a marker did
// not hold what from read (cur is what it holds: heal, as after Advance).
// An error is Apply's (ctx done, ErrInvalidOp), with nothing advanced, or
// wraps ErrNotAdvanced: the effects were applied and the position is to be
// advanced apart. A marker from does not know (new to the placement, or
// none read yet) makes the swap go apart after the effects, since a swap
// that did not count could not set it back.
//
// A caller that wants the swap apart (a failpoint between the two) calls
// Apply, then Positions.Advance.
func (w *Writer) ApplyAdvance(ctx context.Context, batches []mapping.Batch, slot string, from Position, to wal.LSN) (swapped bool, cur Position, err error) {
	var tail *advanceTail
	if !w.counters.failing.Load() {
		tail = w.newTail(ctx, slot, from, to)
	}
	if err := w.apply(ctx, batches, tail); err != nil {
		return false, Position{}, err
	}
	if tail != nil && tail.done {
		return tail.swapped, tail.cur, nil
	}
	swapped, cur, err = w.positions.Advance(ctx, slot, from, to)
	if err != nil {
		return false, Position{}, fmt.Errorf("%w: %w", ErrNotAdvanced, err)
	}
	return swapped, cur, nil
}

// advanceTail is the compare-and-set of the applied position that
// ApplyAdvance sends after the group's last effects.
type advanceTail struct {
	w    *Writer
	slot string
	from Position
	to   wal.LSN
	keys []string // the marker keys

	// off: an attempt failed, the swap goes apart after the effects
	// (it is sent with them only while Redis answers them all).
	off bool
	// done: the swap ran after every effect and was answered, with
	// swapped and cur its outcome.
	done    bool
	swapped bool
	cur     Position
}

// newTail returns the swap from `from` to `to`, or nil when it must go
// apart: a marker of the current placement that from does not know.
func (w *Writer) newTail(ctx context.Context, slot string, from Position, to wal.LSN) *advanceTail {
	keys := w.positions.keys(ctx, slot)
	for _, k := range keys {
		if _, ok := from.markers[k]; !ok {
			return nil
		}
	}
	return &advanceTail{w: w, slot: slot, from: from, to: to, keys: keys}
}

// queue adds the swap of every marker to pipe and returns its commands.
func (t *advanceTail) queue(ctx context.Context, pipe redis.Pipeliner) []redis.Cmder {
	args := advanceArgs(t.from, t.to)
	cmds := make([]redis.Cmder, len(t.keys))
	for i, k := range t.keys {
		cmds[i] = advanceScript.EvalSha(ctx, pipe, []string{k}, args(k)...)
	}
	return cmds
}

// answer reads the swap's replies, sent after effects that were all
// acknowledged (effectsOK) or not. A swap after a failed effect does not
// count, and the markers it swapped are set back (undo). A swap that
// failed itself (NOSCRIPT, a connection lost) leaves the tail not done:
// ApplyAdvance advances apart.
func (t *advanceTail) answer(ctx context.Context, cmds []redis.Cmder, effectsOK bool) {
	if !effectsOK {
		t.off = true
		t.undo(ctx, cmds)
		return
	}
	swapped, cur, err := t.w.positions.advanced(t.keys, cmds)
	if err != nil {
		return
	}
	t.done, t.swapped, t.cur = true, swapped, cur
}

// undo sets the markers that cmds swapped back to what from read, on the
// same server: their effects are not all applied. A marker that moved
// meanwhile (another instance) is left alone. If the undo fails, the marker
// stays ahead of an effect that failed, until the group is applied: it is
// logged.
func (t *advanceTail) undo(ctx context.Context, cmds []redis.Cmder) {
	var keys []string
	for i, c := range cmds {
		res, err := c.(*redis.Cmd).Slice()
		if err != nil || len(res) != 3 {
			continue
		}
		if n, _ := res[0].(int64); n == 1 {
			keys = append(keys, t.keys[i])
		}
	}
	if len(keys) == 0 {
		return
	}
	_, err := t.w.positions.evalMarkers(ctx, advanceScript, keys, func(k string) []any {
		m := t.from.markers[k]
		return []any{t.to.String(), m.value, m.server}
	})
	if err != nil {
		t.w.log.Warn().Err(err).Str("slot", t.slot).Stringer("position", t.to).
			Msg("an effect failed after the applied position was swapped in the same pipeline, and setting it back failed too: the position may stay ahead of that effect until the group is applied again")
	}
}
