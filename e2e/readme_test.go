package e2e

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEMatchesHelp holds the README's CLI reference to the binary:
// every command in `cachesync --help` has a `### `cachesync <command>“
// section, and the flags of `cachesync <command> --help`, with their
// environment variables, are exactly the rows of that section's tables and
// of the flag groups (other ### sections of the reference) it links to.
func TestREADMEMatchesHelp(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := readmeFlags(t, string(readme))
	commands := append([]string{""}, helpCommands(t)...)
	for _, command := range commands {
		name := strings.TrimSpace("cachesync " + command)
		want, ok := documented[command]
		if !ok {
			t.Errorf("README's CLI reference has no section ### `%s`", name)
			continue
		}
		got := helpFlags(t, command)
		for flag, help := range got {
			switch doc, ok := want[flag]; {
			case !ok:
				t.Errorf("%s --help has %s (env %s), which the README does not document: add a row to ### `%s` or to a flag group it links to", name, help.names, orNone(help.env), name)
			case doc != help:
				t.Errorf("%s %s: --help says %s (env %s), the README %s (env %s)", name, flag, help.names, orNone(help.env), doc.names, orNone(doc.env))
			}
		}
		for flag := range want {
			if _, ok := got[flag]; !ok {
				t.Errorf("the README documents %s for %s, which its --help lacks", flag, name)
			}
		}
		delete(documented, command)
	}
	for command := range documented {
		t.Errorf("the README documents `cachesync %s`, which `cachesync --help` does not list", command)
	}
}

// flagDoc is a flag as the README or --help shows it: all its names
// ("--config, -c") and its environment variables ("" for none), each
// joined by ", " in the order shown.
type flagDoc struct{ names, env string }

func orNone(env string) string {
	if env == "" {
		return "none"
	}
	return env
}

var (
	readmeHeading = regexp.MustCompile("^### (.+)$")
	readmeCommand = regexp.MustCompile("^`cachesync ?([a-z-]*)`$")
	readmeLink    = regexp.MustCompile(`\]\(#([a-z0-9_-]+)\)`)
	readmeFlag    = regexp.MustCompile("`(--?[a-z][a-z0-9-]*)`")
	readmeEnv     = regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")
)

// readmeFlags reads the README's CLI reference: for each command ("" for
// cachesync itself), its flags by their first name.
func readmeFlags(t *testing.T, readme string) map[string]map[string]flagDoc {
	t.Helper()
	_, ref, ok := strings.Cut(readme, "\n## CLI reference\n")
	if !ok {
		t.Fatal("README.md has no ## CLI reference")
	}
	if end := strings.Index(ref, "\n## "); end >= 0 {
		ref = ref[:end]
	}
	type section struct {
		command *string
		rows    map[string]flagDoc
		links   []string
	}
	sections := map[string]*section{} // by anchor
	var order []string
	var cur *section
	for line := range strings.Lines(ref) {
		line = strings.TrimRight(line, "\n")
		if m := readmeHeading.FindStringSubmatch(line); m != nil {
			cur = &section{rows: map[string]flagDoc{}}
			if c := readmeCommand.FindStringSubmatch(m[1]); c != nil {
				cur.command = &c[1]
			}
			anchor := githubAnchor(m[1])
			sections[anchor], order = cur, append(order, anchor)
			continue
		}
		if cur == nil {
			continue
		}
		for _, l := range readmeLink.FindAllStringSubmatch(line, -1) {
			cur.links = append(cur.links, l[1])
		}
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| `-") || len(cells) < 4 {
			continue
		}
		var names, envs []string
		for _, m := range readmeFlag.FindAllStringSubmatch(cells[1], -1) {
			names = append(names, m[1])
		}
		for _, m := range readmeEnv.FindAllStringSubmatch(cells[2], -1) {
			envs = append(envs, m[1])
		}
		cur.rows[names[0]] = flagDoc{strings.Join(names, ", "), strings.Join(envs, ", ")}
	}
	out := map[string]map[string]flagDoc{}
	for _, anchor := range order {
		s := sections[anchor]
		if s.command == nil {
			continue
		}
		flags := map[string]flagDoc{}
		for _, link := range append([]string{anchor}, s.links...) {
			if g, ok := sections[link]; ok && (link == anchor || g.command == nil) {
				for flag, doc := range g.rows {
					flags[flag] = doc
				}
			}
		}
		out[*s.command] = flags
	}
	return out
}

// githubAnchor is the fragment GitHub gives a heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func cachesyncHelp(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runCachesync(t, nil, append(args, "--help")...)
	if code != 0 {
		t.Fatalf("cachesync %s --help: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// helpCommands lists the commands of `cachesync --help`.
func helpCommands(t *testing.T) []string {
	t.Helper()
	var commands []string
	in := false
	for line := range strings.Lines(cachesyncHelp(t)) {
		switch {
		case strings.HasPrefix(line, "COMMANDS:"):
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in:
			commands = append(commands, strings.TrimSuffix(strings.Fields(line)[0], ","))
		}
	}
	if len(commands) == 0 {
		t.Fatal("cachesync --help lists no commands")
	}
	return commands
}

var helpEnv = regexp.MustCompile(`\[(\$[A-Z0-9_]+(?:, \$[A-Z0-9_]+)*)\]$`)

// helpFlags reads the OPTIONS of `cachesync <command> --help`, keyed like
// readmeFlags.
func helpFlags(t *testing.T, command string) map[string]flagDoc {
	t.Helper()
	var args []string
	if command != "" {
		args = []string{command}
	}
	flags := map[string]flagDoc{}
	in := false
	for line := range strings.Lines(cachesyncHelp(t, args...)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasSuffix(line, "OPTIONS:"):
			in = true
		case in && strings.HasPrefix(line, "-"):
			spec, _, _ := strings.Cut(line, "  ")
			var names []string
			for name := range strings.SplitSeq(spec, ", ") {
				names = append(names, strings.Fields(name)[0])
			}
			env := ""
			if m := helpEnv.FindStringSubmatch(line); m != nil {
				env = strings.ReplaceAll(m[1], "$", "")
			}
			flags[names[0]] = flagDoc{strings.Join(names, ", "), env}
		case in && line == "":
			in = false
		}
	}
	if len(flags) == 0 {
		t.Fatalf("cachesync %s --help lists no flags", command)
	}
	return flags
}
