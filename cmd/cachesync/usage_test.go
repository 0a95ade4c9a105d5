package main

import (
	"errors"
	"testing"
)

func TestOnUsageErrorWritesLongFlags(t *testing.T) {
	for in, want := range map[string]string{
		"flag provided but not defined: -bogus":                                               "flag provided but not defined: --bogus",
		"flag provided but not defined: -x":                                                   "flag provided but not defined: -x",
		`invalid value "1GX" for flag -journal-max-bytes: unknown unit "GX"`:                  `invalid value "1GX" for flag --journal-max-bytes: unknown unit "GX"`,
		`invalid value "-5" for flag -key-cap: parse error`:                                   `invalid value "-5" for flag --key-cap: parse error`,
		`invalid boolean value "maybe" for -dry-run: parse error`:                             `invalid boolean value "maybe" for --dry-run: parse error`,
		"flag needs an argument: -config":                                                     "flag needs an argument: --config",
		"flag needs an argument: -c":                                                          "flag needs an argument: -c",
		`could not parse "a -b" from environment variable "X" as value for flag key-cap: bad`: `could not parse "a -b" from environment variable "X" as value for flag key-cap: bad`,
	} {
		err := onUsageError(nil, errors.New(in), true)
		ee, ok := err.(*exitError)
		if !ok || ee.code != 2 || ee.msg != want {
			t.Errorf("onUsageError(%q) = %#v, want a usage error %q", in, err, want)
		}
	}
}
