// Package deploy_test checks the deployment files in this directory as far as
// possible without Docker or a Kubernetes cluster: every YAML file parses, the
// files agree with each other and with the CLI (flags, environment variables,
// ports, paths), the Kubernetes rules ConfigMap is the repository's rules.hcl,
// the compose database schema satisfies `cachesync validate` and `setup` on a
// real PostgreSQL, and the systemd unit passes systemd-analyze when it is
// installed.
package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"gopkg.in/yaml.v3"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
)

const (
	// rulesFile is the repository's rules file, relative to this directory.
	rulesFile = "../rules.hcl"
	// finalConfirmTimeout is how long the daemon may take, after the drain,
	// to send its final confirmation (stream.Finish in internal/daemon).
	finalConfirmTimeout = 5 * time.Second
	// minMemoryLimit is twice the highest peak RSS of docs/benchmarks.md.
	minMemoryLimit = 128 << 20
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestDeploy builds cachesync once and checks every deployment file against it.
func TestDeploy(t *testing.T) {
	c := buildCLI(t)
	df := loadDockerfile(t, "Dockerfile")
	t.Run("YAML", testYAMLFiles)
	t.Run("Dockerfile", func(t *testing.T) { testDockerfile(t, c, df) })
	t.Run("dockerignore", testDockerignore)
	t.Run("compose", func(t *testing.T) { testCompose(t, c, df) })
	t.Run("compose database", func(t *testing.T) { testComposeDatabase(t, c, df) })
	t.Run("kubernetes", func(t *testing.T) { testKubernetes(t, c, df) })
	t.Run("kustomize build", testKustomizeBuild)
	t.Run("systemd", func(t *testing.T) { testSystemd(t, c) })
	t.Run("systemd-analyze", func(t *testing.T) { testSystemdAnalyze(t, c) })
}

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

func testYAMLFiles(t *testing.T) {
	var files []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"docker-compose.yml", "kubernetes/kustomization.yaml", "kubernetes/deployment.yaml"} {
		if !slices.Contains(files, filepath.FromSlash(want)) {
			t.Errorf("%s is missing (YAML files found: %v)", want, files)
		}
	}
	for _, f := range files {
		docs := yamlDocs(t, f)
		t.Logf("%s: %d document(s)", f, len(docs))
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

// --- Dockerfile -------------------------------------------------------------------

type dockerInstruction struct {
	cmd  string // upper case
	args string
	line int
}

type dockerStage struct {
	image string // after ARG expansion
	name  string
	ins   []dockerInstruction
}

type dockerfile struct {
	args   map[string]string // global ARGs with their defaults
	stages []*dockerStage
}

// loadDockerfile parses a Dockerfile: comments (also inside continued lines)
// are dropped, continued lines joined, and ARGs before the first FROM
// expanded in FROM.
func loadDockerfile(t *testing.T, path string) *dockerfile {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	df := &dockerfile{args: map[string]string{}}
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(src), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			continue
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := dockerInstruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--") })
			if len(f) == 0 {
				t.Fatalf("%s:%d: FROM without an image", path, in.line)
			}
			st := &dockerStage{image: os.Expand(f[0], func(k string) string { return df.args[k] })}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			df.stages = append(df.stages, st)
		case len(df.stages) == 0:
			if in.cmd == "ARG" {
				k, v, _ := strings.Cut(in.args, "=")
				df.args[k] = v
			}
		default:
			st := df.stages[len(df.stages)-1]
			st.ins = append(st.ins, in)
		}
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: the last instruction ends with a line continuation", path)
	}
	return df
}

func (s *dockerStage) all(cmd string) []dockerInstruction {
	var out []dockerInstruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// last returns the stage's last instruction cmd, or false.
func (s *dockerStage) last(cmd string) (dockerInstruction, bool) {
	all := s.all(cmd)
	if len(all) == 0 {
		return dockerInstruction{}, false
	}
	return all[len(all)-1], true
}

// env returns the stage's ENV settings (KEY=VALUE pairs, or the legacy
// KEY VALUE form).
func (s *dockerStage) env() map[string]string {
	env := map[string]string{}
	for _, in := range s.all("ENV") {
		if !strings.Contains(strings.Fields(in.args)[0], "=") {
			k, v, _ := strings.Cut(in.args, " ")
			env[k] = strings.TrimSpace(v)
			continue
		}
		for _, kv := range strings.Fields(in.args) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = strings.Trim(v, `"`)
		}
	}
	return env
}

type dockerCopy struct {
	from, chown string
	srcs        []string
	dst         string
}

func (s *dockerStage) copies() []dockerCopy {
	var out []dockerCopy
	for _, in := range s.all("COPY") {
		var c dockerCopy
		var paths []string
		for _, f := range strings.Fields(in.args) {
			switch {
			case strings.HasPrefix(f, "--from="):
				c.from = strings.TrimPrefix(f, "--from=")
			case strings.HasPrefix(f, "--chown="):
				c.chown = strings.TrimPrefix(f, "--chown=")
			case strings.HasPrefix(f, "--"):
			default:
				paths = append(paths, f)
			}
		}
		if len(paths) >= 2 {
			c.srcs, c.dst = paths[:len(paths)-1], paths[len(paths)-1]
		}
		out = append(out, c)
	}
	return out
}

// execForm decodes the JSON (exec) form of CMD or ENTRYPOINT.
func execForm(t *testing.T, in dockerInstruction) []string {
	t.Helper()
	var args []string
	if err := yaml.Unmarshal([]byte(in.args), &args); err != nil || !strings.HasPrefix(in.args, "[") {
		t.Errorf("Dockerfile:%d: %s must use the exec form [\"...\"]: the shell form needs /bin/sh, which a minimal image lacks", in.line, in.cmd)
		return nil
	}
	return args
}

// finalStage is the image's last stage.
func (df *dockerfile) finalStage(t *testing.T) *dockerStage {
	t.Helper()
	if len(df.stages) < 2 {
		t.Fatalf("Dockerfile: %d stage(s), want a multi-stage build", len(df.stages))
	}
	return df.stages[len(df.stages)-1]
}

// user returns the final stage's user: its last USER, or what the
// distroless nonroot images default to.
func (df *dockerfile) user(t *testing.T) string {
	t.Helper()
	final := df.finalStage(t)
	if u, ok := final.last("USER"); ok {
		return u.args
	}
	if strings.HasSuffix(final.image, ":nonroot") {
		return "65532:65532"
	}
	return "root"
}

// command is the image's default command line (CMD), checked against the CLI.
func (df *dockerfile) command(t *testing.T, c *cli) ([]string, map[string]string) {
	t.Helper()
	cmd, ok := df.finalStage(t).last("CMD")
	if !ok {
		t.Fatal("Dockerfile: the final stage has no CMD")
	}
	args := execForm(t, cmd)
	return args, c.checkArgs(t, fmt.Sprintf("Dockerfile:%d: CMD", cmd.line), args)
}

func goDirective(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod: no go directive")
	}
	return string(m[1])
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

func testDockerfile(t *testing.T, c *cli, df *dockerfile) {
	final := df.finalStage(t)

	// The binary: built in a golang stage matching go.mod, copied into the final one.
	entry, ok := final.last("ENTRYPOINT")
	if !ok {
		t.Fatal("Dockerfile: the final stage has no ENTRYPOINT")
	}
	ep := execForm(t, entry)
	if len(ep) != 1 {
		t.Fatalf("Dockerfile:%d: ENTRYPOINT %q, want the binary alone", entry.line, ep)
	}
	var binCopy *dockerCopy
	for _, cp := range final.copies() {
		if cp.dst == ep[0] && cp.from != "" && len(cp.srcs) == 1 {
			binCopy = &cp
		}
	}
	if binCopy == nil {
		t.Fatalf("Dockerfile: no COPY --from=<build stage> <binary> %s in the final stage", ep[0])
	}
	var build *dockerStage
	for _, st := range df.stages[:len(df.stages)-1] {
		if st.name == binCopy.from {
			build = st
		}
	}
	if build == nil {
		t.Fatalf("Dockerfile: COPY --from=%s names no earlier stage", binCopy.from)
	}
	goVersion := goDirective(t)
	repo, tag, _ := strings.Cut(build.image, ":")
	if repo != "golang" || (tag != goVersion && !strings.HasPrefix(tag, goVersion+"-")) {
		t.Errorf("Dockerfile: the build stage is FROM %s, want golang:%s (the go directive of go.mod), optionally with a -variant", build.image, goVersion)
	}
	var buildRun string
	for _, in := range build.all("RUN") {
		if strings.Contains(in.args, "go build") {
			buildRun = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w"`, "./cmd/cachesync", "-o " + binCopy.srcs[0]} {
		if !strings.Contains(buildRun, want) {
			t.Errorf("Dockerfile: the go build command lacks %s: %q", want, buildRun)
		}
	}

	// The final stage: minimal, non-root.
	base := final.image
	minimal := strings.Contains(base, "distroless") || strings.HasPrefix(base, "alpine") || base == "scratch"
	if !minimal {
		t.Errorf("Dockerfile: the final stage is FROM %s, want distroless, alpine or scratch", base)
	}
	user := df.user(t)
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("Dockerfile: the final stage runs as %q, want a non-root user", user)
	}
	if hc, ok := final.last("HEALTHCHECK"); ok && !strings.EqualFold(strings.TrimSpace(hc.args), "NONE") &&
		(strings.Contains(base, "distroless") || base == "scratch") {
		t.Errorf("Dockerfile:%d: HEALTHCHECK on %s, which has no shell or tool to run it", hc.line, base)
	}

	// The data directory: set, and writable by the user in a fresh volume.
	env := final.env()
	dataDir := env["CACHESYNC_DATA_DIR"]
	if dataDir == "" {
		t.Error("Dockerfile: no ENV CACHESYNC_DATA_DIR: the journal would go beside the read-only rules file")
	}
	var names []string
	for k := range env {
		names = append(names, k)
	}
	c.checkEnv(t, "Dockerfile: ENV", "run", names)
	owned := false
	for _, cp := range final.copies() {
		if cp.dst == dataDir && cp.chown == user {
			owned = true
		}
	}
	if !owned {
		t.Errorf("Dockerfile: no COPY --chown=%s ... %s: a volume mounted there would not be writable by the user", user, dataDir)
	}

	// The default command: valid flags, the rules where compose and
	// Kubernetes mount them, and the exposed port.
	_, flags := df.command(t, c)
	if got := flags["--config"]; got != "/etc/cachesync/rules.hcl" {
		t.Errorf("Dockerfile: CMD --config %q, want /etc/cachesync/rules.hcl", got)
	}
	host, port := listenPort(t, "Dockerfile: CMD", flags["--listen"])
	if host != "0.0.0.0" {
		t.Errorf("Dockerfile: CMD --listen %s: want 0.0.0.0, or the port cannot be published", flags["--listen"])
	}
	exposed := false
	for _, in := range final.all("EXPOSE") {
		for _, p := range strings.Fields(in.args) {
			exposed = exposed || strings.TrimSuffix(p, "/tcp") == strconv.Itoa(port)
		}
	}
	if !exposed {
		t.Errorf("Dockerfile: no EXPOSE %d (the CMD's --listen port)", port)
	}
}

// --- .dockerignore ----------------------------------------------------------------

type ignorePattern struct {
	re      *regexp.Regexp
	exclude bool // a "!" line: re-include
	text    string
}

// loadDockerignore reads .dockerignore patterns as Docker matches them:
// relative to the context root, "*" and "?" within a path element, "**"
// across elements, "!" re-including.
func loadDockerignore(t *testing.T, path string) []ignorePattern {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []ignorePattern
	for _, line := range strings.Split(string(src), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := ignorePattern{text: line}
		if strings.HasPrefix(line, "!") {
			p.exclude, line = true, strings.TrimSpace(line[1:])
		}
		line = strings.TrimPrefix(filepath.ToSlash(filepath.Clean(line)), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(line); i++ {
			switch ch := line[i]; {
			case ch == '*' && i+1 < len(line) && line[i+1] == '*':
				i++
				if i+1 < len(line) && line[i+1] == '/' {
					i++
					re.WriteString("(.*/)?")
				} else {
					re.WriteString(".*")
				}
			case ch == '*':
				re.WriteString("[^/]*")
			case ch == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(ch)))
			}
		}
		re.WriteString("$")
		p.re = regexp.MustCompile(re.String())
		out = append(out, p)
	}
	return out
}

// ignored reports whether Docker leaves path (slash-separated, relative to
// the context) out of the context: a pattern matches it or a parent.
func ignored(patterns []ignorePattern, path string) bool {
	out := false
	for _, p := range patterns {
		elems := strings.Split(path, "/")
		for i := range elems {
			if p.re.MatchString(strings.Join(elems[:i+1], "/")) {
				out = !p.exclude
				break
			}
		}
	}
	return out
}

func testDockerignore(t *testing.T) {
	patterns := loadDockerignore(t, "../.dockerignore")
	for _, p := range []string{".git/HEAD", "bin/cachesync", "bench/results/run.json", "cachesync.test", "config/config.test"} {
		if !ignored(patterns, p) {
			t.Errorf(".dockerignore: %s is sent with the build context", p)
		}
	}
	// Every file the image's go build reads must be in the context.
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`,
		"../cmd/cachesync")
	cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum"}
	for _, f := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		needed = append(needed, filepath.ToSlash(rel))
	}
	if len(needed) < 10 {
		t.Fatalf("go list found only %v", needed)
	}
	for _, p := range needed {
		if ignored(patterns, p) {
			t.Errorf(".dockerignore leaves out %s, which the image's go build needs", p)
		}
	}
}

// --- docker compose ---------------------------------------------------------------

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Command     any            `yaml:"command"`
	Environment map[string]any `yaml:"environment"`
	Volumes     []string       `yaml:"volumes"`
	Ports       []any          `yaml:"ports"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test any `yaml:"test"`
	} `yaml:"healthcheck"`
	Restart string `yaml:"restart"`
}

// words flattens a compose command or healthcheck test (string or list).
func words(v any) []string {
	switch v := v.(type) {
	case string:
		return strings.Fields(v)
	case []any:
		var out []string
		for _, w := range v {
			out = append(out, fmt.Sprint(w))
		}
		return out
	}
	return nil
}

// composeMount is a short-syntax volume: source:target[:mode].
type composeMount struct{ source, target, mode string }

func mounts(t *testing.T, svc string, vols []string) []composeMount {
	t.Helper()
	var out []composeMount
	for _, v := range vols {
		f := strings.Split(v, ":")
		if len(f) < 2 || len(f) > 3 {
			t.Errorf("compose: service %s: volume %q is not source:target[:mode]", svc, v)
			continue
		}
		m := composeMount{source: f[0], target: f[1]}
		if len(f) == 3 {
			m.mode = f[2]
		}
		out = append(out, m)
	}
	return out
}

var (
	composeTopKeys = []string{"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
	// The service keys of the Compose Specification.
	composeServiceKeys = []string{"annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
		"cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
		"cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy",
		"develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint",
		"env_file", "environment", "expose", "extends", "external_links", "extra_hosts", "group_add", "healthcheck",
		"hostname", "image", "init", "ipc", "isolation", "labels", "links", "logging", "mac_address", "mem_limit",
		"mem_reservation", "mem_swappiness", "memswap_limit", "network_mode", "networks", "oom_kill_disable",
		"oom_score_adj", "pid", "pids_limit", "platform", "ports", "privileged", "profiles", "pull_policy", "read_only",
		"restart", "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period",
		"stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts", "volumes",
		"volumes_from", "working_dir"}
	composeHealthcheckKeys = []string{"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
	composeDependsOnKeys   = []string{"condition", "restart", "required"}
	composeBuildKeys       = []string{"context", "dockerfile", "dockerfile_inline", "args", "ssh", "cache_from", "cache_to",
		"additional_contexts", "extra_hosts", "isolation", "privileged", "labels", "no_cache", "pull", "network",
		"shm_size", "target", "secrets", "tags", "ulimits", "platforms"}
)

func loadCompose(t *testing.T) (*composeFile, map[string]any) {
	t.Helper()
	docs := yamlDocs(t, "docker-compose.yml")
	if len(docs) != 1 {
		t.Fatalf("docker-compose.yml: %d documents, want 1", len(docs))
	}
	var cf composeFile
	var raw map[string]any
	decodeNode(t, "docker-compose.yml", docs[0], &cf)
	decodeNode(t, "docker-compose.yml", docs[0], &raw)
	return &cf, raw
}

func testCompose(t *testing.T, c *cli, df *dockerfile) {
	cf, raw := loadCompose(t)
	checkKeys(t, "compose", raw, composeTopKeys...)
	for name, s := range mapAt(raw, "services") {
		svc, _ := s.(map[string]any)
		where := "compose: service " + name
		checkKeys(t, where, svc, composeServiceKeys...)
		checkKeys(t, where+": healthcheck", mapAt(svc, "healthcheck"), composeHealthcheckKeys...)
		checkKeys(t, where+": build", mapAt(svc, "build"), composeBuildKeys...)
		for dep, d := range mapAt(svc, "depends_on") {
			m, _ := d.(map[string]any)
			checkKeys(t, where+": depends_on: "+dep, m, composeDependsOnKeys...)
		}
	}
	for _, name := range []string{"postgres", "redis", "cachesync"} {
		if _, ok := cf.Services[name]; !ok {
			t.Fatalf("compose: no service %s", name)
		}
	}
	// Every named volume is declared, every bind-mounted file exists.
	for name, svc := range cf.Services {
		for _, m := range mounts(t, name, svc.Volumes) {
			if strings.HasPrefix(m.source, ".") || strings.HasPrefix(m.source, "/") {
				if _, err := os.Stat(m.source); err != nil {
					t.Errorf("compose: service %s mounts %s, which does not exist relative to the compose file: %v", name, m.source, err)
				}
			} else if _, ok := cf.Volumes[m.source]; !ok {
				t.Errorf("compose: service %s uses the volume %s, which is not declared under volumes:", name, m.source)
			}
		}
	}

	pg := cf.Services["postgres"]
	image, tag, _ := strings.Cut(pg.Image, ":")
	if major, _ := strconv.Atoi(strings.SplitN(tag, ".", 2)[0]); image != "postgres" || major < 15 {
		t.Errorf("compose: postgres image %q, want postgres:15 or newer", pg.Image)
	}
	pgCommand := strings.Join(words(pg.Command), " ")
	for _, want := range []string{"wal_level=logical", "max_replication_slots=", "max_wal_senders=", "max_slot_wal_keep_size="} {
		if !strings.Contains(pgCommand, want) {
			t.Errorf("compose: the postgres command %q does not set %s", pgCommand, want)
		}
	}
	if pg.Healthcheck == nil || !slices.Contains(words(pg.Healthcheck.Test), "pg_isready") {
		t.Error("compose: postgres has no pg_isready healthcheck")
	}
	initSQL := false
	for _, m := range mounts(t, "postgres", pg.Volumes) {
		if m.source == "./compose/init.sql" && strings.HasPrefix(m.target, "/docker-entrypoint-initdb.d/") && strings.HasSuffix(m.target, ".sql") {
			initSQL = true
		}
	}
	if !initSQL {
		t.Error("compose: postgres does not mount ./compose/init.sql into /docker-entrypoint-initdb.d/")
	}
	rd := cf.Services["redis"]
	if !strings.HasPrefix(rd.Image, "redis:") {
		t.Errorf("compose: redis image %q", rd.Image)
	}
	if rd.Healthcheck == nil || len(words(rd.Healthcheck.Test)) == 0 {
		t.Error("compose: redis has no healthcheck")
	}

	cs := cf.Services["cachesync"]
	if cs.Build == nil || cs.Build.Context != ".." || cs.Build.Dockerfile != "deploy/Dockerfile" {
		t.Errorf("compose: cachesync build = %+v, want context .. and dockerfile deploy/Dockerfile", cs.Build)
	} else if _, err := os.Stat(filepath.Join(cs.Build.Context, cs.Build.Dockerfile)); err != nil {
		t.Errorf("compose: cachesync build: %v", err)
	}
	for _, dep := range []string{"postgres", "redis"} {
		if got := cs.DependsOn[dep].Condition; got != "service_healthy" {
			t.Errorf("compose: cachesync depends_on %s with condition %q, want service_healthy", dep, got)
		}
	}
	if cs.Restart != "unless-stopped" {
		t.Errorf("compose: cachesync restart: %q, want unless-stopped", cs.Restart)
	}
	var envNames []string
	for k := range cs.Environment {
		envNames = append(envNames, k)
	}
	c.checkEnv(t, "compose: cachesync environment", "run", envNames)
	for k, host := range map[string]string{"DATABASE_URL": "postgres", "REDIS_URL": "redis"} {
		u, err := url.Parse(fmt.Sprint(cs.Environment[k]))
		if err != nil || u.Hostname() != host {
			t.Errorf("compose: cachesync %s=%v: want a URL of the %s service", k, cs.Environment[k], host)
		}
	}

	// What the container runs: the image's CMD unless compose overrides it.
	var flags map[string]string
	if cs.Command != nil {
		flags = c.checkArgs(t, "compose: cachesync command", words(cs.Command))
	} else {
		_, flags = df.command(t, c)
	}
	rules := false
	dataDir := fmt.Sprint(cs.Environment["CACHESYNC_DATA_DIR"])
	if cs.Environment["CACHESYNC_DATA_DIR"] == nil {
		dataDir = df.finalStage(t).env()["CACHESYNC_DATA_DIR"]
	}
	dataVolume := false
	for _, m := range mounts(t, "cachesync", cs.Volumes) {
		if m.target == flags["--config"] {
			rules = m.source == "../rules.hcl" && m.mode == "ro"
		}
		if m.target == dataDir && !strings.HasPrefix(m.source, ".") && !strings.HasPrefix(m.source, "/") && m.mode != "ro" {
			dataVolume = true
		}
	}
	if !rules {
		t.Errorf("compose: cachesync does not mount ../rules.hcl read-only at --config %s", flags["--config"])
	}
	if !dataVolume {
		t.Errorf("compose: cachesync has no writable named volume at its data dir %q", dataDir)
	}
	_, port := listenPort(t, "compose: cachesync", flags["--listen"])
	if len(cs.Ports) == 0 {
		t.Error("compose: cachesync publishes no port")
	}
	for _, p := range cs.Ports {
		var hostIP, target string
		switch p := p.(type) {
		case string:
			f := strings.Split(p, ":")
			if len(f) == 3 {
				hostIP, target = f[0], f[2]
			} else {
				target = f[len(f)-1]
			}
		case map[string]any:
			hostIP, target = fmt.Sprint(p["host_ip"]), fmt.Sprint(p["target"])
		}
		if hostIP != "127.0.0.1" {
			t.Errorf("compose: cachesync publishes %v on %q, want 127.0.0.1 only", p, hostIP)
		}
		if target != strconv.Itoa(port) {
			t.Errorf("compose: cachesync publishes container port %s, but listens on %d", target, port)
		}
	}
}

// testComposeDatabase runs compose/init.sql as the postgres image would (as
// the superuser, in POSTGRES_DB) on a private PostgreSQL, then checks that
// cachesync, connecting as in the compose file, accepts the database:
// `validate` (REPLICATION, table ownership, replica identity) and `setup`
// (publication, slot, flush).
func testComposeDatabase(t *testing.T, c *cli, df *dockerfile) {
	cf, _ := loadCompose(t)
	dbname := fmt.Sprint(cf.Services["postgres"].Environment["POSTGRES_DB"])
	u, err := url.Parse(fmt.Sprint(cf.Services["cachesync"].Environment["DATABASE_URL"]))
	if err != nil {
		t.Fatalf("compose: cachesync DATABASE_URL: %v", err)
	}
	if got := strings.TrimPrefix(u.Path, "/"); got != dbname {
		t.Fatalf("compose: cachesync connects to database %q, but POSTGRES_DB is %q", got, dbname)
	}
	initSQL, err := os.ReadFile("compose/init.sql")
	if err != nil {
		t.Fatal(err)
	}

	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, "", "CREATE DATABASE "+pgx.Identifier{dbname}.Sanitize())
	pg.Exec(t, dbname, string(initSQL))
	redis := testenv.StartRedis(t)

	// The compose URL with the private server's address (it trusts loopback:
	// the password is not checked).
	u.Host = fmt.Sprintf("127.0.0.1:%d", pg.Port())
	dbURL := u.String()
	out, err := c.run("validate", "--config", rulesFile, "--database-url", dbURL)
	if err != nil {
		t.Fatalf("cachesync validate against compose/init.sql as %s: %v\n%s", u.User.Username(), err, out)
	}
	out, err = c.run("setup", "--config", rulesFile, "--database-url", dbURL, "--redis-url", redis.URL(), "--data-dir", t.TempDir())
	if err != nil {
		t.Fatalf("cachesync setup against compose/init.sql as %s: %v\n%s", u.User.Username(), err, out)
	}
	// Two instances, as the Deployment runs them: the first streams (and
	// invalidates), the second stands by, and both are ready. The first stops
	// within the stop budget; the second takes over.
	budget := c.stopBudget(t)
	image, _ := df.command(t, c)
	active := startRun(t, c, image, dbURL, redis.URL())
	active.waitReady(t, "streaming")
	rdb := redis.Client(t)
	ctx := t.Context()
	if err := rdb.Set(ctx, "user:1", "cached", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, dbname, `INSERT INTO public.users (id, email, org_id, name) VALUES (1, 'a@example.com', 7, 'A')`)
	waitFor(t, active, 30*time.Second, "user:1 to be invalidated", func() bool {
		n, err := rdb.Exists(ctx, "user:1").Result()
		return err == nil && n == 0
	})
	t.Logf("%s streams and invalidated user:1", active.name)
	passive := startRun(t, c, image, dbURL, redis.URL())
	passive.waitReady(t, "standby")
	t.Logf("%s stands by", passive.name)
	for _, r := range []*runProcess{active, passive} {
		if code, _ := r.get(t, "/healthz"); code != 200 {
			t.Errorf("%s: /healthz %d, want 200", r.name, code)
		}
		if code, body := r.get(t, "/metrics"); code != 200 || !strings.Contains(body, "# TYPE") {
			t.Errorf("%s: /metrics %d, want 200 with Prometheus text", r.name, code)
		}
	}
	if took := active.stop(t); took >= budget {
		t.Errorf("%s: stopping took %v, the stop budget of the deployment files is %v", active.name, took, budget)
	}
	passive.waitReady(t, "streaming")
	t.Logf("%s took over", passive.name)
	passive.stop(t)
}

// runProcess is one `cachesync run` started by the test.
type runProcess struct {
	name   string
	cmd    *exec.Cmd
	addr   string
	log    string
	exited chan struct{}
	err    error
}

var runCount int

// startRun starts `cachesync <image...>`, the image's CMD, with the
// repository's rules file for --config and a free loopback port for --listen.
func startRun(t *testing.T, c *cli, image []string, dbURL, redisURL string) *runProcess {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	runCount++
	dir := t.TempDir()
	r := &runProcess{name: fmt.Sprintf("instance %d", runCount), addr: addr, log: filepath.Join(dir, "log"), exited: make(chan struct{})}
	logFile, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	args := slices.Clone(image)
	for i := 1; i < len(args); i++ {
		switch args[i-1] {
		case "--config", "-c":
			args[i] = rulesFile
		case "--listen":
			args[i] = addr
		}
	}
	if !slices.Contains(args, addr) {
		t.Fatalf("the image's CMD %q has no --listen ADDR to probe", image)
	}
	args = append(args, "--log-format", "console")
	r.cmd = exec.Command(c.bin, args...)
	r.cmd.Env = append(cleanEnv(), "DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, "CACHESYNC_DATA_DIR="+filepath.Join(dir, "data"), "NO_COLOR=1")
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		select {
		case <-r.exited:
		default:
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	})
	return r
}

func (r *runProcess) logText() string {
	b, _ := os.ReadFile(r.log)
	return string(b)
}

// get returns the status and body of one of the endpoints (0 when it does not answer).
func (r *runProcess) get(t *testing.T, path string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + r.addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitReady waits until /readyz answers 200 with a body starting with state.
func (r *runProcess) waitReady(t *testing.T, state string) {
	t.Helper()
	var code int
	var body string
	waitFor(t, r, 60*time.Second, fmt.Sprintf("%s: /readyz 200 %q", r.name, state), func() bool {
		code, body = r.get(t, "/readyz")
		return code == 200 && strings.HasPrefix(body, state)
	})
}

// stop sends SIGTERM and returns how long the process took to exit 0.
func (r *runProcess) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.exited:
	case <-time.After(time.Minute):
		t.Fatalf("%s: still running a minute after SIGTERM\n%s", r.name, r.logText())
	}
	if r.err != nil {
		t.Errorf("%s: exited after SIGTERM with %v, want 0\n%s", r.name, r.err, r.logText())
	}
	return time.Since(start)
}

// waitFor polls cond every 100ms until it holds, failing with the process's
// log after timeout or when the process exits.
func waitFor(t *testing.T, r *runProcess, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-r.exited:
			t.Fatalf("%s exited (%v) while waiting for %s\n%s", r.name, r.err, what, r.logText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s\n%s", timeout, what, r.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// --- Kubernetes -------------------------------------------------------------------

type k8sObject struct {
	file string
	node *yaml.Node
	raw  map[string]any
	meta struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name      string            `yaml:"name"`
			Namespace string            `yaml:"namespace"`
			Labels    map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
	}
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Name string   `yaml:"name"`
	Args []string `yaml:"args"`
	Env  []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type deployment struct {
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Strategy struct {
			Type          string `yaml:"type"`
			RollingUpdate *struct {
				MaxSurge       any `yaml:"maxSurge"`
				MaxUnavailable any `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Selector labelSelector `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds *int            `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               securityContext `yaml:"securityContext"`
				Containers                    []container     `yaml:"containers"`
				Volumes                       []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name  string `yaml:"name"`
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"configMap"`
					EmptyDir              any `yaml:"emptyDir"`
					PersistentVolumeClaim any `yaml:"persistentVolumeClaim"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

// selects reports whether a non-empty selector matches labels.
func (s labelSelector) selects(labels map[string]string) bool {
	if len(s.MatchLabels) == 0 {
		return false
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

type service struct {
	Spec struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Spec struct {
		Selector  labelSelector `yaml:"selector"`
		Endpoints []struct {
			Port     string `yaml:"port"`
			Path     string `yaml:"path"`
			Interval string `yaml:"interval"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

type podDisruptionBudget struct {
	Spec struct {
		MinAvailable any           `yaml:"minAvailable"`
		Selector     labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type kustomization struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Resources  []string `yaml:"resources"`
}

var (
	podSpecKeys = []string{"activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig",
		"dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID",
		"hostUsers", "hostname", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
		"preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
		"restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext", "serviceAccount",
		"serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds",
		"tolerations", "topologySpreadConstraints", "volumes"}
	containerKeys = []string{"args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
		"name", "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy", "securityContext", "startupProbe",
		"stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
		"volumeMounts", "workingDir"}
	podSecurityContextKeys = []string{"appArmorProfile", "fsGroup", "fsGroupChangePolicy", "runAsGroup", "runAsNonRoot",
		"runAsUser", "seLinuxChangePolicy", "seLinuxOptions", "seccompProfile", "supplementalGroups",
		"supplementalGroupsPolicy", "sysctls", "windowsOptions"}
	containerSecurityContextKeys = []string{"allowPrivilegeEscalation", "appArmorProfile", "capabilities", "privileged",
		"procMount", "readOnlyRootFilesystem", "runAsGroup", "runAsNonRoot", "runAsUser", "seLinuxOptions",
		"seccompProfile", "windowsOptions"}
	probeKeys = []string{"exec", "failureThreshold", "grpc", "httpGet", "initialDelaySeconds", "periodSeconds",
		"successThreshold", "tcpSocket", "terminationGracePeriodSeconds", "timeoutSeconds"}
	deploymentSpecKeys = []string{"minReadySeconds", "paused", "progressDeadlineSeconds", "replicas",
		"revisionHistoryLimit", "selector", "strategy", "template"}
)

// loadKubernetes returns every object of the manifests in kubernetes/ but
// kustomization.yaml, and the kustomization.
func loadKubernetes(t *testing.T) ([]*k8sObject, *kustomization, []string) {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.y*ml")
	if err != nil {
		t.Fatal(err)
	}
	var objs []*k8sObject
	var kust *kustomization
	var manifests []string
	for _, f := range files {
		docs := yamlDocs(t, f)
		if filepath.Base(f) == "kustomization.yaml" {
			kust = &kustomization{}
			decodeNode(t, f, docs[0], kust)
			continue
		}
		manifests = append(manifests, filepath.Base(f))
		for _, d := range docs {
			o := &k8sObject{file: f, node: d}
			decodeNode(t, f, d, &o.meta)
			decodeNode(t, f, d, &o.raw)
			objs = append(objs, o)
		}
	}
	if kust == nil {
		t.Fatal("kubernetes/kustomization.yaml is missing")
	}
	return objs, kust, manifests
}

// one returns the only object of a kind, decoded into v.
func one(t *testing.T, objs []*k8sObject, kind string, v any) *k8sObject {
	t.Helper()
	var found *k8sObject
	for _, o := range objs {
		if o.meta.Kind == kind {
			if found != nil {
				t.Fatalf("kubernetes: two %ss: %s and %s", kind, found.meta.Metadata.Name, o.meta.Metadata.Name)
			}
			found = o
		}
	}
	if found == nil {
		t.Fatalf("kubernetes: no %s", kind)
	}
	decodeNode(t, found.file, found.node, v)
	return found
}

// byteSize parses a Kubernetes quantity ("256Mi") or a GOMEMLIMIT ("220MiB").
func byteSize(t *testing.T, s string) int64 {
	t.Helper()
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30},
		{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("size %q: %v", s, err)
	}
	return n * mult
}

func testKubernetes(t *testing.T, c *cli, df *dockerfile) {
	objs, kust, manifests := loadKubernetes(t)

	// Namespace-agnostic objects with the basics set.
	for _, o := range objs {
		where := fmt.Sprintf("%s: %s %q", o.file, o.meta.Kind, o.meta.Metadata.Name)
		if o.meta.APIVersion == "" || o.meta.Kind == "" || o.meta.Metadata.Name == "" {
			t.Errorf("%s: apiVersion, kind and metadata.name must be set: %+v", o.file, o.meta)
		}
		if o.meta.Metadata.Namespace != "" {
			t.Errorf("%s: sets metadata.namespace; the manifests are namespace-agnostic", where)
		}
	}

	// The kustomization lists every manifest, each once, and nothing else.
	if kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || kust.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q", kust.APIVersion, kust.Kind)
	}
	listed := slices.Clone(kust.Resources)
	slices.Sort(listed)
	if !slices.Equal(listed, manifests) {
		t.Errorf("kustomization.yaml resources %v, want the manifests of the directory %v", kust.Resources, manifests)
	}

	var dep deployment
	depObj := one(t, objs, "Deployment", &dep)
	var svc service
	svcObj := one(t, objs, "Service", &svc)
	var sm serviceMonitor
	smObj := one(t, objs, "ServiceMonitor", &sm)
	var pdb podDisruptionBudget
	pdbObj := one(t, objs, "PodDisruptionBudget", &pdb)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	cmObj := one(t, objs, "ConfigMap", &cm)
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
		Data       map[string]string `yaml:"data"`
	}
	secretObj := one(t, objs, "Secret", &secret)

	// Unknown keys where a typo would silently drop a setting.
	spec := mapAt(depObj.raw, "spec")
	checkKeys(t, "Deployment spec", spec, deploymentSpecKeys...)
	podSpec := mapAt(mapAt(spec, "template"), "spec")
	checkKeys(t, "Deployment pod spec", podSpec, podSpecKeys...)
	checkKeys(t, "Deployment pod securityContext", mapAt(podSpec, "securityContext"), podSecurityContextKeys...)
	containers, _ := podSpec["containers"].([]any)
	for _, ct := range containers {
		m, _ := ct.(map[string]any)
		checkKeys(t, "Deployment container", m, containerKeys...)
		checkKeys(t, "Deployment container securityContext", mapAt(m, "securityContext"), containerSecurityContextKeys...)
		checkKeys(t, "Deployment livenessProbe", mapAt(m, "livenessProbe"), probeKeys...)
		checkKeys(t, "Deployment readinessProbe", mapAt(m, "readinessProbe"), probeKeys...)
	}

	// Active/passive: two replicas, never both replaced at once.
	ds := dep.Spec
	if ds.Replicas == nil || *ds.Replicas != 2 {
		got := "unset (1)"
		if ds.Replicas != nil {
			got = strconv.Itoa(*ds.Replicas)
		}
		t.Errorf("Deployment: replicas %s, want 2 (active and passive on the slot lock)", got)
	}
	switch ds.Strategy.Type {
	case "Recreate":
	case "RollingUpdate":
		ru := ds.Strategy.RollingUpdate
		if ru == nil || fmt.Sprint(ru.MaxSurge) != "0" || fmt.Sprint(ru.MaxUnavailable) != "1" {
			t.Errorf("Deployment: rollingUpdate %+v, want maxSurge 0 and maxUnavailable 1", ru)
		}
	default:
		t.Errorf("Deployment: strategy %q, want RollingUpdate (maxSurge 0, maxUnavailable 1) or Recreate", ds.Strategy.Type)
	}
	podLabels := ds.Template.Metadata.Labels
	if !ds.Selector.selects(podLabels) {
		t.Errorf("Deployment: selector %v does not select its pods %v", ds.Selector.MatchLabels, podLabels)
	}
	if !(labelSelector{MatchLabels: svc.Spec.Selector}).selects(podLabels) {
		t.Errorf("Service: selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	if !pdb.Spec.Selector.selects(podLabels) {
		t.Errorf("PodDisruptionBudget: selector %v does not select the pods %v", pdb.Spec.Selector.MatchLabels, podLabels)
	}
	if !sm.Spec.Selector.selects(svcObj.meta.Metadata.Labels) {
		t.Errorf("ServiceMonitor: selector %v does not select the Service's labels %v", sm.Spec.Selector.MatchLabels, svcObj.meta.Metadata.Labels)
	}
	if pdbObj.meta.APIVersion != "policy/v1" || fmt.Sprint(pdb.Spec.MinAvailable) != "1" {
		t.Errorf("PodDisruptionBudget: %s with minAvailable %v, want policy/v1 with 1", pdbObj.meta.APIVersion, pdb.Spec.MinAvailable)
	}

	// The container: a valid command line and environment.
	pod := ds.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("Deployment: %d containers, want 1", len(pod.Containers))
	}
	ct := pod.Containers[0]
	args := ct.Args
	if len(args) == 0 {
		args, _ = df.command(t, c)
	}
	flags := c.checkArgs(t, "Deployment: args", args)
	env := map[string]string{}
	var envNames []string
	for _, e := range ct.Env {
		env[e.Name] = e.Value
		envNames = append(envNames, e.Name)
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			ref := e.ValueFrom.SecretKeyRef
			_, inString := secret.StringData[ref.Key]
			_, inData := secret.Data[ref.Key]
			if ref.Name != secretObj.meta.Metadata.Name || !(inString || inData) {
				t.Errorf("Deployment: env %s refers to Secret %s key %s, which secret.yaml does not define", e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = "(secret)"
		}
	}
	c.checkEnv(t, "Deployment: env", "run", envNames)
	for _, k := range []string{"DATABASE_URL", "REDIS_URL"} {
		if env[k] != "(secret)" {
			t.Errorf("Deployment: env %s does not come from the Secret", k)
		}
		if _, ok := secret.StringData[k]; !ok {
			t.Errorf("Secret: no stringData %s", k)
		}
	}
	secretText, err := os.ReadFile(secretObj.file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(secretText), "secret manager") {
		t.Errorf("%s: say that real values come from a secret manager", secretObj.file)
	}

	// Ports: --listen, the container port, the probes and the Service agree.
	_, port := listenPort(t, "Deployment: args", flags["--listen"])
	portNames := map[string]int{}
	for _, p := range ct.Ports {
		portNames[p.Name] = p.ContainerPort
	}
	if portNames["metrics"] != port {
		t.Errorf("Deployment: container port metrics is %d, but --listen is on %d", portNames["metrics"], port)
	}
	resolve := func(p any) int {
		if n, ok := p.(int); ok {
			return n
		}
		if n, ok := portNames[fmt.Sprint(p)]; ok {
			return n
		}
		return -1
	}
	for _, pr := range []struct {
		name, path string
		probe      *probe
	}{{"livenessProbe", "/healthz", ct.LivenessProbe}, {"readinessProbe", "/readyz", ct.ReadinessProbe}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("Deployment: no httpGet %s", pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path || resolve(pr.probe.HTTPGet.Port) != port {
			t.Errorf("Deployment: %s on %s port %v, want %s on %d", pr.name, pr.probe.HTTPGet.Path, pr.probe.HTTPGet.Port, pr.path, port)
		}
	}
	if svc.Spec.Type != "" && svc.Spec.Type != "ClusterIP" {
		t.Errorf("Service: type %s, want ClusterIP", svc.Spec.Type)
	}
	metricsPort := false
	for _, p := range svc.Spec.Ports {
		if p.Name == "metrics" {
			metricsPort = true
			if p.Port != port || resolve(p.TargetPort) != port {
				t.Errorf("Service: port metrics %d -> %v, want %d -> the container's %d", p.Port, p.TargetPort, port, port)
			}
		}
	}
	if !metricsPort {
		t.Error("Service: no port named metrics")
	}
	scraped := false
	for _, ep := range sm.Spec.Endpoints {
		scraped = scraped || (ep.Port == "metrics" && ep.Path == "/metrics" && ep.Interval == "15s")
	}
	if smObj.meta.APIVersion != "monitoring.coreos.com/v1" || !scraped {
		t.Errorf("ServiceMonitor: %s %+v, want monitoring.coreos.com/v1 scraping port metrics, path /metrics, every 15s", smObj.meta.APIVersion, sm.Spec.Endpoints)
	}

	// Stopping: room for the drain and the final confirmation.
	grace := 30
	if pod.TerminationGracePeriodSeconds != nil {
		grace = *pod.TerminationGracePeriodSeconds
	}
	if budget := c.stopBudget(t); time.Duration(grace)*time.Second <= budget {
		t.Errorf("Deployment: terminationGracePeriodSeconds %d, want more than %v (drain timeout and final confirmation)", grace, budget)
	}

	// Resources.
	limit, ok := ct.Resources.Limits["memory"]
	if !ok {
		t.Error("Deployment: no memory limit")
	} else if byteSize(t, limit) < minMemoryLimit {
		t.Errorf("Deployment: memory limit %s is below %d MiB", limit, minMemoryLimit>>20)
	}
	if req, ok := ct.Resources.Requests["memory"]; !ok || (limit != "" && byteSize(t, req) > byteSize(t, limit)) {
		t.Errorf("Deployment: memory request %q, want one at most the limit %q", req, limit)
	}
	if _, ok := ct.Resources.Requests["cpu"]; !ok {
		t.Error("Deployment: no CPU request")
	}
	if gml, ok := env["GOMEMLIMIT"]; ok && limit != "" && byteSize(t, gml) >= byteSize(t, limit) {
		t.Errorf("Deployment: GOMEMLIMIT %s is not below the memory limit %s", gml, limit)
	}

	// Security.
	psc, csc := pod.SecurityContext, ct.SecurityContext
	if !(csc.RunAsNonRoot != nil && *csc.RunAsNonRoot) && !(psc.RunAsNonRoot != nil && *psc.RunAsNonRoot) {
		t.Error("Deployment: runAsNonRoot is not true")
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Error("Deployment: readOnlyRootFilesystem is not true")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Error("Deployment: allowPrivilegeEscalation is not false")
	}
	if !slices.Contains(csc.Capabilities.Drop, "ALL") {
		t.Errorf("Deployment: capabilities drop %v, want ALL", csc.Capabilities.Drop)
	}
	if csc.SeccompProfile.Type != "RuntimeDefault" && psc.SeccompProfile.Type != "RuntimeDefault" {
		t.Error("Deployment: no RuntimeDefault seccompProfile")
	}
	uid := psc.RunAsUser
	if csc.RunAsUser != nil {
		uid = csc.RunAsUser
	}
	if name, _, _ := strings.Cut(df.user(t), ":"); uid != nil && name != strconv.FormatInt(*uid, 10) {
		t.Errorf("Deployment: runAsUser %d, but the image's USER is %s", *uid, df.user(t))
	}

	// Volumes: the rules from the ConfigMap where --config points, the data
	// dir writable.
	mountAt := map[string]string{} // mount path -> volume name
	readOnly := map[string]bool{}
	for _, m := range ct.VolumeMounts {
		mountAt[m.MountPath], readOnly[m.MountPath] = m.Name, m.ReadOnly
	}
	configPath := flags["--config"]
	rulesVolume := mountAt[filepath.Dir(configPath)]
	dataDir := env["CACHESYNC_DATA_DIR"]
	dataVolume := mountAt[dataDir]
	if dataDir == "" || dataVolume == "" || readOnly[dataDir] {
		t.Errorf("Deployment: CACHESYNC_DATA_DIR %q is not a writable volume mount: the root filesystem is read-only", dataDir)
	}
	var rulesKey string
	for _, v := range pod.Volumes {
		switch v.Name {
		case rulesVolume:
			if v.ConfigMap == nil || v.ConfigMap.Name != cmObj.meta.Metadata.Name {
				t.Errorf("Deployment: volume %s at %s is not the ConfigMap %s", v.Name, filepath.Dir(configPath), cmObj.meta.Metadata.Name)
				continue
			}
			rulesKey = filepath.Base(configPath)
			for _, it := range v.ConfigMap.Items {
				if it.Path == filepath.Base(configPath) {
					rulesKey = it.Key
				}
			}
			if !readOnly[filepath.Dir(configPath)] {
				t.Errorf("Deployment: the rules volume %s is not mounted readOnly", v.Name)
			}
		case dataVolume:
			if v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
				t.Errorf("Deployment: the data volume %s is neither an emptyDir nor a PersistentVolumeClaim", v.Name)
			}
		}
	}
	if rulesKey == "" {
		t.Fatalf("Deployment: --config %s is not in a mounted ConfigMap", configPath)
	}

	// The ConfigMap's rules: parsed by cachesync's parser, identical to ../rules.hcl.
	rules, ok := cm.Data[rulesKey]
	if !ok {
		t.Fatalf("ConfigMap %s: no key %s (the file --config reads)", cmObj.meta.Metadata.Name, rulesKey)
	}
	p := config.NewParser()
	p.LookupEnv = func(string) (string, bool) { return "", false }
	cfg, diags := p.Parse([]byte(rules), "configmap.yaml:"+rulesKey)
	if diags.HasErrors() {
		t.Errorf("ConfigMap %s: %s does not parse:\n%s", cmObj.meta.Metadata.Name, rulesKey, p.FormatDiagnostics(diags))
	} else if len(cfg.Rules) == 0 {
		t.Errorf("ConfigMap %s: %s has no rules", cmObj.meta.Metadata.Name, rulesKey)
	}
	repoRules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if rules != string(repoRules) {
		t.Errorf("ConfigMap %s: %s differs from %s; copy it again (indent every non-empty line by 4 spaces under `%s: |`)",
			cmObj.meta.Metadata.Name, rulesKey, rulesFile, rulesKey)
	}
}

// testKustomizeBuild renders the kustomization with kubectl, which needs no
// cluster for it.
func testKustomizeBuild(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH: `kubectl kustomize` was not run")
	}
	out, err := exec.Command(kubectl, "kustomize", "kubernetes").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize kubernetes: %v\n%s", err, out)
	}
	objs, _, _ := loadKubernetes(t)
	dec := yaml.NewDecoder(bytes.NewReader(out))
	n := 0
	for {
		var o map[string]any
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubectl kustomize output: %v", err)
		}
		n++
	}
	if n != len(objs) {
		t.Errorf("kubectl kustomize rendered %d objects, want the %d of the manifests", n, len(objs))
	}
}

// --- systemd ----------------------------------------------------------------------

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
