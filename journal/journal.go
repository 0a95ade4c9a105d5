// Package journal is the durable log of the batches the daemon applied to
// Redis: `cachesync replay` re-applies them after Redis lost its recent past
// (a restore from an old backup, a restart without persistence), the newest
// journaled position tells the daemon whether someone moved the replication
// slot behind its back, and `cachesync status` shows what it holds.
//
// # Lifecycle
//
// Open takes an exclusive lock on the directory (one writer per journal),
// recovers from a crash and returns a Journal to Append to; Close releases
// it. Inspect, ReadState and ReplayDir read a directory without the lock, so
// they work while a daemon is writing it.
//
// # Files
//
// Dir holds segment files named by sequence number (00000001.journal, ...),
// journal.json (where the journal is complete from, the oldest segment that
// should exist), state.json (the PostgreSQL system, timeline and slot it
// belongs to) and journal.lock (the flock, holding the owner's pid). The
// segment format is described in format.go. Only the newest segment is
// appended to; a crash can leave a torn record at its end, which Open cuts
// off. Damage anywhere else is reported, never skipped. A record holds at
// most 1 GiB (Options.MaxRecordBytes); `cachesync run` journals a batch too
// large for one as the flushes of its rules' key spaces (Options.Oversized,
// CoveringFlushes), so that it never stops the confirm.
//
// # Coverage
//
// A position P (an LSN) stands for the state after every transaction whose
// EndLSN is at most P, as in PostgreSQL's confirmed_flush_lsn. The journal is
// "complete from C": it holds every batch whose EndLSN is above C. Replay
// from P needs the batches above P, so it is covered when P >= C (it also
// returns a batch ending exactly at P, which is harmless: every effect is
// idempotent). C is unknown until the daemon calls SetCompleteFrom with the
// slot position it starts streaming from; retention moves it forward over
// what it deletes. The same holds for time: the journal has every batch
// committed at or after CompleteSince.
package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

// Defaults for Options.
const (
	DefaultMaxAge       = 24 * time.Hour
	DefaultMaxBytes     = 1 << 30
	DefaultSegmentBytes = 64 << 20
)

const (
	// flushChunk bounds how much of one Append is buffered before it is
	// written (not synced): a huge group does not need a huge buffer.
	flushChunk = 1 << 20
	// keepBuffer is the largest buffer kept between Appends.
	keepBuffer = 4 << 20
)

// Options configure a Journal.
type Options struct {
	// Dir is the journal directory, created (0700) if missing. Required.
	Dir string
	// MaxAge removes segments whose entries all committed longer ago than
	// this. 0 means DefaultMaxAge; negative keeps them regardless of age.
	MaxAge time.Duration
	// MaxBytes removes the oldest segments while all of them together are
	// larger. 0 means DefaultMaxBytes; negative sets no size limit.
	MaxBytes int64
	// SegmentBytes starts a new segment once the newest one is this large.
	// 0 or negative means DefaultSegmentBytes.
	SegmentBytes int64
	// MaxRecordBytes bounds one record's payload: 0, negative or more than
	// 1 GiB mean 1 GiB, the most a reader accepts.
	MaxRecordBytes int
	// Oversized, when set, is given a batch whose record would exceed
	// MaxRecordBytes and returns one that fits and is at least as strong
	// on replay (CoveringFlushes), which is journaled in its place. A
	// batch that still does not fit, or without Oversized, fails Append
	// with ErrRecordTooLarge before anything of the call is written.
	Oversized func(b *mapping.Batch) (mapping.Batch, error)
	Logger    zerolog.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

var (
	// ErrLocked is returned by Open when another process holds the journal.
	ErrLocked = errors.New("journal is locked by another process")
	// ErrClosed is returned by a Journal's methods after Close.
	ErrClosed = errors.New("journal is closed")
	// ErrNotCovered is returned by Replay when the journal does not reach
	// back to the requested point: what came before was removed by retention
	// or never journaled. The message gives what the journal does cover.
	ErrNotCovered = errors.New("journal does not reach back to the requested point")
	// ErrPastNewest is returned by Replay from an LSN past the journal's
	// newest entry. It wraps ErrNotCovered: the journal holds nothing of
	// what was asked for.
	ErrPastNewest = fmt.Errorf("%w: the requested LSN is past the journal's newest entry", ErrNotCovered)
)

// Journal is an open journal directory: the only writer of it.
// Its methods are safe for concurrent use.
type Journal struct {
	opts Options
	dir  string
	log  zerolog.Logger
	lock *os.File

	mu     sync.Mutex
	closed bool
	// err sticks after a failed write or fsync: what reached the disk is
	// then unknown (a failed fsync may have dropped the pages), so the
	// journal refuses to append until it is reopened, which cuts the tail.
	err       error
	meta      meta
	state     State
	haveState bool
	segs      []*segment // oldest first; the last one is the active segment
	f         *os.File   // the active segment, opened for appending
	buf       []byte
	// The newest entry journaled, kept apart from segs because retention
	// may remove its segment once a new one is started.
	newestEnd    wal.LSN
	newestHasOps bool
	haveNewest   bool
	// replaying counts running Replays; retention waits for them.
	replaying        int
	warnedIncomplete bool
}

// Open opens the journal in opts.Dir for appending, creating it if needed.
//
// It takes an exclusive lock, so two daemons never write one journal. It
// recovers from a crash: a torn or damaged record at the end of the newest
// segment (anything Append had not finished syncing) is cut off and logged
// with its size. Damage in an older segment, or in the newest one's header,
// is an error naming the file and offset, with what to do.
func Open(opts Options) (*Journal, error) {
	if opts.Dir == "" {
		return nil, errors.New("journal: Options.Dir is required: the directory that keeps the journal (--data-dir)")
	}
	if opts.MaxAge == 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	dir := filepath.Clean(opts.Dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal directory: %w", err)
	}
	lock, err := acquireLock(dir)
	if err != nil {
		return nil, err
	}
	j := &Journal{opts: opts, dir: dir, lock: lock, log: opts.Logger.With().Str("journal", dir).Logger()}
	if err := j.recover(); err != nil {
		if j.f != nil {
			j.f.Close()
		}
		lock.Close()
		return nil, err
	}
	return j, nil
}

func acquireLock(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open journal lock: %w", err)
	}
	held, err := tryLock(f.Fd())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock journal %s: %w", dir, err)
	}
	if held {
		owner, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		who := "another process"
		if pid := strings.TrimSpace(string(owner)); pid != "" {
			who = "process " + pid
		}
		return nil, fmt.Errorf("%w: %s, probably another cachesync, holds the journal in %s; only one may write it: stop the other one, or give this one its own --data-dir",
			ErrLocked, who, dir)
	}
	// The pid is only for the message above; the lock is the flock.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// recover loads the metadata, finishes an interrupted clean-up, checks every
// segment, cuts a torn tail and opens the active segment.
func (j *Journal) recover() error {
	for _, name := range []string{metaFile, stateFile} {
		_ = os.Remove(filepath.Join(j.dir, name+tmpSuffix)) // a write a crash interrupted
	}
	m, ok, err := readMeta(j.dir)
	if err != nil {
		return err
	}
	files, err := listSegments(j.dir)
	if err != nil {
		return fmt.Errorf("list journal segments: %w", err)
	}
	if !ok {
		m = meta{Format: formatVersion, FirstSegment: 1, Created: j.opts.Now().UTC()}
		if len(files) > 0 {
			m.FirstSegment = files[0].seq
			j.log.Warn().Msg("journal metadata (journal.json) is missing though segments exist; " +
				"the journal no longer knows where it is complete from and refuses replay until the daemon sets it again")
		}
		if err := writeMeta(j.dir, m); err != nil {
			return err
		}
	}
	if m.FirstSegment == 0 {
		m.FirstSegment = 1
	}
	m.Format = formatVersion

	// Segments before FirstSegment were being deleted (retention, Reset).
	kept := files[:0]
	for _, f := range files {
		if f.seq >= m.FirstSegment {
			kept = append(kept, f)
			continue
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove journal segment %s left over from a clean-up: %w", f.path, err)
		}
		j.log.Info().Str("file", f.path).Msg("removed a journal segment left over from an interrupted clean-up")
	}
	if len(kept) < len(files) {
		if err := syncDir(j.dir); err != nil {
			return err
		}
	}
	files = kept
	if err := checkContiguous(j.dir, files); err != nil {
		return err
	}

	for i, f := range files {
		s, err := j.recoverSegment(f, files[:i+1], i == len(files)-1)
		if err != nil {
			return err
		}
		if s.entries > 0 {
			j.newestEnd, j.newestHasOps, j.haveNewest = s.lastEnd, s.lastHasOps, true
		}
		j.segs = append(j.segs, s)
	}

	// Segments are only ever removed after journal.json moved FirstSegment
	// past them, and a Reset creates its new segment before that: so no
	// segment at all while the journal claims completeness, or an oldest
	// segment after FirstSegment, means segments were removed by hand.
	if len(files) == 0 && m.CompleteFrom != "" || len(files) > 0 && files[0].seq > m.FirstSegment {
		j.adoptRemovedSegments(&m)
		if len(files) > 0 {
			m.FirstSegment = files[0].seq
		}
		if err := writeMeta(j.dir, m); err != nil {
			return err
		}
	}
	j.meta = m

	if len(j.segs) == 0 {
		f, err := createSegment(j.dir, m.FirstSegment)
		if err != nil {
			return err
		}
		j.f = f
		j.segs = []*segment{{seq: m.FirstSegment, path: f.Name(), size: segmentHeaderSize}}
	} else {
		act := j.segs[len(j.segs)-1]
		f, err := os.OpenFile(act.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("open journal segment %s: %w", act.path, err)
		}
		j.f = f
	}

	st, ok, err := ReadState(j.dir)
	if err != nil {
		return err
	}
	j.state, j.haveState = st, ok
	j.retain(j.opts.Now())
	return nil
}

// adoptRemovedSegments handles segments that disappeared from the front of
// the journal without the journal removing them (by hand, after damage):
// what they held is gone, so the journal is complete only from its oldest
// remaining entry on.
func (j *Journal) adoptRemovedSegments(m *meta) {
	if m.CompleteFrom == "" {
		return
	}
	var first *segment
	for _, s := range j.segs {
		if s.entries > 0 {
			first = s
			break
		}
	}
	if first == nil {
		m.CompleteFrom, m.CompleteSince = "", time.Time{}
		j.log.Warn().Uint64("expected_first_segment", m.FirstSegment).
			Msg("journal segments were removed from outside cachesync and nothing is left: the journal no longer knows where it is complete from; replay is refused until the daemon sets it again")
		return
	}
	m.setComplete(max(m.completeFrom(), first.firstEnd), later(m.CompleteSince, first.firstTime))
	j.log.Warn().Uint64("expected_first_segment", m.FirstSegment).Uint64("first_segment", first.seq).
		Str("complete_from", m.CompleteFrom).
		Msg("journal segments were removed from outside cachesync: replay before the oldest remaining entry is refused from now on")
}

// recoverSegment checks one segment. The newest one may end in a torn record
// (a write that Append did not finish syncing): that tail is cut off.
func (j *Journal) recoverSegment(f segmentFile, upTo []segmentFile, last bool) (*segment, error) {
	prev := wal.LSN(0)
	if j.haveNewest {
		prev = j.newestEnd
	}
	s, bad, err := scanSegment(f, prev)
	if err != nil {
		var ce *CorruptError
		torn := errors.Is(err, errShortHeader) || errors.As(err, &ce) && f.size == segmentHeaderSize && !errors.Is(err, errNewerFormat)
		if last && torn {
			// Creation was interrupted before its header was synced, and no
			// record can follow an unsynced header: start the file again.
			if err := rewriteSegment(j.dir, f); err != nil {
				return nil, err
			}
			j.log.Warn().Str("file", f.path).Int64("bytes", f.size).Msg("journal: rewrote the header of a segment whose creation a crash interrupted")
			return &segment{seq: f.seq, path: f.path, size: segmentHeaderSize}, nil
		}
		return nil, damaged(j.dir, err, upTo)
	}
	if bad == nil {
		return s, nil
	}
	if !last {
		return nil, damaged(j.dir, bad, upTo)
	}
	if err := truncateFile(f.path, bad.Offset); err != nil {
		return nil, err
	}
	j.log.Warn().Str("file", f.path).Int64("offset", bad.Offset).Int64("bytes", f.size-bad.Offset).Str("reason", bad.Reason).
		Msg("journal: cut a torn tail off the newest segment (a write a crash interrupted; those batches were never confirmed)")
	return s, nil
}

// damaged explains damage in a segment that is not a torn tail.
func damaged(dir string, err error, upTo []segmentFile) error {
	if errors.Is(err, errNewerFormat) {
		return fmt.Errorf("%w: run the newer cachesync that wrote it, or move %s aside to start a new journal", err, dir)
	}
	var ce *CorruptError
	if !errors.As(err, &ce) {
		return err
	}
	older := filepath.Base(ce.Path)
	if len(upTo) > 1 {
		older = fmt.Sprintf("%s and every older segment (%s to %s)", filepath.Base(ce.Path), filepath.Base(upTo[0].path), filepath.Base(upTo[len(upTo)-2].path))
	}
	return fmt.Errorf("%w; only the end of the newest segment can be torn by a crash, so this is damage to the file or disk. "+
		"To go on, restore it from a backup, or move %s out of %s: the journal then covers only what follows, and replay before that is refused (use --flush)",
		err, older, dir)
}

// scanSegment reads a whole segment and returns its summary. bad is the
// first record that is torn, damaged or out of order (the summary covers what
// precedes it); err is a header problem or an I/O error.
func scanSegment(f segmentFile, prevEnd wal.LSN) (s *segment, bad *CorruptError, err error) {
	r, err := openSegment(f.path, f.seq, f.size)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	s = &segment{seq: f.seq, path: f.path, size: segmentHeaderSize}
	for {
		p, err := r.next()
		if err == io.EOF {
			return s, nil, nil
		}
		if err != nil {
			return s, err.(*CorruptError), nil
		}
		_, e, err := decodeEntry(p, false)
		if err != nil {
			return s, r.corrupt("undecodable entry: %v", err), nil
		}
		if e.EndLSN < prevEnd {
			return s, r.corrupt("entry end LSN %s is before the previous entry's %s", e.EndLSN, prevEnd), nil
		}
		prevEnd = e.EndLSN
		s.add(e, frameHeaderSize+int64(len(p)))
	}
}

func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cut torn tail of %s: %w", path, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cut torn tail of %s: %w", path, err)
	}
	return nil
}

// rewriteSegment empties a segment and writes its header again.
func rewriteSegment(dir string, f segmentFile) error {
	file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("rewrite journal segment: %w", err)
	}
	err = writeHeader(file, f.seq)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

// checkContiguous refuses a hole in the sequence of segments: the entries of
// the missing ones would silently be skipped.
func checkContiguous(dir string, files []segmentFile) error {
	for i := 1; i < len(files); i++ {
		if files[i].seq != files[i-1].seq+1 {
			return fmt.Errorf("journal %s: %s is missing between %s and %s (removed by hand?): restore it, or move %s and every older segment out of the directory; "+
				"the journal then covers only what follows, and replay before that is refused (use --flush)",
				dir, segmentName(files[i-1].seq+1), filepath.Base(files[i-1].path), filepath.Base(files[i].path), filepath.Base(files[i-1].path))
		}
	}
	return nil
}

// Close closes the journal and releases its lock. Every Append has already
// synced what it wrote, so there is nothing to flush.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	var errs []error
	if j.f != nil {
		errs = append(errs, j.f.Close())
	}
	errs = append(errs, j.lock.Close())
	return errors.Join(errs...)
}

func (j *Journal) usable() error {
	if j.closed {
		return ErrClosed
	}
	if j.err != nil {
		return fmt.Errorf("journal %s cannot be appended to after a failed write (%w): close it and open it again (or restart cachesync); Open cuts off the unfinished write", j.dir, j.err)
	}
	return nil
}

// fail makes err stick (see Journal.err) and returns it.
func (j *Journal) fail(err error) error {
	j.err = err
	return fmt.Errorf("journal %s: %w", j.dir, err)
}

// Append journals one entry per batch, in order, and syncs them to disk
// before it returns: one fsync per call (plus one per new segment).
//
// Batches without operations are journaled too, as small position-only
// entries: the daemon must journal every position before confirming it.
// A batch whose EndLSN is at or below the newest journaled entry's is a
// redelivery (a restart between Append and the confirmation) and is skipped,
// so the journal's positions only grow. An empty batch at the same EndLSN as
// the newest entry is skipped too; a batch with operations after an empty one
// at the same EndLSN is kept.
//
// After a failed write the journal refuses further Appends until reopened.
func (j *Journal) Append(ctx context.Context, batches []mapping.Batch) error {
	if len(batches) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.usable(); err != nil {
		return err
	}
	if j.meta.CompleteFrom == "" && !j.warnedIncomplete {
		j.warnedIncomplete = true
		j.log.Warn().Msg("journal: appending without a known start; call SetCompleteFrom with the slot position streaming started from, or replay will be refused")
	}
	now := j.opts.Now()
	act := j.segs[len(j.segs)-1]
	var pend segment // this call's entries not yet synced to act
	buf := j.buf[:0]
	wrote := false // bytes of this call reached the file
	newestEnd, newestHasOps, haveNewest := j.newestEnd, j.newestHasOps, j.haveNewest
	skipped := 0
	for i := range batches {
		b := &batches[i]
		if haveNewest && (b.EndLSN < newestEnd || b.EndLSN == newestEnd && (len(b.Ops) == 0 || newestHasOps)) {
			skipped++
			continue
		}
		if act.size+pend.size >= j.opts.SegmentBytes && act.entries+pend.entries > 0 {
			if len(buf) > 0 || pend.entries > 0 {
				if err := j.write(buf); err != nil {
					return j.fail(err)
				}
				if err := j.f.Sync(); err != nil {
					return j.fail(fmt.Errorf("fsync %s: %w", act.path, err))
				}
				wrote = true
				act.merge(&pend)
				buf, pend = buf[:0], segment{}
			}
			if err := j.roll(); err != nil {
				return j.fail(err)
			}
			act = j.segs[len(j.segs)-1]
		}
		n := len(buf)
		var err error
		buf, err = appendRecord(buf, b, now, j.recordLimit())
		if errors.Is(err, ErrRecordTooLarge) && j.opts.Oversized != nil {
			// A record that can never be written would stop every
			// confirm, restart after restart: journal a smaller
			// batch that replays at least as strongly.
			var small mapping.Batch
			if small, err = j.opts.Oversized(b); err == nil {
				b = &small
				buf, err = appendRecord(buf, b, now, j.recordLimit())
			}
		}
		if err != nil {
			if wrote {
				return j.fail(err)
			}
			j.buf = buf[:0]
			return fmt.Errorf("journal: %w", err)
		}
		t := b.CommitTime
		if t.IsZero() {
			t = now
		}
		pend.add(entryInfo{EndLSN: b.EndLSN, Time: t, Ops: len(b.Ops)}, int64(len(buf)-n))
		newestEnd, newestHasOps, haveNewest = b.EndLSN, len(b.Ops) > 0, true
		if len(buf) >= flushChunk {
			if err := j.write(buf); err != nil {
				return j.fail(err)
			}
			wrote = true
			buf = buf[:0]
		}
	}
	if skipped > 0 {
		j.log.Debug().Int("skipped", skipped).Stringer("newest_lsn", j.newestEnd).Msg("journal: skipped batches already journaled (redelivered)")
	}
	if pend.entries > 0 {
		if err := j.write(buf); err != nil {
			return j.fail(err)
		}
		if err := j.f.Sync(); err != nil {
			return j.fail(fmt.Errorf("fsync %s: %w", act.path, err))
		}
		act.merge(&pend)
	}
	j.newestEnd, j.newestHasOps, j.haveNewest = newestEnd, newestHasOps, haveNewest
	if cap(buf) <= keepBuffer {
		j.buf = buf[:0]
	} else {
		j.buf = nil
	}
	j.retain(now)
	return nil
}

// recordLimit is the largest payload Append writes.
func (j *Journal) recordLimit() int {
	if n := j.opts.MaxRecordBytes; n > 0 && n < maxPayload {
		return n
	}
	return maxPayload
}

// CoveringFlushes returns b with its operations replaced by flushes of the
// key spaces of the rules they belong to, one per rule, in the order the
// rules first appear (flushes b already holds are kept as they are): a
// batch that replays at least as strongly as b, and whose size no longer
// depends on the values it carried. It fails when a rule of b is not in
// keyspaces.
func CoveringFlushes(b *mapping.Batch, keyspaces map[string]mapping.Keyspace, reason string) (mapping.Batch, error) {
	out := *b
	out.Ops = nil
	flushed := map[string]bool{}
	for i := range b.Ops {
		op := &b.Ops[i]
		if op.Kind == mapping.OpFlush {
			out.Ops = append(out.Ops, *op)
			continue
		}
		if flushed[op.Rule] {
			continue
		}
		ks, ok := keyspaces[op.Rule]
		if !ok {
			return mapping.Batch{}, fmt.Errorf("batch end LSN %s: rule %q of a %s operation has no known key space to flush instead", b.EndLSN, op.Rule, op.Kind)
		}
		flushed[op.Rule] = true
		out.Ops = append(out.Ops, mapping.Op{Kind: mapping.OpFlush, Keyspace: &ks, Rule: op.Rule, Reason: reason})
	}
	return out, nil
}

func (j *Journal) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := j.f.Write(p); err != nil {
		return fmt.Errorf("write %s: %w", j.f.Name(), err)
	}
	return nil
}

// merge adds the entries of p, which follow s's, to s.
func (s *segment) merge(p *segment) {
	if p.entries == 0 {
		return
	}
	if s.entries == 0 {
		s.firstEnd, s.firstTime = p.firstEnd, p.firstTime
	}
	s.entries += p.entries
	s.lastEnd, s.lastTime, s.lastHasOps = p.lastEnd, p.lastTime, p.lastHasOps
	s.maxTime = later(s.maxTime, p.maxTime)
	s.size += p.size
}

// roll starts a new active segment. The current one must be synced.
func (j *Journal) roll() error {
	act := j.segs[len(j.segs)-1]
	f, err := createSegment(j.dir, act.seq+1)
	if err != nil {
		return err
	}
	if err := j.f.Close(); err != nil {
		j.log.Warn().Err(err).Str("file", act.path).Msg("journal: closing a finished segment failed (it was synced)")
	}
	j.f = f
	j.segs = append(j.segs, &segment{seq: act.seq + 1, path: f.Name(), size: segmentHeaderSize})
	return nil
}

// retain removes the oldest segments (never the active one) while they are
// all older than MaxAge or the journal is larger than MaxBytes. It moves the
// complete-from point past them first, so a crash in between only leaves
// files that the next Open removes. Failures are logged: the entries are
// safe, only space is not freed.
func (j *Journal) retain(now time.Time) {
	if j.replaying > 0 || len(j.segs) < 2 {
		return
	}
	var total int64
	for _, s := range j.segs {
		total += s.size
	}
	n := 0
	for ; n < len(j.segs)-1; n++ {
		s := j.segs[n]
		aged := s.entries == 0 || j.opts.MaxAge > 0 && now.Sub(s.maxTime) > j.opts.MaxAge
		over := j.opts.MaxBytes > 0 && total > j.opts.MaxBytes
		if !aged && !over {
			break
		}
		total -= s.size
	}
	if n == 0 {
		return
	}
	victims := j.segs[:n]
	m := j.meta
	m.FirstSegment = j.segs[n].seq
	if c := m.completeFrom(); c != 0 {
		since := m.CompleteSince
		for _, v := range victims {
			if v.entries > 0 {
				c, since = max(c, v.lastEnd), later(since, v.maxTime)
			}
		}
		m.setComplete(c, since)
	}
	if err := writeMeta(j.dir, m); err != nil {
		j.log.Error().Err(err).Msg("journal: retention could not update journal.json; old segments are kept")
		return
	}
	j.meta = m
	var bytes int64
	for _, v := range victims {
		if err := os.Remove(v.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.log.Error().Err(err).Str("file", v.path).Msg("journal: retention could not remove a segment; the next Open retries")
		}
		bytes += v.size
	}
	if err := syncDir(j.dir); err != nil {
		j.log.Warn().Err(err).Msg("journal: retention")
	}
	j.segs = append(j.segs[:0:0], j.segs[n:]...)
	j.log.Info().Int("segments", n).Int64("bytes", bytes).Str("complete_from", m.CompleteFrom).
		Msg("journal: removed old segments")
}

// Range is what a journal holds.
type Range struct {
	// Oldest and newest retained entries: EndLSN and commit time (or, for
	// entries without one, the time they were journaled). Zero when empty.
	OldestLSN, NewestLSN   wal.LSN
	OldestTime, NewestTime time.Time
	// Entries is exact for an open Journal; Inspect counts the newest
	// segment(s) and estimates the others from their size.
	Entries int64
	// Bytes is the size of the segment files (headers included).
	Bytes    int64
	Segments int
	// CompleteFrom and CompleteSince: the journal holds every batch ending
	// after CompleteFrom and every batch committed at or after CompleteSince;
	// replay from earlier is refused. Zero while unknown.
	CompleteFrom  wal.LSN
	CompleteSince time.Time
}

// Range reports the oldest and newest entries retained.
func (j *Journal) Range() Range {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rangeLocked()
}

func (j *Journal) rangeLocked() Range {
	r := Range{Segments: len(j.segs), CompleteFrom: j.meta.completeFrom()}
	if r.CompleteFrom != 0 {
		r.CompleteSince = j.meta.CompleteSince
	}
	for _, s := range j.segs {
		r.Bytes += s.size
		if s.entries == 0 {
			continue
		}
		if r.Entries == 0 {
			r.OldestLSN, r.OldestTime = s.firstEnd, s.firstTime
		}
		r.Entries += s.entries
		r.NewestLSN, r.NewestTime = s.lastEnd, s.lastTime
	}
	return r
}

// LastLSN is the highest position the journal vouches for: the newest
// journaled EndLSN, or CompleteFrom when that is higher (a fresh journal, or
// retention removed the newest entry's segment). A slot whose
// confirmed_flush_lsn is above it was moved by someone else. 0 on a new
// journal.
func (j *Journal) LastLSN() wal.LSN {
	j.mu.Lock()
	defer j.mu.Unlock()
	return max(j.newestEnd, j.meta.completeFrom())
}

// SetCompleteFrom records that the journal holds every batch ending after
// lsn: the daemon calls it with the slot's position when it starts streaming
// into a journal that does not reach it (a new journal, or after a new slot).
// It only moves forward: a position at or below the current one changes
// nothing (use Reset to start over). It is synced before it returns.
func (j *Journal) SetCompleteFrom(lsn wal.LSN) error {
	if lsn == 0 {
		return errors.New("journal: SetCompleteFrom(0/0): give the position streaming starts from (the slot's confirmed_flush_lsn)")
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.usable(); err != nil {
		return err
	}
	if cur := j.meta.completeFrom(); cur != 0 && lsn <= cur {
		return nil
	}
	m := j.meta
	m.setComplete(lsn, j.completeSince(m))
	if err := writeMeta(j.dir, m); err != nil {
		return fmt.Errorf("journal: set complete-from: %w", err)
	}
	j.meta = m
	j.log.Info().Stringer("complete_from", lsn).Msg("journal: complete from here on")
	return nil
}

// completeSince is the time bound that goes with a new complete-from point:
// every transaction not journaled committed before now (by this host's clock)
// and before the newest journaled entry.
func (j *Journal) completeSince(m meta) time.Time {
	since := later(m.CompleteSince, j.opts.Now())
	for _, s := range j.segs {
		since = later(since, s.maxTime)
	}
	return since
}

// Reset discards every entry and starts over, complete from lsn (0: unknown
// until SetCompleteFrom). It is for a journal whose positions no longer mean
// anything: a different PostgreSQL system or timeline (see State).
func (j *Journal) Reset(lsn wal.LSN) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.usable(); err != nil {
		return err
	}
	if j.replaying > 0 {
		return errors.New("journal: cannot reset while a replay is reading it; wait for the replay to finish")
	}
	// The new segment first, then journal.json pointing at it, then the
	// removal: a crash before journal.json leaves the old journal whole
	// (plus an empty segment), a crash after it leaves files Open removes.
	if j.segs[len(j.segs)-1].entries > 0 {
		if err := j.roll(); err != nil {
			return j.fail(err)
		}
	}
	act := j.segs[len(j.segs)-1]
	m := j.meta
	m.FirstSegment = act.seq
	m.CompleteFrom, m.CompleteSince = "", time.Time{}
	if lsn != 0 {
		m.setComplete(lsn, j.opts.Now())
	}
	if err := writeMeta(j.dir, m); err != nil {
		return fmt.Errorf("journal: reset: %w", err)
	}
	j.meta = m
	old := j.segs[:len(j.segs)-1]
	for _, s := range old {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.log.Error().Err(err).Str("file", s.path).Msg("journal: reset could not remove a segment; the next Open retries")
		}
	}
	if err := syncDir(j.dir); err != nil {
		return j.fail(err)
	}
	j.segs = j.segs[len(j.segs)-1:]
	j.newestEnd, j.newestHasOps, j.haveNewest = 0, false, false
	j.log.Info().Str("complete_from", m.CompleteFrom).Msg("journal: reset, every entry discarded")
	return nil
}

// State returns the State saved with SaveState; ok is false if none was.
func (j *Journal) State() (State, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.state, j.haveState
}

// SaveState records what the journal belongs to, atomically and durably.
func (j *Journal) SaveState(s State) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(j.dir, stateFile, append(data, '\n')); err != nil {
		return fmt.Errorf("journal: save state: %w", err)
	}
	j.state, j.haveState = s, true
	return nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
