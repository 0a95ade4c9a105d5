package daemon

import (
	"context"
	"sync/atomic"

	"github.com/rs/zerolog"
	"golang.org/x/sync/semaphore"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
)

// budget bounds what one stage of the pipeline holds, in bytes or in
// operations: a producer acquires an item's size before handing it on, the
// stage that drops the item releases the same size. An item weighs at least 1
// (empty batches queue in order too) and at most the whole budget, so an item
// larger than the budget still passes, alone, instead of waiting forever.
//
// Each budget has one producer and is released only by stages downstream of
// it, which never wait on it: no stage can wait for one that waits for it.
type budget struct {
	sem  *semaphore.Weighted
	size int64
	held atomic.Int64
}

func newBudget(size int64) *budget {
	return &budget{sem: semaphore.NewWeighted(size), size: size}
}

// weight is the share of the budget an item of size n takes.
func (b *budget) weight(n int64) int64 { return min(max(n, 1), b.size) }

// Acquire waits until an item of size n fits, or ctx is done.
func (b *budget) Acquire(ctx context.Context, n int64) error {
	w := b.weight(n)
	if err := b.sem.Acquire(ctx, w); err != nil {
		return err
	}
	b.held.Add(w)
	return nil
}

// TryAcquire takes what Acquire(n) would if it fits now, without waiting.
func (b *budget) TryAcquire(n int64) bool {
	w := b.weight(n)
	if !b.sem.TryAcquire(w) {
		return false
	}
	b.held.Add(w)
	return true
}

// Release gives back what Acquire(n) took.
func (b *budget) Release(n int64) {
	w := b.weight(n)
	b.held.Add(-w)
	b.sem.Release(w)
}

// Held is what the budget's items hold now.
func (b *budget) Held() int64 { return b.held.Load() }

// DefaultMaxQueuedBytes bounds the row data the pipeline holds
// (Options.MaxQueuedBytes, --max-queued-bytes).
const DefaultMaxQueuedBytes = 256 << 20

// MemoryLimit is the Go runtime's soft memory limit (GOMEMLIMIT) that
// `cachesync run` sets for a pipeline bounded to maxQueuedBytes, unless the
// environment sets one: twice the bound (the collector lets the heap grow to
// twice what is live) plus room for the rest of the process. It keeps the
// collector from lagging behind a burst of wide rows on a busy machine, so
// that the documented peak RSS holds there too.
func MemoryLimit(maxQueuedBytes int64) int64 {
	if maxQueuedBytes <= 0 {
		maxQueuedBytes = DefaultMaxQueuedBytes
	}
	return 2*maxQueuedBytes + 64<<20
}

// queueBudgets splits Options.MaxQueuedBytes between the stages that hold row
// data: decoded events waiting for the mapper get a quarter, the values of
// the transaction being mapped a quarter (mapping.Options.TxnValueBytes;
// beyond it refresh values become deletes), and mapped batches on their way
// through Redis and the journal the remaining half.
func queueBudgets(total int64) (events, txnValues, batches int64) {
	total = max(total, 4)
	events, txnValues = total/4, total/4
	return events, txnValues, total - events - txnValues
}

// MapperOptions are the options of the mapper of a daemon with these
// settings. cachesync explain maps with them too, so that what it prints is
// what run does.
func MapperOptions(keyCap int, maxQueuedBytes int64, log zerolog.Logger) mapping.Options {
	_, txnValues, _ := queueBudgets(maxQueuedBytes)
	return mapping.Options{KeyCap: keyCap, TxnValueBytes: txnValues, Logger: log}
}

// The stream acquires its events from a budget.
var _ replication.Budget = (*budget)(nil)
