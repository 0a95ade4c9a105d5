package mapping

import (
	"time"

	"github.com/cachesync/cachesync/wal"
)

// OpKind is the kind of a Redis effect.
type OpKind uint8

// Operation kinds. Every one is idempotent or harmless when repeated, because a
// crash between apply and confirm redelivers the transaction.
const (
	// OpDelete deletes Key (delete-on-write invalidation).
	OpDelete OpKind = iota + 1
	// OpDeleteTag deletes every key in the set keyspace.TagKey(Key), then the set.
	OpDeleteTag
	// OpBumpVersion increments keyspace.VersionKey(Key), retiring every
	// versioned key of the namespace Key at once.
	OpBumpVersion
	// OpSet writes Value to Key with TTL ± Jitter, guarded by LSN so that an
	// older change never overwrites a newer one (write-through refresh).
	OpSet
	// OpUnset deletes a write-through Key and records LSN in its guard, so that
	// a redelivered older OpSet cannot bring the row back.
	OpUnset
	// OpFlush drops a rule's whole key space (TRUNCATE, key-set cap overflow,
	// values that were not sent, slot creation).
	OpFlush
)

func (k OpKind) String() string {
	switch k {
	case OpDelete:
		return "delete"
	case OpDeleteTag:
		return "delete_tag"
	case OpBumpVersion:
		return "bump_version"
	case OpSet:
		return "set"
	case OpUnset:
		return "unset"
	case OpFlush:
		return "flush"
	}
	return "unknown"
}

// MarshalText makes OpKind print by name in JSON.
func (k OpKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Keyspace is the set of Redis key patterns a rule may write or invalidate.
// Patterns are Redis glob patterns (SCAN MATCH), already escaped.
type Keyspace struct {
	// Keys match plain cache keys and write-through keys.
	Keys []string `json:"keys,omitempty"`
	// Tags match tag names; the sets are keyspace.TagKey(name).
	Tags []string `json:"tags,omitempty"`
	// Versions match version namespaces: their keyspace.VersionKey is bumped
	// and the namespace's cached entries (namespace prefix) are dropped.
	Versions []string `json:"versions,omitempty"`
}

// Op is one Redis effect of a transaction.
type Op struct {
	Kind OpKind `json:"op"`
	// Key is the cache key (Delete, Set, Unset), the tag name (DeleteTag) or
	// the version namespace (BumpVersion).
	Key    string        `json:"key,omitempty"`
	Value  []byte        `json:"-"`
	TTL    time.Duration `json:"ttl,omitempty"`
	Jitter time.Duration `json:"jitter,omitempty"`
	// LSN orders write-through effects (Set, Unset): the commit LSN of the
	// transaction that produced them.
	LSN wal.LSN `json:"-"`
	// Keyspace is what OpFlush drops.
	Keyspace *Keyspace `json:"keyspace,omitempty"`
	// Rule names the rule that produced the operation.
	Rule string `json:"rule"`
	// Reason says why a flush happens (truncate, key_cap, not_sent, ...).
	Reason string `json:"reason,omitempty"`
}

// Batch holds the operations of one committed transaction. A Batch with no
// operations still carries an EndLSN to confirm (a transaction that touched no
// rule, or a keepalive barrier).
type Batch struct {
	XID        uint32
	CommitLSN  wal.LSN
	EndLSN     wal.LSN
	CommitTime time.Time
	Ops        []Op
}

// Size estimates the memory a batch holds, in bytes: its keys and values and
// a fixed cost per operation and per batch. Budgets bound the pipeline with it.
func (b Batch) Size() int64 {
	const perBatch, perOp = 96, 128
	n := int64(perBatch)
	for i := range b.Ops {
		n += perOp + int64(len(b.Ops[i].Key)+len(b.Ops[i].Value))
	}
	return n
}
