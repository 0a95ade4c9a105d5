package daemon

import (
	"context"

	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// CacheState keeps the daemon's bookkeeping inside the cache it describes:
// the position up to which effects were applied to it. It is advanced with
// compare-and-set after every applied group, before the position is
// confirmed, so a cache that lost applied effects (restarted without
// persistence, restored from an older backup, failed over to a replica that
// missed writes) shows itself at once: its position is missing or older than
// the one last written, or it is held by another server than the one that
// acknowledged the group in flight. writer.Positions implements it, on the
// writer's client, and reports every command to the writer's outage
// tracker.
type CacheState interface {
	// Applied returns the slot's applied position as the cache holds it
	// now.
	Applied(ctx context.Context, slot string) (writer.Position, error)
	// Advance sets the position to `to` if the cache still holds `from`
	// exactly as it was read (same values, same servers). When it does
	// not, it changes nothing it should not and returns what it found.
	Advance(ctx context.Context, slot string, from writer.Position, to wal.LSN) (swapped bool, cur writer.Position, err error)
	// Rules returns the fingerprints of the rules (name → fingerprint)
	// applied to the cache by the instance that streamed last; ok is false
	// when none are recorded.
	Rules(ctx context.Context, slot string) (rules map[string]string, ok bool, err error)
	// SetRules records the rules now applied, after their key spaces were
	// brought in line.
	SetRules(ctx context.Context, slot string, rules map[string]string) error
	// Partitions returns the partition trees of the rule tables as the
	// instance that streamed last saw them after flushing for them; ok is
	// false when none are recorded.
	Partitions(ctx context.Context, slot string) (trees map[string]string, ok bool, err error)
	// SetPartitions records the partition trees whose changes were flushed
	// (or written to the WAL as a flush).
	SetPartitions(ctx context.Context, slot string, trees map[string]string) error
	// Slots records slot as used with this cache for the database scope
	// (server identity and database name) and returns every slot recorded
	// for it.
	Slots(ctx context.Context, scope, slot string) ([]string, error)
	// ForgetSlot removes a slot that no longer exists from the record.
	ForgetSlot(ctx context.Context, scope, slot string) error
	// FlushCount returns how many times rule's key space was flushed
	// (writer.FlushCounterKey), as a string compared with a backfill
	// checkpoint's; "" when never.
	FlushCount(ctx context.Context, rule string) (string, error)
	// Checkpoint returns rule's backfill checkpoint; ok is false when
	// there is none.
	Checkpoint(ctx context.Context, rule string) (cp writer.Checkpoint, ok bool, err error)
	// SetCheckpoint records rule's backfill checkpoint (the backfill runner
	// records there a failure the backfill could not).
	SetCheckpoint(ctx context.Context, rule string, cp writer.Checkpoint) error
	// Retry runs cmd until it succeeds, fence refuses or ctx ends, with
	// the writer's backoff between attempts.
	Retry(ctx context.Context, fence func() error, cmd func() error) error
	// Wait waits before retry number attempt of a bookkeeping command.
	Wait(ctx context.Context, attempt int) error
}
