package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cachesync/cachesync/wal"
)

const (
	metaFile  = "journal.json"
	stateFile = "state.json"
	lockFile  = "journal.lock"
	tmpSuffix = ".tmp"
)

// meta is the journal's own record of what it holds, journal.json. It is
// small, rewritten whole and atomically (temporary file, fsync, rename, fsync
// of the directory), and always before the segment files it describes are
// removed, so that a crash in between leaves it conservative.
type meta struct {
	Format int `json:"format"`
	// FirstSegment is the oldest segment that should exist. Older ones are
	// leftovers of an interrupted clean-up; a newer oldest one means segments
	// were removed by hand.
	FirstSegment uint64 `json:"first_segment"`
	// CompleteFrom: the journal holds every batch whose EndLSN is above this
	// LSN. Empty while unknown (then nothing is covered).
	CompleteFrom string `json:"complete_from,omitempty"`
	// CompleteSince: the journal holds every batch whose commit time is at or
	// after this time (set whenever CompleteFrom is).
	CompleteSince time.Time `json:"complete_since,omitzero"`
	Created       time.Time `json:"created,omitzero"`
}

// completeFrom returns the parsed CompleteFrom; 0 when unknown.
func (m *meta) completeFrom() wal.LSN {
	if m.CompleteFrom == "" {
		return 0
	}
	lsn, err := wal.ParseLSN(m.CompleteFrom)
	if err != nil {
		return 0 // checked by readMeta
	}
	return lsn
}

func (m *meta) setComplete(lsn wal.LSN, since time.Time) {
	m.CompleteFrom = lsn.String()
	m.CompleteSince = since.UTC()
}

// readMeta reads journal.json; ok is false when it does not exist.
func readMeta(dir string) (m meta, ok bool, err error) {
	path := filepath.Join(dir, metaFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return meta{}, false, nil
	}
	if err != nil {
		return meta{}, false, fmt.Errorf("read journal metadata: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return meta{}, false, fmt.Errorf("journal metadata %s is damaged (%v): restore it from a backup, or remove it: "+
			"the journal then no longer knows where it is complete from and refuses replay until `cachesync run` starts afresh", path, err)
	}
	if m.Format > formatVersion {
		return meta{}, false, fmt.Errorf("journal metadata %s has format %d, this cachesync reads up to %d: run a newer cachesync, or move the directory aside to start a new journal",
			path, m.Format, formatVersion)
	}
	if m.CompleteFrom != "" {
		if _, err := wal.ParseLSN(m.CompleteFrom); err != nil {
			return meta{}, false, fmt.Errorf("journal metadata %s: complete_from: %w", path, err)
		}
	}
	return m, true, nil
}

func writeMeta(dir string, m meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(dir, metaFile, append(data, '\n'))
}

// State is what the journal belongs to: LSNs only mean something within one
// PostgreSQL system and timeline, and the slot is where they came from. The
// daemon compares it with IDENTIFY_SYSTEM at start: a different system or
// timeline means the journal's positions no longer apply (see Reset).
type State struct {
	SystemID string `json:"system_id"`
	Timeline int32  `json:"timeline"`
	Slot     string `json:"slot"`
}

// ReadState reads the State saved in a journal directory without locking it;
// ok is false when none was saved.
func ReadState(dir string) (s State, ok bool, err error) {
	path := filepath.Join(dir, stateFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, fmt.Errorf("read journal state: %w", err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return State{}, false, fmt.Errorf("journal state %s is damaged (%v): remove it; `cachesync run` then treats the slot as new and flushes the key spaces",
			path, err)
	}
	return s, true, nil
}

// writeFileAtomic replaces dir/name with data: a reader sees the old content
// or the new one, and after a crash one of the two survives.
func writeFileAtomic(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+tmpSuffix)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s in %s: %w", name, dir, err)
	}
	return syncDir(dir)
}
