package daemon

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
)

// visibilityGate holds a group's effects until PostgreSQL shows its
// transactions to new snapshots.
//
// A commit reaches the WAL, and the walsender, before the committing backend
// makes it visible: it first flushes the commit record, then waits for
// synchronous standbys (synchronous_standby_names), and only then leaves the
// set of running transactions. A reader that misses a key in between reads
// the old row, and caches it after the invalidation: stale until its TTL,
// and no fill fence can tell. So no effect is applied before the
// transactions it comes from are visible. Usually they already are when the
// check runs; with synchronous replication the wait is the standby's round
// trip. The xids are the batches' (mapping.Batch.XID), from pgoutput's Begin
// messages.
type visibilityGate struct {
	snapshots snapshotReader
	log       zerolog.Logger
	// waiting, when set, is called while the wait goes on: PostgreSQL
	// holds the pipeline, which a restart would not cure (the liveness
	// check does not count the time).
	waiting func()
	xids    []uint32 // reused
}

// snapshotReader reads pg_current_snapshot() on a connection of the
// session's own (replication.Conn).
type snapshotReader interface {
	Snapshot(ctx context.Context) (replication.Snapshot, error)
}

// visibilityWarnAfter is how long a wait lasts before it is logged at warn
// level.
const visibilityWarnAfter = time.Second

// wait returns once every transaction of the group with effects is visible to
// new snapshots, or with ctx's error, or with the query's.
func (g *visibilityGate) wait(ctx context.Context, group []mapping.Batch) error {
	g.xids = g.xids[:0]
	for _, b := range group {
		if len(b.Ops) > 0 && b.XID != 0 {
			g.xids = append(g.xids, b.XID)
		}
	}
	if len(g.xids) == 0 {
		return nil
	}
	began := time.Now()
	warned := false
	for attempt := 0; ; attempt++ {
		snap, err := g.snapshots.Snapshot(ctx)
		if err != nil {
			return err
		}
		running := snap.Running(g.xids)
		if running == 0 {
			if warned {
				g.log.Info().Dur("waited", time.Since(began)).Msg("the held transactions are visible; applying them")
			}
			return nil
		}
		if g.waiting != nil {
			g.waiting()
		}
		switch waited := time.Since(began); {
		case attempt == 0:
			g.log.Debug().Uints32("xids", g.xids).Msg("committed transactions not visible yet; holding their effects")
		case !warned && waited >= visibilityWarnAfter:
			warned = true
			g.log.Warn().Uints32("xids", g.xids).Dur("waited", waited).
				Msg("committed transactions not visible yet (a synchronous standby not answering?); holding their effects, and confirming nothing, until they are")
		}
		pause := time.NewTimer(min(100*time.Microsecond<<min(attempt, 10), 20*time.Millisecond))
		select {
		case <-ctx.Done():
			pause.Stop()
			return ctx.Err()
		case <-pause.C:
		}
	}
}
