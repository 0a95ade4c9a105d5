package config

import (
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Defaults for a write_behind block.
const (
	DefaultWriteBehindBatchSize     = 500
	DefaultWriteBehindFlushInterval = 50 * time.Millisecond
)

// WriteBehind is a write_behind block: the application appends row writes
// to a Redis Stream (usually through cacheaside.WriteBehind), and cachesync
// drains them into Table in batched transactions (package writebehind).
//
//	write_behind "counters" {
//	  stream      = "wb:counters"
//	  table       = "public.counters"
//	  key_columns = ["id"]
//	}
type WriteBehind struct {
	Name string
	// Stream is the Redis Stream the entries are appended to; unique
	// across write_behind blocks.
	Stream string
	Table  TableName
	// KeyColumns form a unique key of Table (the ON CONFLICT target);
	// every entry carries them.
	KeyColumns []string
	// Columns are the columns written; nil when absent: the ones each
	// entry carries. When set, an entry's other columns are ignored.
	Columns []string
	// BatchSize is the most entries applied in one transaction (default
	// DefaultWriteBehindBatchSize).
	BatchSize int
	// FlushInterval is the longest an entry waits for its batch to fill
	// (default DefaultWriteBehindFlushInterval).
	FlushInterval time.Duration
	// Delete allows op delete entries (default true); when false they are
	// dead letters.
	Delete bool
	// DeclRange is the range of the `write_behind "name"` header;
	// TableRange the table attribute's value.
	DeclRange, TableRange hcl.Range
}
