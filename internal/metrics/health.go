package metrics

import (
	"fmt"
	"time"

	"github.com/cachesync/cachesync/wal"
)

// DefaultStuckAfter is how long /healthz waits, by default, before calling a
// pipeline that holds unconfirmed WAL and makes no progress stuck. Five
// minutes is far above anything a healthy daemon goes without confirming
// while it has work: an idle stream confirms the server's WAL end within
// two status intervals (the stream asks for a keepalive after that), and
// an apply that takes longer than this without Redis failing is a flush of
// millions of keys at least, where raising the flag is the answer. It is
// short enough that the kubelet restarts a wedged process within minutes
// rather than hours of stale caches.
const DefaultStuckAfter = 5 * time.Minute

// Confirmed records a WAL position confirmed to PostgreSQL: the progress
// that /healthz watches, and the confirmed_lsn gauge.
func (m *Metrics) Confirmed(lsn wal.LSN, now time.Time) {
	m.ConfirmedLSN.Set(float64(lsn))
	if uint64(lsn) > m.confirmed.Load() {
		m.confirmed.Store(uint64(lsn))
		m.progressAt.Store(now.UnixNano())
	}
}

// WaitingForPostgres records that the pipeline waits for PostgreSQL to show
// committed transactions to new snapshots (a synchronous standby not
// answering): an outage too, which a restart would not cure, so /healthz does
// not count the time.
func (m *Metrics) WaitingForPostgres(now time.Time) { m.outageAt.Store(now.UnixNano()) }

// progress is what the liveness verdict is made of, sampled at one instant.
type progress struct {
	state   string // the daemon's state; "streaming" means the replication session is up
	redisUp bool   // the writer is not failing
	// confirmed is the highest position confirmed; received and serverEnd
	// are the stream's (see Metrics.Positions).
	confirmed, received, serverEnd wal.LSN
	// idle is the time since the confirmed position last moved, the state
	// last changed, or an outage was last seen (Redis failing, or waiting
	// for PostgreSQL to show commits), whichever is latest.
	idle       time.Duration
	stuckAfter time.Duration // 0: never stuck
}

// pending reports whether the daemon knows of WAL it has not confirmed:
// received from the stream, or announced by the server as written.
func (p progress) pending() bool {
	return max(p.received, p.serverEnd) > p.confirmed
}

// live is the liveness verdict: false only when a restart could help, that
// is when the pipeline made no progress for stuckAfter while work is pending
// and both servers answer. An outage of Redis or PostgreSQL is never a
// reason: a new process would wait for the same server.
func (p progress) live() (bool, string) {
	switch {
	case p.stuckAfter <= 0:
		return true, "ok"
	case p.state != StateStreaming:
		return true, "ok: " + p.state
	case !p.redisUp:
		return true, "ok: Redis is failing; waiting for it (a restart would not help)"
	case !p.pending():
		return true, "ok: everything received is confirmed"
	case p.idle < p.stuckAfter:
		return true, "ok: progressing"
	}
	return false, fmt.Sprintf("stuck: nothing confirmed for %s while PostgreSQL and Redis answer; confirmed %s, received %s, server WAL end %s; a restart may help (--stuck-after %s)",
		p.idle.Round(time.Second), p.confirmed, p.received, p.serverEnd, p.stuckAfter)
}

// liveness samples the daemon and returns the verdict of /healthz. A Redis
// outage seen now restarts the idle clock, so that the time Redis was down
// is not counted once it is back.
func (m *Metrics) liveness(redisUp func() bool, stuckAfter time.Duration, now time.Time) (bool, string) {
	p := progress{redisUp: redisUp(), confirmed: wal.LSN(m.confirmed.Load()), stuckAfter: stuckAfter}
	p.state, _ = m.State()
	if fn := m.positions.Load(); fn != nil {
		p.received, p.serverEnd = (*fn)()
	}
	if !p.redisUp {
		m.outageAt.Store(now.UnixNano())
	}
	last := max(m.progressAt.Load(), m.stateAt.Load(), m.outageAt.Load())
	p.idle = now.Sub(time.Unix(0, last))
	return p.live()
}
