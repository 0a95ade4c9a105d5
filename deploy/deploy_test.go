// Package deploy_test checks the deployment files in this directory as far as
// possible without Docker or a Kubernetes cluster: every YAML file parses, the
// files agree with each other and with the CLI (flags, environment variables,
// ports, paths), the Kubernetes rules ConfigMap is the repository's rules.hcl,
// the compose database schema satisfies `cachesync validate` and `setup` on a
// real PostgreSQL, and the systemd unit passes systemd-analyze when it is
// installed.
//
// TestDeploy (this file) runs one subtest per artefact, each in its own file:
// yaml_test.go, dockerfile_test.go, dockerignore_test.go, compose_test.go,
// compose_database_test.go (init.sql and two instances of the image's CMD),
// kubernetes_test.go, grafana_test.go and systemd_test.go. helpers_test.go
// holds what they share: the built CLI and its help, and the YAML decoding
// helpers.
package deploy_test

import (
	"testing"
	"time"

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
	t.Run("grafana", testGrafana)
	t.Run("systemd", func(t *testing.T) { testSystemd(t, c) })
	t.Run("systemd-analyze", func(t *testing.T) { testSystemdAnalyze(t, c) })
}
