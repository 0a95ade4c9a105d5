package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/backoff"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/wal"
)

// Position is the applied position as the cache's markers hold it.
type Position struct {
	// LSN is the oldest marker's position.
	LSN wal.LSN
	// OK is false when a marker is missing or unreadable (a new or emptied
	// cache, or a shard that lost it).
	OK bool
	// markers is what each marker key held ("" absent) and which server
	// answered for it.
	markers map[string]marker
}

// marker is one marker key as read or written.
type marker struct {
	value  string
	server string // the run_id of the Redis server that answered ("" unknown)
}

// newPosition summarises markers: the oldest, and whether all are readable.
func newPosition(markers map[string]marker) Position {
	p := Position{OK: true, markers: markers}
	first := true
	for _, m := range markers {
		lsn, err := wal.ParseLSN(m.value)
		if m.value == "" || err != nil {
			// Unreadable bookkeeping is as good as none: heal from scratch.
			p.OK = false
			continue
		}
		if first || lsn < p.LSN {
			p.LSN, first = lsn, false
		}
	}
	if first {
		p.OK = false
	}
	return p
}

// Since summarises p over the markers that base knows: a marker placed
// since base was read (a master that just got slots) holds nothing yet,
// and that is no loss. With no marker in common, it is p itself.
func (p Position) Since(base Position) Position {
	common := map[string]marker{}
	for k, m := range p.markers {
		if _, ok := base.markers[k]; ok {
			common[k] = m
		}
	}
	if len(common) == 0 {
		return p
	}
	s := newPosition(common)
	s.markers = p.markers
	return s
}

// SameValues reports whether every marker known to both holds the same
// value in p as in base: nothing was lost between them, whichever servers
// answered.
func (p Position) SameValues(base Position) bool {
	for k, m := range p.markers {
		if b, ok := base.markers[k]; ok && b.value != m.value {
			return false
		}
	}
	return true
}

// Settled reports whether p holds the same markers as base, with the same
// values on the same servers: nothing to heal, nothing to record.
func (p Position) Settled(base Position) bool {
	if len(p.markers) != len(base.markers) {
		return false
	}
	for k, m := range p.markers {
		if b, ok := base.markers[k]; !ok || b != m {
			return false
		}
	}
	return true
}

// ServersKnown reports whether every marker's server told its identity:
// false when Redis refuses INFO to the user (then a rollback that leaves
// the previous position behind goes unnoticed).
func (p Position) ServersKnown() bool {
	for _, m := range p.markers {
		if m.server == "" {
			return false
		}
	}
	return true
}

// Positions keeps the daemon's bookkeeping inside the cache it describes
// (daemon.CacheState): the position up to which effects were applied to it,
// the rules and partition trees in force, and the slots streamed into it.
// The position is advanced with compare-and-set after every applied group,
// before the position is confirmed, so a cache that lost applied effects
// (restarted without persistence, restored from an older backup, failed
// over to a replica that missed writes) shows itself at once: its position
// is missing or older than the one last written, or it is held by another
// server than the one that acknowledged the group in flight.
//
// # The group in flight
//
// A marker written after a group's effects proves them only as long as the
// server that holds it is the one that acknowledged them. A rollback that
// lands between a group's effects and its marker (a failover to a replica
// that got everything up to the previous group, an AOF everysec loss, a
// restart from a snapshot) can leave exactly the previous position behind,
// and a compare-and-set on the value alone would then succeed and confirm
// a group whose effects are gone. So every marker is read and swapped
// together with the run_id of the server that answers (INFO server, from
// the same script), and a swap requires the server seen before: a restart
// or a failover between a group's apply and its advance fails the swap,
// and the daemon re-applies the group (its session.cacheReset). A server
// that refuses INFO to the user answers "" and this check is lost, not the
// others. A rollback that keeps the server (FLUSHALL and RESTORE of a
// backup into the running server) is caught by the value only: from a
// backup older than the previous group, not from one taken between that
// group's advance and the next group's apply.
//
// # Redis Cluster
//
// On Redis Cluster one key cannot describe the cache: a failover of one
// shard can lose that shard's acknowledged writes and nobody else's. So
// every master holds a marker in a slot of its own ranges, written after
// the effects before it were acknowledged; a shard that failed over to a
// replica which missed writes shows an older (or no) position, since
// replication keeps a master's order, or another server. Applied reports
// the oldest, so healing replays from there.
//
// The markers follow the topology (CLUSTER SLOTS, read again at least
// every topologyRefresh, and after a swap failed): the ClusterMarkers fixed
// slots 0, 1024, ... (where earlier versions kept every marker, so that an
// upgrade finds them), plus the lowest slot of every master that owns none
// of those (fragmented ranges after resharding, more than 16 masters).
// Markers follow their slots when slots migrate (MIGRATE moves keys), so a
// failover shows the same marker key missing or older. A marker new to the
// placement (a master that got slots) holds nothing yet: Position.Since
// leaves it out of the comparison with the position last written, and the
// next Advance writes it without expecting anything. A marker the
// placement no longer uses is left alone. What this cannot see: writes a
// master loses between getting its first slots and the first advance after
// the next topology read (about a second), and, at start, a marker new to
// the placement since the last run looks lost, or behind when an older
// placement left it (after resharding while cachesync was stopped, one
// flush of every key space, or one replay, at the next start).
type Positions struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient
	writer  *Writer // whose outage tracker hears of every command (nil: none)

	mu        sync.Mutex
	placement []int // marker slots (cluster)
	masters   int   // the masters that own slots, as last read (cluster)
	refreshed time.Time
}

// NewPositions returns the bookkeeping kept in client's Redis: a
// *redis.Client, a failover client or a *redis.ClusterClient. Its commands
// are reported to no outage tracker (status, teardown); a running pipeline
// uses Writer.Positions.
func NewPositions(client redis.UniversalClient) *Positions {
	r := &Positions{client: client}
	r.cluster, _ = client.(*redis.ClusterClient)
	return r
}

// Positions returns the bookkeeping kept in the writer's Redis, on the
// writer's client. The outcome of every command is recorded as an attempt
// of the writer's (Failing, Retries and the outage's log lines), so that an
// idle pipeline whose only traffic is bookkeeping still reports Redis down.
// Every call returns the same Positions, the one ApplyAdvance uses.
func (w *Writer) Positions() *Positions { return w.positions }

// report records the outcome of a command with the writer's outage
// tracker, if any. A command cut short by ctx says nothing about Redis.
func (r *Positions) report(ctx context.Context, err error) {
	if r.writer != nil && ctx.Err() == nil {
		r.writer.reportAttempt(err)
	}
}

// Retry runs cmd, a bookkeeping command, until it succeeds, fence refuses
// (the caller lost the right to write), or ctx ends. Between attempts it
// waits as the writer waits between its own (Wait). Every failure reaches
// the writer's outage tracker through cmd's own report.
func (r *Positions) Retry(ctx context.Context, fence func() error, cmd func() error) error {
	for attempt := 0; ; attempt++ {
		if err := fence(); err != nil {
			return err
		}
		if cmd() == nil {
			return nil
		}
		if err := r.Wait(ctx, attempt); err != nil {
			return err
		}
	}
}

// Wait waits before retry number attempt (from 0) of a bookkeeping
// command: the writer's jittered backoff, or the default one for
// positions with no writer. It returns ctx's error if ctx ends first.
func (r *Positions) Wait(ctx context.Context, attempt int) error {
	wait := backoff.Exponential{Min: DefaultMinBackoff, Max: DefaultMaxBackoff}.FullJitter(attempt + 1)
	if r.writer != nil {
		wait = r.writer.backoff(attempt)
	}
	if !backoff.Sleep(ctx, wait) {
		return ctx.Err()
	}
	return nil
}

// ClusterMarkers is how many fixed slots hold a marker on a cluster.
const ClusterMarkers = 16

// topologyRefresh bounds the age of the cluster topology the markers are
// placed by.
const topologyRefresh = time.Second

// AppliedKey holds the slot's applied position in the cache.
func AppliedKey(slot string) string { return "cachesync:slot:" + slot + ":applied" }

// RulesKey holds the fingerprints of the rules applied to the cache, a hash
// of rule name → config.Rule.Fingerprint.
func RulesKey(slot string) string { return "cachesync:slot:" + slot + ":rules" }

// MarkerKey is the marker of the slot's applied position in cluster hash
// slot hashSlot.
func MarkerKey(slot string, hashSlot int) string {
	return AppliedKey(slot) + ":{" + keyspace.SlotTag(hashSlot) + "}"
}

// MarkerSlots places the markers on a cluster whose masters own the given
// slot ranges (each [2]int{first, last}, both included): the fixed slots
// 0, 1024, ... and the lowest slot of every master that owns none of them.
// The result is sorted.
func MarkerSlots(masters [][][2]int) []int {
	slots := make([]int, 0, ClusterMarkers+len(masters))
	fixed := map[int]bool{}
	for i := range ClusterMarkers {
		s := i * keyspace.SlotCount / ClusterMarkers
		slots = append(slots, s)
		fixed[s] = true
	}
	for _, ranges := range masters {
		lowest, hasFixed := -1, false
		for _, r := range ranges {
			if r[0] > r[1] {
				continue
			}
			if lowest < 0 || r[0] < lowest {
				lowest = r[0]
			}
			// The fixed slots are multiples of the step: is one in [first, last]?
			step := keyspace.SlotCount / ClusterMarkers
			if first := (r[0] + step - 1) / step * step; first <= r[1] && fixed[first] {
				hasFixed = true
			}
		}
		if lowest >= 0 && !hasFixed {
			slots = append(slots, lowest)
		}
	}
	slices.Sort(slots)
	return slices.Compact(slots)
}

// keys are the keys that hold the position: one, or on a cluster one per
// slot of the current placement.
func (r *Positions) keys(ctx context.Context, slot string) []string {
	if r.cluster == nil {
		return []string{AppliedKey(slot)}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.placement == nil || time.Since(r.refreshed) >= topologyRefresh {
		if placement, masters, err := r.readPlacement(ctx); err == nil {
			r.placement, r.masters, r.refreshed = placement, masters, time.Now()
		} else if r.placement == nil {
			// The commands that follow fail too, or the cluster came
			// back: keep to the fixed slots until the next read.
			r.placement = MarkerSlots(nil)
		}
	}
	keys := make([]string, len(r.placement))
	for i, s := range r.placement {
		keys[i] = MarkerKey(slot, s)
	}
	return keys
}

// readPlacement reads the masters' ranges (CLUSTER SLOTS) and places the
// markers on them; it also returns how many masters own slots.
func (r *Positions) readPlacement(ctx context.Context) ([]int, int, error) {
	//lint:ignore SA1019 go-redis's cluster client learns the topology from CLUSTER SLOTS too (and cachesync's ACL grants it)
	ranges, err := r.cluster.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("read the cluster's slots: %w", err)
	}
	byMaster := map[string][][2]int{}
	for _, cs := range ranges {
		if len(cs.Nodes) == 0 {
			continue
		}
		m := cs.Nodes[0].ID
		if m == "" {
			m = cs.Nodes[0].Addr
		}
		byMaster[m] = append(byMaster[m], [2]int{int(cs.Start), int(cs.End)})
	}
	masters := make([][][2]int, 0, len(byMaster))
	for _, rs := range byMaster {
		masters = append(masters, rs)
	}
	return MarkerSlots(masters), len(masters), nil
}

// masterCount is how many masters own slots, as the last topology read
// found (at least 1; 1 before any read and off a cluster).
func (r *Positions) masterCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return max(r.masters, 1)
}

// topologyChanged makes the next call read the cluster's topology again.
func (r *Positions) topologyChanged() {
	r.mu.Lock()
	r.refreshed = time.Time{}
	r.mu.Unlock()
}

// serverIDLua returns the answering server's run_id ("" when INFO is
// refused).
const serverIDLua = `
local function server_id()
  local ok, info = pcall(redis.call, 'INFO', 'server')
  if not ok or type(info) ~= 'string' then return '' end
  return string.match(info, 'run_id:(%x+)') or ''
end
`

// appliedScript returns a marker's value ("" absent) and the server's run_id.
var appliedScript = redis.NewScript(serverIDLua + `
return {redis.call('GET', KEYS[1]) or '', server_id()}
`)

// advanceScript swaps a marker to ARGV[2] when it holds ARGV[1] ("" absent,
// "*" anything) or already ARGV[2], on the server ARGV[3] ("" any); it
// returns {swapped, value now, run_id}.
var advanceScript = redis.NewScript(serverIDLua + `
local cur = redis.call('GET', KEYS[1]) or ''
local id = server_id()
if ARGV[3] ~= '' and id ~= ARGV[3] then return {0, cur, id} end
if ARGV[1] == '*' or cur == ARGV[1] or cur == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2])
  return {1, ARGV[2], id}
end
return {0, cur, id}
`)

// evalMarkers runs script on every key with the arguments args(key) in one
// pipeline, loading the script where a server lacks it (first use, a
// restart, a promoted replica), not before every call: a load costs a
// round trip to every master.
func (r *Positions) evalMarkers(ctx context.Context, script *redis.Script, keys []string, args func(key string) []any) ([]redis.Cmder, error) {
	run := func() ([]redis.Cmder, error) {
		return r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				script.EvalSha(ctx, p, []string{k}, args(k)...)
			}
			return nil
		})
	}
	cmds, err := run()
	if redisops.IsNoScript(err) {
		if err = redisops.LoadScripts(ctx, r.client, script); err == nil {
			cmds, err = run()
		}
	}
	return cmds, err
}

// Applied implements daemon.CacheState. On a cluster the position is the oldest
// of the markers, and OK is false when any is missing.
func (r *Positions) Applied(ctx context.Context, slot string) (_ Position, err error) {
	defer func() { r.report(ctx, err) }()
	keys := r.keys(ctx, slot)
	cmds, err := r.evalMarkers(ctx, appliedScript, keys, func(string) []any { return nil })
	if err != nil {
		return Position{}, fmt.Errorf("read the applied position from Redis: %w", err)
	}
	markers := make(map[string]marker, len(keys))
	for i, c := range cmds {
		res, err := c.(*redis.Cmd).Slice()
		if err != nil || len(res) != 2 {
			return Position{}, fmt.Errorf("read the applied position from Redis: unexpected reply %v (%v)", res, err)
		}
		value, _ := res[0].(string)
		server, _ := res[1].(string)
		markers[keys[i]] = marker{value: value, server: server}
	}
	return newPosition(markers), nil
}

// Advance implements daemon.CacheState. Every marker must hold what from says it
// held, on the same server (a marker already at to counts as swapped: a
// retry after a partial advance); a marker from does not know (new to the
// placement) is written whatever it holds. The markers that did not swap
// are returned as they are, the others at to.
func (r *Positions) Advance(ctx context.Context, slot string, from Position, to wal.LSN) (_ bool, _ Position, err error) {
	defer func() { r.report(ctx, err) }()
	keys := r.keys(ctx, slot)
	cmds, err := r.evalMarkers(ctx, advanceScript, keys, advanceArgs(from, to))
	if err != nil {
		return false, Position{}, fmt.Errorf("advance the applied position in Redis: %w", err)
	}
	return r.advanced(keys, cmds)
}

// advanceArgs are advanceScript's arguments for each marker key: swap from
// what from read there, on the same server, to to; a key from does not
// know is written whatever it holds.
func advanceArgs(from Position, to wal.LSN) func(k string) []any {
	return func(k string) []any {
		m, ok := from.markers[k]
		if !ok {
			return []any{"*", to.String(), ""}
		}
		return []any{m.value, to.String(), m.server}
	}
}

// advanced reads the replies of advanceScript on keys: whether every marker
// swapped, and the markers as they are now.
func (r *Positions) advanced(keys []string, cmds []redis.Cmder) (bool, Position, error) {
	swapped := true
	markers := make(map[string]marker, len(keys))
	for i, c := range cmds {
		res, err := c.(*redis.Cmd).Slice()
		if err != nil || len(res) != 3 {
			return false, Position{}, fmt.Errorf("advance the applied position in Redis: unexpected reply %v (%v)", res, err)
		}
		n, _ := res[0].(int64)
		value, _ := res[1].(string)
		server, _ := res[2].(string)
		swapped = swapped && n == 1
		markers[keys[i]] = marker{value: value, server: server}
	}
	if !swapped && r.cluster != nil {
		r.topologyChanged() // a failover or a migration moved a marker
	}
	return swapped, newPosition(markers), nil
}

// Rules implements daemon.CacheState.
func (r *Positions) Rules(ctx context.Context, slot string) (_ map[string]string, _ bool, err error) {
	defer func() { r.report(ctx, err) }()
	rules, err := r.client.HGetAll(ctx, RulesKey(slot)).Result()
	if err != nil {
		return nil, false, fmt.Errorf("read the rules in force from Redis: %w", err)
	}
	return rules, len(rules) > 0, nil
}

// SetRules implements daemon.CacheState: the hash is replaced in one transaction.
func (r *Positions) SetRules(ctx context.Context, slot string, rules map[string]string) (err error) {
	defer func() { r.report(ctx, err) }()
	key := RulesKey(slot)
	_, err = r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		if len(rules) > 0 {
			p.HSet(ctx, key, rules)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the rules in force in Redis: %w", err)
	}
	return nil
}

// PartitionsKey holds the partition trees of the rule tables that the cache
// has seen flushed, as JSON: root ("schema.table") → digest of its tree
// (replication.PartitionTrees, kept here as a plain map so that the writer
// does not depend on the PostgreSQL side).
func PartitionsKey(slot string) string { return "cachesync:slot:" + slot + ":partitions" }

// Partitions implements daemon.CacheState. An unreadable record counts as none.
func (r *Positions) Partitions(ctx context.Context, slot string) (_ map[string]string, _ bool, err error) {
	defer func() { r.report(ctx, err) }()
	v, err := r.client.Get(ctx, PartitionsKey(slot)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the recorded partition trees from Redis: %w", err)
	}
	var trees map[string]string
	if json.Unmarshal(v, &trees) != nil || trees == nil {
		return nil, false, nil
	}
	return trees, true, nil
}

// SetPartitions implements daemon.CacheState.
func (r *Positions) SetPartitions(ctx context.Context, slot string, trees map[string]string) (err error) {
	defer func() { r.report(ctx, err) }()
	if trees == nil {
		trees = map[string]string{}
	}
	v, err := json.Marshal(trees)
	if err != nil {
		return err
	}
	if err := r.client.Set(ctx, PartitionsKey(slot), v, 0).Err(); err != nil {
		return fmt.Errorf("record the partition trees in Redis: %w", err)
	}
	return nil
}

// SlotsKey holds the names of the slots used with the cache for one database
// (scope: system identifier and database name).
func SlotsKey(scope string) string { return "cachesync:slots:" + scope }

// Slots implements daemon.CacheState.
func (r *Positions) Slots(ctx context.Context, scope, slot string) (_ []string, err error) {
	defer func() { r.report(ctx, err) }()
	var members *redis.StringSliceCmd
	_, err = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, SlotsKey(scope), slot)
		members = p.SMembers(ctx, SlotsKey(scope))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record the slot in Redis: %w", err)
	}
	return members.Val(), nil
}

// ForgetSlot implements daemon.CacheState.
func (r *Positions) ForgetSlot(ctx context.Context, scope, slot string) (err error) {
	defer func() { r.report(ctx, err) }()
	return r.client.SRem(ctx, SlotsKey(scope), slot).Err()
}

// Forget removes the slot's applied position (every marker of the current
// placement, and the fixed ones), rules and partitions records (teardown).
func (r *Positions) Forget(ctx context.Context, slot string) error {
	keys := r.keys(ctx, slot)
	if r.cluster != nil {
		for _, s := range MarkerSlots(nil) {
			keys = append(keys, MarkerKey(slot, s))
		}
	}
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, k)
		}
		p.Del(ctx, RulesKey(slot))
		p.Del(ctx, PartitionsKey(slot))
		return nil
	})
	return err
}
