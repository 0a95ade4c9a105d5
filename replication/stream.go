package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/wal"
)

// Session settings pinned on the replication connection so that the text
// forms of values, and hence cache keys, never depend on server defaults.
var sessionSettings = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "postgres",
	"bytea_output":       "hex",
	"client_encoding":    "UTF8",
	"extra_float_digits": "1",
	"application_name":   "cachesync",
}

// ConnectReplication opens a logical replication connection (replication=database)
// with pinned output settings and TCP keepalives.
func ConnectReplication(ctx context.Context, url string) (*ReplConn, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range sessionSettings {
		if k == "application_name" && cfg.RuntimeParams[k] != "" {
			continue
		}
		cfg.RuntimeParams[k] = v
	}
	dialer := &net.Dialer{KeepAlive: 15 * time.Second, Timeout: 10 * time.Second}
	cfg.DialFunc = dialer.DialContext
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection to %s:%d/%s: %w", cfg.Host, cfg.Port, cfg.Database, err)
	}
	return &ReplConn{pg: conn}, nil
}

// StreamOptions configure a Stream.
type StreamOptions struct {
	Slot        string
	Publication string
	// StatusInterval is the longest time between standby status updates
	// (default 10s). Keep it well below the server's wal_sender_timeout.
	StatusInterval time.Duration
	// MessagePrefix selects the logical decoding messages passed on.
	MessagePrefix string
	// Budget, when set, bounds the bytes of the events sent but not yet
	// consumed: Run acquires each event's Size before sending it, and the
	// consumer releases it once done with the event.
	Budget Budget
	// OnStatus, when set, is called (on Run's goroutine, which it must not
	// hold up) after each standby status update is sent, with the flush
	// position it confirmed and when it was sent.
	OnStatus func(flush wal.LSN, at time.Time)
	Logger   zerolog.Logger
}

// Budget bounds what the events in flight hold. Acquire waits until n bytes
// fit (an event larger than the whole budget passes alone), or ctx is done;
// TryAcquire takes them only if they fit now, without waiting (the stream's
// fast path: no timer per event).
type Budget interface {
	Acquire(ctx context.Context, n int64) error
	TryAcquire(n int64) bool
}

// Stream owns one replication connection: it reads pgoutput, answers
// keepalives, and reports as flushed only what Confirm was told is applied.
// Only the goroutine running Run touches the connection.
type Stream struct {
	conn    *pgconn.PgConn
	opts    StreamOptions
	dec     *Decoder
	applied atomic.Uint64

	received wal.LSN
	// Published for metrics: the received position and the server's WAL end.
	pubReceived, pubServerEnd atomic.Uint64
	lastBarrier               wal.LSN
	lastStatus                time.Time
	lastFlush                 wal.LSN
	lastMsg                   time.Time
	pinged                    bool
}

// NewStream prepares a stream on an open replication connection.
func NewStream(conn *ReplConn, opts StreamOptions) *Stream {
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	return &Stream{conn: conn.pg, opts: opts, dec: NewDecoder(opts.MessagePrefix)}
}

// Confirm records that everything up to lsn is applied (and journaled). It may
// be called from any goroutine; the position never moves backwards.
func (s *Stream) Confirm(lsn wal.LSN) {
	for {
		cur := s.applied.Load()
		if uint64(lsn) <= cur || s.applied.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// Applied returns the highest confirmed position.
func (s *Stream) Applied() wal.LSN { return wal.LSN(s.applied.Load()) }

// Positions returns the WAL position received so far and the server's WAL
// end as last reported (0 until known). Safe from any goroutine.
func (s *Stream) Positions() (received, serverEnd wal.LSN) {
	return wal.LSN(s.pubReceived.Load()), wal.LSN(s.pubServerEnd.Load())
}

// PluginArgs are the pgoutput options: protocol 1 (whole transactions after
// commit, no streaming of in-progress ones), text values, our messages.
func PluginArgs(publication string) []string {
	return []string{
		"proto_version '1'",
		fmt.Sprintf("publication_names '%s'", publication),
		"messages 'true'",
	}
}

// Run starts replication at start (the slot's confirmed_flush_lsn, read just
// before) and sends events until ctx is done or the session fails. It returns
// nil when ctx is done; the caller then drains the pipeline and calls Finish.
func (s *Stream) Run(ctx context.Context, start wal.LSN, events chan<- Event) error {
	s.Confirm(start)
	s.received = start
	s.pubReceived.Store(uint64(start))
	s.lastFlush = start
	err := pglogrepl.StartReplication(ctx, s.conn, s.opts.Slot, pglogrepl.LSN(start),
		pglogrepl.StartReplicationOptions{PluginArgs: PluginArgs(s.opts.Publication)})
	if err != nil {
		return classify(fmt.Errorf("start replication on slot %q at %s: %w", s.opts.Slot, start, err))
	}
	s.opts.Logger.Info().Str("slot", s.opts.Slot).Stringer("start_lsn", start).Msg("streaming")
	s.lastMsg = time.Now()
	s.lastStatus = time.Now()
	// Reads share a 100 ms window, a read deadline on the connection: a
	// short timeout lets a freshly applied position reach the server
	// promptly even when nothing else arrives. A deadline set once per
	// window, and reads without a context, spare a busy stream a timer per
	// window and a context watch per message; ctx's end moves the deadline
	// to the past, which ends the read at once. pgconn keeps the
	// connection, and a message half read, across a timeout.
	nc := s.conn.Conn()
	var deadlineMu sync.Mutex
	returned := false
	stopWatch := context.AfterFunc(ctx, func() {
		deadlineMu.Lock()
		defer deadlineMu.Unlock()
		if !returned {
			_ = nc.SetReadDeadline(time.Unix(1, 0))
		}
	})
	defer func() {
		stopWatch()
		// Finish still reads from the connection: no deadline, and none
		// set by a late AfterFunc either.
		deadlineMu.Lock()
		returned = true
		_ = nc.SetReadDeadline(time.Time{})
		deadlineMu.Unlock()
	}()
	var windowEnd time.Time
	for {
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		if err := s.maybeSendStatus(ctx, now); err != nil {
			return err
		}
		if err := s.checkSilence(ctx, now); err != nil {
			return err
		}
		if !now.Before(windowEnd) {
			windowEnd = now.Add(readWindow)
			if err := nc.SetReadDeadline(windowEnd); err != nil {
				return fmt.Errorf("receive from slot %q: %w", s.opts.Slot, err)
			}
			if ctx.Err() != nil { // ended before the new deadline was set
				return nil
			}
		}
		raw, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				windowEnd = time.Time{}
				continue
			}
			return classify(fmt.Errorf("receive from slot %q: %w", s.opts.Slot, err))
		}
		s.lastMsg, s.pinged = time.Now(), false
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data, events); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		case *pgproto3.ErrorResponse:
			return classify(fmt.Errorf("slot %q: %w", s.opts.Slot, pgconn.ErrorResponseToPgError(msg)))
		case *pgproto3.CopyDone, *pgproto3.CommandComplete:
			// A server shutting down ends the stream (CommandComplete
			// without CopyDone on a fast shutdown).
			return fmt.Errorf("slot %q: the server ended the replication stream", s.opts.Slot)
		default:
			return fmt.Errorf("%w: unexpected %T on the replication connection", ErrProtocol, raw)
		}
	}
}

// readWindow is how long reads wait for a message before Run looks again
// at what it has to send.
const readWindow = 100 * time.Millisecond

func (s *Stream) handleCopyData(ctx context.Context, data []byte, events chan<- Event) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty CopyData", ErrProtocol)
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("%w: keepalive: %v", ErrProtocol, err)
		}
		end := wal.LSN(ka.ServerWALEnd)
		s.pubServerEnd.Store(uint64(end))
		// Idle advancement: nothing before end is still to come, so once
		// everything already received is applied, end may be confirmed.
		// Only between transactions, and only through the ordered pipeline.
		if !s.dec.InTransaction() && end > s.lastBarrier && end > s.received {
			s.lastBarrier = end
			if err := s.emit(ctx, events, Event{Kind: EventBarrier, Barrier: end}); err != nil {
				return err
			}
		}
		if ka.ReplyRequested {
			return s.sendStatus(ctx, false)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("%w: XLogData: %v", ErrProtocol, err)
		}
		if l := wal.LSN(xld.WALStart); l > s.received {
			s.received = l
			s.pubReceived.Store(uint64(l))
		}
		s.pubServerEnd.Store(uint64(xld.ServerWALEnd))
		return s.dec.Decode(xld.WALData, func(ev Event) error { return s.emit(ctx, events, ev) })
	}
	return fmt.Errorf("%w: unknown CopyData message %q", ErrProtocol, data[0])
}

// emit hands an event to the pipeline. While the pipeline is full (Redis is
// slow or down) it keeps the session alive with status updates.
func (s *Stream) emit(ctx context.Context, events chan<- Event, ev Event) error {
	if ev.Kind == EventCommit {
		ev.Received = s.lastMsg // when its message was read
	}
	if err := s.reserve(ctx, ev.Size()); err != nil {
		return err
	}
	select {
	case events <- ev:
		return nil
	default:
	}
	tick := time.NewTicker(s.opts.StatusInterval / 2)
	defer tick.Stop()
	for {
		select {
		case events <- ev:
			s.lastMsg = time.Now()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if err := s.sendStatus(ctx, false); err != nil {
				return err
			}
		}
	}
}

// reserve acquires n bytes of the budget, if any, sending status updates
// while it waits: the budget is full while Redis is slow or down, and the
// session must stay alive meanwhile. Reading stops instead of memory growing.
func (s *Stream) reserve(ctx context.Context, n int64) error {
	if s.opts.Budget == nil || s.opts.Budget.TryAcquire(n) {
		return nil
	}
	for waited := false; ; waited = true {
		wctx, cancel := context.WithTimeout(ctx, s.opts.StatusInterval/2)
		err := s.opts.Budget.Acquire(wctx, n)
		cancel()
		if err == nil {
			if waited {
				// The server was not silent: we did not read.
				s.lastMsg = time.Now()
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.sendStatus(ctx, false); err != nil {
			return err
		}
	}
}

// maybeSendStatus sends an update when one is due, or soon after the applied
// position moved so that the slot (and retained WAL) follows promptly.
func (s *Stream) maybeSendStatus(ctx context.Context, now time.Time) error {
	since := now.Sub(s.lastStatus)
	if since >= s.opts.StatusInterval || (s.Applied() != s.lastFlush && since >= 100*time.Millisecond) {
		return s.sendStatus(ctx, false)
	}
	return nil
}

// checkSilence asks the server for a reply when nothing arrived for two status
// intervals, and gives up on the connection after three.
func (s *Stream) checkSilence(ctx context.Context, now time.Time) error {
	silent := now.Sub(s.lastMsg)
	switch {
	case silent > 3*s.opts.StatusInterval:
		return fmt.Errorf("slot %q: nothing received from the server for %s; reconnecting", s.opts.Slot, silent.Round(time.Second))
	case silent > 2*s.opts.StatusInterval && !s.pinged:
		s.pinged = true
		return s.sendStatus(ctx, true)
	}
	return nil
}

func (s *Stream) sendStatus(ctx context.Context, replyRequested bool) error {
	flush := s.Applied()
	write := s.received
	if flush > write {
		write = flush
	}
	// All three positions are always set: pglogrepl would substitute the
	// write position for a zero flush, confirming unapplied data.
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(write),
		WALFlushPosition: pglogrepl.LSN(flush),
		WALApplyPosition: pglogrepl.LSN(flush),
		ClientTime:       time.Now(),
		ReplyRequested:   replyRequested,
	})
	if err != nil {
		return fmt.Errorf("send standby status to slot %q: %w", s.opts.Slot, err)
	}
	if flush != s.lastFlush {
		s.opts.Logger.Debug().Stringer("flush_lsn", flush).Msg("confirmed")
	}
	s.lastStatus, s.lastFlush = time.Now(), flush
	if s.opts.OnStatus != nil {
		s.opts.OnStatus(flush, s.lastStatus)
	}
	return nil
}

// Finish confirms the final applied position and ends the session cleanly,
// which frees the slot at once for the next holder.
func (s *Stream) Finish(ctx context.Context) error {
	err := s.sendStatus(ctx, false)
	if _, cerr := pglogrepl.SendStandbyCopyDone(ctx, s.conn); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// Errors the daemon branches on.
var (
	// ErrSlotMissing: the replication slot does not exist (SQLSTATE 42704).
	ErrSlotMissing = errors.New("replication slot does not exist")
	// ErrSlotActive: another session streams from the slot (SQLSTATE 55006).
	ErrSlotActive = errors.New("replication slot is active for another process")
	// ErrSlotInvalidated: the slot lost required WAL (SQLSTATE 55000).
	ErrSlotInvalidated = errors.New("replication slot can no longer be read")
)

func classify(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "42704":
		return fmt.Errorf("%w: %w", ErrSlotMissing, err)
	case "55006":
		return fmt.Errorf("%w: %w", ErrSlotActive, err)
	case "55000":
		return fmt.Errorf("%w: %w", ErrSlotInvalidated, err)
	}
	return err
}
