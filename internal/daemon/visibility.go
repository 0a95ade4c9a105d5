package daemon

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/mapping"
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
// trip.
type visibilityGate struct {
	conn *pgx.Conn
	log  zerolog.Logger
	xids []uint32 // reused
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
		var text string
		if err := g.conn.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&text); err != nil {
			return fmt.Errorf("read the current snapshot: %w", err)
		}
		snap, err := parseSnapshot(text)
		if err != nil {
			return err
		}
		running := snap.running(g.xids)
		if running == 0 {
			if warned {
				g.log.Info().Dur("waited", time.Since(began)).Msg("the held transactions are visible; applying them")
			}
			return nil
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

// snapshot is a pg_snapshot: transactions below xmin are finished, those at
// or above xmax (the latest finished one + 1) are not, and xip lists those in
// between that are still running.
type snapshot struct {
	xmin, xmax uint64
	xip        map[uint64]struct{}
}

// parseSnapshot reads pg_snapshot's text form, "xmin:xmax:xip,xip,...".
func parseSnapshot(s string) (snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return snapshot{}, fmt.Errorf("unexpected snapshot %q", s)
	}
	var snap snapshot
	var err error
	if snap.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
	}
	if snap.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
	}
	if parts[2] != "" {
		ids := strings.Split(parts[2], ",")
		snap.xip = make(map[uint64]struct{}, len(ids))
		for _, id := range ids {
			x, err := strconv.ParseUint(id, 10, 64)
			if err != nil {
				return snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
			}
			snap.xip[x] = struct{}{}
		}
	}
	return snap, nil
}

// running counts the xids (32-bit, as pgoutput sends them) that the snapshot
// does not see as finished.
func (s snapshot) running(xids []uint32) int {
	n := 0
	for _, x := range xids {
		// The full xid is the one nearest xmax with these low bits: a
		// transaction being decoded is recent (xmax is the latest finished
		// xid + 1, so one still committing is at or above it).
		full := int64(s.xmax) + int64(int32(x-uint32(s.xmax)))
		switch {
		case full < int64(s.xmin):
			// finished (or older than any xid)
		case full >= int64(s.xmax):
			n++
		default:
			if _, ok := s.xip[uint64(full)]; ok {
				n++
			}
		}
	}
	return n
}
