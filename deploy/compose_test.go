package deploy_test

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

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
