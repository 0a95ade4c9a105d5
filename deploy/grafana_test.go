package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/cacheaside/cacheasideprom"
)

const dashboardFile = "grafana/cachesync-dashboard.json"

// cacheasidePrefix names the metrics of the cacheaside client, exported by
// the applications that use it rather than by cachesync run.
const cacheasidePrefix = "cachesync_cacheaside_"

type dashboard struct {
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// selector is a metric name with its label matchers, if any, in PromQL.
var selector = regexp.MustCompile(`\b((?:cachesync|process|go)_[a-z0-9_]+)\b(\{[^}]*\})?`)

// testGrafana checks the dashboard: every query of every panel is filtered by
// the dashboard's job variable (cachesync's, or the applications' for the
// cacheaside panels), and every metric of the cacheaside client has a panel
// (internal/metrics checks the daemon's own metrics).
func testGrafana(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, v := range []string{"job", "instance", "cacheaside_job", "cache"} {
		if !slices.Contains(vars, v) {
			t.Errorf("%s: no $%s variable (it has %v)", dashboardFile, v, vars)
		}
	}

	used := map[string]bool{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			found := selector.FindAllStringSubmatch(tg.Expr, -1)
			if len(found) == 0 {
				t.Errorf("panel %q: no metric in %q", p.Title, tg.Expr)
			}
			for _, m := range found {
				name, matchers := m[1], m[2]
				used[name] = true
				want := []string{`job=~"$job"`, `instance=~"$instance"`}
				if strings.HasPrefix(name, cacheasidePrefix) {
					want = []string{`job=~"$cacheaside_job"`, `cache=~"$cache"`}
				}
				for _, w := range want {
					if !strings.Contains(matchers, w) {
						t.Errorf("panel %q: %s%s is not filtered by %s", p.Title, name, matchers, w)
					}
				}
			}
		}
	}

	// Every counter the cacheaside client exports, and only those.
	client, err := cacheaside.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), cacheaside.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(cacheasideprom.NewCollector(client, "app"))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, f := range families {
		registered[f.GetName()] = true
		if !used[f.GetName()] {
			t.Errorf("%s (cacheasideprom) has no panel on the dashboard", f.GetName())
		}
	}
	if len(registered) == 0 {
		t.Fatal("cacheasideprom registered no metric")
	}
	for name := range used {
		if strings.HasPrefix(name, cacheasidePrefix) && !registered[name] {
			t.Errorf("the dashboard queries %s, which cacheasideprom does not export", name)
		}
	}
}
