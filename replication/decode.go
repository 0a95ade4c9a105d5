package replication

import (
	"errors"
	"fmt"

	"strings"
	"time"

	"github.com/cachesync/cachesync/wal"
)

// EventKind is the kind of a stream event.
type EventKind uint8

// Stream event kinds, in the order the mapper sees them.
const (
	EventBegin EventKind = iota + 1
	EventChange
	EventMessage
	EventCommit
	// EventBarrier carries a WAL position past which nothing relevant to us
	// was sent: once everything before it is applied it may be confirmed.
	EventBarrier
)

// Event is one unit of the ordered stream from the replication connection to
// the apply pipeline.
type Event struct {
	Kind    EventKind
	Begin   wal.Begin
	Change  wal.Change
	Message wal.Message
	Commit  wal.Commit
	Barrier wal.LSN
	// Received is when a commit's message was read from the replication
	// connection (Stream sets it on EventCommit only): the pipeline's
	// stage timings start there.
	Received time.Time
}

// Size estimates the memory an event holds, in bytes: its values' text and a
// fixed cost per value and per event. Budgets bound the pipeline with it.
func (e Event) Size() int64 {
	const perEvent, perValue = 128, 24
	n := int64(perEvent + len(e.Message.Prefix) + len(e.Message.Content))
	for _, t := range [2]wal.Tuple{e.Change.Old, e.Change.New} {
		for _, v := range t {
			n += perValue + int64(len(v.Text))
		}
	}
	return n
}

// ErrProtocol marks a message that breaks the pgoutput protocol as we use it
// (a change outside a transaction, an unknown relation, a malformed message).
// The stream reconnects; it never skips such a message and carries on.
var ErrProtocol = errors.New("pgoutput protocol violation")

// Decoder turns pgoutput (protocol version 1) messages into events. It keeps
// the relation cache and the transaction state of one replication session.
type Decoder struct {
	relations map[uint32]*wal.Relation
	inTxn     bool
	xid       uint32
	// MessagePrefix selects the logical decoding messages to pass on.
	messagePrefix string
}

// NewDecoder returns a decoder for a new session: relations are learnt afresh
// from the Relation messages the server sends before first use.
func NewDecoder(messagePrefix string) *Decoder {
	return &Decoder{relations: map[uint32]*wal.Relation{}, messagePrefix: messagePrefix}
}

// InTransaction reports whether a Begin was seen without its Commit.
func (d *Decoder) InTransaction() bool { return d.inTxn }

func protocolErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// Decode decodes one pgoutput message and passes the resulting events to emit.
// data may alias the connection's read buffer: nothing emitted refers to it.
func (d *Decoder) Decode(data []byte, emit func(Event) error) error {
	if len(data) == 0 {
		return protocolErr("empty message")
	}
	r := &reader{buf: data[1:]}
	if typ := data[0]; (typ == 'I' || typ == 'U' || typ == 'D') && len(data) <= sharedTextMax {
		// One allocation for every text value of the message: they are
		// sliced from a copy of it.
		r.shared = string(r.buf)
	}
	switch typ := data[0]; typ {
	case 'R':
		rel := &wal.Relation{ID: r.u32(), Namespace: r.str(), Name: r.str(), ReplicaIdentity: r.u8()}
		n := int(r.u16())
		if n > len(r.buf)/10 {
			// each column takes at least 10 bytes: flags, name NUL, oid, typmod
			return protocolErr("relation %s announces %d columns in %d bytes", rel.QualifiedName(), n, len(r.buf))
		}
		rel.Columns = make([]wal.Column, n)
		for i := range rel.Columns {
			flags := r.u8()
			rel.Columns[i] = wal.Column{Key: flags&1 != 0, Name: r.str(), TypeOID: r.u32(), TypeMod: int32(r.u32())}
		}
		if err := r.done(); err != nil {
			return err
		}
		// Replace, never merge: ADD/DROP COLUMN, renames and replica
		// identity changes all arrive as a new Relation message.
		d.relations[rel.ID] = rel
		return nil
	case 'Y', 'O':
		// Type: unknown OIDs stay text. Origin: changes applied by a
		// subscriber are still changes; the origin itself does not matter.
		return nil
	case 'B':
		b := wal.Begin{FinalLSN: wal.LSN(r.u64()), CommitTime: r.time(), XID: r.u32()}
		if err := r.done(); err != nil {
			return err
		}
		if d.inTxn {
			return protocolErr("begin of xid %d inside xid %d", b.XID, d.xid)
		}
		d.inTxn, d.xid = true, b.XID
		return emit(Event{Kind: EventBegin, Begin: b})
	case 'C':
		r.u8() // flags, unused
		c := wal.Commit{XID: d.xid, CommitLSN: wal.LSN(r.u64()), EndLSN: wal.LSN(r.u64()), CommitTime: r.time()}
		if err := r.done(); err != nil {
			return err
		}
		if !d.inTxn {
			return protocolErr("commit at %s outside a transaction", c.CommitLSN)
		}
		d.inTxn = false
		return emit(Event{Kind: EventCommit, Commit: c})
	case 'M':
		transactional := r.u8()&1 != 0
		r.u64() // the message's LSN
		prefix := r.str()
		content := r.bytes(r.u32())
		if err := r.done(); err != nil {
			return err
		}
		if !transactional {
			return nil
		}
		if !d.inTxn {
			return protocolErr("transactional message %q outside a transaction", prefix)
		}
		if d.messagePrefix == "" || !strings.HasPrefix(prefix, d.messagePrefix) {
			return nil
		}
		return emit(Event{Kind: EventMessage, Message: wal.Message{Prefix: prefix, Content: append([]byte(nil), content...)}})
	case 'I':
		rel, err := d.change("insert", r.u32())
		if err != nil {
			return err
		}
		if t := r.u8(); t != 'N' && r.err == nil {
			return protocolErr("insert on %s: tuple type %q", rel.QualifiedName(), t)
		}
		c := wal.Change{Relation: rel, Kind: wal.Insert, New: tuple(r, rel, 'N')}
		if err := r.done(); err != nil {
			return err
		}
		return emit(Event{Kind: EventChange, Change: c})
	case 'U':
		rel, err := d.change("update", r.u32())
		if err != nil {
			return err
		}
		c := wal.Change{Relation: rel, Kind: wal.Update}
		t := r.u8()
		if t == 'K' || t == 'O' {
			// One allocation for both tuples' values.
			r.values = make([]wal.Value, 2*len(rel.Columns))
			c.OldKind, c.Old = oldKind(t), tuple(r, rel, t)
			t = r.u8()
		}
		if t != 'N' && r.err == nil {
			return protocolErr("update on %s: tuple type %q", rel.QualifiedName(), t)
		}
		c.New = tuple(r, rel, 'N')
		if err := r.done(); err != nil {
			return err
		}
		return emit(Event{Kind: EventChange, Change: c})
	case 'D':
		rel, err := d.change("delete", r.u32())
		if err != nil {
			return err
		}
		t := r.u8()
		if t != 'K' && t != 'O' && r.err == nil {
			return protocolErr("delete on %s: tuple type %q", rel.QualifiedName(), t)
		}
		c := wal.Change{Relation: rel, Kind: wal.Delete, OldKind: oldKind(t), Old: tuple(r, rel, t)}
		if err := r.done(); err != nil {
			return err
		}
		return emit(Event{Kind: EventChange, Change: c})
	case 'T':
		n := r.u32()
		r.u8() // options: cascade, restart identity (informational)
		if uint64(n)*4 != uint64(len(r.buf)) {
			return protocolErr("truncate of %d relations in %d bytes", n, len(r.buf))
		}
		if !d.inTxn {
			return protocolErr("truncate outside a transaction")
		}
		rels := make([]*wal.Relation, n)
		for i := range rels {
			id := r.u32()
			rel, ok := d.relations[id]
			if !ok {
				return protocolErr("truncate of unknown relation id %d", id)
			}
			rels[i] = rel
		}
		for _, rel := range rels {
			if err := emit(Event{Kind: EventChange, Change: wal.Change{Relation: rel, Kind: wal.Truncate}}); err != nil {
				return err
			}
		}
		return nil
	default:
		return protocolErr("unexpected message type %q (only protocol version 1 is requested)", typ)
	}
}

// sharedTextMax is the size of the largest change message whose text values
// share one allocation (a copy of the message). A value kept longer than its
// event (a key the mapper used as is) keeps the whole copy alive, so larger
// messages get one allocation per value.
const sharedTextMax = 512

func (d *Decoder) change(kind string, relID uint32) (*wal.Relation, error) {
	if !d.inTxn {
		return nil, protocolErr("%s outside a transaction", kind)
	}
	rel, ok := d.relations[relID]
	if !ok {
		return nil, protocolErr("%s on unknown relation id %d (no Relation message)", kind, relID)
	}
	return rel, nil
}

func oldKind(t byte) wal.OldKind {
	if t == 'O' {
		return wal.OldFull
	}
	return wal.OldKey
}

// tuple decodes tuple data. In a key-only old tuple ('K'), the non-key slots
// are sent as 'n' but mean "not sent", not NULL.
func tuple(r *reader, rel *wal.Relation, typ byte) wal.Tuple {
	n := int(r.u16())
	if r.err != nil {
		return nil
	}
	if n != len(rel.Columns) {
		r.err = protocolErr("tuple of %s has %d columns, relation has %d", rel.QualifiedName(), n, len(rel.Columns))
		return nil
	}
	out := r.tuple(n)
	for i := range out {
		switch kind := r.u8(); kind {
		case 'n':
			if typ == 'K' && !rel.Columns[i].Key {
				out[i] = wal.Value{Kind: wal.NotSent}
			} else {
				out[i] = wal.Value{Kind: wal.Null}
			}
		case 'u':
			out[i] = wal.Value{Kind: wal.NotSent}
		case 't':
			out[i] = wal.Value{Kind: wal.Text, Text: r.text(r.u32())}
		default:
			if r.err == nil {
				r.err = protocolErr("column %s of %s: value kind %q (binary output was not requested)", rel.Columns[i].Name, rel.QualifiedName(), kind)
			}
			return nil
		}
	}
	return out
}
