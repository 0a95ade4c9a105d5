package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
)

// keyInSlots returns a key named prefix+N whose hash slot is one that node serves.
func keyInSlots(t *testing.T, node testenv.ClusterNode, prefix string) string {
	t.Helper()
	for i := range 1 << 20 {
		if key := fmt.Sprintf("%s%d", prefix, i); node.HasSlot(keyspace.Slot(key)) {
			return key
		}
	}
	t.Fatalf("no key %sN hashes to a slot of %s", prefix, node.Addr)
	return ""
}

// keysBySlot returns a key for every hash slot.
func keysBySlot() []string {
	keys := make([]string, keyspace.SlotCount)
	missing := keyspace.SlotCount
	for i := 0; missing > 0; i++ {
		key := fmt.Sprintf("slot:%d", i)
		if slot := keyspace.Slot(key); keys[slot] == "" {
			keys[slot] = key
			missing--
		}
	}
	return keys
}

// nodeClient is a plain client of one cluster node, closed at cleanup.
func nodeClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// waitReplicated writes to every master and waits (WAIT 1 1000, on the connection
// that wrote) until a replica has acknowledged it, and with it every earlier write.
func waitReplicated(t *testing.T, masters []testenv.ClusterNode) {
	t.Helper()
	for _, m := range masters {
		conn := nodeClient(t, m.Addr).Conn()
		if err := conn.Set(t.Context(), keyInSlots(t, m, "wait:"), "1", 0).Err(); err != nil {
			t.Fatalf("SET on %s: %v", m.Addr, err)
		}
		n, err := conn.Wait(t.Context(), 1, time.Second).Result()
		_ = conn.Close()
		if err != nil || n < 1 {
			t.Fatalf("WAIT 1 1000 on %s = %d, %v; want 1 replica", m.Addr, n, err)
		}
	}
}

// errorCounter is a hook for the node clients of a cluster client: it counts the
// errors the nodes answer (MOVED, ASK, TRYAGAIN, ... or a network error), which the
// cluster client then handles by redirecting or retrying.
type errorCounter struct {
	mu       sync.Mutex
	counts   map[string]int
	examples map[string]string
}

func newErrorCounter() *errorCounter {
	return &errorCounter{counts: map[string]int{}, examples: map[string]string{}}
}

func (h *errorCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *errorCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && !errors.Is(err, redis.Nil) {
			kind, _, _ := strings.Cut(err.Error(), " ")
			var netErr net.Error
			if errors.As(err, &netErr) {
				kind = "network"
			}
			h.mu.Lock()
			h.counts[kind]++
			if h.examples[kind] == "" {
				h.examples[kind] = cmd.Name() + ": " + err.Error()
			}
			h.mu.Unlock()
		}
		return err
	}
}

func (h *errorCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *errorCounter) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.counts) == 0 {
		return "none"
	}
	var parts []string
	for _, kind := range slices.Sorted(maps.Keys(h.counts)) {
		parts = append(parts, fmt.Sprintf("%s×%d (%s)", kind, h.counts[kind], h.examples[kind]))
	}
	return strings.Join(parts, " ")
}

// TestNewRedisCluster starts a cluster without a testing.TB, as the benchmark does,
// and checks that Close stops every node and may be called again.
func TestNewRedisCluster(t *testing.T) {
	t.Parallel()

	var logged []string
	c, err := testenv.NewRedisCluster(testenv.ClusterOptions{ReplicasPerMaster: -1}, func(format string, args ...any) {
		logged = append(logged, fmt.Sprintf(format, args...))
	})
	if err != nil {
		t.Fatalf("NewRedisCluster: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = c.Close()
		}
	})
	if len(logged) != 1 || !strings.Contains(logged[0], "Redis Cluster of 3 masters and 0 replicas started") {
		t.Errorf("logged %q, want the started line", logged)
	}
	addrs := c.Addrs()
	if len(addrs) != 3 {
		t.Fatalf("Addrs() = %v, want 3 masters", addrs)
	}
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer client.Close()
	ctx := t.Context()
	for _, key := range []string{"a", "b", "c", "d", "e"} {
		if err := client.Set(ctx, key, "1", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
	}

	closed = true
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, addr := range addrs {
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = conn.Close()
			t.Errorf("%s still accepts connections after Close", addr)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRedisCluster(t *testing.T) {
	t.Parallel()

	c := testenv.StartRedisCluster(t, testenv.ClusterOptions{})
	ctx := t.Context()

	addrs := c.Addrs()
	if len(addrs) != 6 {
		t.Fatalf("Addrs() = %v, want 6 nodes", addrs)
	}
	for _, addr := range addrs {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("node address %q, want a loopback address", addr)
		}
	}
	masters, replicas := c.Masters(t), c.Replicas(t)
	if len(masters) != 3 || len(replicas) != 3 {
		t.Fatalf("%d masters and %d replicas, want 3 and 3:\nmasters %v\nreplicas %v", len(masters), len(replicas), masters, replicas)
	}
	slotsServed := 0
	masterIDs := map[string]bool{}
	for _, m := range masters {
		slotsServed += m.SlotCount()
		masterIDs[m.ID] = true
		if m.MasterID != "" || len(m.ID) != 40 {
			t.Errorf("master %+v: want a 40-character ID and no MasterID", m)
		}
	}
	if slotsServed != keyspace.SlotCount {
		t.Errorf("the masters serve %d slots, want %d: %v", slotsServed, keyspace.SlotCount, masters)
	}
	replicated := map[string]bool{}
	for _, r := range replicas {
		if !masterIDs[r.MasterID] || len(r.Slots) != 0 {
			t.Errorf("replica %+v: want the ID of a master as MasterID and no slots", r)
		}
		replicated[r.MasterID] = true
	}
	if len(replicated) != 3 {
		t.Errorf("replicas %v: want one for each master", replicas)
	}

	client := c.Client(t)
	const keys = 1000
	if _, err := client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range keys {
			p.Set(ctx, fmt.Sprintf("key:%d", i), fmt.Sprint(i), 0)
		}
		return nil
	}); err != nil {
		t.Fatalf("writing %d keys: %v", keys, err)
	}
	total := int64(0)
	for _, m := range masters {
		n, err := nodeClient(t, m.Addr).DBSize(ctx).Result()
		if err != nil {
			t.Fatalf("DBSIZE on %s: %v", m.Addr, err)
		}
		if n < keys/10 {
			t.Errorf("master %s holds %d of %d keys: not spread over the masters", m.Addr, n, keys)
		}
		total += n
	}
	if total != keys {
		t.Errorf("the masters hold %d keys in all, want %d", total, keys)
	}

	for i := range 50 {
		key := fmt.Sprintf("key:%d", i*keys/50)
		m := c.MasterOf(t, key)
		got, err := nodeClient(t, m.Addr).Get(ctx, key).Result()
		if err != nil || got != fmt.Sprint(i*keys/50) {
			t.Errorf("GET %s on %s, its master per MasterOf = %q, %v; want %d", key, m.Addr, got, err, i*keys/50)
		}
		other := masters[0]
		if other.ID == m.ID {
			other = masters[1]
		}
		if err := nodeClient(t, other.Addr).Get(ctx, key).Err(); err == nil || !strings.HasPrefix(err.Error(), "MOVED ") {
			t.Errorf("GET %s on %s, not its master: err = %v, want MOVED", key, other.Addr, err)
		}
	}

	t.Run("OpenSlotsParsed", func(t *testing.T) {
		// Each master starts migrating one of its slots to the next one, which imports
		// it: CLUSTER NODES then shows [slot->-id] and [slot-<-id] in the masters' own
		// lines, which are no slot ranges.
		for i, m := range masters {
			next := masters[(i+1)%len(masters)]
			slot := m.Slots[0].First
			if err := nodeClient(t, next.Addr).Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", m.ID).Err(); err != nil {
				t.Fatal(err)
			}
			if err := nodeClient(t, m.Addr).Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", next.ID).Err(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, addr := range []string{m.Addr, next.Addr} {
					if err := nodeClient(t, addr).Do(context.Background(), "CLUSTER", "SETSLOT", slot, "STABLE").Err(); err != nil {
						t.Errorf("CLUSTER SETSLOT %d STABLE on %s: %v", slot, addr, err)
					}
				}
			}()
		}
		raw, err := nodeClient(t, masters[0].Addr).ClusterNodes(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(raw, "->-") || !strings.Contains(raw, "-<-") {
			t.Fatalf("CLUSTER NODES shows no open slots:\n%s", raw)
		}
		if got := c.Masters(t); !slices.EqualFunc(got, masters, func(a, b testenv.ClusterNode) bool {
			return a.ID == b.ID && slices.Equal(a.Slots, b.Slots)
		}) {
			t.Errorf("with open slots, Masters() = %v, want %v\nCLUSTER NODES:\n%s", got, masters, raw)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("MigrateSlotsWhileWriting", func(t *testing.T) {
		from, to := masters[0], masters[1]
		// One key in each slot of from, so that every slot that moves carries one.
		bySlot := keysBySlot()
		if _, err := client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for slot, key := range bySlot {
				if from.HasSlot(slot) {
					p.Set(ctx, key, key, 0)
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("writing a key in each slot of %s: %v", from.Addr, err)
		}

		// A writer that keeps going through the migration; the node clients count the
		// redirects and retries that the cluster client hides.
		writer := c.Client(t)
		nodeErrors := newErrorCounter()
		writer.OnNewNode(func(node *redis.Client) { node.AddHook(nodeErrors) })
		var (
			stop    = make(chan struct{})
			done    = make(chan struct{})
			written atomic.Int64
			failed  []error
		)
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := writer.Set(ctx, fmt.Sprintf("w:%d", i), fmt.Sprint(i), 0).Err(); err != nil {
					failed = append(failed, fmt.Errorf("SET w:%d: %w", i, err))
					if len(failed) == 10 {
						return
					}
					continue
				}
				written.Store(int64(i + 1))
			}
		}()
		testenv.Eventually(t, 10*time.Second, "the writer writes", succeeds(func(context.Context) error {
			if written.Load() < 100 {
				return errors.New("fewer than 100 writes")
			}
			return nil
		}))

		const moved = 300
		c.MigrateSlots(t, from.Addr, to.Addr, moved)
		before := written.Load()
		testenv.Eventually(t, 10*time.Second, "the writer writes after the migration", succeeds(func(context.Context) error {
			if written.Load() < before+100 {
				return errors.New("fewer than 100 writes since the migration")
			}
			return nil
		}))
		close(stop)
		<-done
		for _, err := range failed {
			t.Errorf("writer: %v", err)
		}
		t.Logf("writer: %d writes; errors the nodes answered, hidden by the cluster client: %v", written.Load(), nodeErrors)

		var fromAfter, toAfter testenv.ClusterNode
		for _, m := range c.Masters(t) {
			switch m.ID {
			case from.ID:
				fromAfter = m
			case to.ID:
				toAfter = m
			}
		}
		if fromAfter.SlotCount() != from.SlotCount()-moved || toAfter.SlotCount() != to.SlotCount()+moved {
			t.Fatalf("slots after moving %d: %s has %d (was %d), %s has %d (was %d)", moved,
				from.Addr, fromAfter.SlotCount(), from.SlotCount(), to.Addr, toAfter.SlotCount(), to.SlotCount())
		}
		toClient := nodeClient(t, to.Addr)
		movedSlots := 0
		for slot, key := range bySlot {
			if !from.HasSlot(slot) || fromAfter.HasSlot(slot) {
				continue
			}
			movedSlots++
			if !toAfter.HasSlot(slot) {
				t.Errorf("slot %d left %s but is not on %s: %v", slot, from.Addr, to.Addr, toAfter.Slots)
			}
			if got, err := client.Get(ctx, key).Result(); err != nil || got != key {
				t.Errorf("GET %s (slot %d, moved) through the cluster client = %q, %v; want %q", key, slot, got, err, key)
			}
			if got, err := toClient.Get(ctx, key).Result(); err != nil || got != key {
				t.Errorf("GET %s (slot %d, moved) on %s = %q, %v; want %q", key, slot, to.Addr, got, err, key)
			}
		}
		if movedSlots != moved {
			t.Errorf("%d slots left %s, want %d", movedSlots, from.Addr, moved)
		}
		for i := range int(written.Load()) {
			key := fmt.Sprintf("w:%d", i)
			if got, err := client.Get(ctx, key).Result(); err != nil || got != fmt.Sprint(i) {
				t.Fatalf("GET %s after the migration = %q, %v; want %d", key, got, err, i)
			}
		}
	})
}

func TestRedisClusterFailover(t *testing.T) {
	t.Parallel()

	c := testenv.StartRedisCluster(t, testenv.ClusterOptions{})
	ctx := t.Context()
	client := c.Client(t)
	const keys = 300
	for i := range keys {
		if err := client.Set(ctx, fmt.Sprintf("key:%d", i), fmt.Sprint(i), 0).Err(); err != nil {
			t.Fatalf("SET key:%d: %v", i, err)
		}
	}
	masters := c.Masters(t)
	waitReplicated(t, masters)

	old := c.MasterOf(t, "key:0")
	var replicaIDs []string
	for _, r := range c.Replicas(t) {
		if r.MasterID == old.ID {
			replicaIDs = append(replicaIDs, r.ID)
		}
	}
	promoted := c.Failover(t, old.Addr)
	if !slices.Contains(replicaIDs, promoted.ID) {
		t.Errorf("Failover promoted %s (%s), not a replica of %s (replicas %v)", promoted.Addr, promoted.ID, old.Addr, replicaIDs)
	}
	if promoted.SlotCount() != old.SlotCount() || promoted.Slots[0] != old.Slots[0] {
		t.Errorf("promoted node serves %v, want the slots of the old master, %v", promoted.Slots, old.Slots)
	}
	if m := c.MasterOf(t, "key:0"); m.ID != promoted.ID {
		t.Errorf("after failover MasterOf(key:0) = %s, want the promoted %s", m.Addr, promoted.Addr)
	}
	for _, m := range c.Masters(t) {
		if m.Addr == old.Addr {
			t.Errorf("Masters() lists the killed %s: %v", old.Addr, m)
		}
	}

	// The client learns the new layout on its first errors; then every key is there.
	testenv.Eventually(t, 10*time.Second, "GET key:0 after failover", succeeds(func(ctx context.Context) error {
		return client.Get(ctx, "key:0").Err()
	}))
	for i := range keys {
		key := fmt.Sprintf("key:%d", i)
		if got, err := client.Get(ctx, key).Result(); err != nil || got != fmt.Sprint(i) {
			t.Fatalf("GET %s after failover = %q, %v; want %d", key, got, err, i)
		}
	}
	if err := client.Set(ctx, "key:0", "after", 0).Err(); err != nil {
		t.Fatalf("SET after failover: %v", err)
	}

	c.RestartNode(t, old.Addr)
	var rejoined *testenv.ClusterNode
	for _, r := range c.Replicas(t) {
		if r.Addr == old.Addr {
			rejoined = &r
		}
	}
	if rejoined == nil || rejoined.MasterID != promoted.ID {
		t.Fatalf("after RestartNode, replicas = %v: want %s as a replica of %s", c.Replicas(t), old.Addr, promoted.ID)
	}
	oldClient := nodeClient(t, old.Addr)
	info, err := oldClient.Info(ctx, "replication").Result()
	if err != nil || !strings.Contains(info, "role:slave") {
		t.Errorf("INFO replication on the restarted %s = %q, %v; want role:slave", old.Addr, info, err)
	}
	want, err1 := nodeClient(t, promoted.Addr).DBSize(ctx).Result()
	got, err2 := oldClient.DBSize(ctx).Result()
	if err1 != nil || err2 != nil || got != want {
		t.Errorf("the rejoined replica holds %d keys (%v), its master %d (%v): want the same", got, err2, want, err1)
	}
}
