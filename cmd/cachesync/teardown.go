package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/mattn/go-isatty"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/writer"
)

func teardownCommand() *cli.Command {
	return &cli.Command{
		Name:  "teardown",
		Usage: "drop the slot and the publication (stop cachesync first)",
		Flags: flags(databaseURLFlag(), redisURLFlag(),
			&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "drop without asking (required when stdin is not a terminal)"}),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			what := fmt.Sprintf("This drops the replication slot %q and the publication %q of %s; a later run starts from a new slot and flushes every rule's key space",
				e.cfg.Postgres.Slot, e.cfg.Postgres.Publication, databaseName(e.dbURL))
			if err := confirm(c.App.Reader, c.App.ErrWriter, isatty.IsTerminal(os.Stdin.Fd()), c.Bool("yes"), what); err != nil {
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

// confirm asks on a terminal whether to do what, y/N; --yes answers for
// the user. Without a terminal nothing can ask, and a script must say
// --yes: a teardown that runs by accident (a wrong CACHESYNC_CONFIG, a
// copied command) loses the slot's position for good.
func confirm(in io.Reader, out io.Writer, terminal, yes bool, what string) error {
	if yes {
		return nil
	}
	if !terminal {
		return usageError("%s.\nPass --yes to go ahead (stdin is not a terminal to ask on).", what)
	}
	fmt.Fprintf(out, "%s.\nGo ahead? [y/N] ", what)
	answer, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return &exitError{code: 1, msg: "not confirmed: nothing was dropped"}
}

// databaseName is "database "app" on db.internal:5432", never the URL,
// which may hold a password.
func databaseName(url string) string {
	pc, err := pgx.ParseConfig(url)
	if err != nil {
		return "the database"
	}
	return fmt.Sprintf("database %q on %s:%d", pc.Database, pc.Host, pc.Port)
}
