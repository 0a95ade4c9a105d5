package mapping_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestMappingAndConfigArePure fails when mapping or config depend, even
// transitively, on a Redis or PostgreSQL client: they turn rules and
// decoded changes into effects and must stay testable without either
// (issue 13). It names the import chain that pulls the client in; cut it
// by moving the code to the package that owns Redis (writer,
// keyspace/redisops) or PostgreSQL (replication).
func TestMappingAndConfigArePure(t *testing.T) {
	t.Parallel()
	const module = "github.com/cachesync/cachesync/"
	isForbidden := func(path string) bool {
		return strings.HasPrefix(path, "github.com/redis/") || strings.HasPrefix(path, "github.com/jackc/")
	}
	for _, pkg := range []string{module + "mapping", module + "config"} {
		out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}:{{join .Imports " "}}`, pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		imports := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			path, deps, _ := strings.Cut(line, ":")
			imports[path] = strings.Fields(deps)
		}
		if _, ok := imports[pkg]; !ok {
			t.Fatalf("go list -deps %s does not list %s itself:\n%s", pkg, pkg, out)
		}
		// Report each edge from an allowed package into a client, with the
		// chain that leads to it, rather than every package of the client.
		var edges []string
		for p, deps := range imports {
			if isForbidden(p) {
				continue
			}
			for _, d := range deps {
				if isForbidden(d) {
					edges = append(edges, strings.Join(append(importChain(imports, pkg, p), d), " -> "))
				}
			}
		}
		slices.Sort(edges)
		for _, e := range edges {
			t.Errorf("%s must not depend on a Redis or PostgreSQL client: %s", pkg, e)
		}
	}
}

// importChain returns a shortest import path from "from" to "to", both
// included.
func importChain(imports map[string][]string, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append([]string{p}, chain...)
			}
			return chain
		}
		for _, d := range imports[p] {
			if _, ok := prev[d]; !ok {
				prev[d] = p
				queue = append(queue, d)
			}
		}
	}
	return []string{from, "…", to}
}
