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
	"slices"
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
			setupCommand(),
			statusCommand(),
			replayCommand(),
			teardownCommand(),
		},
		HideHelpCommand: true,
	}
}

// flags returns the command's own flags after the ones every command takes, so
// that they can follow the command name (cachesync run --config rules.hcl).
// A command that talks to Redis also gets the TLS flags.
func flags(own ...cli.Flag) []cli.Flag {
	all := append([]cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "rules.hcl", EnvVars: []string{"CACHESYNC_CONFIG"}, Usage: "rules file"},
		&cli.StringFlag{Name: "log-format", Value: "json", EnvVars: []string{"CACHESYNC_LOG_FORMAT"}, Usage: "json or console"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"CACHESYNC_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
	}, own...)
	for _, f := range own {
		if slices.Contains(f.Names(), "redis-url") {
			all = append(all,
				&cli.StringFlag{Name: "redis-ca-file", EnvVars: []string{"REDIS_CA_FILE"}, Usage: "PEM file of the CAs that sign Redis's certificate (with a rediss:// URL; default: the system's)"},
				&cli.StringFlag{Name: "redis-cert-file", EnvVars: []string{"REDIS_CERT_FILE"}, Usage: "PEM client certificate, for Redis servers that require one (with --redis-key-file)"},
				&cli.StringFlag{Name: "redis-key-file", EnvVars: []string{"REDIS_KEY_FILE"}, Usage: "PEM private key of --redis-cert-file"},
			)
		}
	}
	return all
}

func databaseURLFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "database-url", EnvVars: []string{"DATABASE_URL"}, Usage: "PostgreSQL URL (overrides postgres.url in the rules file)"}
}

func redisURLFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "redis-url", EnvVars: []string{"REDIS_URL"}, Usage: "Redis URL (overrides redis.url in the rules file)"}
}
