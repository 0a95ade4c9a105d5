// Package replication owns everything cachesync does with PostgreSQL.
//
//   - The replication connection (ReplConn): IDENTIFY_SYSTEM, slot creation,
//     and Stream, which decodes pgoutput into events and confirms only what
//     the pipeline applied.
//   - A normal connection (Conn) for everything beside the stream: preflight
//     checks, the publication, slot figures (ReadSlot), partition trees and
//     their truncate triggers, the instance lock (instancelock.go), logical
//     messages (heartbeats, partition flushes) and the current snapshot that
//     the visibility gate waits on.
//
// # Stream
//
// Stream.Run starts pgoutput at the slot's confirmed_flush_lsn with protocol
// 1 (whole transactions, after their commit; PluginArgs), decodes its
// messages (Decoder) into events (Begin, Change, Message, Commit, Barrier),
// and sends them down one channel in commit order. It sends a standby
// status update at least every StreamOptions.StatusInterval and about
// 100 ms after the confirmed position moved, and sets write, flush and apply
// in every one (pglogrepl would put the write position in a zero flush).
// Only Confirm moves the flush position, and never backwards: the caller
// confirms an end LSN once everything up to it is applied and journaled.
//
// A keepalive's ServerWALEnd, between transactions, becomes a Barrier
// event: confirmed once everything before it is applied, it keeps the slot
// moving while the server streams only WAL that decodes to nothing (other
// databases, vacuum). While the pipeline is full (StreamOptions.Budget, or
// the channel) Run stops reading and keeps the session alive with status
// updates, so a slow Redis slows reading instead of growing memory. Finish
// sends the final position and ends the session, freeing the slot at once.
//
// The daemon decides when to do these things; this package knows how. The
// free functions taking a *pgx.Conn serve the commands (status, teardown,
// validate) and tests; Conn's methods are the same calls on a connection
// whose driver the daemon never sees.
package replication
