package testenv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
)

const (
	// clusterBusOffset is how far above its client port a cluster node listens for the
	// cluster bus (redis-server's default cluster-port).
	clusterBusOffset = 10000
	// clusterTimeout bounds the waits for the cluster to settle: after creation,
	// failover, restart or resharding.
	clusterTimeout = 60 * time.Second
	// clusterCLITimeout bounds one redis-cli --cluster command.
	clusterCLITimeout = 2 * time.Minute
)

// ClusterOptions configures a private Redis Cluster started by StartRedisCluster or
// NewRedisCluster.
type ClusterOptions struct {
	// Masters is the number of masters; 0 means 3, the fewest redis-cli --cluster
	// create accepts.
	Masters int
	// ReplicasPerMaster is the number of replicas of each master; 0 means 1, and -1
	// none.
	ReplicasPerMaster int
	// NodeTimeout is cluster-node-timeout: how long a node may not answer before it is
	// considered failing, which also paces failover; 0 means 1s. Redis counts it in
	// milliseconds.
	NodeTimeout time.Duration
}

// RedisCluster is a private Redis Cluster: masters and replicas, each a redis-server
// in cluster mode on a loopback port, in a temporary directory of its own. Nodes keep
// no data on disk (no RDB, no AOF), only their cluster configuration (nodes.conf), so
// a restarted node rejoins the cluster empty.
type RedisCluster struct {
	nodes       []*RedisServer // in start order; their ports are random
	byAddr      map[string]*RedisServer
	admin       map[string]*redis.Client // per node, for testenv's own commands
	cli         string                   // redis-cli
	nodeTimeout time.Duration

	closeAdmin sync.Once
}

// ClusterNode is a node of a RedisCluster as CLUSTER NODES describes it.
type ClusterNode struct {
	ID       string      // the node's 40-character cluster ID
	Addr     string      // 127.0.0.1:PORT
	MasterID string      // a replica's master; "" for a master
	Slots    []SlotRange // a master's hash slots, ascending; none for a replica
}

// SlotRange is the hash slots First through Last, both included.
type SlotRange struct {
	First, Last int
}

// HasSlot reports whether the node serves the hash slot.
func (n ClusterNode) HasSlot(slot int) bool {
	for _, r := range n.Slots {
		if r.First <= slot && slot <= r.Last {
			return true
		}
	}
	return false
}

// SlotCount returns the number of hash slots the node serves.
func (n ClusterNode) SlotCount() int {
	count := 0
	for _, r := range n.Slots {
		count += r.Last - r.First + 1
	}
	return count
}

// StartRedisCluster starts a private Redis Cluster for this test, created with
// redis-cli --cluster create, and waits until every node reports cluster_state:ok,
// agrees on who serves every slot, and every replica is in sync with its master. The
// nodes are stopped at cleanup.
func StartRedisCluster(t testing.TB, opts ClusterOptions) *RedisCluster {
	t.Helper()
	c, err := NewRedisCluster(opts, t.Logf)
	return forTest(t, c, err)
}

// NewRedisCluster is StartRedisCluster for code without a testing.TB, such as a
// benchmark program: it starts the cluster the same way and returns an error instead
// of failing a test. logf, when not nil, gets the line that StartRedisCluster logs.
// The caller stops the cluster with Close. Each node is registered like every server
// testenv starts, so a test process's Main (or SIGINT/SIGTERM under Main) still stops
// the nodes that Close did not, and the kernel kills them if the process dies
// (parent-death signal).
//
// The error is the one StartRedisCluster fails the test with (without its "testenv: "
// prefix): a node's log tail when it exited, redis-cli's output when --cluster create
// failed, or how to install a missing redis-server or redis-cli.
func NewRedisCluster(opts ClusterOptions, logf func(format string, args ...any)) (*RedisCluster, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c, err := startRedisCluster(opts, logf)
	if err != nil {
		return nil, err // startRedisCluster already stopped what it started
	}
	return c, nil
}

// Close stops every node (SIGKILL: nodes keep nothing worth saving) and removes
// their temporary directories. It is safe to call more than once, and after some
// nodes were killed; the methods that start or restart nodes fail after it.
func (c *RedisCluster) Close() error {
	return c.shutdown()
}

// Addrs returns the addresses of all nodes, masters and replicas, including stopped ones.
func (c *RedisCluster) Addrs() []string { return addrsOf(c.nodes) }

// addrsOf returns the servers' addresses.
func addrsOf(servers []*RedisServer) []string {
	addrs := make([]string, len(servers))
	for i, n := range servers {
		addrs[i] = n.addr
	}
	return addrs
}

// Client returns a cluster client seeded with every node, closed at cleanup. It follows
// MOVED and ASK redirects, and reloads the slot map every second (go-redis's default is
// every minute): go-redis reloads it at once on a redirect, but not when a master stops
// answering, so only the periodic reload finds the replica that Failover promoted.
func (c *RedisCluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	client := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                      c.Addrs(),
		DialTimeout:                time.Second,
		ClusterStateReloadInterval: time.Second,
	})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// Masters returns the masters that the cluster considers up (not flagged fail or
// fail?), per CLUSTER NODES of a running node, ordered by their first slot; masters
// without slots come last.
func (c *RedisCluster) Masters(t testing.TB) []ClusterNode {
	t.Helper()
	var masters []ClusterNode
	for _, e := range c.mustView(t, "Masters") {
		if e.up() && e.flags["master"] {
			masters = append(masters, e.ClusterNode)
		}
	}
	slices.SortFunc(masters, func(a, b ClusterNode) int {
		if len(a.Slots) == 0 || len(b.Slots) == 0 {
			return cmp.Or(-cmp.Compare(len(a.Slots), len(b.Slots)), cmp.Compare(a.Addr, b.Addr))
		}
		return cmp.Compare(a.Slots[0].First, b.Slots[0].First)
	})
	return masters
}

// Replicas returns the replicas that the cluster considers up, per CLUSTER NODES of a
// running node, ordered by address.
func (c *RedisCluster) Replicas(t testing.TB) []ClusterNode {
	t.Helper()
	var replicas []ClusterNode
	for _, e := range c.mustView(t, "Replicas") {
		if e.up() && e.flags["slave"] {
			replicas = append(replicas, e.ClusterNode)
		}
	}
	slices.SortFunc(replicas, func(a, b ClusterNode) int { return cmp.Compare(a.Addr, b.Addr) })
	return replicas
}

// MasterOf returns the master that serves key's hash slot (keyspace.Slot).
func (c *RedisCluster) MasterOf(t testing.TB, key string) ClusterNode {
	t.Helper()
	slot := keyspace.Slot(key)
	for _, m := range c.Masters(t) {
		if m.HasSlot(slot) {
			return m
		}
	}
	t.Fatalf("testenv: RedisCluster.MasterOf(%q): no master serves slot %d", key, slot)
	return ClusterNode{}
}

// KillNode kills a node (SIGKILL) and waits until its port refuses connections. It does
// not wait for the cluster to notice: see Failover.
func (c *RedisCluster) KillNode(t testing.TB, addr string) {
	t.Helper()
	n := c.mustNode(t, "KillNode", addr)
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.stopLocked(); err != nil {
		t.Fatalf("testenv: Redis Cluster node %v", err)
	}
}

// RestartNode starts a killed node again on the same port and directory; with its
// nodes.conf it rejoins the cluster, empty (a master whose slots were failed over comes
// back as a replica of the promoted node). It waits until the cluster is ok and stable
// again, with the node in it.
func (c *RedisCluster) RestartNode(t testing.TB, addr string) {
	t.Helper()
	n := c.mustNode(t, "RestartNode", addr)
	started := time.Now()
	n.startAgain(t, "RedisCluster.RestartNode", nil)
	if err := c.await(clusterTimeout, c.stable); err != nil {
		t.Fatalf("testenv: Redis Cluster after restarting %s: %v", addr, err)
	}
	t.Logf("testenv: Redis Cluster node %s restarted and rejoined in %s", addr, durationString(time.Since(started)))
}

// Failover kills the master at masterAddr (SIGKILL) and waits until one of its
// replicas has been promoted and serves all of its slots, and the surviving nodes
// report cluster_state:ok and agree on the slots. It returns the promoted node. The
// killed node stays down; RestartNode brings it back as a replica.
func (c *RedisCluster) Failover(t testing.TB, masterAddr string) ClusterNode {
	t.Helper()
	n := c.mustNode(t, "Failover", masterAddr)
	view := c.mustView(t, "Failover")
	var (
		master   *clusterNodeEntry
		replicas = map[string]bool{}
	)
	for i, e := range view {
		if e.Addr == masterAddr {
			master = &view[i]
		}
	}
	if master == nil || !master.flags["master"] || !master.up() || len(master.Slots) == 0 {
		t.Fatalf("testenv: RedisCluster.Failover(%s): not a master serving slots (CLUSTER NODES: %v)", masterAddr, master)
	}
	for _, e := range view {
		if e.MasterID == master.ID && e.up() {
			replicas[e.ID] = true
		}
	}
	if len(replicas) == 0 {
		t.Fatalf("testenv: RedisCluster.Failover(%s): the master has no replica to promote", masterAddr)
	}

	started := time.Now()
	n.mu.Lock()
	err := n.stopLocked()
	n.mu.Unlock()
	if err != nil {
		t.Fatalf("testenv: Redis Cluster node %v", err)
	}
	var promoted ClusterNode
	err = c.await(clusterTimeout, func(ctx context.Context) error {
		if err := c.stable(ctx); err != nil {
			return err
		}
		view, err := c.view(ctx)
		if err != nil {
			return err
		}
		for _, e := range view {
			if replicas[e.ID] && e.up() && e.flags["master"] && coversAll(e.ClusterNode, master.Slots) {
				promoted = e.ClusterNode
				return nil
			}
		}
		return fmt.Errorf("no replica of %s serves its slots yet", masterAddr)
	})
	if err != nil {
		t.Fatalf("testenv: Redis Cluster failover of %s: %v", masterAddr, err)
	}
	t.Logf("testenv: Redis Cluster failover of %s to %s in %s", masterAddr, promoted.Addr, durationString(time.Since(started)))
	return promoted
}

// MigrateSlots moves n hash slots, with their keys, from the master at from to the
// master at to with redis-cli --cluster reshard, and waits until the cluster is ok and
// stable (redis-cli --cluster check passes). Clients may keep working meanwhile: they
// are redirected with ASK and MOVED.
func (c *RedisCluster) MigrateSlots(t testing.TB, from, to string, n int) {
	t.Helper()
	if n <= 0 {
		t.Fatalf("testenv: RedisCluster.MigrateSlots: n = %d, want at least one slot", n)
	}
	var src, dst *ClusterNode
	masters := c.Masters(t)
	for i, m := range masters {
		switch m.Addr {
		case from:
			src = &masters[i]
		case to:
			dst = &masters[i]
		}
	}
	if src == nil || dst == nil || from == to {
		t.Fatalf("testenv: RedisCluster.MigrateSlots(%s, %s): both must be distinct masters that are up (masters: %v)", from, to, masters)
	}
	if have := src.SlotCount(); have < n {
		t.Fatalf("testenv: RedisCluster.MigrateSlots: %s serves %d slots, fewer than %d", from, have, n)
	}

	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), clusterCLITimeout)
	defer cancel()
	out, err := c.runCLI(ctx, "--cluster", "reshard", from,
		"--cluster-from", src.ID, "--cluster-to", dst.ID,
		"--cluster-slots", strconv.Itoa(n), "--cluster-yes")
	if err != nil {
		t.Fatalf("testenv: redis-cli --cluster reshard of %d slots from %s to %s: %v\n%s", n, from, to, err, out)
	}
	reshardDone := time.Since(started)
	err = c.await(clusterTimeout, func(ctx context.Context) error {
		if err := c.stable(ctx); err != nil {
			return err
		}
		return c.check(ctx)
	})
	if err != nil {
		t.Fatalf("testenv: Redis Cluster after moving %d slots from %s to %s: %v", n, from, to, err)
	}
	t.Logf("testenv: Redis Cluster moved %d slots from %s to %s in %s (reshard %s, settle %s)", n, from, to,
		durationString(time.Since(started)), durationString(reshardDone), durationString(time.Since(started)-reshardDone))
}

// startRedisCluster starts the nodes, creates the cluster and waits until it is ready.
func startRedisCluster(opts ClusterOptions, logf func(format string, args ...any)) (_ *RedisCluster, err error) {
	masters := cmp.Or(opts.Masters, 3)
	replicas := opts.ReplicasPerMaster
	switch {
	case replicas == 0:
		replicas = 1
	case replicas == -1:
		replicas = 0
	}
	nodeTimeout := cmp.Or(opts.NodeTimeout, time.Second)
	switch {
	case masters < 3:
		return nil, fmt.Errorf("Redis Cluster: Masters = %d: redis-cli --cluster create needs at least 3", opts.Masters)
	case replicas < 0:
		return nil, fmt.Errorf("Redis Cluster: ReplicasPerMaster = %d: use 0 for one replica, -1 for none, or a positive count", opts.ReplicasPerMaster)
	case nodeTimeout < time.Millisecond:
		return nil, fmt.Errorf("Redis Cluster: NodeTimeout = %v: want at least 1ms", opts.NodeTimeout)
	}
	cli, err := redisCLIBinary()
	if err != nil {
		return nil, err
	}

	began := time.Now()
	c := &RedisCluster{
		nodes:       make([]*RedisServer, masters*(1+replicas)),
		byAddr:      map[string]*RedisServer{},
		admin:       map[string]*redis.Client{},
		cli:         cli,
		nodeTimeout: nodeTimeout,
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.shutdown())
		}
	}()
	spec := redisSpec{
		kind: "redis-cluster",
		args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(nodeTimeout.Milliseconds(), 10),
			// A master otherwise waits 5s for more replicas before it serves a full
			// sync, after creation and whenever a replica rejoins.
			"--repl-diskless-sync-delay", "0",
		},
		onFreePort: startOnFreeClusterPort,
	}
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Go(func() { c.nodes[i], errs[i] = startRedisServer(spec) })
	}
	wg.Wait()
	for _, n := range c.nodes {
		if n != nil {
			c.byAddr[n.addr] = n
			c.admin[n.addr] = adminClient(n.addr)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("Redis Cluster node: %w", err)
	}
	nodesStarted := time.Since(began)

	ctx, cancel := context.WithTimeout(context.Background(), clusterCLITimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := c.runCLI(ctx, args...); err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	created := time.Since(began)

	if err := c.await(clusterTimeout, c.stable); err != nil {
		return c, fmt.Errorf("Redis Cluster did not become ready: %w", err)
	}
	if err := c.await(clusterTimeout, c.clientWorks); err != nil {
		return c, fmt.Errorf("Redis Cluster: a cluster client cannot SET and GET: %w", err)
	}
	logf("testenv: Redis Cluster of %d masters and %d replicas started on %s in %s (nodes %s, create %s, settle %s)",
		masters, masters*replicas, strings.Join(c.Addrs(), " "), durationString(time.Since(began)),
		durationString(nodesStarted), durationString(created-nodesStarted), durationString(time.Since(began)-created))
	return c, nil
}

// shutdown stops every node and removes their directories.
func (c *RedisCluster) shutdown() error {
	c.closeAdmin.Do(func() {
		for _, client := range c.admin {
			_ = client.Close()
		}
	})
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		if n != nil {
			wg.Go(func() { errs[i] = n.shutdown() })
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startOnFreeClusterPort is startOnFreePort for a cluster node, which also listens on
// the bus port, port+10000: both must be free.
func startOnFreeClusterPort(start func(port int) error) error {
	return startOnPortOf(freeClusterPort, start)
}

// freeClusterPort returns a loopback port that, like the port 10000 above it, was free
// a moment ago.
func freeClusterPort() (int, error) {
	const tries = 100
	for range tries {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if port+clusterBusOffset > 65535 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+clusterBusOffset)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("find a free loopback port whose cluster bus port (+%d) is free too: none in %d tries", clusterBusOffset, tries)
}

// adminClient is a client of one node for testenv's polling: it never retries, so that
// every poll sees the node as it is.
func adminClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:         addr,
		MaxRetries:   -1,
		DialTimeout:  time.Second,
		ReadTimeout:  time.Second, // go-redis does not abort a read when ctx is canceled
		WriteTimeout: time.Second,
		PoolSize:     2,
	})
}

// runCLI runs redis-cli with args and returns its output.
func (c *RedisCluster) runCLI(ctx context.Context, args ...string) (string, error) {
	out, err := currentUserRunner.run(ctx, "", c.cli, args...)
	return strings.TrimSpace(string(out)), err
}

// mustNode returns the node at addr or fails the test.
func (c *RedisCluster) mustNode(t testing.TB, method, addr string) *RedisServer {
	t.Helper()
	n, ok := c.byAddr[addr]
	if !ok {
		t.Fatalf("testenv: RedisCluster.%s(%s): not a node of this cluster (nodes: %s)", method, addr, strings.Join(c.Addrs(), " "))
	}
	return n
}

// running returns the processes of the nodes that testenv has not stopped, by address.
func (c *RedisCluster) running() map[string]*process {
	procs := map[string]*process{}
	for _, n := range c.nodes {
		n.mu.Lock()
		if n.proc != nil {
			procs[n.addr] = n.proc
		}
		n.mu.Unlock()
	}
	return procs
}

// await polls check until it succeeds, failing early when a node that should be
// running exits.
func (c *RedisCluster) await(timeout time.Duration, check func(context.Context) error) error {
	procs := c.running()
	exited, stopWatching := watchExits(slices.Collect(maps.Values(procs)))
	defer stopWatching()
	err := pollUntil(timeout, exited, check)
	if errors.Is(err, errStopped) {
		for addr, p := range procs {
			if p.exited() {
				n := c.byAddr[addr]
				return fmt.Errorf("node %s exited: %v\n--- tail of %s ---\n%s", addr, p.err, n.logPath, logTail(n.logPath))
			}
		}
	}
	return err
}

// watchExits returns a channel that is closed when one of procs exits, and a function
// that ends the watch.
func watchExits(procs []*process) (<-chan struct{}, func()) {
	exited := make(chan struct{})
	quit := make(chan struct{})
	var once sync.Once
	for _, p := range procs {
		go func() { // ends when p exits or the watch ends
			select {
			case <-p.done:
				once.Do(func() { close(exited) })
			case <-quit:
			}
		}()
	}
	return exited, func() { close(quit) }
}

// view returns CLUSTER NODES as seen by a running node.
func (c *RedisCluster) view(ctx context.Context) ([]clusterNodeEntry, error) {
	var errs []error
	running := c.running()
	for _, n := range c.nodes {
		if _, ok := running[n.addr]; !ok {
			continue
		}
		text, err := c.admin[n.addr].ClusterNodes(ctx).Result()
		if err == nil {
			return parseClusterNodes(text)
		}
		errs = append(errs, fmt.Errorf("CLUSTER NODES on %s: %w", n.addr, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no node is running")
	}
	return nil, errors.Join(errs...)
}

func (c *RedisCluster) mustView(t testing.TB, method string) []clusterNodeEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	view, err := c.view(ctx)
	if err != nil {
		t.Fatalf("testenv: RedisCluster.%s: %v", method, err)
	}
	return view
}

// stable succeeds when every running node reports cluster_state:ok with all slots
// assigned and served, every running node sees every other one as up, all of them
// agree on who serves which slots and who replicates whom, and every replica's link
// to its master is up.
func (c *RedisCluster) stable(ctx context.Context) error {
	running := c.running()
	if len(running) == 0 {
		return errors.New("no node is running")
	}
	var firstAddr, firstLayout string
	for _, addr := range slices.Sorted(maps.Keys(running)) {
		admin := c.admin[addr]
		text, err := admin.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", addr, err)
		}
		info := infoFields(text)
		if info["cluster_state"] != "ok" {
			return fmt.Errorf("%s: cluster_state:%s", addr, info["cluster_state"])
		}
		all := strconv.Itoa(keyspace.SlotCount)
		if info["cluster_slots_assigned"] != all || info["cluster_slots_ok"] != all {
			return fmt.Errorf("%s: cluster_slots_assigned:%s cluster_slots_ok:%s, want %s", addr,
				info["cluster_slots_assigned"], info["cluster_slots_ok"], all)
		}

		text, err = admin.ClusterNodes(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
		}
		view, err := parseClusterNodes(text)
		if err != nil {
			return fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
		}
		var myself *clusterNodeEntry
		seen := map[string]bool{}
		for i, e := range view {
			if e.flags["myself"] {
				myself = &view[i]
			}
			if _, ok := running[e.Addr]; ok {
				if !e.up() {
					return fmt.Errorf("%s sees %s as %s", addr, e.Addr, e.flagString())
				}
				seen[e.Addr] = true
			}
		}
		for other := range running {
			if !seen[other] {
				return fmt.Errorf("%s does not know %s yet", addr, other)
			}
		}
		if myself == nil || myself.Addr != addr {
			return fmt.Errorf("%s: CLUSTER NODES has no line flagged myself with its address", addr)
		}
		layout := clusterLayout(view)
		if firstAddr == "" {
			firstAddr, firstLayout = addr, layout
		} else if layout != firstLayout {
			return fmt.Errorf("%s and %s do not agree yet:\n%s\n---\n%s", firstAddr, addr, firstLayout, layout)
		}
		if myself.flags["slave"] {
			text, err := admin.Info(ctx, "replication").Result()
			if err != nil {
				return fmt.Errorf("INFO replication on %s: %w", addr, err)
			}
			if link := infoFields(text)["master_link_status"]; link != "up" {
				return fmt.Errorf("replica %s: master_link_status:%s", addr, link)
			}
		}
	}
	return nil
}

// check runs redis-cli --cluster check and succeeds when it finds nothing wrong.
func (c *RedisCluster) check(ctx context.Context) error {
	var addr string
	for a := range c.running() {
		addr = a
		break
	}
	out, err := c.runCLI(ctx, "--cluster", "check", addr)
	if err != nil {
		return fmt.Errorf("redis-cli --cluster check %s: %w\n%s", addr, err, out)
	}
	if !strings.Contains(out, "[OK] All 16384 slots covered") || strings.Contains(out, "[ERR]") || strings.Contains(out, "[WARNING]") {
		return fmt.Errorf("redis-cli --cluster check %s:\n%s", addr, out)
	}
	return nil
}

// clientWorks succeeds when a fresh cluster client can SET, GET and DEL a key.
func (c *RedisCluster) clientWorks(ctx context.Context) error {
	client := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:        c.Addrs(),
		MaxRedirects: -1,
		DialTimeout:  time.Second,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
	})
	defer client.Close()
	const key, value = "testenv:ready", "1"
	if err := client.Set(ctx, key, value, 0).Err(); err != nil {
		return fmt.Errorf("SET: %w", err)
	}
	got, err := client.Get(ctx, key).Result()
	if err != nil || got != value {
		return fmt.Errorf("GET = %q, %v; want %q", got, err, value)
	}
	return client.Del(ctx, key).Err()
}

// clusterLayout describes the slots and replication of the nodes that are up in a
// CLUSTER NODES view, in a form that is equal for views that agree.
func clusterLayout(view []clusterNodeEntry) string {
	var lines []string
	for _, e := range view {
		if !e.up() {
			continue
		}
		switch {
		case e.MasterID != "":
			lines = append(lines, fmt.Sprintf("%s %s replica of %s", e.ID, e.Addr, e.MasterID))
		default:
			lines = append(lines, fmt.Sprintf("%s %s master %v", e.ID, e.Addr, e.Slots))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// coversAll reports whether n serves every slot of ranges.
func coversAll(n ClusterNode, ranges []SlotRange) bool {
	for _, r := range ranges {
		for slot := r.First; slot <= r.Last; slot++ {
			if !n.HasSlot(slot) {
				return false
			}
		}
	}
	return true
}

// clusterNodeEntry is one line of CLUSTER NODES.
type clusterNodeEntry struct {
	ClusterNode
	flags map[string]bool // myself, master, slave, fail?, fail, handshake, noaddr, ...
}

// up reports whether the node is a working member as far as the view goes.
func (e clusterNodeEntry) up() bool {
	return !e.flags["fail"] && !e.flags["fail?"] && !e.flags["handshake"] && !e.flags["noaddr"]
}

func (e clusterNodeEntry) flagString() string {
	return strings.Join(slices.Sorted(maps.Keys(e.flags)), ",")
}

func (e *clusterNodeEntry) String() string {
	if e == nil {
		return "not listed"
	}
	return fmt.Sprintf("%s %s %s %v", e.ID, e.Addr, e.flagString(), e.Slots)
}

// parseClusterNodes parses CLUSTER NODES: one line per node,
//
//	<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...
//
// where a slot is N or FIRST-LAST, and the node's own line may add open slots in
// brackets, [N->-ID] (migrating) and [N-<-ID] (importing), which are skipped: the slot
// is still served by the node that owns it.
func parseClusterNodes(text string) ([]clusterNodeEntry, error) {
	var entries []clusterNodeEntry
	for line := range strings.Lines(text) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES line %q: want at least 8 fields", strings.TrimSpace(line))
		}
		addr, _, _ := strings.Cut(fields[1], ",") // hostname
		addr, _, _ = strings.Cut(addr, "@")       // bus port
		e := clusterNodeEntry{
			ClusterNode: ClusterNode{ID: fields[0], Addr: addr},
			flags:       map[string]bool{},
		}
		for flag := range strings.SplitSeq(fields[2], ",") {
			e.flags[flag] = true
		}
		if fields[3] != "-" {
			e.MasterID = fields[3]
		}
		for _, slot := range fields[8:] {
			if strings.HasPrefix(slot, "[") {
				continue
			}
			r, err := parseSlotRange(slot)
			if err != nil {
				return nil, fmt.Errorf("CLUSTER NODES line %q: %w", strings.TrimSpace(line), err)
			}
			e.Slots = append(e.Slots, r)
		}
		slices.SortFunc(e.Slots, func(a, b SlotRange) int { return cmp.Compare(a.First, b.First) })
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, errors.New("CLUSTER NODES is empty")
	}
	return entries, nil
}

// parseSlotRange parses a slot, N, or a range of slots, FIRST-LAST.
func parseSlotRange(s string) (SlotRange, error) {
	firstText, lastText, isRange := strings.Cut(s, "-")
	if !isRange {
		lastText = firstText
	}
	first, err1 := strconv.Atoi(firstText)
	last, err2 := strconv.Atoi(lastText)
	if err1 != nil || err2 != nil || first < 0 || first > last || last >= keyspace.SlotCount {
		return SlotRange{}, fmt.Errorf("bad slot range %q", s)
	}
	return SlotRange{First: first, Last: last}, nil
}

// infoFields parses the field:value lines of INFO or CLUSTER INFO.
func infoFields(text string) map[string]string {
	fields := map[string]string{}
	for line := range strings.Lines(text) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

// redisCLIBinary finds redis-cli beside redis-server or on PATH.
func redisCLIBinary() (string, error) {
	if server, err := redisBinary(); err == nil {
		if path := filepath.Join(filepath.Dir(server), "redis-cli"); isExecutable(path) {
			return path, nil
		}
	}
	if path, err := exec.LookPath("redis-cli"); err == nil {
		return path, nil
	}
	return "", &missingBinariesError{"redis-cli not found (Redis Cluster is created with redis-cli --cluster): run `make deps` " +
		"(Debian: apt-get install -y redis-server, which brings redis-tools)"}
}

// AwaitReplicasListed waits until every node lists every replica in CLUSTER
// SLOTS, where clients learn the topology. A node lists a replica only once
// gossip told it the replica synced, so right after start, or after writes
// to an idle cluster, clients may not know the replicas yet.
func (c *RedisCluster) AwaitReplicasListed(t testing.TB) {
	t.Helper()
	running := c.running()
	want := len(running)
	err := c.await(30*time.Second, func(ctx context.Context) error {
		for addr := range running {
			//lint:ignore SA1019 clients (go-redis too) learn the topology from CLUSTER SLOTS, which is what this checks
			slots, err := c.admin[addr].ClusterSlots(ctx).Result()
			if err != nil {
				return fmt.Errorf("CLUSTER SLOTS on %s: %w", addr, err)
			}
			listed := 0
			for _, s := range slots {
				listed += len(s.Nodes)
			}
			if listed != want {
				return fmt.Errorf("%s lists %d of %d nodes in CLUSTER SLOTS", addr, listed, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testenv: AwaitReplicasListed: %v", err)
	}
}

// PauseNode stops a node with SIGSTOP: it neither answers nor replicates
// until ResumeNode, as a replica that falls behind its master would.
func (c *RedisCluster) PauseNode(t testing.TB, addr string) {
	t.Helper()
	c.mustNode(t, "PauseNode", addr).signal(t, "PauseNode", syscall.SIGSTOP)
}

// ResumeNode continues a paused node (SIGCONT).
func (c *RedisCluster) ResumeNode(t testing.TB, addr string) {
	t.Helper()
	c.mustNode(t, "ResumeNode", addr).signal(t, "ResumeNode", syscall.SIGCONT)
}
