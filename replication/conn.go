package replication

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// Conn is a normal (not replication) connection to the database, with the
// queries cachesync runs beside the stream. One goroutine uses it at a time.
type Conn struct {
	pg *pgx.Conn
}

// Connect opens a normal connection.
func Connect(ctx context.Context, url string) (*Conn, error) {
	pg, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return &Conn{pg: pg}, nil
}

// Close closes the connection; a session-level lock it held is released.
func (c *Conn) Close(ctx context.Context) error { return c.pg.Close(ctx) }

// Ping runs a trivial query, so that the server sees the session active
// (a lease renewal: the holder's state_change moves).
func (c *Conn) Ping(ctx context.Context) error {
	_, err := c.pg.Exec(ctx, "SELECT 1")
	return err
}

// DatabaseName returns current_database().
func (c *Conn) DatabaseName(ctx context.Context) (string, error) {
	var name string
	if err := c.pg.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		return "", fmt.Errorf("read database name: %w", err)
	}
	return name, nil
}

// SetApplicationName sets the session's application_name, which
// pg_stat_activity shows to other sessions.
func (c *Conn) SetApplicationName(ctx context.Context, name string) error {
	_, err := c.pg.Exec(ctx, "SELECT set_config('application_name', $1, false)", name)
	return err
}

// WALSenderTimeout is WALSenderTimeout on c.
func (c *Conn) WALSenderTimeout(ctx context.Context) (time.Duration, error) {
	return WALSenderTimeout(ctx, c.pg)
}

// TryInstanceLock is TryInstanceLock on c.
func (c *Conn) TryInstanceLock(ctx context.Context, slot string) (bool, error) {
	return TryInstanceLock(ctx, c.pg, slot)
}

// InstanceLockHolder is InstanceLockHolder on c.
func (c *Conn) InstanceLockHolder(ctx context.Context, slot string) (*LockHolder, error) {
	return InstanceLockHolder(ctx, c.pg, slot)
}

// TerminateLockHolder is TerminateLockHolder on c.
func (c *Conn) TerminateLockHolder(ctx context.Context, h LockHolder) (bool, error) {
	return TerminateLockHolder(ctx, c.pg, h)
}

// ReadSlot is ReadSlot on c.
func (c *Conn) ReadSlot(ctx context.Context, name string) (*SlotInfo, error) {
	return ReadSlot(ctx, c.pg, name)
}

// DropSlot is DropSlot on c.
func (c *Conn) DropSlot(ctx context.Context, name string) (bool, error) {
	return DropSlot(ctx, c.pg, name)
}

// Preflight is Preflight on c.
func (c *Conn) Preflight(ctx context.Context, rules []*config.Rule, opts PreflightOptions) (hcl.Diagnostics, error) {
	return Preflight(ctx, c.pg, rules, opts)
}

// ReadPublication is ReadPublication on c.
func (c *Conn) ReadPublication(ctx context.Context, name string) (*Publication, error) {
	return ReadPublication(ctx, c.pg, name)
}

// EnsurePublication is EnsurePublication on c.
func (c *Conn) EnsurePublication(ctx context.Context, name string, tables []config.TableName) ([]string, error) {
	return EnsurePublication(ctx, c.pg, name, tables)
}

// EnsurePartitionTruncateTriggers is EnsurePartitionTruncateTriggers on c.
func (c *Conn) EnsurePartitionTruncateTriggers(ctx context.Context, tables []config.TableName) ([]string, error) {
	return EnsurePartitionTruncateTriggers(ctx, c.pg, tables)
}

// RemovePartitionTruncateTriggers is RemovePartitionTruncateTriggers on c.
func (c *Conn) RemovePartitionTruncateTriggers(ctx context.Context) ([]string, error) {
	return RemovePartitionTruncateTriggers(ctx, c.pg)
}

// ReadPartitionTrees is ReadPartitionTrees on c.
func (c *Conn) ReadPartitionTrees(ctx context.Context, tables []config.TableName) (PartitionTrees, error) {
	return ReadPartitionTrees(ctx, c.pg, tables)
}

// HeartbeatPrefix is the logical message prefix of heartbeats.
const HeartbeatPrefix = "cachesync.heartbeat"

// EmitHeartbeat writes a heartbeat: a transactional logical message on
// HeartbeatPrefix holding the time it was written. It travels the stream
// like any transaction, so the slot keeps moving on an idle database, and
// HeartbeatSent reads its time back for the round trip.
func (c *Conn) EmitHeartbeat(ctx context.Context, at time.Time) error {
	if _, err := c.pg.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2)", HeartbeatPrefix, at.UTC().Format(time.RFC3339Nano)); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// HeartbeatSent returns when the heartbeat m was written; false when m is
// not a heartbeat.
func HeartbeatSent(m wal.Message) (time.Time, bool) {
	if m.Prefix != HeartbeatPrefix {
		return time.Time{}, false
	}
	at, err := time.Parse(time.RFC3339Nano, string(m.Content))
	return at, err == nil
}

// EmitPartitionsChanged writes one transactional logical message on
// wal.PartitionsMessagePrefix per root whose partition tree changed; each
// flushes the root's rules when it comes back through the stream.
func (c *Conn) EmitPartitionsChanged(ctx context.Context, roots []string) error {
	if _, err := c.pg.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, root) FROM unnest($2::text[]) AS root",
		wal.PartitionsMessagePrefix, roots); err != nil {
		return fmt.Errorf("write the flush for the changed partitions of %v: %w", roots, err)
	}
	return nil
}

// Snapshot reads pg_current_snapshot(): which transactions new snapshots
// see as finished.
func (c *Conn) Snapshot(ctx context.Context) (Snapshot, error) {
	var text string
	if err := c.pg.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&text); err != nil {
		return Snapshot{}, fmt.Errorf("read the current snapshot: %w", err)
	}
	return ParseSnapshot(text)
}

// ReplConn is a logical replication connection (replication=database),
// opened by ConnectReplication. A Stream streams on it; before that it
// identifies the system and creates slots.
type ReplConn struct {
	pg *pgconn.PgConn
}

// Close closes the connection; a temporary slot created on it is dropped.
func (r *ReplConn) Close(ctx context.Context) error { return r.pg.Close(ctx) }

// System is what IDENTIFY_SYSTEM reports: the WAL history a server's LSNs
// belong to.
type System struct {
	SystemID string
	Timeline int32
}

// IdentifySystem runs IDENTIFY_SYSTEM.
func (r *ReplConn) IdentifySystem(ctx context.Context) (System, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, r.pg)
	if err != nil {
		return System{}, fmt.Errorf("identify system: %w", err)
	}
	return System{SystemID: sys.SystemID, Timeline: sys.Timeline}, nil
}
