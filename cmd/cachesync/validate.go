package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/replication"
)

func validateCommand() *cli.Command {
	return &cli.Command{
		Name:      "validate",
		Usage:     "check the rules file; with --database-url also tables, columns and replica identity",
		Flags:     flags(databaseURLFlag()),
		ArgsUsage: " ",
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, false)
			if err != nil {
				return err
			}
			if u := c.String("database-url"); u != "" {
				conn, err := connectPG(c, u)
				if err != nil {
					return err
				}
				defer conn.Close(context.WithoutCancel(c.Context))
				diags, err := replication.Preflight(c.Context, conn, e.cfg.Rules, replication.PreflightOptions{})
				if err != nil {
					return err
				}
				if diags.HasErrors() {
					return &exitError{code: 1, msg: strings.TrimRight(e.parser.FormatDiagnostics(diags), "\n")}
				}
				fmt.Fprint(c.App.ErrWriter, e.parser.FormatDiagnostics(diags)) // warnings, as loadConfig prints them
			}
			fmt.Fprintf(c.App.Writer, "%s: %s OK\n", e.cfg.Filename, plural(len(e.cfg.Rules), "rule"))
			return nil
		},
	}
}

// plural is "1 rule", "2 rules".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
