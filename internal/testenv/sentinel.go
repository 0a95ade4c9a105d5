package testenv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// sentinelCount is the number of sentinels; with a quorum of 2 one may fail.
	sentinelCount  = 3
	sentinelQuorum = 2
	// sentinelFailoverTimeout is failover-timeout. Sentinel also waits twice this long
	// before it tries again when a failover or leader election fails.
	sentinelFailoverTimeout = 5 * time.Second
	// sentinelTimeout bounds the waits for the sentinels to agree: after start,
	// failover and restart. A failover whose election failed is retried only after
	// twice failover-timeout.
	sentinelTimeout = 60 * time.Second
)

// SentinelOptions configures a private Redis Sentinel setup started by StartSentinel.
type SentinelOptions struct {
	// MasterName is the name the sentinels monitor the primary under; "" means
	// "cachesync".
	MasterName string
	// DownAfter is down-after-milliseconds: how long the primary may not answer
	// before a sentinel considers it down; 0 means 1s.
	DownAfter time.Duration
}

// Sentinel is a private Redis Sentinel setup: a primary, one replica of it, and three
// sentinels monitoring them (quorum 2), each a redis-server on a loopback port in a
// temporary directory of its own. The data nodes keep nothing on disk, so a restarted
// node comes back empty and syncs from the primary.
type Sentinel struct {
	name      string
	nodes     []*RedisServer // the primary and the replica, as started
	byAddr    map[string]*RedisServer
	sentinels []*RedisServer
	admin     map[string]*redis.Client         // per data node, for testenv's own commands
	monitors  map[string]*redis.SentinelClient // per sentinel

	closeAdmin sync.Once
}

// StartSentinel starts a primary, a replica of it and three sentinels for this test,
// and waits until replication is up and every sentinel knows the primary, the replica
// and the other two sentinels. Everything is stopped at cleanup.
func StartSentinel(t testing.TB, opts SentinelOptions) *Sentinel {
	t.Helper()
	s, err := startSentinel(opts, t.Logf)
	return forTest(t, s, err)
}

// MasterName returns the name the sentinels monitor the primary under.
func (s *Sentinel) MasterName() string { return s.name }

// SentinelAddrs returns the sentinels' addresses.
func (s *Sentinel) SentinelAddrs() []string { return addrsOf(s.sentinels) }

// Addrs returns the addresses of the data nodes: the primary and the replica as they
// were started (the roles change with failovers; see Master).
func (s *Sentinel) Addrs() []string { return addrsOf(s.nodes) }

// Client returns a failover client, which asks the sentinels for the primary, closed
// at cleanup.
func (s *Sentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	client := s.failoverClient()
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// Master returns the primary's address as a majority of the sentinels report it
// (SENTINEL GET-MASTER-ADDR-BY-NAME).
func (s *Sentinel) Master(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, err := s.master(ctx)
	if err != nil {
		t.Fatalf("testenv: Sentinel.Master: %v", err)
	}
	return addr
}

// KillMaster kills the primary (SIGKILL) and waits until the sentinels have promoted
// the replica, all of them report it, the failover is over and a failover client can
// write. It returns the new primary's address. The old primary stays down; see
// RestartNode.
func (s *Sentinel) KillMaster(t testing.TB) string {
	t.Helper()
	old := s.Master(t)
	n := s.mustNode(t, "KillMaster", old)
	started := time.Now()
	n.mu.Lock()
	err := n.stopLocked()
	n.mu.Unlock()
	if err != nil {
		t.Fatalf("testenv: Sentinel primary %v", err)
	}

	client := s.failoverClient()
	defer client.Close()
	var promoted string
	err = s.await(sentinelTimeout, func(ctx context.Context) error {
		addr, err := s.agreedMaster(ctx)
		if err != nil {
			return err
		}
		if addr == old {
			return fmt.Errorf("the sentinels still report %s", old)
		}
		if err := s.failoverOver(ctx); err != nil {
			return err
		}
		if err := s.hasRole(ctx, addr, "master"); err != nil {
			return err
		}
		if err := client.Set(ctx, "testenv:failover", "1", 0).Err(); err != nil {
			return fmt.Errorf("failover client: SET: %w", err)
		}
		if err := client.Del(ctx, "testenv:failover").Err(); err != nil {
			return fmt.Errorf("failover client: DEL: %w", err)
		}
		promoted = addr
		return nil
	})
	if err != nil {
		t.Fatalf("testenv: Sentinel failover after killing %s: %v", old, err)
	}
	t.Logf("testenv: Sentinel failover from %s to %s in %s", old, promoted, durationString(time.Since(started)))
	return promoted
}

// RestartNode starts a killed data node again on the same port, as a replica of the
// primary the sentinels report (as a primary, empty, if they still report this node),
// and waits until its replication link is up and every sentinel sees it up.
//
// Started without replicaof, an old primary would come back as a primary, empty, and
// accept writes for about 10 seconds until the sentinels turn it into a replica (which
// drops those writes); RestartNode does what an orchestrator that updated its
// configuration would do instead.
func (s *Sentinel) RestartNode(t testing.TB, addr string) {
	t.Helper()
	n := s.mustNode(t, "RestartNode", addr)
	master := s.Master(t)
	started := time.Now()
	args := dataNodeArgs()
	if master != addr {
		args = append(args, replicaOfArgs(master)...)
	}
	n.startAgain(t, "Sentinel.RestartNode", args)
	err := s.await(sentinelTimeout, func(ctx context.Context) error {
		if master != addr {
			if err := s.replicating(ctx, addr, master); err != nil {
				return err
			}
		}
		return s.sentinelsSeeUp(ctx, addr, master != addr)
	})
	if err != nil {
		t.Fatalf("testenv: Sentinel after restarting %s: %v", addr, err)
	}
	role := "replica of " + master
	if master == addr {
		role = "primary"
	}
	t.Logf("testenv: Sentinel node %s restarted as %s in %s", addr, role, durationString(time.Since(started)))
}

// startSentinel starts the data nodes, waits for replication, then starts the
// sentinels and waits until they know everything.
func startSentinel(opts SentinelOptions, logf func(format string, args ...any)) (_ *Sentinel, err error) {
	name := cmp.Or(opts.MasterName, "cachesync")
	downAfter := cmp.Or(opts.DownAfter, time.Second)
	if strings.ContainsAny(name, " \t\r\n\"'\\") {
		return nil, fmt.Errorf("Sentinel: MasterName %q: use letters, digits and punctuation without quotes or spaces", name)
	}
	if downAfter < time.Millisecond {
		return nil, fmt.Errorf("Sentinel: DownAfter = %v: want at least 1ms", opts.DownAfter)
	}

	began := time.Now()
	s := &Sentinel{
		name:     name,
		byAddr:   map[string]*RedisServer{},
		admin:    map[string]*redis.Client{},
		monitors: map[string]*redis.SentinelClient{},
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.shutdown())
		}
	}()
	dataSpec := redisSpec{kind: "redis-sentinel-data", args: dataNodeArgs()}
	primary, err := startRedisServer(dataSpec)
	if err != nil {
		return nil, fmt.Errorf("Sentinel primary: %w", err)
	}
	s.addNode(primary)
	dataSpec.args = append(dataNodeArgs(), replicaOfArgs(primary.addr)...)
	replica, err := startRedisServer(dataSpec)
	if err != nil {
		return s, fmt.Errorf("Sentinel replica: %w", err)
	}
	s.addNode(replica)
	// A sentinel learns the replicas from the primary's INFO, which it reads at once
	// and then only every 10 seconds: replication must be up before it starts.
	if err := s.await(startTimeout, func(ctx context.Context) error {
		return s.replicating(ctx, replica.addr, primary.addr)
	}); err != nil {
		return s, fmt.Errorf("Sentinel: replication did not start: %w", err)
	}
	dataStarted := time.Since(began)

	_, port, _ := net.SplitHostPort(primary.addr)
	conf := fmt.Sprintf("sentinel resolve-hostnames no\n"+
		"sentinel monitor %[1]s 127.0.0.1 %[2]s %[3]d\n"+
		"sentinel down-after-milliseconds %[1]s %[4]d\n"+
		"sentinel failover-timeout %[1]s %[5]d\n",
		name, port, sentinelQuorum, downAfter.Milliseconds(), sentinelFailoverTimeout.Milliseconds())
	spec := redisSpec{kind: "redis-sentinel", confName: "sentinel.conf", confText: conf, args: []string{"--sentinel"}}
	sentinels := make([]*RedisServer, sentinelCount)
	errs := make([]error, sentinelCount)
	var wg sync.WaitGroup
	for i := range sentinels {
		wg.Go(func() { sentinels[i], errs[i] = startRedisServer(spec) })
	}
	wg.Wait()
	for _, n := range sentinels {
		if n != nil {
			s.sentinels = append(s.sentinels, n)
			s.monitors[n.addr] = redis.NewSentinelClient(&redis.Options{
				Addr:         n.addr,
				MaxRetries:   -1,
				DialTimeout:  time.Second,
				ReadTimeout:  time.Second,
				WriteTimeout: time.Second,
				PoolSize:     2,
			})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return s, fmt.Errorf("sentinel: %w", err)
	}
	sentinelsStarted := time.Since(began)

	if err := s.await(startTimeout, func(ctx context.Context) error {
		for _, sen := range s.sentinels {
			if err := s.knowsAll(ctx, sen.addr, primary.addr, replica.addr); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return s, fmt.Errorf("Sentinel: the sentinels did not discover the setup: %w", err)
	}
	logf("testenv: Sentinel %q started in %s: primary %s, replica %s, sentinels %s (data nodes %s, sentinels %s, discovery %s)",
		name, durationString(time.Since(began)), primary.addr, replica.addr, strings.Join(s.SentinelAddrs(), " "),
		durationString(dataStarted), durationString(sentinelsStarted-dataStarted), durationString(time.Since(began)-sentinelsStarted))
	return s, nil
}

func (s *Sentinel) addNode(n *RedisServer) {
	s.nodes = append(s.nodes, n)
	s.byAddr[n.addr] = n
	s.admin[n.addr] = adminClient(n.addr)
}

// dataNodeArgs are the options of the primary and the replica beyond testenv's own.
func dataNodeArgs() []string {
	// A primary otherwise waits 5s for more replicas before it serves a full sync.
	return []string{"--repl-diskless-sync-delay", "0"}
}

// replicaOfArgs makes a data node a replica of master.
func replicaOfArgs(master string) []string {
	host, port, _ := net.SplitHostPort(master)
	return []string{"--replicaof", host, port}
}

// shutdown stops the sentinels and the data nodes and removes their directories.
func (s *Sentinel) shutdown() error {
	s.closeAdmin.Do(func() {
		for _, client := range s.admin {
			_ = client.Close()
		}
		for _, client := range s.monitors {
			_ = client.Close()
		}
	})
	servers := append(slices.Clone(s.sentinels), s.nodes...)
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, n := range servers {
		wg.Go(func() { errs[i] = n.shutdown() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *Sentinel) failoverClient() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    s.name,
		SentinelAddrs: s.SentinelAddrs(),
		DialTimeout:   time.Second,
	})
}

func (s *Sentinel) mustNode(t testing.TB, method, addr string) *RedisServer {
	t.Helper()
	n, ok := s.byAddr[addr]
	if !ok {
		t.Fatalf("testenv: Sentinel.%s(%s): not a data node of this setup (nodes: %s)", method, addr, strings.Join(s.Addrs(), " "))
	}
	return n
}

// await polls check until it succeeds, failing early when a sentinel or a data node
// that should be running exits.
func (s *Sentinel) await(timeout time.Duration, check func(context.Context) error) error {
	procs := map[*process]*RedisServer{}
	for _, n := range append(slices.Clone(s.sentinels), s.nodes...) {
		n.mu.Lock()
		if n.proc != nil {
			procs[n.proc] = n
		}
		n.mu.Unlock()
	}
	exited, stopWatching := watchExits(slices.Collect(maps.Keys(procs)))
	defer stopWatching()
	err := pollUntil(timeout, exited, check)
	if errors.Is(err, errStopped) {
		for p, n := range procs {
			if p.exited() {
				return fmt.Errorf("%s exited: %v\n--- tail of %s ---\n%s", n.addr, p.err, n.logPath, logTail(n.logPath))
			}
		}
	}
	return err
}

// master returns the primary a majority of the sentinels report.
func (s *Sentinel) master(ctx context.Context) (string, error) {
	votes := map[string]int{}
	var errs []error
	for _, sen := range s.sentinels {
		addr, err := s.masterPer(ctx, sen.addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		votes[addr]++
	}
	for addr, n := range votes {
		if n > len(s.sentinels)/2 {
			return addr, nil
		}
	}
	return "", fmt.Errorf("no majority of the sentinels reports a primary for %q (%v): %w", s.name, votes, errors.Join(errs...))
}

// agreedMaster returns the primary when all sentinels report the same.
func (s *Sentinel) agreedMaster(ctx context.Context) (string, error) {
	var first string
	for _, sen := range s.sentinels {
		addr, err := s.masterPer(ctx, sen.addr)
		if err != nil {
			return "", err
		}
		if first == "" {
			first = addr
		} else if addr != first {
			return "", fmt.Errorf("the sentinels disagree on the primary: %s and %s", first, addr)
		}
	}
	return first, nil
}

// masterPer returns the primary that one sentinel reports.
func (s *Sentinel) masterPer(ctx context.Context, sentinel string) (string, error) {
	hostPort, err := s.monitors[sentinel].GetMasterAddrByName(ctx, s.name).Result()
	if err != nil {
		return "", fmt.Errorf("sentinel %s: SENTINEL GET-MASTER-ADDR-BY-NAME %s: %w", sentinel, s.name, err)
	}
	if len(hostPort) != 2 {
		return "", fmt.Errorf("sentinel %s: SENTINEL GET-MASTER-ADDR-BY-NAME %s = %q", sentinel, s.name, hostPort)
	}
	return net.JoinHostPort(hostPort[0], hostPort[1]), nil
}

// failoverOver succeeds when no sentinel flags the primary down or in failover.
func (s *Sentinel) failoverOver(ctx context.Context) error {
	for _, sen := range s.sentinels {
		m, err := s.monitors[sen.addr].Master(ctx, s.name).Result()
		if err != nil {
			return fmt.Errorf("sentinel %s: SENTINEL MASTER %s: %w", sen.addr, s.name, err)
		}
		if m["flags"] != "master" {
			return fmt.Errorf("sentinel %s: primary %s:%s has flags %s", sen.addr, m["ip"], m["port"], m["flags"])
		}
	}
	return nil
}

// knowsAll succeeds when a sentinel reports primary as the primary, replica as a
// replica that is up and in sync, and the other sentinels as up.
func (s *Sentinel) knowsAll(ctx context.Context, sentinel, primary, replica string) error {
	addr, err := s.masterPer(ctx, sentinel)
	if err != nil {
		return err
	}
	if addr != primary {
		return fmt.Errorf("sentinel %s reports primary %s, want %s", sentinel, addr, primary)
	}
	if err := s.seesUp(ctx, sentinel, replica, true); err != nil {
		return err
	}
	peers, err := s.monitors[sentinel].Sentinels(ctx, s.name).Result()
	if err != nil {
		return fmt.Errorf("sentinel %s: SENTINEL SENTINELS %s: %w", sentinel, s.name, err)
	}
	up := 0
	for _, p := range peers {
		if p["flags"] == "sentinel" {
			up++
		}
	}
	if up != len(s.sentinels)-1 {
		return fmt.Errorf("sentinel %s knows %d other sentinels that are up, want %d", sentinel, up, len(s.sentinels)-1)
	}
	return nil
}

// sentinelsSeeUp succeeds when every sentinel sees the node up: as a replica, or as
// the primary.
func (s *Sentinel) sentinelsSeeUp(ctx context.Context, addr string, asReplica bool) error {
	for _, sen := range s.sentinels {
		if asReplica {
			if err := s.seesUp(ctx, sen.addr, addr, false); err != nil {
				return err
			}
			continue
		}
		m, err := s.monitors[sen.addr].Master(ctx, s.name).Result()
		if err != nil {
			return fmt.Errorf("sentinel %s: SENTINEL MASTER %s: %w", sen.addr, s.name, err)
		}
		if got := net.JoinHostPort(m["ip"], m["port"]); got != addr || m["flags"] != "master" {
			return fmt.Errorf("sentinel %s: primary %s has flags %s, want %s up", sen.addr, got, m["flags"], addr)
		}
	}
	return nil
}

// seesUp succeeds when a sentinel lists the replica without down or disconnected
// flags, and, with inSync, with its link to the primary up as of the sentinel's last
// INFO.
func (s *Sentinel) seesUp(ctx context.Context, sentinel, replica string, inSync bool) error {
	replicas, err := s.monitors[sentinel].Replicas(ctx, s.name).Result()
	if err != nil {
		return fmt.Errorf("sentinel %s: SENTINEL REPLICAS %s: %w", sentinel, s.name, err)
	}
	for _, r := range replicas {
		if net.JoinHostPort(r["ip"], r["port"]) != replica {
			continue
		}
		if r["flags"] != "slave" {
			return fmt.Errorf("sentinel %s: replica %s has flags %s", sentinel, replica, r["flags"])
		}
		if inSync && r["master-link-status"] != "ok" {
			return fmt.Errorf("sentinel %s: replica %s has master-link-status %s", sentinel, replica, r["master-link-status"])
		}
		return nil
	}
	return fmt.Errorf("sentinel %s does not list replica %s yet", sentinel, replica)
}

// replicating succeeds when the node at addr is a replica of master with its link up.
func (s *Sentinel) replicating(ctx context.Context, addr, master string) error {
	text, err := s.admin[addr].Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("INFO replication on %s: %w", addr, err)
	}
	info := infoFields(text)
	if got := net.JoinHostPort(info["master_host"], info["master_port"]); info["role"] != "slave" || got != master {
		return fmt.Errorf("%s: role:%s of %s, want a replica of %s", addr, info["role"], got, master)
	}
	if info["master_link_status"] != "up" {
		return fmt.Errorf("replica %s: master_link_status:%s", addr, info["master_link_status"])
	}
	return nil
}

// hasRole succeeds when INFO replication on addr reports role.
func (s *Sentinel) hasRole(ctx context.Context, addr, role string) error {
	admin, ok := s.admin[addr]
	if !ok {
		return fmt.Errorf("the sentinels report %s, which is not a data node of this setup", addr)
	}
	text, err := admin.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("INFO replication on %s: %w", addr, err)
	}
	if got := infoFields(text)["role"]; got != role {
		return fmt.Errorf("%s: role:%s, want %s", addr, got, role)
	}
	return nil
}

// PauseNode stops a data node with SIGSTOP: it neither answers nor
// replicates until ResumeNode.
func (s *Sentinel) PauseNode(t testing.TB, addr string) {
	t.Helper()
	s.mustNode(t, "PauseNode", addr).signal(t, "PauseNode", syscall.SIGSTOP)
}

// ResumeNode continues a paused node (SIGCONT).
func (s *Sentinel) ResumeNode(t testing.TB, addr string) {
	t.Helper()
	s.mustNode(t, "ResumeNode", addr).signal(t, "ResumeNode", syscall.SIGCONT)
}
