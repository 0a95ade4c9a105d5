package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The instance lock is a session-level advisory lock whose key is
// hashtext('cachesync slot <slot>'): only the instance holding it recovers
// the slot and the cache and streams. It goes with the connection that took
// it, so a holder whose host vanished keeps it until PostgreSQL notices the
// dead connection; the daemon's lease (internal/daemon/lease.go) bounds that.

// InstanceLockKey is the text whose hashtext is the instance lock's key.
func InstanceLockKey(slot string) string { return "cachesync slot " + slot }

// TryInstanceLock takes the instance lock of slot on conn's session without
// waiting, and reports whether it got it.
func TryInstanceLock(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext($1))", InstanceLockKey(slot)).Scan(&locked); err != nil {
		return false, fmt.Errorf("take the instance lock of slot %q: %w", slot, err)
	}
	return locked, nil
}

// InstanceLockHolderSQL finds the session holding the instance lock of the
// slot named by $1 (docs/operations.md shows it ready to run). pg_locks
// splits the bigint key into classid (high 32 bits) and objid (low 32 bits).
// pg_stat_activity shows state and state_change only to the same role (or
// pg_read_all_stats), which is what instances of one deployment are.
const InstanceLockHolderSQL = `SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''),
       coalesce(a.state, ''), a.state_change,
       (extract(epoch FROM clock_timestamp() - a.state_change) * 1000)::bigint AS idle_ms
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ((hashtext('cachesync slot ' || $1::text)::bigint >> 32) & 4294967295)::oid
  AND l.objid = (hashtext('cachesync slot ' || $1::text)::bigint & 4294967295)::oid`

// LockHolder is the backend holding an instance lock, as the server sees it.
type LockHolder struct {
	PID             int32
	ApplicationName string
	ClientAddr      string
	// State is pg_stat_activity.state ("idle", "active", …); empty when
	// the holder runs as a role whose activity this one may not see.
	State string
	// StateChange is when State last changed (nil when not visible).
	StateChange *time.Time
	// Idle is the server's clock minus StateChange: for a holder that
	// renews its lease with a query, the time since the last renewal.
	Idle time.Duration
}

// InstanceLockHolder returns the backend holding the instance lock of slot,
// or nil when nobody holds it.
func InstanceLockHolder(ctx context.Context, conn *pgx.Conn, slot string) (*LockHolder, error) {
	var h LockHolder
	var idleMS *int64
	err := conn.QueryRow(ctx, InstanceLockHolderSQL, slot).Scan(&h.PID, &h.ApplicationName, &h.ClientAddr, &h.State, &h.StateChange, &idleMS)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up the holder of the instance lock of slot %q: %w", slot, err)
	}
	if idleMS != nil {
		h.Idle = time.Duration(*idleMS) * time.Millisecond
	}
	return &h, nil
}

// TerminateLockHolder terminates the holder's backend, which releases the
// lock, provided its state has not changed since h was read (a holder that
// renewed meanwhile is left alone). It reports whether it signalled it.
func TerminateLockHolder(ctx context.Context, conn *pgx.Conn, h LockHolder) (bool, error) {
	if h.StateChange == nil {
		return false, nil
	}
	var done bool
	err := conn.QueryRow(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND state_change = $2`,
		h.PID, *h.StateChange).Scan(&done)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("terminate backend %d holding the instance lock: %w", h.PID, err)
	}
	return done, nil
}

// WALSenderTimeout returns the server's wal_sender_timeout as this session
// sees it (0: disabled).
func WALSenderTimeout(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
	var ms int64
	if err := conn.QueryRow(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'").Scan(&ms); err != nil {
		return 0, fmt.Errorf("read wal_sender_timeout: %w", err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}
