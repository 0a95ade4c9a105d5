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
// The daemon decides when to do these things; this package knows how. The
// free functions taking a *pgx.Conn serve the commands (status, teardown,
// validate) and tests; Conn's methods are the same calls on a connection
// whose driver the daemon never sees.
package replication
