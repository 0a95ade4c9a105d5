package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/cacheaside/cacheasideprom"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
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
// cacheaside panels) and queries metrics that exist, and every metric of the
// daemon and of the cacheaside client is on it.
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

	// Every metric queried exists, and every cachesync_* metric is on the
	// dashboard: the daemon's and the cacheaside client's.
	daemon, clients := daemonMetrics(t), gather(t, cacheasideMetrics(t))
	for name := range used {
		from := daemon
		if strings.HasPrefix(name, cacheasidePrefix) {
			from = clients
		}
		if !from[name] {
			t.Errorf("the dashboard queries %s, which nothing exports", name)
		}
	}
	for _, names := range []map[string]bool{daemon, clients} {
		for n := range names {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if strings.HasPrefix(n, "cachesync_") && !used[n] && !used[base+"_bucket"] && !used[base] {
				t.Errorf("%s is not on the dashboard", n)
			}
		}
	}
}

// daemonMetrics returns the names cachesync run exports, with every labelled
// series touched once so that a gather lists every name, histograms with
// their _bucket, _sum and _count series.
func daemonMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	m.Registry().MustRegister(metrics.WriterCollector(func() writer.Stats { return writer.Stats{} }))
	m.Change(&wal.Relation{Namespace: "public", Name: "users"}, wal.Insert)
	m.Flush("user", "truncate")
	m.Fallback("user", "tag_wrong_type")
	m.SlotWALStatus("reserved")
	m.Applied(100, time.Now(), time.Now(), time.Now())
	m.GroupOperations.Observe(1)
	m.BackfillStarted("product", time.Now(), 1)
	m.WriteBehindObserver().Batch("counters", 1, 1, 0, 0, time.Millisecond)
	c := m.Consistency()
	c.Check("product", "consistent")
	c.Nines("product", 9, true)
	c.Dropped()
	c.Pending(0)
	m.ShadowObserver([]string{"product"}).Unchecked("product", "tracking_cap")
	m.Registry().MustRegister(metrics.WriteBehindCollector(testenv.Redis(t).Client(t), []*config.WriteBehind{{Name: "counters", Stream: "wb:counters"}}))
	return gather(t, m.Registry())
}

// cacheasideMetrics returns a registry with the cacheaside client's
// collector, as an application registers it.
func cacheasideMetrics(t *testing.T) *prometheus.Registry {
	t.Helper()
	client, err := cacheaside.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), cacheaside.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(cacheasideprom.NewCollector(client, "app"))
	return reg
}

func gather(t *testing.T, g prometheus.Gatherer) map[string]bool {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("no metric registered")
	}
	return names
}
