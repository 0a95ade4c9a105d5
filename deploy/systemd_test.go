package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitFile maps section -> key -> every assignment in order.
type unitFile map[string]map[string][]string

func loadUnit(t *testing.T, path string) unitFile {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	var cont strings.Builder
	for i, line := range strings.Split(string(src), "\n") {
		line = strings.TrimSpace(line)
		if cont.Len() == 0 && (line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";")) {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cont.WriteString(line)
		line = strings.TrimSpace(cont.String())
		cont.Reset()
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not a key=value line in a section: %q", path, i+1, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u[section][k] = append(u[section][k], v)
	}
	return u
}

// get returns the last assignment of a key, and whether it has one.
func (u unitFile) get(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// systemdDuration parses a systemd time span such as "20s", "1min 30s" or "20".
func systemdDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second
	}
	s = strings.NewReplacer("min", "m", " ", "").Replace(s)
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("time span %q: %v", s, err)
	}
	return d
}

const unitPath = "systemd/cachesync.service"

func testSystemd(t *testing.T, c *cli) {
	u := loadUnit(t, unitPath)
	svc := u["Service"]
	if svc == nil {
		t.Fatalf("%s: no [Service] section", unitPath)
	}
	if _, ok := u.get("Install", "WantedBy"); !ok {
		t.Errorf("%s: no [Install] WantedBy=", unitPath)
	}
	want := map[string]string{
		"Type":                    "simple", // the binary does not speak sd_notify
		"EnvironmentFile":         "/etc/cachesync/env",
		"Restart":                 "on-failure",
		"KillSignal":              "SIGTERM",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"RestrictNamespaces":      "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"RestrictRealtime":        "yes",
		"RestrictSUIDSGID":        "yes",
		"SystemCallArchitectures": "native",
		"CapabilityBoundingSet":   "",
		"UMask":                   "0077",
	}
	for k, v := range want {
		if got, ok := u.get("Service", k); !ok || got != v {
			t.Errorf("%s: %s=%q (set: %v), want %q", unitPath, k, got, ok, v)
		}
	}
	families, _ := u.get("Service", "RestrictAddressFamilies")
	gotFamilies := strings.Fields(families)
	slices.Sort(gotFamilies)
	if !slices.Equal(gotFamilies, []string{"AF_INET", "AF_INET6", "AF_UNIX"}) {
		t.Errorf("%s: RestrictAddressFamilies=%q, want AF_INET AF_INET6 AF_UNIX", unitPath, families)
	}
	if filters := svc["SystemCallFilter"]; len(filters) == 0 || filters[0] != "@system-service" {
		t.Errorf("%s: SystemCallFilter %q, want @system-service first", unitPath, filters)
	}
	if _, ok := u.get("Service", "RestartSec"); !ok {
		t.Errorf("%s: no RestartSec", unitPath)
	}
	stop, ok := u.get("Service", "TimeoutStopSec")
	if budget := c.stopBudget(t); !ok || systemdDuration(t, stop) <= budget {
		t.Errorf("%s: TimeoutStopSec=%q, want more than %v (drain timeout and final confirmation)", unitPath, stop, budget)
	}

	// The command line and the environment.
	execStart, _ := u.get("Service", "ExecStart")
	f := strings.Fields(execStart)
	if len(f) == 0 || f[0] != "/usr/local/bin/cachesync" {
		t.Fatalf("%s: ExecStart=%q, want /usr/local/bin/cachesync ...", unitPath, execStart)
	}
	flags := c.checkArgs(t, unitPath+": ExecStart", f[1:])
	if flags["--config"] != "/etc/cachesync/rules.hcl" {
		t.Errorf("%s: ExecStart --config %q, want /etc/cachesync/rules.hcl", unitPath, flags["--config"])
	}
	env := map[string]string{}
	var names []string
	for _, assignment := range svc["Environment"] {
		for _, kv := range strings.Fields(assignment) {
			k, v, _ := strings.Cut(strings.Trim(kv, `"`), "=")
			env[k] = v
			names = append(names, k)
		}
	}
	c.checkEnv(t, unitPath+": Environment", "run", names)

	// The user and the data dir: a dynamic user with a state directory, or a
	// fixed non-root user.
	if dyn, _ := u.get("Service", "DynamicUser"); dyn == "yes" {
		state, _ := u.get("Service", "StateDirectory")
		if state == "" || env["CACHESYNC_DATA_DIR"] != "/var/lib/"+state {
			t.Errorf("%s: DynamicUser=yes with StateDirectory=%q and CACHESYNC_DATA_DIR=%q: want /var/lib/<StateDirectory>", unitPath, state, env["CACHESYNC_DATA_DIR"])
		}
	} else {
		user, _ := u.get("Service", "User")
		if user == "" || user == "root" || user == "0" {
			t.Errorf("%s: neither DynamicUser=yes nor a non-root User= (User=%q)", unitPath, user)
		}
		if env["CACHESYNC_DATA_DIR"] == "" {
			t.Errorf("%s: no CACHESYNC_DATA_DIR: the journal would go to /etc/cachesync/.cachesync", unitPath)
		}
	}

	// env.example: the two URLs, and only variables cachesync reads.
	src, err := os.ReadFile("systemd/env.example")
	if err != nil {
		t.Fatal(err)
	}
	var exampleNames []string
	for _, m := range regexp.MustCompile(`(?m)^#?([A-Z][A-Z0-9_]*)=`).FindAllStringSubmatch(string(src), -1) {
		exampleNames = append(exampleNames, m[1])
	}
	for _, k := range []string{"DATABASE_URL", "REDIS_URL"} {
		if !regexp.MustCompile(`(?m)^` + k + `=\S+`).Match(src) {
			t.Errorf("systemd/env.example: no %s=", k)
		}
	}
	c.checkEnv(t, "systemd/env.example", "run", exampleNames)
}

// testSystemdAnalyze runs systemd-analyze verify on the unit (with ExecStart
// pointing at the test's binary, since verify checks that it exists), and its
// offline security assessment.
func testSystemdAnalyze(t *testing.T, c *cli) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not on PATH: the unit was not verified")
	}
	src, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), filepath.Base(unitPath))
	patched := strings.ReplaceAll(string(src), "ExecStart=/usr/local/bin/cachesync ", "ExecStart="+c.bin+" ")
	if patched == string(src) {
		t.Fatalf("%s: ExecStart does not start with /usr/local/bin/cachesync", unitPath)
	}
	if err := os.WriteFile(unit, []byte(patched), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	// verify exits 0 on unknown keys and bad values: it only warns about them.
	var complaints []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, filepath.Base(unitPath)) {
			complaints = append(complaints, line)
		}
	}
	if err != nil || len(complaints) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}

	// Exposure 0 (locked down) to 10 (unprotected); the unit scores about 1.4.
	out, err = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", unit).CombinedOutput()
	if err != nil && bytes.Contains(out, []byte("unrecognized option")) {
		t.Skipf("this systemd-analyze has no offline security assessment: %s", out)
	}
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 or failure: %v\n%s", err, out)
	}
}
