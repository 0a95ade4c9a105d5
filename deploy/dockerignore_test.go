package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

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
