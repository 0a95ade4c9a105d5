// Command cachesync keeps Redis caches in line with PostgreSQL: it reads the
// database's logical replication stream and applies the invalidations, version
// bumps and write-through refreshes declared in rules.hcl.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// exitError carries an exit code (1: bad input or failure) and a message that
// was already printed or is printed by main.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newApp().RunContext(ctx, os.Args)
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, ee.msg)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "cachesync:", err)
	os.Exit(1)
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "cachesync",
		Usage: "turn committed PostgreSQL row changes into Redis cache invalidations",
		Description: "cachesync consumes logical replication (pgoutput), maps each committed row change " +
			"through the rules in rules.hcl to Redis operations, applies them, and only then confirms the WAL position.",
		Commands: []*cli.Command{
			runCommand(),
			validateCommand(),
			explainCommand(),
			setupCommand(),
			statusCommand(),
			replayCommand(),
			teardownCommand(),
		},
		HideHelpCommand: true,
	}
}
