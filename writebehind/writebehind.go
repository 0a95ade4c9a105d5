package writebehind

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/config"
)

// Group is the consumer group a Worker reads with.
const Group = "cachesync"

// PositionsTable holds each stream's last applied entry ID.
const PositionsTable = "cachesync.write_behind"

// DeadLetterStream is where stream's entries that cannot apply go.
func DeadLetterStream(stream string) string { return stream + ":dead" }

// Entry fields.
const (
	FieldOp  = "op"
	FieldRow = "row"
	// Dead letters carry the entry's fields plus these.
	FieldID    = "id"
	FieldError = "error"
	OpUpsert   = "upsert"
	OpDelete   = "delete"
)

// Observer hears what a worker does (internal/metrics implements it). Its
// methods must not block.
type Observer interface {
	// Batch is called after a batch's transaction committed: entries read,
	// applied (rows written or deleted after merging), skipped (at or below
	// the recorded ID) and dead letters among them, and how long it took
	// from the read to the acknowledgement.
	Batch(name string, entries, applied, skipped, dead int, took time.Duration)
}

// Options configure a Worker.
type Options struct {
	Spec *config.WriteBehind
	// Redis holds the stream; DB is the worker's own connection to the
	// database (it takes the stream's lock on it and applies batches on it).
	Redis redis.UniversalClient
	// Connect opens the worker's PostgreSQL connection (again after a
	// failure).
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Consumer names this worker in the consumer group (default: host and
	// process ID).
	Consumer string
	// Fence, when set, is checked before every commit: an error stops the
	// worker without committing (the daemon's lease).
	Fence func() error
	// Failpoint, when set, is called at "write-behind-before-commit" and
	// "write-behind-after-commit" (committed, not acknowledged).
	Failpoint func(name string)
	Observer  Observer
	Logger    zerolog.Logger
}

// ErrLocked means another worker holds the stream's lock.
var ErrLocked = errors.New("another cachesync drains this stream")

// Run drains the stream until ctx ends: it takes the stream's lock
// (waiting while another worker holds it), claims pending entries, then
// applies batches. It returns ctx's error, or a failure that retrying
// cannot fix (the table or the lock's connection cannot be used). Transient
// failures (PostgreSQL or Redis down) are retried with backoff inside.
func Run(ctx context.Context, o Options) error {
	return errors.New("writebehind: not implemented yet")
}
