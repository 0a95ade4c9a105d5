// Command cachesync keeps Redis caches in line with PostgreSQL: it reads the
// database's logical replication stream and applies the invalidations, version
// bumps and write-through refreshes declared in rules.hcl.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// exitError carries an exit code (1: bad input or failure, 2: usage error;
// see usageError) and a message that was already printed or is printed by
// main.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	app := newApp()
	// urfave/cli hands a command's error here before returning it: keep
	// the command's context, whose flags say how to report it.
	var failed *cli.Context
	app.ExitErrHandler = func(c *cli.Context, err error) {
		if err != nil && failed == nil {
			failed = c
		}
	}
	err := app.RunContext(ctx, os.Args)
	stop()
	os.Exit(report(os.Stderr, err, failureOf(failed)))
}

func newApp() *cli.App {
	app := &cli.App{
		Name:  "cachesync",
		Usage: "turn committed PostgreSQL row changes into Redis cache invalidations",
		Description: "cachesync consumes logical replication (pgoutput), maps each committed row change " +
			"through the rules in rules.hcl to Redis operations, applies them, and only then confirms the WAL position.",
		Commands: []*cli.Command{
			runCommand(),
			validateCommand(),
			explainCommand(),
			backfillCommand(),
			verifyCommand(),
			writeBehindCommand(),
			setupCommand(),
			statusCommand(),
			replayCommand(),
			teardownCommand(),
		},
		HideHelpCommand: true,
		HelpName:        "cachesync",
		Version:         version(),
		OnUsageError:    onUsageError,
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = onUsageError
	}
	rejectExtraArgs(app)
	return app
}
