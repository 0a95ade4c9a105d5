package deploy_test

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

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

// buildToolchain is the Go release the module is built and tested with:
// go.mod's toolchain line, else its go directive (the oldest release that
// may import the module, kept low for applications that use cacheaside).
func buildToolchain(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^toolchain\s+go(\S+)\s*$`).FindSubmatch(mod); m != nil {
		return string(m[1])
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod: no go directive")
	}
	return string(m[1])
}

func testDockerfile(t *testing.T, c *cli, df *dockerfile) {
	final := df.finalStage(t)

	// The binary: built in a golang stage of go.mod's toolchain, copied into the final one.
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
	goVersion := buildToolchain(t)
	repo, tag, _ := strings.Cut(build.image, ":")
	if repo != "golang" || (tag != goVersion && !strings.HasPrefix(tag, goVersion+"-")) {
		t.Errorf("Dockerfile: the build stage is FROM %s, want golang:%s (go.mod's toolchain, else its go directive), optionally with a -variant", build.image, goVersion)
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
