package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/cachesync/cachesync/keyspace"
	cswriter "github.com/cachesync/cachesync/writer"
)

// TestClusterMarkerOnEveryMaster: after resharding, one master owns only
// slots that hold none of the fixed applied-position markers (0, 1024, …).
// It acknowledges invalidations its replica never receives, then dies, and
// the replica is promoted without them. The daemon must have placed a
// marker on that master's ranges, notice the shard went back and heal it.
func TestClusterMarkerOnEveryMaster(t *testing.T) {
	e, cluster := setupCluster(t)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)
	// The last master keeps only its slots above the last fixed marker:
	// reshard takes a source's lowest slots first.
	masters := cluster.Masters(t)
	last := masters[len(masters)-1]
	const lastFixed = keyspace.SlotCount - keyspace.SlotCount/cswriter.ClusterMarkers
	cluster.MigrateSlots(t, last.Addr, masters[0].Addr, lastFixed+1-last.Slots[0].First)
	var master string
	for _, m := range cluster.Masters(t) {
		if m.ID == last.ID {
			master = m.Addr
			for s := range cswriter.MarkerSlots(nil) {
				if m.HasSlot(s * keyspace.SlotCount / cswriter.ClusterMarkers) {
					t.Fatalf("master %s still owns a fixed marker slot: %v", m.Addr, m.Slots)
				}
			}
			t.Logf("master %s now owns %v", m.Addr, m.Slots)
		}
	}
	if master == "" {
		t.Fatalf("master %s is gone after resharding", last.Addr)
	}
	var replica string
	for _, r := range cluster.Replicas(t) {
		if r.MasterID == last.ID {
			replica = r.Addr
		}
	}
	if replica == "" {
		t.Fatalf("no replica of %s", master)
	}
	// The daemon places a marker on the master's lowest slot once it read
	// the new topology. Without one, the test goes on to show what is lost.
	marker := cswriter.MarkerKey(e.slot, lastFixed+1)
	for deadline := time.Now().Add(15 * time.Second); !e.exists(marker); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("no applied-position marker on %s (%s) 15s after resharding", master, marker)
			break
		}
	}
	e.quiesce(d)

	var onShard []int64
	for id := int64(1); id <= faultUsers && len(onShard) < 10; id++ {
		if cluster.MasterOf(t, fmt.Sprintf("user:%d", id)).Addr == master {
			onShard = append(onShard, id)
		}
	}
	if len(onShard) == 0 {
		t.Fatalf("no user key on %s", master)
	}
	e.loseShardWrites(d, cluster, master, replica, onShard)
	// The promoted replica still has the old names cached: unless a
	// marker on this shard went back with them, they stay stale.
	e.expectHealed(d)
}
