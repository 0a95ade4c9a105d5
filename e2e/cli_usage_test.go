package e2e

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runCachesync runs the binary without a test env: the environment without
// cachesync's own variables, plus env; stdin is not a terminal.
func runCachesync(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCachesyncIn(t, "", env, args...)
}

// runCachesyncIn is runCachesync in directory dir ("": this one). stdout
// and stderr come apart (--json output must be clean).
func runCachesyncIn(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "CACHESYNC_") && !strings.HasPrefix(name, "REDIS_") && name != "DATABASE_URL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// TestVersion: --version prints the module version and the VCS revision
// the toolchain stamped into the binary, as the binary's build info has
// them. (Go stamps no revision in a git worktree, whose .git is a file, or
// with -buildvcs=false: then it says so; cmd/cachesync's TestDescribeBuild
// covers every case of the text.)
func TestVersion(t *testing.T) {
	t.Parallel()
	info, err := buildinfo.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	version := info.Main.Version
	if version == "(devel)" {
		version = "devel"
	}
	want := []string{"cachesync version " + version + " (", info.GoVersion + ")\n"}
	if rev := settings["vcs.revision"]; rev != "" {
		want = append(want, "(revision "+rev, "committed "+settings["vcs.time"])
	} else {
		want = append(want, "(no VCS revision, ")
	}
	for _, flag := range []string{"--version", "-v"} {
		out, errOut, code := runCachesync(t, nil, flag)
		if code != 0 || errOut != "" || strings.Count(out, "\n") != 1 {
			t.Errorf("cachesync %s: exit %d\n%s%s", flag, code, out, errOut)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("cachesync %s printed %q, which lacks %q", flag, out, w)
			}
		}
		if modified := strings.Contains(out, ", modified,"); modified != (settings["vcs.modified"] == "true") {
			t.Errorf("cachesync %s printed %q; vcs.modified is %q", flag, out, settings["vcs.modified"])
		}
	}
}

// TestUsageErrors: a command line that is wrong exits 2 and prints the
// problem once, then where to read the usage; never the whole help.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.hcl")
	for _, tc := range []struct {
		name    string
		env     []string
		args    []string
		want    string
		command string // where the hint points
	}{
		{"unknown flag", nil, []string{"run", "--bogus"}, "flag provided but not defined: --bogus", "cachesync run"},
		{"unknown flag of cachesync", nil, []string{"--bogus"}, "flag provided but not defined: --bogus", "cachesync"},
		{"unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`, "cachesync"},
		{"size with an unknown unit", nil, []string{"run", "--journal-max-bytes", "1GX"},
			`invalid value "1GX" for flag --journal-max-bytes: unknown unit "GX": want a number of bytes, optionally with a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 512MiB or 1.5GB`, "cachesync run"},
		{"size in the environment", []string{"CACHESYNC_MAX_QUEUED_BYTES=lots"}, []string{"run"},
			`could not parse "lots" from environment variable "CACHESYNC_MAX_QUEUED_BYTES" as value for flag max-queued-bytes: want a number of bytes`, "cachesync run"},
		{"fraction of a byte", nil, []string{"status", "--warn-retained-bytes", "1.5"}, "1.5 is not a whole number of bytes", "cachesync status"},
		{"integer", nil, []string{"run", "--key-cap", "many"}, `invalid value "many" for flag --key-cap`, "cachesync run"},
		{"duration", []string{"CACHESYNC_DRAIN_TIMEOUT=10"}, []string{"run"}, `could not parse "10" as duration value from environment variable "CACHESYNC_DRAIN_TIMEOUT"`, "cachesync run"},
		{"log level", nil, []string{"setup", "--config", missing, "--log-level", "loud"}, `--log-level "loud": use debug, info, warn or error`, "cachesync setup"},
		{"replay from nowhere", nil, []string{"replay", "--config", missing}, "give exactly one of --from LSN and --since TIME, or --flush", "cachesync replay"},
		{"replay from a bad LSN", nil, []string{"replay", "--config", missing, "--from", "yesterday"}, `--from: parse LSN "yesterday"`, "cachesync replay"},
	} {
		out, errOut, code := runCachesync(t, tc.env, tc.args...)
		hint := "Run '" + tc.command + " --help' for usage.\n"
		if code != 2 || out != "" || strings.Count(errOut, tc.want) != 1 || !strings.HasSuffix(errOut, "\n"+hint) ||
			strings.Count(errOut, "\n") != 2 || strings.Contains(errOut, "USAGE") {
			t.Errorf("%s: cachesync %s: exit %d, want 2, the error %q once, then %q\nstdout: %s\nstderr: %s",
				tc.name, strings.Join(tc.args, " "), code, tc.want, hint, out, errOut)
		}
	}
}

// TestSizeFlagsTakeUnits: sizes with units, from flags and the
// environment, get the command past its flags (to the missing rules file).
func TestSizeFlagsTakeUnits(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.hcl")
	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"run", "--journal-max-bytes", "1GiB", "--max-queued-bytes", "256 MiB"}},
		{[]string{"CACHESYNC_JOURNAL_MAX_BYTES=1gb", "CACHESYNC_MAX_QUEUED_BYTES=268435456"}, []string{"setup"}},
		{[]string{"CACHESYNC_WARN_RETAINED_BYTES=0.5TiB"}, []string{"status"}},
	} {
		args := append(tc.args, "--config", missing, "--log-format", "console")
		_, errOut, code := runCachesync(t, tc.env, args...)
		if code != 1 || errOut != "error: cannot read rules file "+missing+"; open "+missing+": no such file or directory; pass the path of a rules.hcl with --config (CACHESYNC_CONFIG)\n" {
			t.Errorf("cachesync %s (env %v): exit %d, want 1 for the missing rules file\n%s", strings.Join(args, " "), tc.env, code, errOut)
		}
	}
}

// TestFatalErrorFollowsLogFormat: with --log-format json (the default) a
// failure is one JSON log line at level fatal, with console it is text;
// validate's findings are text in both.
func TestFatalErrorFollowsLogFormat(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.hcl")
	msg := "error: cannot read rules file " + missing + "; open " + missing + ": no such file or directory; pass the path of a rules.hcl with --config (CACHESYNC_CONFIG)"
	for _, env := range [][]string{nil, {"CACHESYNC_LOG_FORMAT=json"}} {
		for _, command := range []string{"run", "setup", "status", "teardown", "replay"} {
			args := []string{command, "--config", missing}
			if command == "replay" {
				args = append(args, "--flush")
			}
			out, errOut, code := runCachesync(t, env, args...)
			var line struct {
				Level    string `json:"level"`
				ExitCode int    `json:"exit_code"`
				Time     string `json:"time"`
				Message  string `json:"message"`
			}
			err := json.Unmarshal([]byte(errOut), &line)
			if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || err != nil ||
				line != (struct {
					Level    string `json:"level"`
					ExitCode int    `json:"exit_code"`
					Time     string `json:"time"`
					Message  string `json:"message"`
				}{"fatal", 1, line.Time, msg}) || line.Time == "" {
				t.Errorf("cachesync %s (env %v): exit %d, want 1 and one JSON line at level fatal with the error (%v)\nstderr: %s", strings.Join(args, " "), env, code, err, errOut)
			}
		}
	}
	for _, args := range [][]string{
		{"run", "--config", missing, "--log-format", "console"},
		{"validate", "--config", missing},
		{"validate", "--config", missing, "--log-format", "json"},
	} {
		_, errOut, code := runCachesync(t, nil, args...)
		if code != 1 || errOut != msg+"\n" {
			t.Errorf("cachesync %s: exit %d, want 1 and the error as text\nstderr: %s", strings.Join(args, " "), code, errOut)
		}
	}
}

// TestTeardownAsksFirst: without a terminal to ask on, teardown drops
// nothing unless given --yes, and says what it would drop (never the
// password).
func TestTeardownAsksFirst(t *testing.T) {
	t.Parallel()
	rules := filepath.Join(t.TempDir(), "rules.hcl")
	os.WriteFile(rules, []byte(`postgres {
  url         = "postgres://app:s3cr3t-pw@127.0.0.1:1/app?connect_timeout=2"
  slot        = "shop_slot"
  publication = "shop_pub"
}
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`), 0o644)
	out, errOut, code := runCachesync(t, nil, "teardown", "--config", rules)
	want := `This drops the replication slot "shop_slot" and the publication "shop_pub" of database "app" on 127.0.0.1:1; a later run starts from a new slot and flushes every rule's key space.
Pass --yes to go ahead (stdin is not a terminal to ask on).
Run 'cachesync teardown --help' for usage.
`
	if code != 2 || out != "" || errOut != want {
		t.Errorf("teardown without --yes: exit %d, want 2 and\n%s\nstdout: %s\nstderr: %s", code, want, out, errOut)
	}
	// With --yes it goes on, to the database (which nothing serves here).
	for _, yes := range []string{"--yes", "-y"} {
		_, errOut, code = runCachesync(t, nil, "teardown", "--config", rules, yes, "--log-format", "console")
		if code != 1 || !strings.HasPrefix(errOut, "connect to PostgreSQL: ") || strings.Contains(errOut, "s3cr3t-pw") {
			t.Errorf("teardown %s: exit %d, want 1 from connecting\n%s", yes, code, errOut)
		}
	}
}
