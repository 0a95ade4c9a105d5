package daemon

import (
	"sync"
	"time"

	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/wal"
)

// clearedStage observes the visible stage of a group's transactions: from
// each one's mapping (zero for barriers) to the group cleared to apply.
func (s *session) clearedStage(mapped []time.Time, cleared time.Time) {
	for _, at := range mapped {
		s.metrics.StageDone(metrics.StageVisible, at, cleared)
	}
}

// confirmWatch times the confirmed stage: from a group journaled to the
// first standby status update that carries its end. The journal stage adds
// groups, the stream's status updates take them.
type confirmWatch struct {
	metrics *metrics.Metrics
	mu      sync.Mutex
	groups  []journaledGroup // in WAL order
}

type journaledGroup struct {
	end wal.LSN
	at  time.Time
}

// confirmWatchMax bounds the groups waiting for a status update: should
// the stream stop sending them, the oldest half is dropped (unobserved).
const confirmWatchMax = 4096

// journaled records that the group ending at end was journaled at `at`.
func (c *confirmWatch) journaled(end wal.LSN, at time.Time) {
	c.mu.Lock()
	if len(c.groups) >= confirmWatchMax {
		c.groups = c.groups[:copy(c.groups, c.groups[confirmWatchMax/2:])]
	}
	c.groups = append(c.groups, journaledGroup{end, at})
	c.mu.Unlock()
}

// sent is replication.StreamOptions.OnStatus: a status update confirmed
// everything up to flush.
func (c *confirmWatch) sent(flush wal.LSN, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for n < len(c.groups) && c.groups[n].end <= flush {
		c.metrics.StageDone(metrics.StageConfirmed, c.groups[n].at, at)
		n++
	}
	if n > 0 {
		c.groups = append(c.groups[:0], c.groups[n:]...)
	}
}
