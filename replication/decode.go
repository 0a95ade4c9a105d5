package replication

import (
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"

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

// parse wraps pglogrepl.Parse, which indexes into the buffer without bounds
// checks: a truncated message must become an error, never a crash.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, protocolErr("empty message")
	}
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, protocolErr("malformed %q message (%d bytes): %v", data[0], len(data), r)
		}
	}()
	msg, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, protocolErr("message %q: %v", data[0], err)
	}
	return msg, nil
}

// Decode decodes one pgoutput message and passes the resulting events to emit.
// data may alias the connection's read buffer: nothing emitted refers to it.
func (d *Decoder) Decode(data []byte, emit func(Event) error) error {
	msg, err := parse(data)
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel := &wal.Relation{ID: m.RelationID, Namespace: m.Namespace, Name: m.RelationName, ReplicaIdentity: m.ReplicaIdentity}
		if int(m.ColumnNum) != len(m.Columns) {
			return protocolErr("relation %s.%s announces %d columns, carries %d", m.Namespace, m.RelationName, m.ColumnNum, len(m.Columns))
		}
		rel.Columns = make([]wal.Column, len(m.Columns))
		for i, c := range m.Columns {
			rel.Columns[i] = wal.Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 != 0}
		}
		// Replace, never merge: ADD/DROP COLUMN, renames and replica
		// identity changes all arrive as a new Relation message.
		d.relations[m.RelationID] = rel
		return nil
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage:
		// Types: unknown OIDs stay text. Origin: changes applied by a
		// subscriber are still changes; the origin itself does not matter.
		return nil
	case *pglogrepl.BeginMessage:
		if d.inTxn {
			return protocolErr("begin of xid %d inside xid %d", m.Xid, d.xid)
		}
		d.inTxn, d.xid = true, m.Xid
		return emit(Event{Kind: EventBegin, Begin: wal.Begin{XID: m.Xid, FinalLSN: wal.LSN(m.FinalLSN), CommitTime: m.CommitTime.UTC()}})
	case *pglogrepl.CommitMessage:
		if !d.inTxn {
			return protocolErr("commit at %s outside a transaction", m.CommitLSN)
		}
		d.inTxn = false
		return emit(Event{Kind: EventCommit, Commit: wal.Commit{XID: d.xid, CommitLSN: wal.LSN(m.CommitLSN), EndLSN: wal.LSN(m.TransactionEndLSN), CommitTime: m.CommitTime.UTC()}})
	case *pglogrepl.LogicalDecodingMessage:
		if !m.Transactional {
			return nil
		}
		if !d.inTxn {
			return protocolErr("transactional message %q outside a transaction", m.Prefix)
		}
		if d.messagePrefix == "" || len(m.Prefix) < len(d.messagePrefix) || m.Prefix[:len(d.messagePrefix)] != d.messagePrefix {
			return nil
		}
		return emit(Event{Kind: EventMessage, Message: wal.Message{Prefix: m.Prefix, Content: append([]byte(nil), m.Content...)}})
	case *pglogrepl.InsertMessage:
		rel, err := d.change("insert", m.RelationID)
		if err != nil {
			return err
		}
		newT, err := tuple(rel, m.Tuple, 'N')
		if err != nil {
			return err
		}
		return emit(Event{Kind: EventChange, Change: wal.Change{Relation: rel, Kind: wal.Insert, New: newT}})
	case *pglogrepl.UpdateMessage:
		rel, err := d.change("update", m.RelationID)
		if err != nil {
			return err
		}
		c := wal.Change{Relation: rel, Kind: wal.Update}
		if m.OldTuple != nil {
			if c.OldKind, c.Old, err = oldTuple(rel, m.OldTupleType, m.OldTuple); err != nil {
				return err
			}
		}
		if m.NewTuple == nil {
			return protocolErr("update on %s without a new tuple", rel.QualifiedName())
		}
		if c.New, err = tuple(rel, m.NewTuple, 'N'); err != nil {
			return err
		}
		return emit(Event{Kind: EventChange, Change: c})
	case *pglogrepl.DeleteMessage:
		rel, err := d.change("delete", m.RelationID)
		if err != nil {
			return err
		}
		c := wal.Change{Relation: rel, Kind: wal.Delete}
		if m.OldTuple == nil {
			return protocolErr("delete on %s without an old tuple", rel.QualifiedName())
		}
		if c.OldKind, c.Old, err = oldTuple(rel, m.OldTupleType, m.OldTuple); err != nil {
			return err
		}
		return emit(Event{Kind: EventChange, Change: c})
	case *pglogrepl.TruncateMessage:
		if !d.inTxn {
			return protocolErr("truncate outside a transaction")
		}
		for _, id := range m.RelationIDs {
			rel, ok := d.relations[id]
			if !ok {
				return protocolErr("truncate of unknown relation id %d", id)
			}
			if err := emit(Event{Kind: EventChange, Change: wal.Change{Relation: rel, Kind: wal.Truncate}}); err != nil {
				return err
			}
		}
		return nil
	}
	return protocolErr("unexpected message type %q", data[0])
}

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

func oldTuple(rel *wal.Relation, typ uint8, td *pglogrepl.TupleData) (wal.OldKind, wal.Tuple, error) {
	switch typ {
	case pglogrepl.UpdateMessageTupleTypeKey:
		t, err := tuple(rel, td, 'K')
		return wal.OldKey, t, err
	case pglogrepl.UpdateMessageTupleTypeOld:
		t, err := tuple(rel, td, 'O')
		return wal.OldFull, t, err
	}
	return 0, nil, protocolErr("old tuple of %s has type %q", rel.QualifiedName(), typ)
}

// tuple converts pgoutput tuple data. In a key-only old tuple ('K'), the
// non-key slots are sent as 'n' but mean "not sent", not NULL.
func tuple(rel *wal.Relation, td *pglogrepl.TupleData, typ byte) (wal.Tuple, error) {
	if td == nil {
		return nil, protocolErr("missing tuple for %s", rel.QualifiedName())
	}
	if len(td.Columns) != len(rel.Columns) || int(td.ColumnNum) != len(td.Columns) {
		return nil, protocolErr("tuple of %s has %d columns, relation has %d", rel.QualifiedName(), len(td.Columns), len(rel.Columns))
	}
	out := make(wal.Tuple, len(td.Columns))
	for i, c := range td.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			if typ == 'K' && !rel.Columns[i].Key {
				out[i] = wal.Value{Kind: wal.NotSent}
			} else {
				out[i] = wal.Value{Kind: wal.Null}
			}
		case pglogrepl.TupleDataTypeToast:
			out[i] = wal.Value{Kind: wal.NotSent}
		case pglogrepl.TupleDataTypeText:
			out[i] = wal.Value{Kind: wal.Text, Text: string(c.Data)}
		default:
			return nil, protocolErr("column %s of %s has data type %q (binary output was not requested)", rel.Columns[i].Name, rel.QualifiedName(), c.DataType)
		}
	}
	return out, nil
}
