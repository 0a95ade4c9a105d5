package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestReport(t *testing.T) {
	run := failure{command: "cachesync run"}
	runJSON := failure{command: "cachesync run", json: true}
	for _, tc := range []struct {
		name string
		err  error
		f    failure
		code int
		want string // the whole output; for JSON, the message
	}{
		{"success", nil, runJSON, 0, ""},
		{"usage error", usageError("unknown flag --bogus"), run, 2, "unknown flag --bogus\nRun 'cachesync run --help' for usage.\n"},
		{"usage error with json logs", usageError("unknown flag --bogus"), runJSON, 2, "unknown flag --bogus\nRun 'cachesync run --help' for usage.\n"},
		{"failure", &exitError{code: 1, msg: "cachesync run: connect"}, run, 1, "cachesync run: connect\n"},
		{"failure already printed", &exitError{code: 1}, runJSON, 1, ""},
		{"plain error", errors.New("boom"), run, 1, "cachesync: boom\n"},
		{"failure as JSON", &exitError{code: 1, msg: "cachesync run: connect\nsecond line"}, runJSON, 1, "cachesync run: connect\nsecond line"},
		{"plain error as JSON", errors.New("boom"), runJSON, 1, "cachesync: boom"},
	} {
		var out strings.Builder
		if code := report(&out, tc.err, tc.f); code != tc.code {
			t.Errorf("%s: exit status %d, want %d", tc.name, code, tc.code)
		}
		if !tc.f.json || tc.code != 1 || tc.want == "" {
			if out.String() != tc.want {
				t.Errorf("%s: printed %q, want %q", tc.name, out.String(), tc.want)
			}
			continue
		}
		var line struct {
			Level    string `json:"level"`
			ExitCode int    `json:"exit_code"`
			Time     string `json:"time"`
			Message  string `json:"message"`
		}
		if strings.Count(out.String(), "\n") != 1 || json.Unmarshal([]byte(out.String()), &line) != nil {
			t.Errorf("%s: printed %q, want one JSON line", tc.name, out.String())
			continue
		}
		if line.Level != "fatal" || line.ExitCode != 1 || line.Time == "" || line.Message != tc.want {
			t.Errorf("%s: JSON line %+v, want level fatal, exit_code 1, a time and message %q", tc.name, line, tc.want)
		}
	}
}
