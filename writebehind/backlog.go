package writebehind

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Backlog is a stream's state as status and metrics show it.
type Backlog struct {
	// Length is XLEN: entries still in the stream (applied ones are trimmed).
	Length int64
	// Pending are entries delivered to the worker and not yet acknowledged;
	// Lag are entries not yet delivered.
	Pending, Lag int64
	// OldestPending is the age of the oldest entry not yet applied (0: none).
	OldestPending time.Duration
	// DeadLetters is the dead-letter stream's length.
	DeadLetters int64
	// LastApplied is the recorded ID ("" when nothing was applied); read
	// only by ReadBacklog's callers that pass a connection.
	LastApplied string
}

// Entries is the backlog in entries: not yet delivered plus delivered and
// not yet acknowledged.
func (b Backlog) Entries() int64 { return b.Lag + b.Pending }

// ReadBacklog reads stream's backlog from Redis: its length, the consumer
// group's pending entries and lag, the age of the oldest entry not yet
// applied (the lowest pending ID's time, else the first undelivered
// entry's) and the dead-letter stream's length. A stream or group that does
// not exist yet is no backlog (or, for a missing group, all of the stream).
// When Redis cannot tell the group's lag (after entries were deleted from
// the middle of the stream), Lag is the stream's length minus the pending
// entries: an upper bound.
func ReadBacklog(ctx context.Context, rdb redis.UniversalClient, stream string, now time.Time) (Backlog, error) {
	var b Backlog
	pipe := rdb.Pipeline()
	xlen := pipe.XLen(ctx, stream)
	dead := pipe.XLen(ctx, DeadLetterStream(stream))
	groups := pipe.XInfoGroups(ctx, stream)
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	var err error
	if b.Length, err = xlen.Result(); err != nil {
		return Backlog{}, fmt.Errorf("write-behind backlog: XLEN %s: %w", stream, err)
	}
	if b.DeadLetters, err = dead.Result(); err != nil {
		return Backlog{}, fmt.Errorf("write-behind backlog: XLEN %s: %w", DeadLetterStream(stream), err)
	}
	gs, err := groups.Result()
	if err != nil && !isNoSuchKey(err) {
		return Backlog{}, fmt.Errorf("write-behind backlog: XINFO GROUPS %s: %w", stream, err)
	}
	var group *redis.XInfoGroup
	for i := range gs {
		if gs[i].Name == Group {
			group = &gs[i]
		}
	}
	if group == nil {
		// No worker ever read the stream: every entry waits.
		b.Lag = b.Length
		if b.Length > 0 {
			first, err := rdb.XRangeN(ctx, stream, "-", "+", 1).Result()
			if err != nil {
				return Backlog{}, fmt.Errorf("write-behind backlog: XRANGE %s: %w", stream, err)
			}
			b.OldestPending = ageOf(first, now)
		}
		return b, nil
	}
	b.Pending, b.Lag = group.Pending, group.Lag
	if b.Lag < 0 {
		b.Lag = max(0, b.Length-b.Pending)
	}
	// Redis counts entries deleted since (XDEL) in the lag; undelivered
	// entries are all in the stream.
	b.Lag = min(b.Lag, b.Length)
	if b.Pending > 0 {
		p, err := rdb.XPending(ctx, stream, Group).Result()
		if err != nil {
			return Backlog{}, fmt.Errorf("write-behind backlog: XPENDING %s %s: %w", stream, Group, err)
		}
		if id, err := ParseID(p.Lower); err == nil {
			b.OldestPending = max(0, now.Sub(id.Time()))
		}
		return b, nil
	}
	if b.Lag > 0 {
		next, err := rdb.XRangeN(ctx, stream, "("+group.LastDeliveredID, "+", 1).Result()
		if err != nil {
			return Backlog{}, fmt.Errorf("write-behind backlog: XRANGE %s: %w", stream, err)
		}
		b.OldestPending = ageOf(next, now)
	}
	return b, nil
}

// ageOf is how old the first of msgs is at now (0 for none).
func ageOf(msgs []redis.XMessage, now time.Time) time.Duration {
	if len(msgs) == 0 {
		return 0
	}
	id, err := ParseID(msgs[0].ID)
	if err != nil {
		return 0
	}
	return max(0, now.Sub(id.Time()))
}

// Time is when Redis assigned the ID (its milliseconds part).
func (id ID) Time() time.Time { return time.UnixMilli(int64(id.MS)) }

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}
