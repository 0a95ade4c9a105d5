// Package wal holds the data types that flow from the replication stream to the
// mapper: relations, tuples, row changes and committed transactions. It has no
// dependencies on the database driver so that mapping stays pure and testable.
package wal

import (
	"fmt"
	"time"
)

// LSN is a PostgreSQL log sequence number.
type LSN uint64

// String formats the LSN the way PostgreSQL does (0/16B3748).
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// ParseLSN parses PostgreSQL's textual LSN form ("16/B374D848").
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("parse LSN %q: want the form 16/B374D848: %w", s, err)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

// Kind is the kind of a row change.
type Kind uint8

// Row change kinds.
const (
	Insert Kind = iota + 1
	Update
	Delete
	Truncate
)

func (k Kind) String() string {
	switch k {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ReplicaIdentity values as found in pg_class.relreplident and Relation messages.
const (
	IdentityDefault = 'd'
	IdentityNothing = 'n'
	IdentityFull    = 'f'
	IdentityIndex   = 'i'
)

// Column describes one column of a relation as the server announced it.
type Column struct {
	Name    string
	TypeOID uint32
	TypeMod int32
	// Key is set for columns that are part of the replica identity. Under
	// REPLICA IDENTITY FULL every column is flagged.
	Key bool
}

// Relation is the server's description of a published table, valid until the
// next Relation message with the same ID replaces it.
type Relation struct {
	ID              uint32
	Namespace       string
	Name            string
	ReplicaIdentity byte
	Columns         []Column
}

// QualifiedName returns "schema.table".
func (r *Relation) QualifiedName() string { return r.Namespace + "." + r.Name }

// ValueKind tells how a tuple slot was sent.
type ValueKind uint8

// Tuple value kinds.
const (
	// NotSent means the server did not send the value: an unchanged TOASTed
	// column ('u'), or a non-key column of a key-only old tuple.
	NotSent ValueKind = iota
	// Null is SQL NULL.
	Null
	// Text is a value in PostgreSQL's text output format.
	Text
)

// Value is one column value of a tuple.
type Value struct {
	Kind ValueKind
	Text string
}

// Tuple holds one value per relation column, in the relation's column order.
type Tuple []Value

// OldKind tells what the old tuple of an UPDATE or DELETE carries.
type OldKind uint8

// Old tuple kinds.
const (
	// OldNone: no old tuple was sent (UPDATE whose identity did not change).
	OldNone OldKind = iota
	// OldKey: only replica-identity columns are meaningful ('K').
	OldKey
	// OldFull: every column is present ('O', REPLICA IDENTITY FULL).
	OldFull
)

// Change is one row change of a committed transaction.
type Change struct {
	Relation *Relation
	Kind     Kind
	OldKind  OldKind
	Old      Tuple // nil unless OldKind != OldNone
	New      Tuple // nil for Delete and Truncate
}

// TruncateMessagePrefix is the logical message that the triggers installed on
// partitions emit when one is truncated (a partition's TRUNCATE is not
// published under publish_via_partition_root); its content names the
// partitioned rule table ("schema.table").
const TruncateMessagePrefix = "cachesync.truncate"

// PartitionsMessagePrefix is the logical message that cachesync writes when
// the partition tree of a rule table changed (ATTACH, DETACH, DROP or CREATE
// of a partition: none of them is published, yet they add or remove rows of
// the root); its content names the partitioned rule table ("schema.table").
const PartitionsMessagePrefix = "cachesync.partitions"

// Message is a transactional logical decoding message (pg_logical_emit_message).
type Message struct {
	Prefix  string
	Content []byte
}

// Begin opens a transaction.
type Begin struct {
	XID        uint32
	FinalLSN   LSN
	CommitTime time.Time
}

// Commit closes a transaction. EndLSN is the position to confirm once every
// effect of the transaction has been applied.
type Commit struct {
	XID        uint32
	CommitLSN  LSN
	EndLSN     LSN
	CommitTime time.Time
}

// Txn is a whole committed transaction, used where a transaction is small enough
// to hold in memory (tests, dry runs). The daemon streams changes instead.
type Txn struct {
	XID        uint32
	CommitLSN  LSN
	EndLSN     LSN
	CommitTime time.Time
	Changes    []Change
	Messages   []Message
}
