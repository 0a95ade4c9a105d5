// Package writebehind drains write_behind streams into PostgreSQL: the
// application writes a cache key and appends the row write to a Redis
// Stream in one step (cacheaside.WriteBehind), and a Worker applies the
// stream's entries to the table in batched, ordered upserts, exactly once
// in effect.
//
// # Entries
//
// An entry is a stream entry with two fields, which any Redis client can
// append:
//
//	XADD <stream> * op upsert row '{"id":42,"hits":7}'
//	XADD <stream> * op delete row '{"id":42}'
//
// row is a JSON object of column values (for delete, the key columns).
// Values are converted by PostgreSQL as jsonb_populate_record would: a JSON
// string becomes the column's type from its text form, a number a number,
// an object a json/jsonb value, an array an array.
//
// # Exactly once in effect
//
// A Worker reads the stream with the consumer group "cachesync"
// (XREADGROUP) and applies a batch as one transaction: the upserts
// (INSERT … ON CONFLICT (key columns) DO UPDATE) and deletes, and the
// stream's last applied entry ID in the table cachesync.write_behind, moved
// only from the ID the worker last read there (a compare-and-set, so two
// workers can never both apply one batch). It XACKs the batch only after
// the commit. On start or takeover it claims every pending entry
// (XAUTOCLAIM) and skips, and acknowledges, the entries at or below the
// recorded ID: a batch committed but not acknowledged before a crash is
// never applied twice, and nothing acknowledged was not committed.
//
// Within a batch the last write to a key wins (an upsert's columns merge
// into an earlier upsert's; a delete drops them); across batches, stream
// order holds.
//
// # Bad entries
//
// An entry that cannot apply (not JSON, a key column missing, a column the
// table lacks, a type or constraint error, a delete when delete = false)
// is appended to the dead-letter stream <stream>:dead with its ID, fields
// and the error, counted and logged; the rest of its batch applies. Errors
// that are not the entry's (PostgreSQL down, a privilege missing) retry the
// batch with backoff: the backlog waits in Redis, and the worker holds one
// batch in memory.
package writebehind
