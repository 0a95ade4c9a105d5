package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/writer"
)

func teardownCommand() *cli.Command {
	return &cli.Command{
		Name:  "teardown",
		Usage: "drop the slot and the publication (stop cachesync first)",
		Flags: flags(databaseURLFlag(), redisURLFlag()),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			conn, err := connectPG(c, e.dbURL)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(c.Context))
			dropped, err := replication.DropSlot(c.Context, conn, e.cfg.Postgres.Slot)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync teardown: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "slot %q: %s\n", e.cfg.Postgres.Slot, map[bool]string{true: "dropped", false: "absent"}[dropped])
			dropped, err = replication.DropPublication(c.Context, conn, e.cfg.Postgres.Publication)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync teardown: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "publication %q: %s\n", e.cfg.Postgres.Publication, map[bool]string{true: "dropped", false: "absent"}[dropped])
			parts, err := replication.RemovePartitionTruncateTriggers(c.Context, conn)
			if err != nil {
				return &exitError{code: 1, msg: "cachesync teardown: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "partition truncate triggers: %d dropped\n", len(parts))
			if redisConfigured(c, e.cfg) {
				rc, err := redisClient(c, e.cfg)
				if err != nil {
					return err
				}
				defer rc.Close()
				if err := writer.NewPositions(rc).Forget(c.Context, e.cfg.Postgres.Slot); err != nil {
					e.log.Warn().Err(err).Msg("could not remove the applied position from Redis")
				}
			}
			return nil
		},
	}
}
