package writer_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/writer"
)

// TestMarkersWithAHungReplica advances the applied position on a Redis
// Cluster while a replica hangs. Replicas run no scripts, so they must not
// be waited for: go-redis's cluster SCRIPT LOAD goes to every replica too,
// and used before each advance, it stopped every confirm until the cluster
// gave the replica up.
func TestMarkersWithAHungReplica(t *testing.T) {
	t.Parallel()
	// A node timeout longer than go-redis's read timeout, so that the
	// replica stays in the clients' topology while an attempt reaches it.
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{NodeTimeout: 5 * time.Second})
	client := cluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	state := writer.NewPositions(client)
	const slot = "hung"
	// Written whatever the cache holds: no marker is known yet.
	if swapped, _, err := state.Advance(ctx, slot, writer.Position{}, 0x100); err != nil || !swapped { // replicas sync
		t.Fatalf("first Advance: swapped %v, %v", swapped, err)
	}
	cluster.AwaitReplicasListed(t)
	replica := cluster.Replicas(t)[0].Addr
	cluster.PauseNode(t, replica)
	t.Cleanup(func() { cluster.ResumeNode(t, replica) })

	from, err := state.Applied(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	for to := from.LSN + 1; to <= 0x103; to++ {
		swapped, cur, err := state.Advance(ctx, slot, from, to)
		if err != nil || !swapped {
			t.Fatalf("Advance %s → %s with replica %s hung: swapped %v, %v", from.LSN, to, replica, swapped, err)
		}
		from = cur
	}
	got, err := state.Applied(ctx, slot)
	if err != nil || !got.OK || got.LSN != from.LSN {
		t.Fatalf("Applied = %s, %v, %v; want %s", got.LSN, got.OK, err, from.LSN)
	}
}

// TestMarkerSlots: every master holds a marker, whatever its ranges; the
// fixed slots of earlier versions stay, so an upgrade finds its markers.
func TestMarkerSlots(t *testing.T) {
	t.Parallel()
	fixed := writer.MarkerSlots(nil)
	if len(fixed) != writer.ClusterMarkers || fixed[0] != 0 || fixed[1] != keyspace.SlotCount/writer.ClusterMarkers {
		t.Fatalf("fixed slots %v", fixed)
	}
	tests := []struct {
		name    string
		masters [][][2]int
		extra   []int // beyond the fixed slots
	}{
		{"three even masters", [][][2]int{{{0, 5460}}, {{5461, 10922}}, {{10923, 16383}}}, nil},
		{"a master between two fixed slots", [][][2]int{{{0, 99}, {200, 16383}}, {{100, 199}}}, []int{100}},
		{"fragmented ranges", [][][2]int{{{0, 1000}, {1100, 16383}}, {{1025, 1099}, {1001, 1023}}}, []int{1001}},
		{"a range ending on a fixed slot", [][][2]int{{{0, 1023}, {1025, 16383}}, {{1024, 1024}}}, nil},
		{"one slot each, 20 masters", func() (m [][][2]int) {
			for s := range 20 {
				m = append(m, [][2]int{{s + 1, s + 1}})
			}
			return m
		}(), []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := writer.MarkerSlots(tt.masters)
			want := append(slices.Clone(fixed), tt.extra...)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("MarkerSlots = %v, want %v", got, want)
			}
			for _, ranges := range tt.masters {
				if !slices.ContainsFunc(got, func(s int) bool {
					return slices.ContainsFunc(ranges, func(r [2]int) bool { return r[0] <= s && s <= r[1] })
				}) {
					t.Errorf("master with ranges %v holds no marker", ranges)
				}
			}
		})
	}
}

// The partition trees record tells "none recorded" (a new cache, or one
// written by an older version: nothing to compare with) from "no partitioned
// rule table", and an unreadable record counts as none.
func TestPartitionsRecord(t *testing.T) {
	t.Parallel()
	client := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	state := writer.NewPositions(client)
	const slot = "s"
	check := func(what string, want map[string]string, wantOK bool) {
		t.Helper()
		got, ok, err := state.Partitions(ctx, slot)
		if err != nil || ok != wantOK || !maps.Equal(got, want) {
			t.Errorf("%s: Partitions = %v, %v, %v; want %v, %v", what, got, ok, err, want, wantOK)
		}
	}
	check("nothing recorded", nil, false)
	if err := state.SetPartitions(ctx, slot, nil); err != nil {
		t.Fatal(err)
	}
	check("no partitioned table", map[string]string{}, true)
	trees := map[string]string{"public.events": "abc", `my.app.Events`: "def"}
	if err := state.SetPartitions(ctx, slot, trees); err != nil {
		t.Fatal(err)
	}
	check("two trees", trees, true)
	if err := client.Set(ctx, writer.PartitionsKey(slot), "not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	check("unreadable", nil, false)
	if err := state.SetPartitions(ctx, slot, trees); err != nil {
		t.Fatal(err)
	}
	if err := state.Forget(ctx, slot); err != nil {
		t.Fatal(err)
	}
	check("after teardown", nil, false)
}

// TestPositionsRetry: a bookkeeping command is retried until it succeeds,
// and no further once the fence refuses or the context ends.
func TestPositionsRetry(t *testing.T) {
	t.Parallel()
	state := writer.NewPositions(testenv.StartRedis(t).Client(t))
	ctx := context.Background()
	failing := errors.New("refused")
	fenced := errors.New("fenced off")

	calls := 0
	err := state.Retry(ctx, func() error { return nil }, func() error {
		if calls++; calls < 3 {
			return failing
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("succeeding on the third attempt: err %v after %d calls; want nil after 3", err, calls)
	}

	calls = 0
	err = state.Retry(ctx, func() error {
		if calls == 2 {
			return fenced
		}
		return nil
	}, func() error { calls++; return failing })
	if !errors.Is(err, fenced) || calls != 2 {
		t.Errorf("fenced after two attempts: err %v after %d calls; want %v after 2", err, calls, fenced)
	}

	cctx, cancel := context.WithCancel(ctx)
	calls = 0
	err = state.Retry(cctx, func() error { return nil }, func() error { calls++; cancel(); return failing })
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("context ended: err %v after %d calls; want %v after 1", err, calls, context.Canceled)
	}
}
