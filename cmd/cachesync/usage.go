package main

import (
	"fmt"
	"regexp"
	"sort"

	"github.com/cachesync/cachesync/config"
	"github.com/urfave/cli/v2"
)

// usageError is a mistake in the command line (exit status 2): main prints
// it, then where to read the command's usage.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

// onUsageError turns urfave/cli's flag errors (an unknown flag, a value that
// does not parse, from the command line or the environment) into a usage
// error, instead of printing the whole help and exiting 1.
func onUsageError(_ *cli.Context, err error, _ bool) error {
	return usageError("%s", longFlagNames.ReplaceAllString(err.Error(), "$1--$2"))
}

// longFlagNames finds the flags the standard flag package names with one
// dash ("flag provided but not defined: -bogus", "invalid value "x" for
// flag -key-cap"), to write them as they are typed: --bogus.
var longFlagNames = regexp.MustCompile(`(: |for |flag )-([a-z][a-z0-9-]+)`)

// didYouMean sorts names (for the list the message goes on to give) and
// returns " (did you mean X?)" for the one name is likely a typo of, or "".
func didYouMean(name string, names []string) string {
	sort.Strings(names)
	if s := config.Suggest(name, names); s != "" {
		return fmt.Sprintf(" (did you mean %s?)", s)
	}
	return ""
}
