package cacheasideprom_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/cacheaside/cacheasideprom"
	"github.com/cachesync/cachesync/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestCollectorFollowsStats(t *testing.T) {
	rdb := testenv.StartRedis(t).Client(t)
	c, err := cacheaside.New(rdb, cacheaside.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(cacheasideprom.NewCollector(c, "users"))
	load := func(context.Context) (string, error) { return "v", nil }
	for range 3 {
		if _, err := cacheaside.GetOrLoad(context.Background(), c, "k", load); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP cachesync_cacheaside_hits_total Reads answered from the cache.
# TYPE cachesync_cacheaside_hits_total counter
cachesync_cacheaside_hits_total{cache="users"} 2
# HELP cachesync_cacheaside_loads_total Calls of a loader (reads from the source).
# TYPE cachesync_cacheaside_loads_total counter
cachesync_cacheaside_loads_total{cache="users"} 1
# HELP cachesync_cacheaside_misses_total Reads that found nothing usable in the cache.
# TYPE cachesync_cacheaside_misses_total counter
cachesync_cacheaside_misses_total{cache="users"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"cachesync_cacheaside_hits_total", "cachesync_cacheaside_loads_total", "cachesync_cacheaside_misses_total"); err != nil {
		t.Error(err)
	}
	// The hit verifications are one metric, split by result.
	verified := `
# HELP cachesync_cacheaside_verified_hits_total Sampled cache hits checked against the source (Options.VerifyHits): consistent within the window, or stale beyond it.
# TYPE cachesync_cacheaside_verified_hits_total counter
cachesync_cacheaside_verified_hits_total{cache="users",result="consistent"} 0
cachesync_cacheaside_verified_hits_total{cache="users",result="stale"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(verified), "cachesync_cacheaside_verified_hits_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != reflect.TypeFor[cacheaside.Stats]().NumField() {
		t.Errorf("%d metrics (%v), want one per counter of cacheaside.Stats", n, err)
	}
}
