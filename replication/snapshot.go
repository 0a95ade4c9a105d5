package replication

import (
	"fmt"
	"strconv"
	"strings"
)

// Snapshot is a pg_snapshot: transactions below xmin are finished, those at
// or above xmax (the latest finished one + 1) are not, and xip lists those in
// between that are still running.
type Snapshot struct {
	xmin, xmax uint64
	xip        map[uint64]struct{}
}

// ParseSnapshot reads pg_snapshot's text form, "xmin:xmax:xip,xip,...".
func ParseSnapshot(s string) (Snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("unexpected snapshot %q", s)
	}
	var snap Snapshot
	var err error
	if snap.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
	}
	if snap.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
	}
	if parts[2] != "" {
		ids := strings.Split(parts[2], ",")
		snap.xip = make(map[uint64]struct{}, len(ids))
		for _, id := range ids {
			x, err := strconv.ParseUint(id, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
			}
			snap.xip[x] = struct{}{}
		}
	}
	return snap, nil
}

// Running counts the xids (32-bit, as pgoutput sends them) that the snapshot
// does not see as finished.
func (s Snapshot) Running(xids []uint32) int {
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
