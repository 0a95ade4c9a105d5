package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

// failure is what main needs to know of the command that failed to report
// its error.
type failure struct {
	// command is "cachesync run": where a usage error sends the reader.
	command string
	// json prints a failure as one JSON log line (--log-format json), so
	// that a log pipeline reading the daemon's lines reads its last one too.
	json bool
}

// failureOf describes the command of c, the context urfave/cli handed the
// error to (nil when none did).
func failureOf(c *cli.Context) failure {
	f := failure{command: "cachesync"}
	if c == nil || c.Command == nil {
		return f
	}
	if c.Command.HelpName != "" {
		f.command = c.Command.HelpName
	}
	// validate's findings are its output, for a reader: they stay text
	// with their carets in any log format.
	f.json = c.String("log-format") == "json" && c.Command.Name != "validate"
	return f
}

// report prints err and returns the exit status: 0 without an error, 2 for
// a usage error (the message, then a one-line hint; always text, for
// whoever typed the command), otherwise the exitError's code or 1, as a
// text line or a JSON log line at level fatal.
func report(w io.Writer, err error, f failure) int {
	if err == nil {
		return 0
	}
	code, msg := 1, "cachesync: "+err.Error()
	var ee *exitError
	if errors.As(err, &ee) {
		code, msg = ee.code, ee.msg
	}
	switch {
	case code == 2:
		fmt.Fprintf(w, "%s\nRun '%s --help' for usage.\n", msg, f.command)
	case msg == "":
	case f.json:
		l := zerolog.New(w).With().Timestamp().Logger()
		l.WithLevel(zerolog.FatalLevel).Int("exit_code", code).Msg(msg)
	default:
		fmt.Fprintln(w, msg)
	}
	return code
}
