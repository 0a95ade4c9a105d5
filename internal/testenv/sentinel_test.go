package testenv_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

func TestSentinel(t *testing.T) {
	t.Parallel()

	s := testenv.StartSentinel(t, testenv.SentinelOptions{})
	ctx := t.Context()
	if s.MasterName() != "cachesync" {
		t.Errorf("MasterName() = %q, want the default cachesync", s.MasterName())
	}
	sentinels, nodes := s.SentinelAddrs(), s.Addrs()
	if len(sentinels) != 3 || len(nodes) != 2 {
		t.Fatalf("SentinelAddrs() = %v, Addrs() = %v: want 3 sentinels and 2 data nodes", sentinels, nodes)
	}
	for _, addr := range append(slices.Clone(sentinels), nodes...) {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("address %q, want a loopback address", addr)
		}
	}
	oldMaster := s.Master(t)
	if oldMaster != nodes[0] {
		t.Fatalf("Master() = %s, want the first data node %s", oldMaster, nodes[0])
	}
	replica := nodes[1]

	client := s.Client(t)
	const keys = 100
	for i := range keys {
		if err := client.Set(ctx, fmt.Sprintf("key:%d", i), fmt.Sprint(i), 0).Err(); err != nil {
			t.Fatalf("SET key:%d: %v", i, err)
		}
	}
	if n, err := client.Wait(ctx, 1, time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 1000 = %d, %v; want 1 replica", n, err)
	}
	if got := nodeInfo(t, replica, "role"); got != "slave" {
		t.Errorf("replica %s: role:%s, want slave", replica, got)
	}

	newMaster := s.KillMaster(t)
	if newMaster != replica {
		t.Errorf("KillMaster promoted %s, want the replica %s", newMaster, replica)
	}
	if got := s.Master(t); got != newMaster {
		t.Errorf("after KillMaster, Master() = %s, want %s", got, newMaster)
	}
	if got := nodeInfo(t, newMaster, "role"); got != "master" {
		t.Errorf("new primary %s: role:%s, want master", newMaster, got)
	}
	// The client that wrote to the old primary follows the switch.
	testenv.Eventually(t, 10*time.Second, "the failover client writes after the failover", succeeds(func(ctx context.Context) error {
		return client.Set(ctx, "after", "failover", 0).Err()
	}))
	for i := range keys {
		key := fmt.Sprintf("key:%d", i)
		if got, err := client.Get(ctx, key).Result(); err != nil || got != fmt.Sprint(i) {
			t.Fatalf("GET %s after failover = %q, %v; want %d", key, got, err, i)
		}
	}
	if got, err := nodeClient(t, newMaster).Get(ctx, "after").Result(); err != nil || got != "failover" {
		t.Errorf("GET after on the new primary %s = %q, %v; want failover", newMaster, got, err)
	}

	s.RestartNode(t, oldMaster)
	if got := nodeInfo(t, oldMaster, "role"); got != "slave" {
		t.Errorf("restarted old primary %s: role:%s, want slave", oldMaster, got)
	}
	if got := nodeInfo(t, oldMaster, "master_port"); !strings.HasSuffix(newMaster, ":"+got) {
		t.Errorf("restarted old primary %s replicates port %s, want %s", oldMaster, got, newMaster)
	}
	if got, err := nodeClient(t, oldMaster).Get(ctx, "after").Result(); err != nil || got != "failover" {
		t.Errorf("GET after on the restarted %s = %q, %v; want failover (synced from the new primary)", oldMaster, got, err)
	}
	if got := s.Master(t); got != newMaster {
		t.Errorf("after RestartNode, Master() = %s, want still %s", got, newMaster)
	}
	if err := client.Set(ctx, "after", "restart", 0).Err(); err != nil {
		t.Errorf("SET after RestartNode: %v", err)
	}
}

// nodeInfo returns a field of INFO replication on a node.
func nodeInfo(t *testing.T, addr, field string) string {
	t.Helper()
	info, err := nodeClient(t, addr).Info(t.Context(), "replication").Result()
	if err != nil {
		t.Fatalf("INFO replication on %s: %v", addr, err)
	}
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v
		}
	}
	t.Fatalf("INFO replication on %s has no %s:\n%s", addr, field, info)
	return ""
}
