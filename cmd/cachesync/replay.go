package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

func replayCommand() *cli.Command {
	return &cli.Command{
		Name:  "replay",
		Usage: "re-apply journaled batches from an LSN or a time (after Redis was restored or restarted empty)",
		Description: "Reads the journal under --data-dir (also while cachesync run is writing it) and applies every batch\n" +
			"from --from LSN or --since TIME to Redis again; a running daemon carries on streaming meanwhile.\n" +
			"When the journal does not reach back that far it refuses: pass --flush to drop every rule's key space instead.",
		Flags: flags(dataDirFlag(), redisURLFlag(),
			&cli.StringFlag{Name: "from", Usage: "LSN to replay from (as PostgreSQL prints it: 0/16B3748)"},
			&cli.TimestampFlag{Name: "since", Layout: time.RFC3339, Usage: "commit time to replay from (RFC 3339)"},
			&cli.BoolFlag{Name: "flush", Usage: "flush every rule's key space instead of replaying"},
		),
		Action: func(c *cli.Context) error {
			// The command line first: a usage error whatever the rules file says.
			var from wal.LSN
			if f := c.String("from"); f != "" {
				var err error
				if from, err = wal.ParseLSN(f); err != nil {
					return usageError("--from: %v", err)
				}
			}
			var since time.Time
			if t := c.Timestamp("since"); t != nil {
				since = *t
			}
			if !c.Bool("flush") && ((c.String("from") == "") == since.IsZero()) {
				return usageError("give exactly one of --from LSN and --since TIME, or --flush")
			}
			e, err := setupEnv(c, false)
			if err != nil {
				return err
			}
			s, err := e.stack(c, false, nil)
			if err != nil {
				return err
			}
			defer s.close()
			if c.Bool("flush") {
				m, err := mapping.New(e.cfg.Rules, mapping.Options{})
				if err != nil {
					return err
				}
				if err := s.writer.Apply(c.Context, []mapping.Batch{{Ops: m.FlushAll(mapping.ReasonCacheReset)}}); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "flushed the key spaces of %d rules\n", len(e.cfg.Rules))
				return nil
			}
			dir := journalDir(c, e.cfg)
			// Replayed changes are guarded in the history they were
			// streamed in, like the daemon's own, so that none overwrites
			// a newer value the daemon wrote.
			state, ok, err := journal.ReadState(dir)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync replay: " + err.Error()}
			}
			if ok {
				s.writer.SetHistory(keyspace.History(state.SystemID, state.Timeline))
			}
			n, err := daemon.Replay(c.Context, dirReplayer(dir), s.writer, from, since)
			if errors.Is(err, journal.ErrNotCovered) {
				return &exitError{code: 1, msg: fmt.Sprintf("cachesync replay: %v\nNothing was applied. To heal the cache anyway, run cachesync replay --flush (drops every rule's key space).", err)}
			}
			if err != nil {
				return &exitError{code: 1, msg: "cachesync replay: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "replayed %d batches from %s\n", n, dir)
			return nil
		},
	}
}

// dirReplayer replays a journal directory without locking it.
type dirReplayer string

func (d dirReplayer) Replay(ctx context.Context, from wal.LSN, since time.Time, fn func(mapping.Batch) error) error {
	return journal.ReplayDir(ctx, string(d), from, since, fn)
}
