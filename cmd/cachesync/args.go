package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// rejectExtraArgs makes the app refuse an unknown command, and every
// command refuse positional arguments beyond those its ArgsUsage names,
// one per word ("[FILE]": at most one; empty: none), with a usage error.
// Without it urfave/cli hands them to the action, which ignores them:
// `cachesync validate other.hcl` used to validate ./rules.hcl.
func rejectExtraArgs(app *cli.App) {
	if app.Action == nil {
		app.Action = func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.ShowAppHelp(c)
			}
			var names []string
			for _, cmd := range app.VisibleCommands() {
				names = append(names, cmd.Name)
			}
			return usageError("unknown command %q: use one of %s", c.Args().First(), strings.Join(names, ", "))
		}
	}
	rejectCommandArgs(app.Commands)
}

func rejectCommandArgs(cmds []*cli.Command) {
	for _, cmd := range cmds {
		allowed := len(strings.Fields(cmd.ArgsUsage))
		before := cmd.Before
		cmd.Before = func(c *cli.Context) error {
			// A subcommand (urfave/cli's help) is not an argument.
			if args := c.Args(); args.Len() == 0 || c.Command.Command(args.First()) == nil {
				if err := checkArgs(c.Command.Name, args.Slice(), allowed); err != nil {
					return err
				}
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
		rejectCommandArgs(cmd.Subcommands)
	}
}

// checkArgs refuses more than allowed positional arguments.
func checkArgs(command string, args []string, allowed int) error {
	if len(args) <= allowed {
		return nil
	}
	extra := args[allowed]
	if strings.HasPrefix(extra, "-") {
		// The flag parser stops at the first positional argument.
		return usageError("cachesync %s: unexpected argument %q: flags go before the arguments (cachesync %s %s ...)", command, extra, command, extra)
	}
	if allowed == 0 {
		return usageError("cachesync %s: unexpected argument %q: %s takes no arguments, only flags", command, extra, command)
	}
	return usageError("cachesync %s: unexpected argument %q: %s takes at most %s (see cachesync %s --help)", command, extra, command, plural(allowed, "argument"), command)
}
