package daemon

import (
	"context"
	"testing"
)

func TestBudgetAccounting(t *testing.T) {
	ctx := context.Background()
	done, cancel := context.WithCancel(ctx)
	cancel()
	b := newBudget(100)
	for _, tt := range []struct{ n, weight int64 }{{0, 1}, {1, 1}, {40, 40}, {100, 100}, {5000, 100}} {
		if got := b.weight(tt.n); got != tt.weight {
			t.Errorf("weight(%d) = %d, want %d", tt.n, got, tt.weight)
		}
	}
	// Items fill the budget; the next one waits until one is released.
	if err := b.Acquire(ctx, 60); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(ctx, 0); err != nil { // an empty batch weighs 1
		t.Fatal(err)
	}
	if got := b.Held(); got != 61 {
		t.Errorf("held %d, want 61", got)
	}
	if b.sem.TryAcquire(b.weight(40)) {
		t.Fatal("an item of 40 fit beside 61 in a budget of 100")
	}
	if b.TryAcquire(40) {
		t.Fatal("TryAcquire: an item of 40 fit beside 61 in a budget of 100")
	}
	if !b.TryAcquire(39) || b.Held() != 100 {
		t.Fatalf("TryAcquire: an item of 39 beside 61 did not fit (held %d)", b.Held())
	}
	b.Release(39)
	b.Release(0)
	if err := b.Acquire(ctx, 40); err != nil {
		t.Fatalf("an item of 40 beside 60: %v", err)
	}
	b.Release(40)
	b.Release(60)
	// An item larger than the whole budget passes, alone.
	if err := b.Acquire(ctx, 1<<30); err != nil {
		t.Fatalf("an item larger than the budget, the budget empty: %v", err)
	}
	if got := b.Held(); got != 100 {
		t.Errorf("held %d, want 100 (the whole budget)", got)
	}
	if b.sem.TryAcquire(1) {
		t.Fatal("an item fit beside one larger than the budget")
	}
	if err := b.Acquire(done, 1); err == nil {
		t.Fatal("Acquire returned nil on a done context without room")
	}
	b.Release(1 << 30)
	if got := b.Held(); got != 0 {
		t.Errorf("held %d after every release, want 0", got)
	}
}

func TestQueueBudgets(t *testing.T) {
	for _, total := range []int64{0, 1, 4, 7, DefaultMaxQueuedBytes, 1<<30 + 3} {
		events, values, batches := queueBudgets(total)
		if events < 1 || values < 1 || batches < 1 {
			t.Errorf("queueBudgets(%d) = %d, %d, %d: every share must hold something", total, events, values, batches)
		}
		if total >= 4 && events+values+batches != total {
			t.Errorf("queueBudgets(%d) = %d, %d, %d: the shares add up to %d", total, events, values, batches, events+values+batches)
		}
	}
	if e, v, b := queueBudgets(DefaultMaxQueuedBytes); e != 64<<20 || v != 64<<20 || b != 128<<20 {
		t.Errorf("default split %d, %d, %d; docs/operations.md says 64, 64 and 128 MiB", e, v, b)
	}
}

func TestMemoryLimit(t *testing.T) {
	for _, tt := range []struct{ queued, want int64 }{
		{0, 576 << 20}, // the default bound
		{DefaultMaxQueuedBytes, 576 << 20},
		{64 << 20, 192 << 20},
	} {
		if got := MemoryLimit(tt.queued); got != tt.want {
			t.Errorf("MemoryLimit(%d) = %d MiB, want %d MiB", tt.queued, got>>20, tt.want>>20)
		}
	}
}
