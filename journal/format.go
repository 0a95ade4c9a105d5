package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

// On-disk format, version 1.
//
// A segment file starts with a 24-byte header:
//
//	magic "CSJOURNL" | version u8 | 3 zero bytes | sequence u64 LE | crc32c u32 LE of the 20 bytes before
//
// followed by records, each framed as
//
//	length u32 LE | crc32c u32 LE | payload (length bytes)
//
// where the checksum covers the length field and the payload, so a damaged
// length is caught as surely as a damaged payload. A batch payload is
//
//	kind=1 u8 | flags u8 | xid uvarint | commit LSN uvarint | end LSN uvarint |
//	time seconds varint | time nanoseconds uvarint | op count uvarint | ops
//
// and an op is
//
//	kind u8 | flags u8 | key str | [value bytes] | ttl varint | jitter varint |
//	lsn uvarint | rule str | reason str | [keyspace: keys, tags, versions as count uvarint + strs]
//
// with str/bytes = length uvarint + bytes. The segment header carries the
// version so that a later format can be introduced segment by segment.
const (
	segmentMagic      = "CSJOURNL"
	formatVersion     = 1
	segmentHeaderSize = 24
	frameHeaderSize   = 8

	// maxPayload bounds one record. A reader also never trusts a length that
	// runs past the end of the file, so a damaged length cannot make it
	// allocate more than the file holds.
	maxPayload = 1 << 30

	recordBatch = 1

	// Batch flags.
	flagTimeIsAppend = 1 << 0 // CommitTime was zero; the stored time is when it was journaled
	batchFlagsKnown  = flagTimeIsAppend

	// Op flags.
	opFlagValue    = 1 << 0 // Value is non-nil
	opFlagKeyspace = 1 << 1 // Keyspace is non-nil
	opFlagsKnown   = opFlagValue | opFlagKeyspace

	// minOpBytes is the smallest encoded op: kind, flags, and one byte for
	// each of key, ttl, jitter, lsn, rule and reason.
	minOpBytes = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func appendSegmentHeader(dst []byte, seq uint64) []byte {
	start := len(dst)
	dst = append(dst, segmentMagic...)
	dst = append(dst, formatVersion, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// errNewerFormat marks a segment written by a newer cachesync: never cut or
// misread, always refused with the fix.
var errNewerFormat = errors.New("written by a newer cachesync")

// parseSegmentHeader checks a segment header and returns its sequence number.
func parseSegmentHeader(h []byte) (uint64, error) {
	if len(h) < segmentHeaderSize {
		return 0, fmt.Errorf("segment header is %d bytes, want %d", len(h), segmentHeaderSize)
	}
	if string(h[:8]) != segmentMagic {
		return 0, errors.New("not a cachesync journal segment (bad magic)")
	}
	if binary.LittleEndian.Uint32(h[20:24]) != crc32.Checksum(h[:20], castagnoli) {
		return 0, errors.New("segment header checksum mismatch")
	}
	if v := h[8]; v != formatVersion {
		return 0, fmt.Errorf("segment format version %d, this cachesync reads %d: %w", v, formatVersion, errNewerFormat)
	}
	if h[9] != 0 || h[10] != 0 || h[11] != 0 {
		return 0, errors.New("segment header reserved bytes are not zero")
	}
	return binary.LittleEndian.Uint64(h[12:20]), nil
}

// frameChecksum is the record checksum: over the length field, then the payload.
func frameChecksum(lenField, payload []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, lenField), castagnoli, payload)
}

// ErrRecordTooLarge is returned, wrapped, by Append for a batch whose record
// would exceed the journal's record limit, when Options.Oversized is not set
// or does not make it fit.
var ErrRecordTooLarge = errors.New("journal record too large")

// appendRecord appends the framed record of b to dst, unless its payload
// would be larger than limit (ErrRecordTooLarge; dst is returned as it was).
// A batch without a commit time (a keepalive barrier) stores appendTime
// instead, flagged, so that retention and time-based replay can place it.
func appendRecord(dst []byte, b *mapping.Batch, appendTime time.Time, limit int) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	var flags byte
	t := b.CommitTime
	if t.IsZero() {
		flags |= flagTimeIsAppend
		t = appendTime
	}
	dst = append(dst, recordBatch, flags)
	dst = binary.AppendUvarint(dst, uint64(b.XID))
	dst = binary.AppendUvarint(dst, uint64(b.CommitLSN))
	dst = binary.AppendUvarint(dst, uint64(b.EndLSN))
	dst = binary.AppendVarint(dst, t.Unix())
	dst = binary.AppendUvarint(dst, uint64(t.Nanosecond()))
	dst = binary.AppendUvarint(dst, uint64(len(b.Ops)))
	for i := range b.Ops {
		dst = appendOp(dst, &b.Ops[i])
	}
	n := len(dst) - start - frameHeaderSize
	if n > limit {
		return dst[:start], fmt.Errorf("batch end LSN %s with %d operations encodes to %d bytes, more than the journal's record limit of %d: %w",
			b.EndLSN, len(b.Ops), n, limit, ErrRecordTooLarge)
	}
	binary.LittleEndian.PutUint32(dst[start:], uint32(n))
	binary.LittleEndian.PutUint32(dst[start+4:], frameChecksum(dst[start:start+4], dst[start+frameHeaderSize:]))
	return dst, nil
}

func appendOp(dst []byte, op *mapping.Op) []byte {
	var flags byte
	if op.Value != nil {
		flags |= opFlagValue
	}
	if op.Keyspace != nil {
		flags |= opFlagKeyspace
	}
	dst = append(dst, byte(op.Kind), flags)
	dst = appendString(dst, op.Key)
	if op.Value != nil {
		dst = binary.AppendUvarint(dst, uint64(len(op.Value)))
		dst = append(dst, op.Value...)
	}
	dst = binary.AppendVarint(dst, int64(op.TTL))
	dst = binary.AppendVarint(dst, int64(op.Jitter))
	dst = binary.AppendUvarint(dst, uint64(op.LSN))
	dst = appendString(dst, op.Rule)
	dst = appendString(dst, op.Reason)
	if ks := op.Keyspace; ks != nil {
		dst = appendStrings(dst, ks.Keys)
		dst = appendStrings(dst, ks.Tags)
		dst = appendStrings(dst, ks.Versions)
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendStrings(dst []byte, ss []string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(ss)))
	for _, s := range ss {
		dst = appendString(dst, s)
	}
	return dst
}

// entryInfo is what the journal needs to know about an entry without its
// operations: its position and time.
type entryInfo struct {
	XID       uint32
	CommitLSN wal.LSN
	EndLSN    wal.LSN
	// Time is the commit time, or the time it was journaled when the batch
	// had none (Stamped).
	Time    time.Time
	Stamped bool
	Ops     int
}

// cursor decodes a payload; the first error sticks and later reads return zero.
type cursor struct {
	p   []byte
	err error
}

func (c *cursor) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf(format, args...)
	}
}

func (c *cursor) byte() byte {
	if c.err != nil {
		return 0
	}
	if len(c.p) == 0 {
		c.fail("payload ends early")
		return 0
	}
	b := c.p[0]
	c.p = c.p[1:]
	return b
}

func (c *cursor) uvarint() uint64 {
	if c.err != nil {
		return 0
	}
	v, n := binary.Uvarint(c.p)
	if n <= 0 {
		c.fail("bad unsigned varint")
		return 0
	}
	c.p = c.p[n:]
	return v
}

func (c *cursor) varint() int64 {
	if c.err != nil {
		return 0
	}
	v, n := binary.Varint(c.p)
	if n <= 0 {
		c.fail("bad signed varint")
		return 0
	}
	c.p = c.p[n:]
	return v
}

// bytes returns a length-prefixed byte string, aliasing the payload.
func (c *cursor) bytes() []byte {
	n := c.uvarint()
	if c.err != nil {
		return nil
	}
	if n > uint64(len(c.p)) {
		c.fail("string of %d bytes runs past the payload (%d left)", n, len(c.p))
		return nil
	}
	b := c.p[:n:n]
	c.p = c.p[n:]
	return b
}

// count reads an element count and checks that the rest of the payload can
// hold that many elements of at least minSize bytes, so that a damaged count
// never allocates more than the payload's size.
func (c *cursor) count(minSize int) int {
	n := c.uvarint()
	if c.err != nil {
		return 0
	}
	if n > uint64(len(c.p)/minSize) {
		c.fail("count %d cannot fit in the %d bytes left", n, len(c.p))
		return 0
	}
	return int(n)
}

// decodeInfo decodes the fixed part of a batch payload, leaving the cursor
// at the first op.
func decodeInfo(c *cursor) entryInfo {
	if kind := c.byte(); c.err == nil && kind != recordBatch {
		c.fail("unknown record kind %d", kind)
	}
	flags := c.byte()
	if c.err == nil && flags&^batchFlagsKnown != 0 {
		c.fail("unknown batch flags %#x", flags)
	}
	var e entryInfo
	xid := c.uvarint()
	if c.err == nil && xid > math.MaxUint32 {
		c.fail("xid %d out of range", xid)
	}
	e.XID = uint32(xid)
	e.CommitLSN = wal.LSN(c.uvarint())
	e.EndLSN = wal.LSN(c.uvarint())
	sec := c.varint()
	nsec := c.uvarint()
	if c.err == nil && nsec >= 1e9 {
		c.fail("nanoseconds %d out of range", nsec)
	}
	e.Time = time.Unix(sec, int64(nsec)).UTC()
	e.Stamped = flags&flagTimeIsAppend != 0
	e.Ops = c.count(minOpBytes)
	return e
}

// decodeEntry decodes a whole batch payload. With ops false it only checks
// the operations (no allocation) and returns the batch without them.
func decodeEntry(payload []byte, ops bool) (mapping.Batch, entryInfo, error) {
	c := cursor{p: payload}
	e := decodeInfo(&c)
	b := mapping.Batch{XID: e.XID, CommitLSN: e.CommitLSN, EndLSN: e.EndLSN}
	if !e.Stamped {
		b.CommitTime = e.Time
	}
	if ops && e.Ops > 0 && c.err == nil {
		b.Ops = make([]mapping.Op, e.Ops)
	}
	var prevRule, prevReason string
	for i := 0; i < e.Ops && c.err == nil; i++ {
		var op mapping.Op
		op.Kind = mapping.OpKind(c.byte())
		flags := c.byte()
		if c.err == nil && flags&^opFlagsKnown != 0 {
			c.fail("op %d: unknown flags %#x", i, flags)
		}
		key := c.bytes()
		var value []byte
		if flags&opFlagValue != 0 {
			value = c.bytes()
		}
		op.TTL = time.Duration(c.varint())
		op.Jitter = time.Duration(c.varint())
		op.LSN = wal.LSN(c.uvarint())
		rule := c.bytes()
		reason := c.bytes()
		var ks *mapping.Keyspace
		if flags&opFlagKeyspace != 0 {
			keys, tags, versions := decodeStrings(&c, ops), decodeStrings(&c, ops), decodeStrings(&c, ops)
			if ops {
				ks = &mapping.Keyspace{Keys: keys, Tags: tags, Versions: versions}
			}
		}
		if !ops || c.err != nil {
			continue
		}
		op.Key = string(key)
		if flags&opFlagValue != 0 {
			op.Value = append(make([]byte, 0, len(value)), value...)
		}
		// Every op of a rule repeats its name: share one string.
		if string(rule) != prevRule {
			prevRule = string(rule)
		}
		op.Rule = prevRule
		if string(reason) != prevReason {
			prevReason = string(reason)
		}
		op.Reason = prevReason
		op.Keyspace = ks
		b.Ops[i] = op
	}
	if c.err == nil && len(c.p) != 0 {
		c.fail("%d unexpected bytes after the last op", len(c.p))
	}
	if c.err != nil {
		return mapping.Batch{}, entryInfo{}, c.err
	}
	return b, e, nil
}

func decodeStrings(c *cursor, keep bool) []string {
	n := c.count(1)
	var out []string
	if keep && n > 0 {
		out = make([]string, 0, n)
	}
	for range n {
		s := c.bytes()
		if keep && c.err == nil {
			out = append(out, string(s))
		}
	}
	return out
}
