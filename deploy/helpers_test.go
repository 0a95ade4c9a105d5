package deploy_test

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// --- the CLI ----------------------------------------------------------------------

// cli is the cachesync binary built for this test and what its help says.
type cli struct {
	bin  string
	help map[string]*commandHelp
}

// commandHelp is what `cachesync <command> --help` lists.
type commandHelp struct {
	flags    map[string]bool   // "--config", "-c", ...
	env      map[string]bool   // "CACHESYNC_CONFIG", ...
	defaults map[string]string // "--drain-timeout" -> "10s"
}

func buildCLI(t *testing.T) *cli {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cachesync")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/cachesync")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ../cmd/cachesync: %v\n%s", err, out)
	}
	return &cli{bin: bin, help: map[string]*commandHelp{}}
}

// cleanEnv is the environment without the variables cachesync reads, so that
// the help shows the built-in defaults and the rules file's env() is empty.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if cachesyncVariable(name) {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// run runs the binary and returns its combined output.
func (c *cli) run(args ...string) (string, error) {
	cmd := exec.Command(c.bin, args...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var (
	helpFlagLine = regexp.MustCompile(`^\s+(-{1,2}[a-z][a-z0-9-]*(?: value)?(?:, -{1,2}[a-z][a-z0-9-]*(?: value)?)*)\s{2,}(.*)$`)
	helpDefault  = regexp.MustCompile(`\(default: ([^)]*)\)`)
	helpEnv      = regexp.MustCompile(`\[(\$[A-Z0-9_]+(?:, \$[A-Z0-9_]+)*)\]`)
)

// command returns the help of a subcommand, failing the test when the
// command does not exist.
func (c *cli) command(t *testing.T, name string) *commandHelp {
	t.Helper()
	if h, ok := c.help[name]; ok {
		return h
	}
	out, err := c.run(name, "--help")
	if err != nil {
		t.Fatalf("cachesync %s --help: %v\n%s", name, err, out)
	}
	h := &commandHelp{flags: map[string]bool{}, env: map[string]bool{}, defaults: map[string]string{}}
	for _, line := range strings.Split(out, "\n") {
		m := helpFlagLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var names []string
		for _, spec := range strings.Split(m[1], ", ") {
			names = append(names, strings.Fields(spec)[0])
		}
		for _, n := range names {
			h.flags[n] = true
		}
		if d := helpDefault.FindStringSubmatch(m[2]); d != nil {
			h.defaults[names[0]] = strings.Trim(d[1], `"`)
		}
		if e := helpEnv.FindStringSubmatch(m[2]); e != nil {
			for _, v := range strings.Split(e[1], ", ") {
				h.env[strings.TrimPrefix(v, "$")] = true
			}
		}
	}
	if !h.flags["--help"] || len(h.flags) < 2 {
		t.Fatalf("cachesync %s --help: no flags found in:\n%s", name, out)
	}
	c.help[name] = h
	return h
}

// checkArgs checks a cachesync command line (without the binary): the
// subcommand exists and so does every flag. It returns
// the flags' values.
func (c *cli) checkArgs(t *testing.T, where string, args []string) map[string]string {
	t.Helper()
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		t.Errorf("%s: %q does not start with a cachesync command", where, args)
		return nil
	}
	h := c.command(t, args[0])
	values := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, value, hasValue := strings.Cut(a, "=")
		if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			value = args[i+1]
		}
		values[name] = value
		if !h.flags[name] {
			t.Errorf("%s: `cachesync %s` has no flag %s", where, args[0], name)
		}
	}
	return values
}

// cachesyncVariable reports whether an environment variable's name says it
// is meant for cachesync (GOMEMLIMIT, POSTGRES_DB and the like are not).
func cachesyncVariable(name string) bool {
	return strings.HasPrefix(name, "CACHESYNC_") || strings.HasPrefix(name, "DATABASE_") || strings.HasPrefix(name, "REDIS_")
}

// checkEnv checks that every cachesync variable among names is one that
// `cachesync <command>` reads.
func (c *cli) checkEnv(t *testing.T, where, command string, names []string) {
	t.Helper()
	h := c.command(t, command)
	for _, n := range names {
		if cachesyncVariable(n) && !h.env[n] {
			t.Errorf("%s: `cachesync %s` reads no environment variable %s", where, command, n)
		}
	}
}

// stopBudget is how long `cachesync run` may take to stop after SIGTERM with
// the default --drain-timeout: the drain, then the final confirmation.
func (c *cli) stopBudget(t *testing.T) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(c.command(t, "run").defaults["--drain-timeout"])
	if err != nil {
		t.Fatalf("the default of run --drain-timeout: %v", err)
	}
	return d + finalConfirmTimeout
}

// listenPort returns the port of a --listen address, failing on a bad one.
func listenPort(t *testing.T, where, addr string) (host string, port int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: --listen %q: %v", where, addr, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: --listen %q: %v", where, addr, err)
	}
	return h, port
}

// --- YAML -------------------------------------------------------------------------

// yamlDocs decodes every document of a YAML file.
func yamlDocs(t *testing.T, path string) []*yaml.Node {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
			t.Fatalf("%s:%d: a document that is not a mapping", path, n.Line)
		}
		docs = append(docs, &n)
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

func decodeNode(t *testing.T, where string, n *yaml.Node, v any) {
	t.Helper()
	if err := n.Decode(v); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
}

// checkKeys reports keys of a mapping that are not among allowed: a
// misspelled key is otherwise silently ignored by the loose decoding below.
func checkKeys(t *testing.T, where string, m map[string]any, allowed ...string) {
	t.Helper()
	for k := range m {
		if !slices.Contains(allowed, k) && !strings.HasPrefix(k, "x-") {
			t.Errorf("%s: unknown key %q (allowed here: %s)", where, k, strings.Join(allowed, ", "))
		}
	}
}

// mapAt returns m[key] as a mapping (nil when absent or not a mapping).
func mapAt(m map[string]any, key string) map[string]any {
	v, _ := m[key].(map[string]any)
	return v
}
