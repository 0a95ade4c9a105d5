package main

import (
	"errors"
	"strings"
	"testing"
)

func TestConfirm(t *testing.T) {
	const what = "This drops the slot"
	for _, tc := range []struct {
		name     string
		terminal bool
		yes      bool
		answer   string
		code     int  // exit status of the error; 0: confirmed
		asked    bool // the question was printed
	}{
		{name: "--yes on a terminal", terminal: true, yes: true},
		{name: "--yes without a terminal", yes: true},
		{name: "no terminal, no --yes", code: 2},
		{name: "y", terminal: true, answer: "y\n", asked: true},
		{name: "YES", terminal: true, answer: " YES \n", asked: true},
		{name: "yes without a newline", terminal: true, answer: "yes", asked: true},
		{name: "n", terminal: true, answer: "n\n", code: 1, asked: true},
		{name: "enter", terminal: true, answer: "\n", code: 1, asked: true},
		{name: "end of input", terminal: true, code: 1, asked: true},
		{name: "yess", terminal: true, answer: "yess\n", code: 1, asked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			err := confirm(strings.NewReader(tc.answer), &out, tc.terminal, tc.yes, what)
			code := 0
			var ee *exitError
			if errors.As(err, &ee) {
				code = ee.code
			} else if err != nil {
				t.Fatalf("error %v is not an exitError", err)
			}
			if code != tc.code {
				t.Errorf("exit status %d (%v), want %d", code, err, tc.code)
			}
			if asked := strings.Contains(out.String(), what+".\nGo ahead? [y/N] "); asked != tc.asked {
				t.Errorf("asked = %v, want %v; printed %q", asked, tc.asked, out.String())
			}
			if code == 2 && !strings.Contains(err.Error(), what) || code == 2 && !strings.Contains(err.Error(), "Pass --yes") {
				t.Errorf("refusal %q does not say what it would drop and to pass --yes", err)
			}
		})
	}
}
