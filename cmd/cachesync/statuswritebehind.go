package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/writebehind"
)

// writeBehindReport is a write_behind block's backlog: its stream in Redis
// and the last entry ID applied to its table, recorded in PostgreSQL.
type writeBehindReport struct {
	Name   string `json:"name"`
	Stream string `json:"stream"`
	// Backlog is Lag + Pending: entries not yet applied.
	Backlog int64 `json:"backlog"`
	Pending int64 `json:"pending"`
	Lag     int64 `json:"lag"`
	// Length is the stream's length (applied entries are trimmed).
	Length               int64   `json:"length"`
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	DeadLetters          int64   `json:"dead_letters"`
	DeadLetterStream     string  `json:"dead_letter_stream"`
	// LastApplied is the recorded ID ("", or "0-0" once a worker started:
	// nothing applied yet).
	LastApplied string `json:"last_applied,omitempty"`
	// Error is why the backlog could not be read from Redis;
	// LastAppliedError why the last applied ID could not be read.
	Error            string `json:"error,omitempty"`
	LastAppliedError string `json:"last_applied_error,omitempty"`
}

// writeBehindStatus reads each write_behind block's backlog from Redis and
// its last applied ID from PostgreSQL (db nil: not read). A block that
// cannot be read says why; the others are still shown.
func writeBehindStatus(ctx context.Context, rdb redis.UniversalClient, db *pgx.Conn, blocks []*config.WriteBehind, now time.Time) []writeBehindReport {
	var out []writeBehindReport
	for _, wb := range blocks {
		rep := writeBehindReport{Name: wb.Name, Stream: wb.Stream, DeadLetterStream: writebehind.DeadLetterStream(wb.Stream)}
		b, err := writebehind.ReadBacklog(ctx, rdb, wb.Stream, now)
		if err != nil {
			rep.Error = "Redis: " + err.Error()
		} else {
			rep.Backlog, rep.Pending, rep.Lag, rep.Length = b.Entries(), b.Pending, b.Lag, b.Length
			rep.OldestPendingSeconds, rep.DeadLetters = b.OldestPending.Seconds(), b.DeadLetters
		}
		if db != nil {
			if rep.LastApplied, err = writebehind.ReadPosition(ctx, db, wb.Stream); err != nil {
				rep.LastAppliedError = "PostgreSQL: " + err.Error()
			}
		}
		out = append(out, rep)
	}
	return out
}

// printWriteBehinds writes one status line per write_behind block.
func printWriteBehinds(w io.Writer, reps []writeBehindReport) {
	for _, r := range reps {
		fmt.Fprintf(w, "write_behind %s\t%s\n", r.Name, r.describe())
	}
}

// describe says, in one line, how far the block's table is behind its
// stream.
func (r writeBehindReport) describe() string {
	var s string
	if r.Error != "" {
		s = fmt.Sprintf("stream %s: backlog unknown: %s", r.Stream, r.Error)
	} else {
		s = fmt.Sprintf("stream %s: backlog %d (pending %d)", r.Stream, r.Backlog, r.Pending)
		if r.Backlog > 0 {
			s += ", oldest " + age(time.Duration(r.OldestPendingSeconds*float64(time.Second)))
		}
		s += fmt.Sprintf(", dead letters %d", r.DeadLetters)
	}
	switch {
	case r.LastAppliedError != "":
		s += ", last applied unknown: " + r.LastAppliedError
	case r.LastApplied == "" || r.LastApplied == "0-0": // 0-0: recorded by a worker's start
		s += ", nothing applied yet"
	default:
		s += ", last applied " + r.LastApplied
	}
	return s
}

// age rounds d to what a reader needs: tenths of a second under a minute,
// seconds above.
func age(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// warning is what status warns about the block: dead letters.
func (r writeBehindReport) warning() string {
	if r.DeadLetters == 0 {
		return ""
	}
	return fmt.Sprintf("write_behind %s: dead letters (entries that could not apply) in %s: %d; inspect them (redis-cli XRANGE %s - +), fix the cause, replay them with XADD %s * op ... row ..., then XDEL or DEL them (docs/operations.md, Write-behind)",
		r.Name, r.DeadLetterStream, r.DeadLetters, r.DeadLetterStream, r.Stream)
}
