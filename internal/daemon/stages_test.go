package daemon

import (
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/wal"
)

// TestConfirmWatch: a status update times every journaled group up to the
// position it confirmed, once, and the groups after it wait for a later
// one; the groups waiting stay bounded when no update comes.
func TestConfirmWatch(t *testing.T) {
	c := &confirmWatch{metrics: metrics.New()}
	at := time.Now()
	for _, end := range []wal.LSN{0x10, 0x20, 0x30} {
		c.journaled(end, at)
	}
	c.sent(0x20, at.Add(time.Millisecond))
	if len(c.groups) != 1 || c.groups[0].end != 0x30 {
		t.Fatalf("after confirming 0/20: %v waiting, want only 0/30", c.groups)
	}
	c.sent(0x20, at.Add(2*time.Millisecond))
	if len(c.groups) != 1 {
		t.Fatalf("a second update of 0/20 took %v", c.groups)
	}
	c.sent(0x30, at.Add(3*time.Millisecond))
	if len(c.groups) != 0 {
		t.Fatalf("after confirming 0/30: %v waiting", c.groups)
	}
	for i := range 3 * confirmWatchMax {
		c.journaled(wal.LSN(0x100+i), at)
	}
	if len(c.groups) > confirmWatchMax || c.groups[len(c.groups)-1].end != wal.LSN(0x100+3*confirmWatchMax-1) {
		t.Fatalf("%d groups waiting (max %d), the last %s", len(c.groups), confirmWatchMax, c.groups[len(c.groups)-1].end)
	}
}
