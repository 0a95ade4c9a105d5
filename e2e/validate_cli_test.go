package e2e

import (
	"bufio"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
)

// offlineCLI runs the binary in dir with no database, Redis or rules file
// from the test's environment (plus env), for the commands that need no
// servers. It returns stdout, stderr and the exit code.
func offlineCLI(t *testing.T, dir string, env []string, args ...string) (string, string, int) {
	t.Helper()
	return runCachesyncIn(t, dir, append([]string{"REDIS_URL=redis://127.0.0.1:1"}, env...), args...)
}

// writeFiles writes name → content into a new directory and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const (
	goodRules = "rule \"user\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${row.id}\"] }\n}\n"
	// brokenRules has an unknown variable at 3:32.
	brokenRules = "rule \"user\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${rwo.id}\"] }\n}\n"
	// warnRules is valid, with a sensitive column in a refresh value at
	// 6:38 and a when that is never true at 3:11.
	warnRules = "rule \"account\" {\n  table = \"public.accounts\"\n  when  = 1 == 2\n  refresh {\n    key   = \"account:${row.id}\"\n    value = jsonencode({ pw = row.password_hash })\n    ttl   = \"1h\"\n  }\n}\n"
)

// TestValidateFile: `validate FILE` checks FILE, not ./rules.hcl (the old
// binary validated ./rules.hcl and exited 0 whatever FILE held). The
// argument overrides CACHESYNC_CONFIG, and contradicting --config is a
// usage error.
func TestValidateFile(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"rules.hcl": goodRules, "broken.hcl": brokenRules})
	tests := []struct {
		env     []string
		args    []string
		code    int
		wantOut string // in stdout + stderr
	}{
		{nil, []string{"validate"}, 0, "rules.hcl: 1 rule OK"},
		{nil, []string{"validate", "rules.hcl"}, 0, "rules.hcl: 1 rule OK"},
		{nil, []string{"validate", "broken.hcl"}, 1, `broken.hcl:3:32: error: rule "user": unknown variable "rwo"`},
		{[]string{"CACHESYNC_CONFIG=rules.hcl"}, []string{"validate", "broken.hcl"}, 1, "broken.hcl:3:32: error"},
		{[]string{"CACHESYNC_CONFIG=broken.hcl"}, []string{"validate", "rules.hcl"}, 0, "rules.hcl: 1 rule OK"},
		{nil, []string{"validate", "--config", "broken.hcl", "./broken.hcl"}, 1, "broken.hcl:3:32: error"},
		{nil, []string{"validate", "--config", "rules.hcl", "broken.hcl"}, 2,
			"cachesync validate: --config rules.hcl and the argument broken.hcl name different files: give one of them"},
		{[]string{"CACHESYNC_CONFIG=rules.hcl"}, []string{"validate", "-c", "other.hcl", "broken.hcl"}, 2, "name different files"},
		{nil, []string{"validate", "rules.hcl", "broken.hcl"}, 2,
			`cachesync validate: unexpected argument "broken.hcl": validate takes at most 1 argument`},
		{nil, []string{"validate", "broken.hcl", "--json"}, 2,
			`cachesync validate: unexpected argument "--json": flags go before the arguments (cachesync validate --json ...)`},
		{nil, []string{"validate", "missing.hcl"}, 1, "cannot read rules file missing.hcl"},
	}
	for _, tt := range tests {
		stdout, stderr, code := offlineCLI(t, dir, tt.env, tt.args...)
		if code != tt.code || !strings.Contains(stdout+stderr, tt.wantOut) {
			t.Errorf("%v %s: exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", tt.env, strings.Join(tt.args, " "), code, tt.code, tt.wantOut, stdout, stderr)
		}
	}
}

// TestCommandsRejectExtraArgs: every command, also one added later (the
// list comes from --help), refuses an unexpected argument with a usage
// error before doing anything, and so does an unknown command.
func TestCommandsRejectExtraArgs(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"rules.hcl": goodRules})
	help, _, code := offlineCLI(t, dir, nil, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d\n%s", code, help)
	}
	var commands []string
	_, list, _ := strings.Cut(help, "COMMANDS:\n")
	for sc := bufio.NewScanner(strings.NewReader(list)); sc.Scan(); {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(sc.Text(), " ") {
			break
		}
		commands = append(commands, strings.TrimSuffix(fields[0], ","))
	}
	for _, want := range []string{"run", "validate", "setup", "status", "replay", "teardown"} {
		if !slices.Contains(commands, want) {
			t.Fatalf("--help lists commands %v, without %s:\n%s", commands, want, help)
		}
	}
	for _, command := range commands {
		args := []string{command, "stray"}
		if command == "validate" {
			args = []string{command, "rules.hcl", "stray"}
		}
		stdout, stderr, code := offlineCLI(t, dir, nil, args...)
		if code != 2 || !strings.Contains(stderr, `cachesync `+command+`: unexpected argument "stray"`) || stdout != "" {
			t.Errorf("%s: exit %d, want 2 with the unexpected argument on stderr and nothing on stdout\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	if _, stderr, code := offlineCLI(t, dir, nil, "valdiate", "rules.hcl"); code != 2 || !strings.Contains(stderr, `unknown command "valdiate"`) {
		t.Errorf("an unknown command: exit %d, want 2\n%s", code, stderr)
	}
}

// diagLine is one line of validate --json.
type diagLine = config.DiagnosticRecord

// diagFields are the keys of a validate --json line, as documented: the
// wire format, checked apart from the Go type that writes it.
var diagFields = []string{"column", "end_column", "end_line", "file", "hint", "line", "message", "rule", "severity"}

// TestValidateJSONAndStrict: --json prints one object per diagnostic on
// stdout and nothing for a clean file; warnings exit 0 unless --strict.
func TestValidateJSONAndStrict(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"rules.hcl": goodRules, "broken.hcl": brokenRules, "warn.hcl": warnRules,
		"both.hcl": warnRules + brokenRules})
	parse := func(stdout string) []diagLine {
		t.Helper()
		var out []diagLine
		for _, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
			if l == "" {
				continue
			}
			var fields map[string]any
			if err := json.Unmarshal([]byte(l), &fields); err != nil {
				t.Fatalf("not a JSON line: %v\n%s", err, l)
			}
			if keys := slices.Sorted(maps.Keys(fields)); !slices.Equal(keys, diagFields) {
				t.Errorf("a diagnostic line has fields %v, want %v", keys, diagFields)
			}
			var d diagLine
			if err := json.Unmarshal([]byte(l), &d); err != nil {
				t.Fatalf("not a diagnostic line: %v\n%s", err, l)
			}
			out = append(out, d)
		}
		return out
	}
	const valueHint = "write only the columns the cache needs: value = jsonencode({ id = row.id, name = row.name })"
	warnings := []diagLine{
		{File: "warn.hcl", Line: 3, Column: 11, EndLine: 3, EndColumn: 17, Severity: "warning", Rule: "account",
			Message: "when is never true; it is false whatever the row holds, so it lets no row of public.accounts through and the rule does nothing",
			Hint:    `compare a column of the row, like when = row.status != "archived", or remove the rule`},
		{File: "warn.hcl", Line: 6, Column: 31, EndLine: 6, EndColumn: 48, Severity: "warning", Rule: "account",
			Message: `refresh value writes column "password_hash" to Redis; its name looks sensitive: every refresh copies it into the cache, where whoever can read Redis reads it`,
			Hint:    valueHint},
	}
	// Warnings come with errors too, in file order.
	var both []diagLine
	for _, d := range warnings {
		d.File = "both.hcl"
		both = append(both, d)
	}
	both = append(both, diagLine{File: "both.hcl", Line: 12, Column: 32, EndLine: 12, EndColumn: 35,
		Severity: "error", Rule: "user", Message: `unknown variable "rwo"; templates can read row, old and new; did you mean "row"?`})
	tests := []struct {
		args []string
		code int
		want []diagLine
	}{
		{[]string{"validate", "--json", "both.hcl"}, 1, both},
		{[]string{"validate", "--json", "rules.hcl"}, 0, nil},
		{[]string{"validate", "--json", "--strict", "rules.hcl"}, 0, nil},
		{[]string{"validate", "--json", "warn.hcl"}, 0, warnings},
		{[]string{"validate", "--json", "--strict", "warn.hcl"}, 1, warnings},
		{[]string{"validate", "--json", "broken.hcl"}, 1, []diagLine{{File: "broken.hcl", Line: 3, Column: 32, EndLine: 3, EndColumn: 35,
			Severity: "error", Rule: "user", Message: `unknown variable "rwo"; templates can read row, old and new; did you mean "row"?`}}},
		{[]string{"validate", "--json", "missing.hcl"}, 1, []diagLine{{Severity: "error",
			Message: "cannot read rules file missing.hcl; open missing.hcl: no such file or directory; pass the path of a rules.hcl with --config (CACHESYNC_CONFIG)"}}},
	}
	for _, tt := range tests {
		stdout, stderr, code := offlineCLI(t, dir, nil, tt.args...)
		got := parse(stdout)
		if code != tt.code || !slices.Equal(got, tt.want) || stderr != "" {
			t.Errorf("%s: exit %d, want %d\ngot  %+v\nwant %+v\nstderr:\n%s", strings.Join(tt.args, " "), code, tt.code, got, tt.want, stderr)
		}
	}

	// The same as text: warnings on stderr with the fix, then OK, unless
	// --strict.
	stdout, stderr, code := offlineCLI(t, dir, nil, "validate", "warn.hcl")
	if code != 0 || stdout != "warn.hcl: 1 rule OK\n" ||
		!strings.Contains(stderr, `warn.hcl:6:31: warning: rule "account": refresh value writes column "password_hash" to Redis`) ||
		!strings.Contains(stderr, "= hint: "+valueHint) || !strings.Contains(stderr, `warn.hcl:3:11: warning: rule "account": when is never true`) {
		t.Errorf("validate warn.hcl: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = offlineCLI(t, dir, nil, "validate", "--strict", "warn.hcl")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "warn.hcl:6:31: warning") ||
		!strings.Contains(stderr, "warn.hcl: 2 warnings (--strict fails on warnings)") {
		t.Errorf("validate --strict warn.hcl: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// TestRunPrintsWarnings: run, setup and the other commands that load the
// rules print the same warnings at start (here run stops right after, for
// want of a database URL).
func TestRunPrintsWarnings(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"rules.hcl": warnRules})
	for _, command := range []string{"run", "setup"} {
		_, stderr, code := offlineCLI(t, dir, nil, command)
		if code != 1 || !strings.Contains(stderr, `rules.hcl:6:31: warning: rule "account": refresh value writes column "password_hash" to Redis`) ||
			!strings.Contains(stderr, "no PostgreSQL URL") {
			t.Errorf("%s: exit %d, want 1 after the warning\n%s", command, code, stderr)
		}
	}
}

// TestValidateWriteBehind: validate checks write_behind blocks, alone in a
// file, without a database (the block's own settings) and with one (the
// table, its unique keys, the privileges): a good block is counted in the
// OK line, a bad one is an error at its attribute, as text and as JSON.
func TestValidateWriteBehind(t *testing.T) {
	const counters = "write_behind \"counters\" {\n  stream      = \"wb:counters\"\n  table       = \"public.counters\"\n  key_columns = [\"id\"]\n  columns     = [\"hits\", \"note\"]\n}\n"
	// carts' key_columns (at 4:17 of its block) are only part of its
	// unique key.
	const carts = "write_behind \"carts\" {\n  stream      = \"wb:carts\"\n  table       = \"public.carts\"\n  key_columns = [\"user_id\"]\n}\n"
	e := setup(t, `CREATE TABLE counters (id bigint PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, note text);
CREATE TABLE carts (user_id bigint, sku text, qty int, UNIQUE (user_id, sku));`, counters+carts)
	dir := writeFiles(t, map[string]string{"good.hcl": counters,
		"bad.hcl": strings.Replace(counters, "\"wb:counters\"", "\"wb:counters:dead\"", 1)})

	stdout, stderr, code := offlineCLI(t, dir, nil, "validate", "good.hcl")
	if code != 0 || stdout != "good.hcl: 0 rules, 1 write_behind block OK\n" || stderr != "" {
		t.Errorf("validate good.hcl: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	const deadStream = `stream "wb:counters:dead" ends in ":dead"; <stream>:dead is where the entries of <stream> that cannot apply go; name the stream "wb:counters"`
	stdout, stderr, code = offlineCLI(t, dir, nil, "validate", "bad.hcl")
	if code != 1 || stdout != "" || !strings.Contains(stderr, `bad.hcl:2:17: error: write_behind "counters": `+deadStream) {
		t.Errorf("validate bad.hcl: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	stdout, _, code = offlineCLI(t, dir, nil, "validate", "--json", "bad.hcl")
	want := diagLine{File: "bad.hcl", Line: 2, Column: 17, EndLine: 2, EndColumn: 35, Severity: "error", Message: `write_behind "counters": ` + deadStream}
	var got diagLine
	if err := json.Unmarshal([]byte(stdout), &got); code != 1 || err != nil || got != want {
		t.Errorf("validate --json bad.hcl: exit %d (%v)\ngot  %+v\nwant %+v", code, err, got, want)
	}

	// Against the database: counters is fine, carts is not; the rules file
	// starts with setup's 4-line postgres block.
	out, code := e.cli("validate", "--database-url", e.dbURL)
	if code != 1 || strings.Contains(out, `write_behind "counters"`) ||
		!strings.Contains(out, `rules.hcl:14:17: error: write_behind "carts": key_columns (user_id) are not a unique key of public.carts; its unique keys: (user_id, sku).`) {
		t.Errorf("validate --database-url: exit %d, want 1 with carts' key at 14:17 only\n%s", code, out)
	}
	out, code = e.cli("validate", "--database-url", e.dbURL, filepath.Join(dir, "good.hcl"))
	if code != 0 || !strings.Contains(out, "0 rules, 1 write_behind block OK") {
		t.Errorf("validate --database-url good.hcl: exit %d\n%s", code, out)
	}
}

// TestRunWithWriteBehindOnly: a rules file of write_behind blocks and no
// rule is valid, and run accepts it: it creates a publication of no table,
// streams, and confirms past a commit (the old binary failed to create the
// publication, "FOR TABLE" with no table, and retried for ever).
func TestRunWithWriteBehindOnly(t *testing.T) {
	e := setup(t, `CREATE TABLE counters (id bigint PRIMARY KEY, hits bigint);`,
		"write_behind \"counters\" {\n  stream      = \"wb:counters\"\n  table       = \"public.counters\"\n  key_columns = [\"id\"]\n}\n")
	d := e.start()
	e.waitStreaming(d)
	e.exec("INSERT INTO counters VALUES (1, 1)")
	e.caughtUp(d, 60*time.Second)
	if code := d.stop(); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, d.log.String())
	}
}
