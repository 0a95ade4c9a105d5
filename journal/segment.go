package journal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cachesync/cachesync/wal"
)

const segmentSuffix = ".journal"

func segmentName(seq uint64) string { return fmt.Sprintf("%08d%s", seq, segmentSuffix) }

// parseSegmentName accepts exactly the names segmentName produces.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segmentSuffix)
	if !ok || digits == "" {
		return 0, false
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || segmentName(seq) != name {
		return 0, false
	}
	return seq, true
}

// segmentFile is a segment found in the directory.
type segmentFile struct {
	seq  uint64
	path string
	size int64
}

// listSegments returns the directory's segments, oldest first.
func listSegments(dir string) ([]segmentFile, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []segmentFile
	for _, de := range des {
		seq, ok := parseSegmentName(de.Name())
		if !ok || !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by retention since ReadDir
		}
		if err != nil {
			return nil, err
		}
		out = append(out, segmentFile{seq: seq, path: filepath.Join(dir, de.Name()), size: info.Size()})
	}
	slices.SortFunc(out, func(a, b segmentFile) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return out, nil
}

// segment is what the journal keeps in memory about one segment file.
type segment struct {
	seq  uint64
	path string
	// size is the durable size: everything up to it is fsync'd records.
	size    int64
	entries int64
	// Positions and times of the first and last entries; maxTime is the
	// newest entry time (times are not strictly ordered).
	firstEnd, lastEnd            wal.LSN
	firstTime, lastTime, maxTime time.Time
	lastHasOps                   bool
}

func (s *segment) add(e entryInfo, size int64) {
	if s.entries == 0 {
		s.firstEnd, s.firstTime = e.EndLSN, e.Time
	}
	s.entries++
	s.lastEnd, s.lastTime, s.lastHasOps = e.EndLSN, e.Time, e.Ops > 0
	if e.Time.After(s.maxTime) {
		s.maxTime = e.Time
	}
	s.size += size
}

// CorruptError reports damage in a journal segment that is not a torn tail
// left by a crash: a checksum or format error before the end of the newest
// segment, or in an older one.
type CorruptError struct {
	Path   string
	Offset int64
	Reason string
	// Err is the cause when there is one (errNewerFormat for a segment from
	// a newer cachesync).
	Err error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("journal segment %s is corrupt at offset %d: %s", e.Path, e.Offset, e.Reason)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// segmentReader streams the records of one segment; it never holds more than
// one record in memory.
type segmentReader struct {
	f       *os.File
	br      *bufio.Reader
	path    string
	off     int64 // offset of the next record
	limit   int64 // bytes of the file to read
	payload []byte
	// recordOff is the offset of the record next last returned.
	recordOff int64
}

// errShortHeader says the file is shorter than a segment header: a segment
// whose creation a crash interrupted (when it is the newest).
var errShortHeader = errors.New("shorter than a segment header")

// openSegment opens a segment for reading up to limit bytes (the file's size
// when limit < 0) and checks its header. A header error is a *CorruptError
// (wrapping errShortHeader for a file too short to hold one), or wraps
// errNewerFormat when a newer cachesync wrote the segment; the file is closed
// on error.
func openSegment(path string, seq uint64, limit int64) (*segmentReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		limit = info.Size()
	}
	r := &segmentReader{f: f, br: bufio.NewReaderSize(f, 64<<10), path: path, limit: limit}
	if limit < segmentHeaderSize {
		f.Close()
		return nil, &CorruptError{Path: path, Offset: 0, Reason: fmt.Sprintf("%d bytes are %s", limit, errShortHeader), Err: errShortHeader}
	}
	var h [segmentHeaderSize]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		f.Close()
		return nil, fmt.Errorf("read segment header of %s: %w", path, err)
	}
	got, err := parseSegmentHeader(h[:])
	if err == nil && got != seq {
		err = fmt.Errorf("header says segment %d but the file is named for %d (renamed by hand?)", got, seq)
	}
	if errors.Is(err, errNewerFormat) {
		f.Close()
		return nil, fmt.Errorf("journal segment %s: %w", path, err)
	}
	if err != nil {
		f.Close()
		return nil, &CorruptError{Path: path, Offset: 0, Reason: err.Error()}
	}
	r.off = segmentHeaderSize
	return r, nil
}

func (r *segmentReader) Close() error { return r.f.Close() }

// next returns the payload of the next record (valid until the next call),
// io.EOF at the clean end, or a *CorruptError for a record that is torn,
// damaged or runs past the limit.
func (r *segmentReader) next() ([]byte, error) {
	r.recordOff = r.off
	left := r.limit - r.off
	if left == 0 {
		return nil, io.EOF
	}
	if left < frameHeaderSize {
		return nil, r.corrupt("%d bytes before the end are too few for a record header (torn write)", left)
	}
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return nil, r.corrupt("reading record header: %v", err)
	}
	n := int64(binary.LittleEndian.Uint32(h[:4]))
	switch {
	case n == 0:
		return nil, r.corrupt("zero-length record")
	case n > maxPayload:
		return nil, r.corrupt("record length %d exceeds the limit %d", n, maxPayload)
	case n > left-frameHeaderSize:
		return nil, r.corrupt("record of %d bytes runs past the end of the file (%d bytes left; torn write?)", n, left-frameHeaderSize)
	}
	if int64(cap(r.payload)) < n {
		r.payload = make([]byte, n)
	}
	p := r.payload[:n]
	if _, err := io.ReadFull(r.br, p); err != nil {
		return nil, r.corrupt("reading record: %v", err)
	}
	if frameChecksum(h[:4], p) != binary.LittleEndian.Uint32(h[4:]) {
		return nil, r.corrupt("record checksum mismatch")
	}
	r.off += frameHeaderSize + n
	return p, nil
}

func (r *segmentReader) corrupt(format string, args ...any) *CorruptError {
	return &CorruptError{Path: r.path, Offset: r.recordOff, Reason: fmt.Sprintf(format, args...)}
}

// createSegment creates a new, empty segment durably: header written and
// fsync'd, directory fsync'd. The file is returned open for appending.
func createSegment(dir string, seq uint64) (*os.File, error) {
	path := filepath.Join(dir, segmentName(seq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create journal segment: %w", err)
	}
	if err := writeHeader(f, seq); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func writeHeader(f *os.File, seq uint64) error {
	if _, err := f.Write(appendSegmentHeader(nil, seq)); err != nil {
		return fmt.Errorf("write journal segment header %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync journal segment %s: %w", f.Name(), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync journal directory %s: %w", dir, err)
	}
	return nil
}
