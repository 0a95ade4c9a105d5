package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

// Replay calls fn, in journal order, for every entry whose EndLSN >= from, or,
// when since is non-zero (then from must be 0), for every entry committed at
// or after since. Entries without a commit time (keepalive barriers, which
// carry no operations) are placed by the time they were journaled.
//
// When the journal does not hold everything after the requested point (see
// the package documentation on coverage) it calls fn for nothing and returns
// an error wrapping ErrNotCovered that says what the journal does cover. So
// from 0 without since ("everything") is never covered: the journal always
// starts somewhere.
//
// fn also gets position-only entries (no Ops): batches of transactions that
// touched no rule, and keepalive barriers.
//
// Replay reads what was journaled when it started, one entry at a time, and
// may run while Append goes on; retention waits until it returns. An error
// from fn stops it and is returned wrapped.
func (j *Journal) Replay(ctx context.Context, from wal.LSN, since time.Time, fn func(mapping.Batch) error) error {
	if err := checkReplayArgs(from, since); err != nil {
		return err
	}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	rng := j.rangeLocked()
	if err := covered(j.dir, &j.meta, from, since, rng); err != nil {
		j.mu.Unlock()
		return err
	}
	snaps := make([]segmentSnapshot, len(j.segs))
	for i, s := range j.segs {
		snaps[i] = segmentSnapshot{seq: s.seq, path: s.path, limit: s.size, summary: true,
			entries: s.entries, lastEnd: s.lastEnd, maxTime: s.maxTime}
	}
	j.replaying++
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		j.replaying--
		j.mu.Unlock()
	}()
	return replaySegments(ctx, snaps, from, since, rng.CompleteFrom, fn, nil)
}

// ReplayDir is Replay on a journal directory, without its lock: for
// `cachesync replay`. It may run while a daemon writes the journal: it reads
// what was there when it started and ignores an unfinished record at the end.
func ReplayDir(ctx context.Context, dir string, from wal.LSN, since time.Time, fn func(mapping.Batch) error) error {
	if err := checkReplayArgs(from, since); err != nil {
		return err
	}
	m, files, err := readJournalDir(dir)
	if err != nil {
		return err
	}
	if err := checkContiguous(dir, files); err != nil {
		return err
	}
	rng := Range{}
	if e, ok, err := firstEntry(files, true); err == nil && ok {
		rng.OldestLSN, rng.OldestTime, rng.Entries = e.EndLSN, e.Time, 1
	}
	if err := covered(dir, &m, from, since, rng); err != nil {
		return err
	}
	snaps := make([]segmentSnapshot, len(files))
	for i, f := range files {
		snaps[i] = segmentSnapshot{seq: f.seq, path: f.path, limit: f.size, tolerant: i == len(files)-1}
	}
	// A segment can disappear under us when the daemon's retention removes
	// it. That is fine as long as the journal still covers the request:
	// retention only removes what lies before its new complete-from point.
	vanished := func() error {
		m, ok, err := readMeta(dir)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("journal %s disappeared during replay", dir)
		}
		return covered(dir, &m, from, since, Range{})
	}
	return replaySegments(ctx, snaps, from, since, m.completeFrom(), fn, vanished)
}

func checkReplayArgs(from wal.LSN, since time.Time) error {
	if from != 0 && !since.IsZero() {
		return errors.New("journal: replay from an LSN or since a time, not both")
	}
	return nil
}

// covered returns nil when the journal holds every entry the request needs,
// else an error wrapping ErrNotCovered saying what it does hold.
func covered(dir string, m *meta, from wal.LSN, since time.Time, rng Range) error {
	want := "LSN " + from.String()
	if !since.IsZero() {
		want = "changes since " + since.UTC().Format(time.RFC3339Nano)
	}
	oldest := "it holds no entries"
	if rng.Entries > 0 {
		oldest = fmt.Sprintf("its oldest entry ends at LSN %s (%s)", rng.OldestLSN, rng.OldestTime.UTC().Format(time.RFC3339))
	}
	c := m.completeFrom()
	if c == 0 {
		return fmt.Errorf("%w: replay of %s from journal %s: the journal does not know from which point it holds every batch (the daemon has not yet started streaming into it, or its start was lost), and %s; "+
			"use --flush to drop the rules' key spaces instead", ErrNotCovered, want, dir, oldest)
	}
	if since.IsZero() && from >= c || !since.IsZero() && !since.Before(m.CompleteSince) {
		return nil
	}
	return fmt.Errorf("%w: replay of %s from journal %s: the journal holds every batch only after LSN %s (committed since %s), and %s; "+
		"what came before was removed by retention or never journaled: replay from a later point, or use --flush to drop the rules' key spaces instead",
		ErrNotCovered, want, dir, c, m.CompleteSince.UTC().Format(time.RFC3339), oldest)
}

// segmentSnapshot is a segment as a replay found it.
type segmentSnapshot struct {
	seq   uint64
	path  string
	limit int64 // bytes to read
	// tolerant: the newest segment of a journal another process may be
	// writing, or that a crash left unrepaired: a bad record ends it.
	tolerant bool
	// summary: the following are known, so the segment can be skipped
	// without reading it.
	summary bool
	entries int64
	lastEnd wal.LSN
	maxTime time.Time
}

// completeFrom is where the journal's coverage starts: the position the
// daemon streamed from, which it vouches for even before any entry follows.
func replaySegments(ctx context.Context, snaps []segmentSnapshot, from wal.LSN, since time.Time, completeFrom wal.LSN, fn func(mapping.Batch) error, vanished func() error) error {
	var prevEnd, newest wal.LSN
	matched := false
	each := func(b mapping.Batch) error {
		matched = true
		return fn(b)
	}
	for _, s := range snaps {
		if s.summary && (s.entries == 0 || since.IsZero() && s.lastEnd < from || !since.IsZero() && s.maxTime.Before(since)) {
			newest = max(newest, s.lastEnd)
			continue
		}
		r, err := openSegment(s.path, s.seq, s.limit)
		if errors.Is(err, os.ErrNotExist) && vanished != nil {
			if err := vanished(); err != nil {
				return err
			}
			continue
		}
		if errors.Is(err, errShortHeader) && s.tolerant {
			return nil // being created
		}
		if err != nil {
			return replayDamaged(err)
		}
		err = replaySegment(ctx, r, s.tolerant, from, since, each, &prevEnd)
		r.Close()
		if err != nil {
			return err
		}
		newest = max(newest, prevEnd)
	}
	if !matched && since.IsZero() && from > max(newest, completeFrom) {
		// Every confirmed position was journaled first (or is where the
		// journal's coverage starts), so a position past both is one this
		// journal never saw: another slot's, server's or data directory's,
		// or a typo. Replaying nothing and reporting success would leave
		// the cache as stale as it was.
		return fmt.Errorf("%w: replay of LSN %s: the journal's newest entry ends at LSN %s (it holds every batch after %s), so it holds nothing at or after %s; "+
			"check --from (is it a position of another slot, server or --data-dir?), or use --flush to drop the rules' key spaces instead",
			ErrPastNewest, from, newest, completeFrom, from)
	}
	return nil
}

func replaySegment(ctx context.Context, r *segmentReader, tolerant bool, from wal.LSN, since time.Time, fn func(mapping.Batch) error, prevEnd *wal.LSN) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := r.next()
		if err == io.EOF {
			return nil
		}
		var b mapping.Batch
		var e entryInfo
		if err == nil {
			c := cursor{p: p}
			e = decodeInfo(&c)
			switch {
			case c.err != nil:
				err = r.corrupt("undecodable entry: %v", c.err)
			case e.EndLSN < *prevEnd:
				err = r.corrupt("entry end LSN %s is before the previous entry's %s", e.EndLSN, *prevEnd)
			}
		}
		if err == nil {
			*prevEnd = e.EndLSN
			if since.IsZero() && e.EndLSN < from || !since.IsZero() && e.Time.Before(since) {
				continue
			}
			if b, _, err = decodeEntry(p, true); err != nil {
				err = r.corrupt("undecodable entry: %v", err)
			}
		}
		if err != nil {
			if tolerant {
				return nil // an unfinished write at the end of the newest segment
			}
			return replayDamaged(err)
		}
		if err := fn(b); err != nil {
			return fmt.Errorf("replay entry ending at LSN %s: %w", b.EndLSN, err)
		}
	}
}

func replayDamaged(err error) error {
	if errors.Is(err, errNewerFormat) {
		return fmt.Errorf("replay: %w: run the newer cachesync that wrote it", err)
	}
	return fmt.Errorf("replay: %w; the entries from there on cannot be replayed: restore the file from a backup, or use --flush to drop the rules' key spaces instead", err)
}

// readJournalDir lists the segments that belong to the journal (not those a
// clean-up has yet to remove) and reads the metadata, in that order: the
// journal moves journal.json forward before it removes segments, so a
// listing older than the metadata can only show more segments than the
// metadata counts, never fewer.
func readJournalDir(dir string) (meta, []segmentFile, error) {
	files, err := listSegments(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return meta{}, nil, fmt.Errorf("list journal segments: %w", err)
	}
	m, ok, err := readMeta(dir)
	if err != nil {
		return meta{}, nil, err
	}
	if !ok {
		if len(files) == 0 {
			return meta{}, nil, fmt.Errorf("no journal in %s (has `cachesync run` used this --data-dir?): %w", dir, os.ErrNotExist)
		}
		return meta{FirstSegment: files[0].seq}, files, nil // completeness unknown
	}
	i := 0
	for i < len(files) && files[i].seq < m.FirstSegment {
		i++
	}
	files = files[i:]
	// Segments removed by hand that the daemon's Open has not noticed yet:
	// judge coverage as Open will (see adoptRemovedSegments).
	if m.CompleteFrom != "" && (len(files) == 0 || files[0].seq > m.FirstSegment) {
		e, found, err := firstEntry(files, true)
		if err != nil {
			return meta{}, nil, err
		}
		if found {
			m.setComplete(max(m.completeFrom(), e.EndLSN), later(m.CompleteSince, e.Time))
		} else {
			m.CompleteFrom, m.CompleteSince = "", time.Time{}
		}
	}
	return m, files, nil
}

// firstEntry returns the oldest entry of the segments. With newest set, the
// last of them is the journal's newest segment, which may be unfinished.
func firstEntry(files []segmentFile, newest bool) (entryInfo, bool, error) {
	for i, f := range files {
		tolerant := newest && i == len(files)-1
		r, err := openSegment(f.path, f.seq, f.size)
		if err != nil {
			if tolerant && errors.Is(err, errShortHeader) {
				return entryInfo{}, false, nil
			}
			return entryInfo{}, false, err
		}
		p, err := r.next()
		var e entryInfo
		if err == nil {
			c := cursor{p: p}
			e = decodeInfo(&c)
			if c.err != nil {
				err = r.corrupt("undecodable entry: %v", c.err)
			}
		}
		r.Close()
		switch {
		case err == nil:
			return e, true, nil
		case err == io.EOF || tolerant:
			continue // empty, or a torn first record of the newest segment
		default:
			return entryInfo{}, false, err
		}
	}
	return entryInfo{}, false, nil
}

// errVanished: a segment disappeared while Inspect read it (retention).
var errVanished = errors.New("segment removed while reading")

// Inspect reports what the journal in dir holds, without locking it or
// changing anything, so it works while a daemon writes it: an unfinished
// record at the end is ignored, not cut. It reads the newest segment (and
// the first entry of the oldest); Entries is estimated for the others from
// their size.
func Inspect(dir string) (Range, error) {
	for attempt := 0; ; attempt++ {
		r, err := inspect(dir)
		if errors.Is(err, errVanished) && attempt < 10 {
			continue
		}
		return r, err
	}
}

func inspect(dir string) (Range, error) {
	m, files, err := readJournalDir(dir)
	if err != nil {
		return Range{}, err
	}
	rng := Range{Segments: len(files), CompleteFrom: m.completeFrom()}
	if rng.CompleteFrom != 0 {
		rng.CompleteSince = m.CompleteSince
	}
	for _, f := range files {
		rng.Bytes += f.size
	}
	// Newest: scan back from the newest segment to the first with entries.
	var recordBytes int64
	lowest := len(files)
	var oldest *segment
	for i := len(files) - 1; i >= 0; i-- {
		last := i == len(files)-1
		s, bad, err := scanSegment(files[i], 0)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return Range{}, errVanished
		case last && errors.Is(err, errShortHeader):
			s, err = &segment{}, nil // being created
		case err != nil:
			return Range{}, err
		case bad != nil && !last:
			return Range{}, bad
		}
		lowest = i
		rng.Entries += s.entries
		recordBytes += s.size - segmentHeaderSize
		if s.entries > 0 {
			rng.NewestLSN, rng.NewestTime = s.lastEnd, s.lastTime
			oldest = s
			break
		}
	}
	if oldest == nil {
		return rng, nil // no entries
	}
	rng.OldestLSN, rng.OldestTime = oldest.firstEnd, oldest.firstTime
	if lowest > 0 {
		e, ok, err := firstEntry(files[:lowest], false)
		if errors.Is(err, os.ErrNotExist) {
			return Range{}, errVanished
		}
		if err != nil {
			return Range{}, err
		}
		if ok {
			rng.OldestLSN, rng.OldestTime = e.EndLSN, e.Time
		}
		var unread int64
		for _, f := range files[:lowest] {
			unread += max(f.size-segmentHeaderSize, 0)
		}
		if recordBytes > 0 {
			rng.Entries += (unread*rng.Entries + recordBytes/2) / recordBytes
		}
	}
	return rng, nil
}
