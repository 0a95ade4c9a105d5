package daemon

import (
	"context"
	"sync"
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
//
// The check is off the apply path: the mapper notes each commit with effects
// as it maps it (note), and the gate's own goroutine (run) sends the snapshot
// query at once, while the commit waits in the queue or the group before it
// is applied. One answer serves every commit noted before its query was
// sent; commits noted while a query is out wait for the next one, which
// follows at once. A group is never applied on an answer to a query sent
// before one of its commits was received: wait only takes answers that
// cover its latest note.
type visibilityGate struct {
	snapshots snapshotReader
	log       zerolog.Logger
	// waiting, when set, is called while the wait goes on: PostgreSQL
	// holds the pipeline, which a restart would not cure (the liveness
	// check does not count the time).
	waiting func()

	// kick asks run for a query (capacity 1: requests made while one is
	// pending are the same request).
	kick chan struct{}

	mu sync.Mutex
	// noted numbers the commits noted, the last one's.
	noted uint64
	// answer is the latest snapshot; changed is closed and replaced when
	// it changes.
	answer  gateAnswer
	changed chan struct{}

	xids []uint32 // reused by wait (the apply stage only)
	// blocked, when set (by tests), is called each time wait starts
	// waiting for an answer.
	blocked func()
}

// gateAnswer is one answer of pg_current_snapshot().
type gateAnswer struct {
	snap replication.Snapshot
	// covers is the last commit noted before the query was sent: every
	// commit up to it was received before the snapshot was taken.
	covers uint64
	// gen numbers the answers, from 1.
	gen uint64
}

func newVisibilityGate(snapshots snapshotReader, log zerolog.Logger, waiting func()) *visibilityGate {
	return &visibilityGate{snapshots: snapshots, log: log, waiting: waiting,
		kick: make(chan struct{}, 1), changed: make(chan struct{})}
}

// snapshotReader reads pg_current_snapshot() on a connection of the
// session's own (replication.Conn).
type snapshotReader interface {
	Snapshot(ctx context.Context) (replication.Snapshot, error)
}

// visibilityWarnAfter is how long a wait lasts before it is logged at warn
// level.
const visibilityWarnAfter = time.Second

// note records that a commit with effects was received and asks for a
// query; it returns the commit's number, for wait. Called by the mapper.
func (g *visibilityGate) note() uint64 {
	g.mu.Lock()
	g.noted++
	seq := g.noted
	g.mu.Unlock()
	g.ask()
	return seq
}

func (g *visibilityGate) ask() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// run sends the snapshot queries asked for, one at a time, until ctx ends
// (nil) or a query fails (its error: the session ends, and wait with it).
func (g *visibilityGate) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.kick:
		}
		g.mu.Lock()
		covers := g.noted
		g.mu.Unlock()
		snap, err := g.snapshots.Snapshot(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		g.mu.Lock()
		g.answer = gateAnswer{snap: snap, covers: covers, gen: g.answer.gen + 1}
		close(g.changed)
		g.changed = make(chan struct{})
		g.mu.Unlock()
	}
}

// covering waits until the latest answer covers the commit numbered need
// (at once when need is 0) and returns the last commit it covers.
func (g *visibilityGate) covering(ctx context.Context, need uint64) (uint64, error) {
	a, err := g.await(ctx, need, 0, nil)
	return a.covers, err
}

// await returns the latest answer once it covers the commit numbered need
// and is at least the minGen-th, calling blocked (when not nil) each time it
// starts waiting for a newer one.
func (g *visibilityGate) await(ctx context.Context, need, minGen uint64, blocked func()) (gateAnswer, error) {
	for {
		g.mu.Lock()
		a, changed := g.answer, g.changed
		g.mu.Unlock()
		if a.covers >= need && a.gen >= minGen {
			return a, nil
		}
		if blocked != nil {
			blocked()
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return gateAnswer{}, ctx.Err()
		}
	}
}

// wait returns once every transaction of the group with effects is visible to
// new snapshots, or with ctx's error. need is the number note gave the
// group's last commit with effects: only an answer covering it counts.
func (g *visibilityGate) wait(ctx context.Context, group []mapping.Batch, need uint64) error {
	_, err := g.waitAnswer(ctx, group, need)
	return err
}

// waitAnswer is wait, returning the number of the answer it let the group
// pass on (0 when no transaction needed one).
func (g *visibilityGate) waitAnswer(ctx context.Context, group []mapping.Batch, need uint64) (uint64, error) {
	g.xids = g.xids[:0]
	for _, b := range group {
		if len(b.Ops) > 0 && b.XID != 0 {
			g.xids = append(g.xids, b.XID)
		}
	}
	if len(g.xids) == 0 {
		return 0, nil
	}
	var began time.Time
	warned := false
	minGen := uint64(1)
	for attempt := 0; ; {
		a, err := g.await(ctx, need, minGen, g.blocked)
		if err != nil {
			return 0, err
		}
		if a.snap.Running(g.xids) == 0 {
			if warned {
				g.log.Info().Dur("waited", time.Since(began)).Msg("the held transactions are visible; applying them")
			}
			return a.gen, nil
		}
		// Committed, not visible yet: ask again, backing off.
		if g.waiting != nil {
			g.waiting()
		}
		if attempt == 0 {
			began = time.Now()
			g.log.Debug().Uints32("xids", g.xids).Msg("committed transactions not visible yet; holding their effects")
		} else if waited := time.Since(began); !warned && waited >= visibilityWarnAfter {
			warned = true
			g.log.Warn().Uints32("xids", g.xids).Dur("waited", waited).
				Msg("committed transactions not visible yet (a synchronous standby not answering?); holding their effects, and confirming nothing, until they are")
		}
		pause := time.NewTimer(min(100*time.Microsecond<<min(attempt, 10), 20*time.Millisecond))
		select {
		case <-ctx.Done():
			pause.Stop()
			return 0, ctx.Err()
		case <-pause.C:
		}
		attempt++
		minGen = a.gen + 1
		g.ask()
	}
}
