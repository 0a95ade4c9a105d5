package writer_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// nodeOrder records, per cluster node, the commands of the pipelines it
// received, in order: "M" for a position marker, "E" for an effect.
type nodeOrder struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (o *nodeOrder) hook(addr string) redis.Hook { return nodeHook{o, addr} }

func (o *nodeOrder) reset() map[string][]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.seen
	o.seen = map[string][]string{}
	return s
}

type nodeHook struct {
	o    *nodeOrder
	addr string
}

func (h nodeHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h nodeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h nodeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.o.mu.Lock()
		for _, c := range cmds {
			kind := "E"
			if isMarker(c) {
				kind = "M"
			}
			h.o.seen[h.addr] = append(h.o.seen[h.addr], kind)
		}
		h.o.mu.Unlock()
		return next(ctx, cmds)
	}
}

// checkOrder fails when a node received an effect after a marker, or when a
// master with effects received no marker after them.
func checkOrder(t *testing.T, what string, seen map[string][]string) {
	t.Helper()
	for addr, kinds := range seen {
		s := strings.Join(kinds, "")
		if i := strings.Index(s, "M"); i < 0 {
			t.Errorf("%s: node %s received effects and no marker after them (%d commands)", what, addr, len(s))
		} else if strings.Contains(s[i:], "E") {
			t.Errorf("%s: node %s received an effect after a marker: %s", what, addr, s)
		}
	}
}

// TestClusterApplyAdvance: on a real cluster, ApplyAdvance swaps every
// master's marker in the effects' pipeline, after that master's effects;
// tags whose members span slots are deleted in two round trips whatever
// their number, the markers after the last; and the round trips of a group
// are counted against Apply then Advance.
func TestClusterApplyAdvance(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t, testenv.ClusterOptions{})
	admin := cluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	order := &nodeOrder{seen: map[string][]string{}}
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs()})
	client.OnNewNode(func(node *redis.Client) { node.AddHook(order.hook(node.Options().Addr)) })
	t.Cleanup(func() { _ = client.Close() })
	trips := &testenv.RoundTrips{}
	client.AddHook(trips)
	w := writer.New(client, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	pos := w.Positions()
	const slot = "c"

	batch := func(end wal.LSN, ops ...mapping.Op) []mapping.Batch {
		for i := range ops {
			ops[i].Rule = "test"
		}
		return []mapping.Batch{{CommitLSN: end - 1, EndLSN: end, Ops: ops}}
	}
	// Markers written, scripts loaded: not counted.
	if _, _, err := pos.Advance(ctx, slot, writer.Position{}, 0x100); err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx, batch(0x100, mapping.Op{Kind: mapping.OpDelete, Key: "warm"})); err != nil {
		t.Fatal(err)
	}
	from, err := pos.Applied(ctx, slot)
	if err != nil || !from.OK {
		t.Fatalf("Applied: %v, %v", from, err)
	}
	var to wal.LSN = 0x100
	applyAdvance := func(what string, ops ...mapping.Op) int64 {
		t.Helper()
		to += 0x100
		order.reset()
		var swapped bool
		var cur writer.Position
		n := trips.Count(func() { swapped, cur, err = w.ApplyAdvance(ctx, batch(to, ops...), slot, from, to) })
		if err != nil || !swapped || cur.LSN != to {
			t.Fatalf("%s: ApplyAdvance: swapped %v, %s, %v; want %s", what, swapped, cur.LSN, err, to)
		}
		checkOrder(t, what, order.reset())
		if got, err := pos.Applied(ctx, slot); err != nil || got.LSN != to {
			t.Fatalf("%s: Applied = %s, %v; want %s", what, got.LSN, err, to)
		}
		from = cur
		return n
	}
	applyThenAdvance := func(ops ...mapping.Op) int64 {
		t.Helper()
		to += 0x100
		return trips.Count(func() {
			if err := w.Apply(ctx, batch(to, ops...)); err != nil {
				t.Fatal(err)
			}
			swapped, cur, err := pos.Advance(ctx, slot, from, to)
			if err != nil || !swapped {
				t.Fatalf("Advance: %v, %v", swapped, err)
			}
			from = cur
		})
	}
	set := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if err := admin.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}

	// 300 deletes over every master: one round trip, each master's marker
	// after its effects.
	var dels []mapping.Op
	for i := range 300 {
		dels = append(dels, mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("user:%d", i)})
	}
	if n := applyAdvance("300 deletes", dels...); n != 1 {
		t.Errorf("300 deletes: %d round trips, want 1", n)
	}
	if n := applyThenAdvance(dels...); n != 2 {
		t.Errorf("300 deletes, Apply then Advance: %d round trips, want 2", n)
	}

	// 1000 deletes and 100 tags without members, without a hash tag (the
	// stepwise path): one pipeline of effects (1000 commands per master),
	// then the swap (no member to delete, so no step after the detach).
	// Until issue 18: two pipelines, one DEL per tag, the swap: 103.
	var group []mapping.Op
	for i := range 1000 {
		group = append(group, mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("w:%d", i)})
	}
	for i := range 100 {
		group = append(group, mapping.Op{Kind: mapping.OpDeleteTag, Key: fmt.Sprintf("org:%d", i)})
	}
	if n := applyAdvance("1000 deletes and 100 empty tags", group...); n != 2 {
		t.Errorf("1000 deletes and 100 empty tags: %d round trips, want 2", n)
	}
	if n := applyThenAdvance(group...); n != 2 {
		t.Errorf("1000 deletes and 100 empty tags, Apply then Advance: %d round trips, want 2", n)
	}
	// The bench's group: 2000 deletes, the tags among the first rows'
	// (the mapper's order): one pipeline, with the detach, so the swap
	// goes apart. Until issue 18: three pipelines, 100 DELs, the swap.
	group = group[:0]
	for i := range 1000 {
		group = append(group,
			mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("w:%d", i)},
			mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("w:email:%d", i)})
		if i < 100 {
			group = append(group, mapping.Op{Kind: mapping.OpDeleteTag, Key: fmt.Sprintf("org:%d", i)})
		}
	}
	if n := applyAdvance("the bench's group", group...); n != 2 {
		t.Errorf("the bench's group of 2100 operations: %d round trips, want 2", n)
	}
	// Without the tags, one round trip for 2000 deletes and the swap.
	var plain []mapping.Op
	for _, op := range group {
		if op.Kind == mapping.OpDelete {
			plain = append(plain, op)
		}
	}
	if n := applyAdvance("2000 deletes", plain...); n != 1 {
		t.Errorf("2000 deletes: %d round trips, want 1", n)
	}

	// 100 tags whose members live on every master: the detach, one round
	// trip of UNLINKs, one of pending sets with the markers after them.
	var tags []mapping.Op
	var members []string
	for i := range 100 {
		tag := fmt.Sprintf("org:%d", i)
		ms := []string{fmt.Sprintf("a:%d", i), fmt.Sprintf("b:%d", i), fmt.Sprintf("c:%d", i)}
		set(ms...)
		members = append(members, ms...)
		if err := admin.SAdd(ctx, keyspace.TagKey(tag), toAny(ms)...).Err(); err != nil {
			t.Fatal(err)
		}
		tags = append(tags, mapping.Op{Kind: mapping.OpDeleteTag, Key: tag})
	}
	deleted := w.Stats().KeysDeletedByTags
	if n := applyAdvance("100 tags with members", tags...); n != 3 {
		t.Errorf("100 tags with members: %d round trips, want 3", n)
	}
	if got := w.Stats().KeysDeletedByTags - deleted; got != 300 {
		t.Errorf("KeysDeletedByTags grew by %d, want 300", got)
	}
	for _, k := range members {
		if n, _ := admin.Exists(ctx, k).Result(); n != 0 {
			t.Fatalf("member %s survived its tag", k)
		}
	}
	for _, op := range tags {
		tag := keyspace.TagKey(op.Key)
		if n, _ := admin.Exists(ctx, tag, keyspace.TagPendingKey(tag)).Result(); n != 0 {
			t.Fatalf("tag %s or its pending set survived", tag)
		}
	}
}
