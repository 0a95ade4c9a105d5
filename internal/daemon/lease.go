package daemon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/replication"
)

// The instance lock (replication.TryInstanceLock) is a session-level
// advisory lock: it lives as long as the holder's backend. A holder whose
// host lost power, whose network was cut or whose process is frozen keeps
// that backend until the server's TCP keepalive gives up (two hours by
// default; keepalives do not help at all against a frozen process, whose
// kernel keeps acknowledging). The lease bounds that wait:
//
//   - the holder runs a trivial query on its lock connection every lease/4,
//     so its backend is never idle for long while it lives, and it stops
//     acting on the slot and the cache (lease.check) once its last renewal
//     was sent more than ¾ lease ago;
//   - an instance that cannot take the lock terminates the holder's backend
//     when, by the server's clock, that backend has been idle for more than
//     the lease and the slot has no walsender (takeoverVerdict).
//
// The holder's own clock measures from before the renewal query reached the
// server, so it always gives up at least ¼ lease before anyone may take
// over. The lease is the server's wal_sender_timeout, the time after which
// the dead holder's walsender is gone too, with a floor, and the holder
// states it in its application_name so that a passive instance applies the
// holder's lease, not its own.
const (
	// minLease keeps renewals (every lease/4) from becoming chatty with a
	// very short wal_sender_timeout.
	minLease = 5 * time.Second
	// noTimeoutLease is the lease when wal_sender_timeout is 0 (disabled);
	// takeover then also waits for the dead holder's walsender to end.
	noTimeoutLease = time.Minute
	// takeoverRelease bounds the wait for a terminated holder's backend to
	// exit and release the lock.
	takeoverRelease = 5 * time.Second
)

// errLockLost means this instance can no longer prove that it holds the
// instance lock: it stops streaming, confirms nothing more and stands by
// (it wraps ErrSlotActive, which is what Run stands by on).
var errLockLost = fmt.Errorf("%w: this instance lost the instance lock", replication.ErrSlotActive)

// leaseFor returns the lease for the server's wal_sender_timeout.
func leaseFor(walSenderTimeout time.Duration) time.Duration {
	if walSenderTimeout <= 0 {
		return noTimeoutLease
	}
	return max(walSenderTimeout, minLease)
}

// lockAppPrefix starts the application_name of a lock connection; the lease
// follows in milliseconds.
const lockAppPrefix = "cachesync lock lease="

func lockAppName(lease time.Duration) string {
	return lockAppPrefix + strconv.FormatInt(lease.Milliseconds(), 10) + "ms"
}

// parseLockAppName returns the lease a lock holder stated in its
// application_name; false for a holder that states none (a version of
// cachesync without leases, or another client holding the key).
func parseLockAppName(name string) (time.Duration, bool) {
	ms, ok := strings.CutPrefix(name, lockAppPrefix)
	if !ok {
		return 0, false
	}
	ms, ok = strings.CutSuffix(ms, "ms")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return time.Duration(n) * time.Millisecond, true
}

// takeoverVerdict decides whether the holder of the instance lock is gone
// (its lease expired) and may be terminated. slotActive says whether the
// slot has a walsender. why explains the verdict either way.
func takeoverVerdict(h replication.LockHolder, slotActive bool) (take bool, why string) {
	lease, ok := parseLockAppName(h.ApplicationName)
	switch {
	case !ok:
		return false, fmt.Sprintf("the lock holder (pid %d, application_name %q) renews no lease (an older cachesync or another client): waiting for it to exit", h.PID, h.ApplicationName)
	case h.StateChange == nil:
		return false, fmt.Sprintf("the activity of the lock holder (pid %d) is hidden from this role: run every instance as the same role (or grant pg_read_all_stats)", h.PID)
	case h.State != "idle":
		return false, fmt.Sprintf("the lock holder (pid %d) is %s", h.PID, h.State)
	case h.Idle <= lease:
		return false, fmt.Sprintf("the lock holder (pid %d) renewed its lease %s ago (lease %s)", h.PID, h.Idle, lease)
	case slotActive:
		return false, fmt.Sprintf("the lock holder (pid %d) has not renewed its lease for %s (lease %s), but the slot still has a walsender: waiting for wal_sender_timeout to end it", h.PID, h.Idle, lease)
	}
	return true, fmt.Sprintf("the lock holder (pid %d) has not renewed its lease for %s (lease %s) and the slot has no walsender", h.PID, h.Idle, lease)
}

// lease is the instance lock held on its own connection, renewed by hold.
type lease struct {
	conn lockConn
	dur  time.Duration
	// epoch and until are monotonic: until is when the lease ends, as a
	// duration since epoch.
	epoch time.Time
	until atomic.Int64
}

// lockConn is the connection whose session holds the instance lock
// (replication.Conn): a query on it renews the lease, closing it releases
// the lock.
type lockConn interface {
	Ping(ctx context.Context) error
	Close(ctx context.Context) error
}

// newLease starts a lease taken by a query sent at sent: the server's
// state_change of the lock connection is later than that.
func newLease(conn lockConn, dur time.Duration, sent time.Time) *lease {
	l := &lease{conn: conn, dur: dur, epoch: sent}
	l.until.Store(int64(l.validFor()))
	return l
}

// validFor is how long a renewal holds, from when it was sent.
func (l *lease) validFor() time.Duration { return l.dur * 3 / 4 }

// check returns errLockLost once the lease ran out: the process was
// frozen, or PostgreSQL did not answer the renewals. Another instance may
// have taken over since, so nothing may be written or confirmed any more.
func (l *lease) check() error {
	now := time.Since(l.epoch)
	if until := time.Duration(l.until.Load()); now >= until {
		return fmt.Errorf("%w: its lease was last renewed %s ago, more than %s (the process was frozen or cut off from PostgreSQL)",
			errLockLost, (now - until + l.validFor()).Round(time.Millisecond), l.validFor())
	}
	return nil
}

// hold renews the lease every lease/4 until ctx ends (nil), or returns
// errLockLost when a renewal fails or comes too late.
func (l *lease) hold(ctx context.Context) error {
	tick := time.NewTicker(l.dur / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := l.check(); err != nil {
			return err
		}
		sent := time.Since(l.epoch)
		qctx, cancel := context.WithTimeout(ctx, l.dur/2)
		err := l.conn.Ping(qctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: renewing its lease failed: %w", errLockLost, err)
		}
		if err := l.check(); err != nil {
			return err
		}
		l.until.Store(int64(sent + l.validFor()))
	}
}

// fence returns errLockLost when this instance can no longer prove that it
// holds the instance lock. It is checked before every write to the cache
// and every confirmation, so that an instance waking from a freeze stops
// before it touches what a new active instance owns (nil without a lock:
// dry runs).
func (s *session) fence() error {
	if s.lease == nil {
		return nil
	}
	return s.lease.check()
}

// takeLock takes the instance lock on a connection of its own. When another
// instance holds it and its lease expired (takeoverVerdict), the holder's
// backend is terminated and the lock taken over. Otherwise it returns an
// error wrapping ErrSlotActive.
func (d *Daemon) takeLock(ctx context.Context) (_ *lease, err error) {
	slot := d.opts.Config.Postgres.Slot
	conn, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	wst, err := conn.WALSenderTimeout(ctx)
	if err != nil {
		return nil, err
	}
	dur := leaseFor(wst)
	if err := conn.SetApplicationName(ctx, lockAppName(dur)); err != nil {
		return nil, fmt.Errorf("name the lock connection: %w", err)
	}
	// try returns the lease, or nil when another session holds the lock.
	try := func() (*lease, error) {
		sent := time.Now()
		locked, err := conn.TryInstanceLock(ctx, slot)
		if err != nil || !locked {
			return nil, err
		}
		return newLease(conn, dur, sent), nil
	}
	if l, err := try(); l != nil || err != nil {
		return l, err
	}
	holder, err := conn.InstanceLockHolder(ctx, slot)
	if err != nil {
		return nil, err
	}
	if holder == nil { // released meanwhile
		if l, err := try(); l != nil || err != nil {
			return l, err
		}
		return nil, fmt.Errorf("%w: another instance is starting or streaming on slot %q", replication.ErrSlotActive, slot)
	}
	info, err := conn.ReadSlot(ctx, slot)
	if err != nil {
		return nil, err
	}
	take, why := takeoverVerdict(*holder, info != nil && info.Active)
	if !take {
		d.log.Debug().Str("slot", slot).Msg("the instance lock is held: " + why)
		return nil, fmt.Errorf("%w: another instance is starting or streaming on slot %q: %s", replication.ErrSlotActive, slot, why)
	}
	terminated, err := conn.TerminateLockHolder(ctx, *holder)
	if err != nil {
		return nil, err
	}
	if !terminated {
		return nil, fmt.Errorf("%w: the holder of the instance lock of slot %q (pid %d) renewed or left while being taken over", replication.ErrSlotActive, slot, holder.PID)
	}
	d.log.Error().Str("slot", slot).Int32("holder_pid", holder.PID).Str("holder_addr", holder.ClientAddr).
		Dur("holder_idle", holder.Idle).Str("cause", why).
		Msg("TAKEOVER: the active instance stopped renewing its lease (host down, frozen or cut off); terminated its lock connection to take over")
	deadline := time.Now().Add(takeoverRelease)
	for {
		if l, err := try(); l != nil || err != nil {
			return l, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: backend %d holding the instance lock of slot %q was terminated but did not release it within %s", replication.ErrSlotActive, holder.PID, slot, takeoverRelease)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// withLock runs fn while this instance holds the instance lock and renews
// its lease. fn's ctx ends on ctx (a graceful stop: drain, confirm) or when
// the lease is lost; hard ends only when the lease is lost, and then
// nothing more may be written or confirmed. fn gets the lease, for its
// session's fence.
func (d *Daemon) withLock(ctx context.Context, fn func(ctx, hard context.Context, l *lease) error) error {
	l, err := d.takeLock(ctx)
	if err != nil {
		return err
	}
	defer l.conn.Close(context.WithoutCancel(ctx))
	hard, loseLock := context.WithCancelCause(context.WithoutCancel(ctx))
	defer loseLock(nil)
	work, stopWork := context.WithCancelCause(ctx)
	defer stopWork(nil)
	stopOnLoss := context.AfterFunc(hard, func() { stopWork(context.Cause(hard)) })
	defer stopOnLoss()
	holdCtx, stopHolding := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHolding()

	var g errgroup.Group
	g.Go(func() error {
		err := l.hold(holdCtx)
		if err != nil {
			loseLock(err)
		}
		return err
	})
	var workErr error
	g.Go(func() error {
		defer stopHolding()
		workErr = fn(work, hard, l)
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	if workErr != nil && !errors.Is(workErr, errLockLost) {
		// A stage that failed on a dead lock connection's consequences
		// (cancelled context) says less than the fence that stopped it.
		if ferr := l.check(); ferr != nil {
			return ferr
		}
	}
	return workErr
}
