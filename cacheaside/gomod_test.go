package cacheaside_test

import (
	"go/version"
	"os/exec"
	"strings"
	"testing"
)

// oldestGo is the oldest Go release an application importing cacheaside may
// build with: the previous release. Raise it only when the current one
// becomes the previous one.
const oldestGo = "go1.25.0"

// TestImportableOnOldestGo: an application on oldestGo can import this
// module only if neither its go line nor that of any module in its graph
// asks for a newer Go (the go command refuses to build, or with
// GOTOOLCHAIN=auto fetches a newer toolchain). A dependency upgrade that
// raises a go line fails here, not in a user's build.
func TestImportableOnOldestGo(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Path}}{{with .Version}}@{{.}}{{end}} {{.GoVersion}}", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		module, goLine, _ := strings.Cut(strings.TrimSpace(line), " ")
		if goLine != "" && version.Compare("go"+goLine, oldestGo) > 0 {
			t.Errorf("%s says go %s, newer than %s: applications on %s could not import cacheaside; "+
				"keep the module (or pick a version of the dependency) whose go line is at most %s",
				module, goLine, oldestGo, oldestGo, strings.TrimPrefix(oldestGo, "go"))
		}
	}
}
