package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
)

// ErrCrossSlot is what WriteBehind and WriteBehindDelete return (wrapped,
// with both names and their slots) on Redis Cluster when the cache key and
// the stream hash to different slots: one script writes both, so they must
// share a slot. Give both names the same hash tag, such as "{counters}:42"
// and "{counters}:wb".
var ErrCrossSlot = errors.New("cacheaside: the cache key and the write-behind stream hash to different Redis Cluster slots")

// ErrRowNotObject is what WriteBehind and WriteBehindDelete return (wrapped)
// for a row that does not encode to a non-empty JSON object: nothing is
// written then.
var ErrRowNotObject = errors.New("cacheaside: a write-behind row must encode to a JSON object of column values")

// WriteBehindStream is a Redis Stream that cachesync drains into a table: the
// stream of a write_behind block of rules.hcl. Make it with
// Client.WriteBehindStream and write through it with WriteBehind and
// WriteBehindDelete.
type WriteBehindStream struct {
	c    *Client
	name string
}

// WriteBehindStream returns the write-behind stream named name (the stream
// of a write_behind block of rules.hcl) for writes through c. It touches
// nothing in Redis. On Redis Cluster, give it the hash tag of the keys
// written with it (see WriteBehind).
func (c *Client) WriteBehindStream(name string) *WriteBehindStream {
	return &WriteBehindStream{c: c, name: name}
}

// Name returns the stream's name.
func (s *WriteBehindStream) Name() string { return s.name }

// WriteBehind writes value under key and appends the row write to the
// stream, in one atomic step (one Lua script): either both happen or
// neither, so the cache and the queue never disagree. cachesync (its
// write_behind block for the stream) then applies the entry to the table:
//
//	XADD <stream> * op upsert row '<row as a JSON object>'
//
// row is the table row's column values: anything that encodes with
// encoding/json to a JSON object (a struct with json tags, a
// map[string]any, a json.RawMessage), including the key columns; value is
// what readers of key get (Options.Codec), often the same struct. A row
// that is not an object is refused with ErrRowNotObject before Redis is
// touched. Entries carry values, not increments: to count, read, add and
// write the new total; appending the same entry twice then does no harm.
//
// The cache side is Set's: the TTL ± jitter, Tags, TTL and Versioned apply,
// the key is registered under its tags before the step and after, and the step is an
// invalidation for the fills of key in flight (a GetOrLoad whose load read
// an older row does not overwrite value afterwards).
//
// It returns the entry's stream ID. A Redis failure is returned, never
// ignored as reads ignore it: the write would be lost. The error says
// whether nothing was written (Redis refused the script, or could not be
// reached) or the outcome is unknown (the connection broke after sending
// it); writing the same value again is harmless. On Redis Cluster the
// key and the stream must hash to one slot (ErrCrossSlot otherwise): name
// them with the same hash tag, such as "{counters}:42" and "{counters}:wb".
//
// The value lives until its TTL or until cachesync changes the key: keep
// the TTL well above how long the stream takes to drain, as a read that
// misses before the entry is applied loads the older row from the database.
func WriteBehind[T any](ctx context.Context, s *WriteBehindStream, key string, value T, row any, opts ...FillOption) (string, error) {
	c := s.c
	stamp := time.Now()
	f, err := c.fillOptions(key, opts)
	if err != nil {
		return "", err
	}
	entryRow, err := encodeRow(key, row)
	if err != nil {
		return "", err
	}
	raw, err := c.opts.Codec.Marshal(value)
	if err != nil {
		return "", fmt.Errorf("cacheaside: encode the value of %s: %w", key, err)
	}
	if key, err = c.versionedKey(ctx, key, f); err != nil {
		return "", err
	}
	if err := s.check(key); err != nil {
		return "", err
	}
	if err := c.registerTags(ctx, key, f); err != nil {
		return "", err
	}
	id, err := s.append(ctx, key, keyspace.WriteBehindOpUpsert, entryRow, "set", raw, c.jittered(f.ttl), stamp)
	if err != nil {
		return id, err
	}
	// Again after the write, as Set does (registerTags).
	if err := c.registerTags(ctx, key, f); err != nil {
		return id, fmt.Errorf("cacheaside: write-behind of %s to stream %s was written (entry %s), but: %w; writing it again is harmless", key, s.name, id, err)
	}
	return id, nil
}

// WriteBehindDelete deletes key from the cache and appends the row's
// deletion to the stream, in one atomic step, as WriteBehind does:
//
//	XADD <stream> * op delete row '<keyRow as a JSON object>'
//
// keyRow holds the row's key columns (the block's key_columns), as a struct
// or a map that encodes to a JSON object. Like Get, it uses key as given:
// for an entry of a version namespace pass keyspace.VersionedKey. It
// returns the entry's ID.
//
// Until cachesync has applied the entry, the row is still in the database:
// a GetOrLoad of key in that window caches it again, until the deletion's
// own change comes back through cachesync (a rule on the table) and
// deletes the key.
func WriteBehindDelete(ctx context.Context, s *WriteBehindStream, key string, keyRow any) (string, error) {
	c := s.c
	if c.closed.Load() {
		return "", ErrClosed
	}
	entryRow, err := encodeRow(key, keyRow)
	if err != nil {
		return "", err
	}
	if err := s.check(key); err != nil {
		return "", err
	}
	return s.append(ctx, key, keyspace.WriteBehindOpDelete, entryRow, "unset", nil, 0, time.Time{})
}

// check refuses what Redis would: no stream, or a key and stream in
// different cluster slots.
func (s *WriteBehindStream) check(key string) error {
	if s.name == "" {
		return errors.New("cacheaside: the write-behind stream has no name; pass the stream of the write_behind block to Client.WriteBehindStream")
	}
	if _, cluster := s.c.rdb.(*redis.ClusterClient); cluster && keyspace.Slot(key) != keyspace.Slot(s.name) {
		return s.crossSlot(key)
	}
	return nil
}

func (s *WriteBehindStream) crossSlot(key string) error {
	return fmt.Errorf("%w (key %q: slot %d, stream %q: slot %d); one script writes both: give both names the same hash tag, such as \"{counters}:42\" and \"{counters}:wb\"",
		ErrCrossSlot, key, keyspace.Slot(key), s.name, keyspace.Slot(s.name))
}

// append runs the write-behind script: the entry (op, row) and the cache
// side (mode "set" with value, ttl and the fill stamp, or "unset", which
// deletes the stamp too).
func (s *WriteBehindStream) append(ctx context.Context, key, op string, row []byte, mode string, value []byte, ttl time.Duration, stamp time.Time) (string, error) {
	c := s.c
	var id string
	keys, stampArg := []string{key, keyspace.FenceKey(key), s.name}, ""
	if !c.opts.NoFillStamps {
		keys = append(keys, keyspace.StampKey(key))
		if mode == "set" {
			stampArg = stampValue(stamp)
		}
	}
	err := c.runScripts(ctx, func(p redis.Pipeliner) {
		c.scripts.writeBehind.EvalSha(ctx, p, keys,
			mode, value, ttl.Milliseconds(), stampArg,
			keyspace.WriteBehindFieldOp, op, keyspace.WriteBehindFieldRow, row)
	}, func(cmds []redis.Cmder) {
		id, _ = cmds[0].(*redis.Cmd).Text()
	})
	switch {
	case err == nil:
		return id, nil
	case redis.HasErrorPrefix(err, "CROSSSLOT"):
		// A cluster behind a client that does not know it (a proxy, a
		// plain client on one node).
		return "", fmt.Errorf("%w: %w", s.crossSlot(key), err)
	case notSent(err):
		return "", fmt.Errorf("cacheaside: write-behind of %s to stream %s failed, nothing was written: %w", key, s.name, err)
	default:
		return "", fmt.Errorf("cacheaside: write-behind of %s to stream %s failed, and may have been written if the connection broke after sending it; writing it again is harmless: %w", key, s.name, err)
	}
}

// notSent reports whether err means the script did not run: Redis refused
// it, or no connection was made.
func notSent(err error) bool {
	var refused redis.Error
	var op *net.OpError
	return errors.As(err, &refused) || (errors.As(err, &op) && op.Op == "dial")
}

// encodeRow encodes an entry's row, which must be a JSON object with at
// least one column.
func encodeRow(key string, row any) ([]byte, error) {
	b, err := json.Marshal(row)
	if err != nil {
		return nil, fmt.Errorf("cacheaside: encode the write-behind row of %s: %w", key, err)
	}
	if len(b) == 0 || b[0] != '{' || string(b) == "{}" {
		return nil, fmt.Errorf("%w; the row of %s is %.80s: pass a struct with json tags, a map[string]any or a json.RawMessage holding an object, with at least the key columns",
			ErrRowNotObject, key, b)
	}
	return b, nil
}
