package daemon_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
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
	state := daemon.RedisCacheState{Client: client}
	const slot = "hung"
	if err := state.Set(ctx, slot, 0x100); err != nil { // replicas sync
		t.Fatal(err)
	}
	cluster.AwaitReplicasListed(t)
	replica := cluster.Replicas(t)[0].Addr
	cluster.PauseNode(t, replica)
	t.Cleanup(func() { cluster.ResumeNode(t, replica) })

	from := wal.LSN(0x100)
	for to := from + 1; to <= 0x103; to++ {
		swapped, _, _, err := state.Advance(ctx, slot, from, true, to)
		if err != nil || !swapped {
			t.Fatalf("Advance %s → %s with replica %s hung: swapped %v, %v", from, to, replica, swapped, err)
		}
		from = to
	}
	got, ok, err := state.Applied(ctx, slot)
	if err != nil || !ok || got != from {
		t.Fatalf("Applied = %s, %v, %v; want %s", got, ok, err, from)
	}
}

// The partition trees record tells "none recorded" (a new cache, or one
// written by an older version: nothing to compare with) from "no partitioned
// rule table", and an unreadable record counts as none.
func TestPartitionsRecord(t *testing.T) {
	t.Parallel()
	client := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	state := daemon.RedisCacheState{Client: client}
	const slot = "s"
	check := func(what string, want replication.PartitionTrees, wantOK bool) {
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
	check("no partitioned table", replication.PartitionTrees{}, true)
	trees := replication.PartitionTrees{"public.events": "abc", `my.app.Events`: "def"}
	if err := state.SetPartitions(ctx, slot, trees); err != nil {
		t.Fatal(err)
	}
	check("two trees", trees, true)
	if err := client.Set(ctx, daemon.PartitionsKey(slot), "not json", 0).Err(); err != nil {
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
