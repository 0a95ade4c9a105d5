package e2e

// Redis Cluster and Sentinel: the same guarantees when the cache is sharded
// or fails over, against real servers started by testenv (3 masters with a
// replica each; a primary, a replica and three sentinels).

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/wal"
)

func setupCluster(t *testing.T) (*env, *testenv.RedisCluster) {
	t.Helper()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{})
	block := fmt.Sprintf("redis {\n  mode = \"cluster\"\n  addresses = [%q]\n}\n", cluster.Addrs()[0])
	e := setupWith(t, schema, block, rules, func(e *env) { e.rdb, e.redisEnv = cluster.Client(t), "REDIS_URL=" })
	return e, cluster
}

func setupSentinel(t *testing.T) (*env, *testenv.Sentinel) {
	t.Helper()
	s := testenv.StartSentinel(t, testenv.SentinelOptions{})
	addrs := make([]string, 0, 3)
	for _, a := range s.SentinelAddrs() {
		addrs = append(addrs, fmt.Sprintf("%q", a))
	}
	block := fmt.Sprintf("redis {\n  mode = \"sentinel\"\n  master_name = %q\n  addresses = [%s]\n}\n", s.MasterName(), strings.Join(addrs, ", "))
	e := setupWith(t, schema, block, rules, func(e *env) { e.rdb, e.redisEnv = s.Client(t), "REDIS_URL=" })
	return e, s
}

// workloadWith runs the fault workload in the background and calls at(i)
// after statement i committed (from the workload's goroutine); wait returns
// once it is done.
func (e *env) workloadWith(seed uint64, at func(i int)) (wait func()) {
	e.t.Helper()
	ops := faultWorkload(seed, faultStatements)
	var wg sync.WaitGroup
	var err error
	wg.Go(func() {
		_, err = runWorkload(e.ctx, e.dbURL, ops, 30*time.Second, at)
	})
	return func() {
		wg.Wait()
		if err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestClusterReshardAndFailover streams into a Redis Cluster while slots
// migrate between masters and while a master dies and its replica takes
// over, then checks every cached key against PostgreSQL.
func TestClusterReshardAndFailover(t *testing.T) {
	e, cluster := setupCluster(t)
	d := e.start()
	e.waitStreaming(d)
	names := e.seed(d)
	masters := cluster.Masters(t)

	// One topology change at a time (redis-cli refuses to reshard a
	// cluster that is failing over): the migration starts a quarter into
	// the workload, the failover at half or once the migration is done.
	var events sync.WaitGroup
	half := make(chan struct{})
	wait := e.workloadWith(7, func(i int) {
		switch i {
		case faultStatements / 4:
			events.Go(func() {
				cluster.MigrateSlots(t, masters[0].Addr, masters[1].Addr, 800)
				<-half
				// The master that holds user:1 and some applied markers dies.
				cluster.Failover(t, cluster.MasterOf(t, "user:1").Addr)
			})
		case faultStatements / 2:
			close(half)
		}
	})
	wait()
	events.Wait()
	e.quiesce(d)
	e.logAtStake(names)
	e.checkCache()
	if d.exited() {
		t.Fatalf("the daemon exited: %v", d.err)
	}
	if got := cluster.Masters(t); len(got) != 3 || got[0].Slots[0] == masters[0].Slots[0] && got[0].SlotCount() == masters[0].SlotCount() {
		t.Errorf("the topology did not change: %+v", got)
	}
	e.statusReadsCache()
}

// statusReadsCache checks that status finds the cache through the rules
// file's redis block and reads the applied position, as far as the slot
// (status reads the slot first, and a position is applied before it is
// confirmed).
func (e *env) statusReadsCache() {
	e.t.Helper()
	out, code := e.cli("status", "--json")
	var st struct {
		Cache struct {
			AppliedLSN *wal.LSN `json:"applied_lsn"`
			Error      string   `json:"error"`
		} `json:"cache"`
		Info struct{ ConfirmedFlushLSN wal.LSN } `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		e.t.Fatalf("status --json: exit %d, %v\n%s", code, err, out)
	}
	if confirmed := st.Info.ConfirmedFlushLSN; confirmed == 0 || st.Cache.AppliedLSN == nil || *st.Cache.AppliedLSN < confirmed {
		e.t.Errorf("status does not report the cache's applied position as far as the slot's %s (%q):\n%s", confirmed, st.Cache.Error, out)
	}
}

// TestClusterLostAcknowledgedWrites: a master acknowledges invalidations its
// replica never receives (the replica is paused), then dies; the replica is
// promoted without them. The daemon must notice the shard went back (its
// applied marker is older) and replay the journal into it.
func TestClusterLostAcknowledgedWrites(t *testing.T) {
	e, cluster := setupCluster(t)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)
	master := cluster.MasterOf(t, "user:1")
	var replica string
	for _, r := range cluster.Replicas(t) {
		if r.MasterID == master.ID {
			replica = r.Addr
		}
	}
	if replica == "" {
		t.Fatalf("no replica of %s", master.Addr)
	}
	// Users cached on this shard, stale-able.
	var onShard []int64
	for id := int64(1); id <= faultUsers && len(onShard) < 20; id++ {
		if cluster.MasterOf(t, fmt.Sprintf("user:%d", id)).Addr == master.Addr {
			onShard = append(onShard, id)
		}
	}
	e.loseShardWrites(d, cluster, master.Addr, replica, onShard)
	// The promoted replica still has the old names cached: unless the
	// daemon notices, they stay stale.
	e.expectHealed(d)
}

// loseShardWrites makes a shard lose acknowledged invalidations: its replica
// is cut off, the users onShard are renamed (their keys deleted on the
// master only), the master is killed and the stale replica promoted.
func (e *env) loseShardWrites(d *daemon, cluster *testenv.RedisCluster, master, replica string, onShard []int64) {
	t := e.t
	cutReplica(t, master, func() { cluster.PauseNode(t, replica) })
	for _, id := range onShard {
		e.exec(`UPDATE users SET name = name || '+' WHERE id = $1`, id)
	}
	e.quiesce(d)
	// The invalidations reached the master, and only the master.
	e.gone(userKeys(onShard)...)
	cluster.KillNode(t, master)
	cluster.ResumeNode(t, replica)
	testenv.Eventually(t, 60*time.Second, "the replica promoted", func() (bool, string) {
		for _, m := range cluster.Masters(t) {
			if m.Addr == replica {
				return true, ""
			}
		}
		return false, "not a master yet"
	})
}

// expectHealed waits until no cached key differs from PostgreSQL after a
// failover lost acknowledged writes, and checks the daemon said why.
func (e *env) expectHealed(d *daemon) {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, "the lost invalidations healed", func() (bool, string) {
		m, checked, err := e.compareCache()
		if err != nil {
			return false, err.Error()
		}
		return len(m) == 0, fmt.Sprintf("%d of %d stale: %v", len(m), checked, m)
	})
	// The heal logs its REDIS RESET line once the replay that fixed the
	// keys returned, which can be after the cache was seen healed.
	testenv.Eventually(e.t, 30*time.Second, "the daemon reports the lost writes (REDIS RESET)", func() (bool, string) {
		return strings.Contains(d.log.String(), "REDIS RESET"), "no REDIS RESET line yet"
	})
	e.quiesce(d)
	e.checkCache()
}

// cutReplica pauses a master's replica (pause) and then closes its
// replication link on the master, so that the writes that follow are
// acknowledged by the master alone and reach the replica neither through
// the link nor from a socket buffer when it resumes.
func cutReplica(t *testing.T, masterAddr string, pause func()) {
	t.Helper()
	pause()
	c := redis.NewClient(&redis.Options{Addr: masterAddr})
	defer c.Close()
	n, err := c.ClientKillByFilter(context.Background(), "TYPE", "replica").Result()
	if err != nil || n == 0 {
		t.Fatalf("CLIENT KILL TYPE replica on %s: %d, %v", masterAddr, n, err)
	}
}

func userKeys(ids []int64) []string {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = fmt.Sprintf("user:%d", id)
	}
	return keys
}

// TestSentinelFailover streams into a Sentinel-managed primary that dies
// during the workload; the replica is promoted and the daemon follows it.
func TestSentinelFailover(t *testing.T) {
	e, s := setupSentinel(t)
	d := e.start()
	e.waitStreaming(d)
	names := e.seed(d)
	var events sync.WaitGroup
	wait := e.workloadWith(11, func(i int) {
		if i == faultStatements/2 {
			events.Go(func() { s.KillMaster(t) })
		}
	})
	wait()
	events.Wait()
	e.quiesce(d)
	e.logAtStake(names)
	e.checkCache()
	e.statusReadsCache()
}

// TestSentinelLostAcknowledgedWrites: the primary acknowledges invalidations
// its paused replica never receives, then dies; the sentinels promote the
// replica without them, and the daemon replays them.
func TestSentinelLostAcknowledgedWrites(t *testing.T) {
	e, s := setupSentinel(t)
	d := e.start()
	e.waitStreaming(d)
	e.seed(d)
	master := s.Master(t)
	var replica string
	for _, a := range s.Addrs() {
		if a != master {
			replica = a
		}
	}
	cutReplica(t, master, func() { s.PauseNode(t, replica) })
	e.exec(`UPDATE users SET name = name || '+' WHERE id <= 20`)
	e.quiesce(d)
	e.gone(userKeys([]int64{1, 2, 3})...)
	// Kill the primary, then let the replica run: it cannot resync from a
	// dead primary, and the sentinels promote it without the writes.
	var killed sync.WaitGroup
	killed.Go(func() { s.KillMaster(t) })
	testenv.Eventually(t, 30*time.Second, "the primary gone", func() (bool, string) {
		c := redis.NewClient(&redis.Options{Addr: master, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		defer c.Close()
		err := c.Ping(context.Background()).Err()
		return err != nil, "still answering"
	})
	s.ResumeNode(t, replica)
	killed.Wait()
	e.expectHealed(d)
}
