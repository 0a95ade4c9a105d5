package replication

import (
	"encoding/binary"
	"time"

	"github.com/cachesync/cachesync/wal"
)

// reader decodes the fields of one pgoutput message with bounds checks on
// every read: a truncated or corrupt message sets err instead of panicking
// or allocating what a bogus length asks for. pglogrepl's own decoders do
// neither, hence this small decoder.
type reader struct {
	buf []byte
	err error
	// shared, when set, is a copy of what buf held at the start: text
	// returns slices of it instead of a copy per value.
	shared string
	// values, when set, is where tuple takes its values from.
	values []wal.Value
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = protocolErr("message truncated")
	}
	r.buf = nil
}

func (r *reader) u8() byte {
	if len(r.buf) < 1 {
		r.fail()
		return 0
	}
	v := r.buf[0]
	r.buf = r.buf[1:]
	return v
}

func (r *reader) u16() uint16 {
	if len(r.buf) < 2 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint16(r.buf)
	r.buf = r.buf[2:]
	return v
}

func (r *reader) u32() uint32 {
	if len(r.buf) < 4 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(r.buf)
	r.buf = r.buf[4:]
	return v
}

func (r *reader) u64() uint64 {
	if len(r.buf) < 8 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint64(r.buf)
	r.buf = r.buf[8:]
	return v
}

// bytes returns n bytes, aliasing the buffer.
func (r *reader) bytes(n uint32) []byte {
	if uint64(len(r.buf)) < uint64(n) {
		r.fail()
		return nil
	}
	v := r.buf[:n]
	r.buf = r.buf[n:]
	return v
}

// text returns n bytes as a string: a slice of shared when set, else a copy.
func (r *reader) text(n uint32) string {
	at := len(r.shared) - len(r.buf)
	b := r.bytes(n)
	if r.shared == "" || b == nil {
		return string(b)
	}
	return r.shared[at : at+len(b)]
}

// tuple returns a tuple of n values, from values while it has room.
func (r *reader) tuple(n int) wal.Tuple {
	if n > len(r.values) {
		return make(wal.Tuple, n)
	}
	t := r.values[:n:n]
	r.values = r.values[n:]
	return t
}

// str reads a NUL-terminated string (copied).
func (r *reader) str() string {
	for i, b := range r.buf {
		if b == 0 {
			s := string(r.buf[:i])
			r.buf = r.buf[i+1:]
			return s
		}
	}
	r.fail()
	return ""
}

// pgEpoch is the origin of PostgreSQL timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func (r *reader) time() time.Time {
	us := int64(r.u64())
	return pgEpoch.Add(time.Duration(us) * time.Microsecond)
}

func (r *reader) done() error {
	if r.err == nil && len(r.buf) != 0 {
		r.err = protocolErr("%d unexpected trailing bytes", len(r.buf))
	}
	return r.err
}
