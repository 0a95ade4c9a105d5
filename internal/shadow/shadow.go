// Package shadow is cachesync's shadow mode (cachesync run --shadow): it
// computes every effect the rules would apply, applies none, and watches the
// rules' key spaces through Redis keyspace notifications to count the
// invalidations the application's own path did not perform within a window
// of the commit.
//
// A Shadow is the daemon's Applier in a dry-run session. For each
// invalidation effect (a deleted key, a tag's keys, a refresh key set or
// unset) whose key exists in Redis when the effect is computed, it records
// the commit time; a keyspace notification that deletes (del, unlink,
// expired, evicted, rename) or overwrites (set) the key at or after the
// commit resolves it. A key not resolved by commit + window is missed. Keys
// that do not exist when the effect is computed hold nothing stale and are
// not tracked. Version bumps and flushes are not checked.
package shadow

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
)

// DefaultWindow is how long after a commit the application has to
// invalidate a key before it counts as missed.
const DefaultWindow = 5 * time.Second

// DefaultMaxKeys caps the keys tracked at once (and the recent
// notifications remembered).
const DefaultMaxKeys = 100_000

// ClockSlack is how long before a commit (PostgreSQL's clock) a
// notification (this host's clock) may arrive and still count as the
// application's invalidation of that commit. It is 0: a key filled just
// before the commit is exactly the one that holds the old row, so the
// clocks of this host and PostgreSQL's must agree (NTP); a deletion less
// than their skew after a commit may be counted as missed.
const ClockSlack = 0

// Reasons an effect was not checked, the values of
// cachesync_shadow_unchecked_total{reason}.
const (
	UncheckedCap          = "tracking_cap"       // more keys tracked than --shadow-max-keys allows
	UncheckedNotification = "notifications_lost" // the subscription broke during the effect's window
	UncheckedRedisError   = "redis_error"        // EXISTS or SMEMBERS failed
)

// Observer is told each outcome (metrics.Metrics.ShadowObserver).
type Observer interface {
	// Checked counts an effect whose key existed and was watched: resolved
	// by the application or missed.
	Checked(rule string)
	// Missed counts a checked effect the application did not perform
	// within the window.
	Missed(rule string)
	// Unchecked counts an effect that could not be watched, and why.
	Unchecked(rule, reason string)
}

// Options configure a Shadow.
type Options struct {
	// Redis is a standalone Redis (or a sentinel's master): shadow mode
	// does not watch a cluster's masters yet.
	Redis *redis.Client
	// Window (DefaultWindow if 0) is how long after its commit an effect
	// has to show up as a notification.
	Window time.Duration
	// MaxKeys (DefaultMaxKeys if 0) bounds the keys tracked at once.
	MaxKeys int
	// LogPerSecond (5 if 0) bounds the missed-key log lines per second;
	// the ones left out are counted in the next line.
	LogPerSecond int
	Observer     Observer
	Logger       zerolog.Logger
}

// Shadow watches the effects it is given; it applies none.
type Shadow struct {
	opts   Options
	prefix string // "__keyspace@<db>__:"

	mu      sync.Mutex
	tracked map[string]*entry
	queue   []*entry // in arrival order; deadlines nearly ordered
	seen    map[string]time.Time
	// lastCommit is the commit time of the last batch given: later
	// batches commit no earlier, so notifications older than it (less
	// the slack) can be forgotten.
	lastCommit time.Time
	// seenFull is when a notification could not be remembered (cap):
	// commits before it cannot be judged.
	seenFull time.Time
	// blind is set while the subscription is broken; blindUntil is when
	// it was last restored.
	blind      bool
	blindUntil time.Time
	// heardUpTo is when the last answered ping was sent: every
	// notification published before it has been read.
	heardUpTo time.Time

	logWindow  time.Time
	logged     int
	suppressed int

	ps     *redis.PubSub
	cancel context.CancelFunc
	done   sync.WaitGroup
}

type entry struct {
	key, rule string
	commit    time.Time
	deadline  time.Time
}

// New returns a Shadow; Start subscribes it.
func New(opts Options) *Shadow {
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = DefaultMaxKeys
	}
	if opts.LogPerSecond <= 0 {
		opts.LogPerSecond = 5
	}
	return &Shadow{
		opts:    opts,
		prefix:  fmt.Sprintf("__keyspace@%d__:", opts.Redis.Options().DB),
		tracked: map[string]*entry{},
		seen:    map[string]time.Time{},
	}
}

// ErrNotifications is returned when keyspace notifications cannot be
// turned on: the message says what to put in redis.conf.
var ErrNotifications = errors.New("shadow mode needs Redis keyspace notifications")

// needed are the notification classes shadow mode reads: K (keyspace
// channel), g (del, unlink, rename, expire), $ (set), x (expired), e
// (evicted).
const needed = "Kg$xe"

// MergeNotifyFlags returns current with the classes shadow mode needs
// added, keeping every class already set ('A' stands for g$lshzxetd), and
// whether anything was added.
func MergeNotifyFlags(current string) (string, bool) {
	merged := current
	for _, c := range needed {
		if strings.ContainsRune(merged, c) || (c != 'K' && strings.ContainsRune(merged, 'A')) {
			continue
		}
		merged += string(c)
	}
	return merged, merged != current
}

// EnableNotifications turns on the notification classes shadow mode needs,
// merged with the server's current setting. When CONFIG is refused it
// returns an error wrapping ErrNotifications that says which line to put in
// redis.conf.
func EnableNotifications(ctx context.Context, rdb *redis.Client) (string, error) {
	got, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	var refused redis.Error
	if err != nil && !errors.As(err, &refused) {
		return "", fmt.Errorf("read notify-keyspace-events from Redis: %w", err)
	}
	if err != nil {
		return "", fmt.Errorf("%w: Redis refused CONFIG GET notify-keyspace-events (%v): put the line `notify-keyspace-events %s` (plus any classes you already use) in redis.conf or your provider's parameter group, restart Redis, and run --shadow again", ErrNotifications, err, needed)
	}
	current := got["notify-keyspace-events"]
	merged, changed := MergeNotifyFlags(current)
	if !changed {
		return current, nil
	}
	if err := rdb.ConfigSet(ctx, "notify-keyspace-events", merged).Err(); err != nil {
		return "", fmt.Errorf("%w: Redis refused CONFIG SET notify-keyspace-events %s (%v): put the line `notify-keyspace-events %s` in redis.conf or your provider's parameter group, restart Redis, and run --shadow again", ErrNotifications, merged, err, merged)
	}
	return merged, nil
}

// Start subscribes to the keyspace notifications of the given key
// patterns (Redis glob patterns, as the rules' key spaces give them) and
// watches them until Close.
func (s *Shadow) Start(ctx context.Context, patterns []string) error {
	channels := make([]string, len(patterns))
	for i, p := range patterns {
		channels[i] = s.prefix + p
	}
	s.ps = s.opts.Redis.PSubscribe(ctx, channels...)
	for range channels {
		if _, err := s.ps.Receive(ctx); err != nil {
			s.ps.Close()
			return fmt.Errorf("subscribe to the key spaces' notifications: %w", err)
		}
	}
	ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.done.Add(2)
	go s.receive(ctx)
	go s.sweep(ctx)
	return nil
}

// Close stops watching; keys still in their window are not counted.
func (s *Shadow) Close() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.ps.Close()
	s.done.Wait()
}

// receive reads notifications until ctx ends, and pings through the
// subscription: a pong proves every notification Redis published before its
// ping has been read, so that the sweep never counts a key missed while its
// notification may still be on the way (a slow reader, a silent network).
func (s *Shadow) receive(ctx context.Context) {
	defer s.done.Done()
	every := s.pingEvery()
	var pingSent time.Time // zero: no ping outstanding
	for ctx.Err() == nil {
		if pingSent.IsZero() {
			now := time.Now()
			if err := s.ps.Ping(ctx); err == nil {
				pingSent = now
			}
		}
		msg, err := s.ps.ReceiveTimeout(ctx, every)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isTimeout(err) {
				continue // the pong is late: nothing is counted meanwhile
			}
			s.lost(err)
			pingSent = time.Time{}
			select { // go-redis reconnects and subscribes again on the next Receive
			case <-ctx.Done():
				return
			case <-time.After(every):
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Pong:
			s.mu.Lock()
			if !pingSent.IsZero() && pingSent.After(s.heardUpTo) {
				s.heardUpTo = pingSent
			}
			s.mu.Unlock()
			pingSent = time.Time{}
		case *redis.Subscription:
			s.mu.Lock()
			if s.blind {
				s.blind, s.blindUntil = false, time.Now()
				s.opts.Logger.Info().Msg("shadow: keyspace notifications subscribed again")
			}
			s.mu.Unlock()
		case *redis.Message:
			if resolves(m.Payload) {
				s.notified(strings.TrimPrefix(m.Channel, s.prefix), time.Now())
			}
		}
	}
}

// pingEvery is how often receive pings: a tenth of the window, within
// 20ms..1s.
func (s *Shadow) pingEvery() time.Duration {
	return min(max(s.opts.Window/10, 20*time.Millisecond), time.Second)
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// resolves reports whether a notification's event deletes or overwrites
// its key.
func resolves(event string) bool {
	switch event {
	case "del", "expired", "evicted", "set", "rename_from", "rename_to":
		return true
	}
	return false
}

// lost drops what cannot be judged once notifications may have been missed.
func (s *Shadow) lost(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.blind {
		s.opts.Logger.Warn().Err(err).Int("keys_dropped", len(s.tracked)).Msg("shadow: the keyspace notification subscription broke; keys in their window are not counted, resubscribing")
	}
	s.blind = true
	for _, e := range s.tracked {
		s.opts.Observer.Unchecked(e.rule, UncheckedNotification)
	}
	clear(s.tracked)
	s.queue = s.queue[:0]
}

func (s *Shadow) notified(key string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.tracked[key]; ok && !at.Before(e.commit.Add(-ClockSlack)) {
		delete(s.tracked, key)
		s.opts.Observer.Checked(e.rule)
	}
	if _, ok := s.seen[key]; ok || len(s.seen) < s.opts.MaxKeys {
		s.seen[key] = at
	} else {
		s.seenFull = at
	}
}

// sweep counts the keys whose window ended unresolved, once every
// notification of the window has been read (heardUpTo).
func (s *Shadow) sweep(ctx context.Context) {
	defer s.done.Done()
	tick := time.NewTicker(min(max(s.opts.Window/20, 10*time.Millisecond), 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			s.expire(now)
		}
	}
}

func (s *Shadow) expire(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for ; n < len(s.queue) && !s.queue[n].deadline.After(s.heardUpTo); n++ {
		e := s.queue[n]
		if s.tracked[e.key] != e {
			continue // resolved, or dropped
		}
		delete(s.tracked, e.key)
		s.opts.Observer.Checked(e.rule)
		s.opts.Observer.Missed(e.rule)
		s.logMiss(e, now)
	}
	s.queue = append(s.queue[:0], s.queue[n:]...)
	if !s.lastCommit.IsZero() {
		forget := s.lastCommit.Add(-ClockSlack)
		for k, at := range s.seen {
			if at.Before(forget) {
				delete(s.seen, k)
			}
		}
	}
}

// logMiss logs a missed key, at most LogPerSecond lines a second.
func (s *Shadow) logMiss(e *entry, now time.Time) {
	if now.Sub(s.logWindow) >= time.Second {
		s.logWindow, s.logged = now, 0
	}
	if s.logged >= s.opts.LogPerSecond {
		s.suppressed++
		return
	}
	s.logged++
	s.opts.Logger.Warn().Str("rule", e.rule).Str("key", e.key).Time("commit_time", e.commit).
		Dur("age", now.Sub(e.commit)).Dur("window", s.opts.Window).Int("not_logged_before", s.suppressed).
		Msg("shadow: the application did not invalidate this key within the window of its commit; cachesync would have")
	s.suppressed = 0
}

// effect is one key an invalidation would touch.
type effect struct {
	key, rule string
	commit    time.Time
}

// Apply computes what the batches' effects would touch and tracks the keys
// that exist; it writes nothing to Redis. A Redis error is counted (the
// effects are unchecked), not returned: the stream goes on.
func (s *Shadow) Apply(ctx context.Context, batches []mapping.Batch) error {
	var effects []effect
	var tags []effect
	for _, b := range batches {
		for _, op := range b.Ops {
			switch op.Kind {
			case mapping.OpDelete, mapping.OpSet, mapping.OpUnset:
				effects = append(effects, effect{op.Key, op.Rule, b.CommitTime})
			case mapping.OpDeleteTag:
				tags = append(tags, effect{op.Key, op.Rule, b.CommitTime})
			}
		}
	}
	if len(batches) > 0 {
		s.mu.Lock()
		if c := batches[len(batches)-1].CommitTime; c.After(s.lastCommit) {
			s.lastCommit = c
		}
		s.mu.Unlock()
	}
	if len(tags) > 0 {
		members, err := s.tagMembers(ctx, tags)
		if err != nil {
			return s.failed(ctx, err, append(effects, tags...))
		}
		effects = append(effects, members...)
	}
	if len(effects) == 0 {
		return nil
	}
	pipe := s.opts.Redis.Pipeline()
	exists := make([]*redis.IntCmd, len(effects))
	for i, e := range effects {
		exists[i] = pipe.Exists(ctx, e.key)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return s.failed(ctx, err, effects)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range effects {
		if exists[i].Val() == 0 {
			continue // nothing cached: nothing stale
		}
		s.track(e)
	}
	return nil
}

// tagMembers reads the keys registered under the tags (one pipelined
// round trip), as the writer would delete them.
func (s *Shadow) tagMembers(ctx context.Context, tags []effect) ([]effect, error) {
	pipe := s.opts.Redis.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(tags))
	for i, t := range tags {
		cmds[i] = pipe.SMembers(ctx, keyspace.TagKey(t.key))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	var out []effect
	for i, t := range tags {
		for _, k := range cmds[i].Val() {
			out = append(out, effect{k, t.rule, t.commit})
		}
	}
	return out, nil
}

func (s *Shadow) failed(ctx context.Context, err error, effects []effect) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.opts.Logger.Warn().Err(err).Int("effects", len(effects)).Msg("shadow: could not read the keys' existence from Redis; these effects are not checked")
	for _, e := range effects {
		s.opts.Observer.Unchecked(e.rule, UncheckedRedisError)
	}
	return nil
}

// track watches e's key from its commit; s.mu is held.
func (s *Shadow) track(e effect) {
	if _, ok := s.tracked[e.key]; ok {
		return // already watched from an earlier commit
	}
	from := e.commit.Add(-ClockSlack)
	if s.blind || s.blindUntil.After(from) {
		s.opts.Observer.Unchecked(e.rule, UncheckedNotification)
		return
	}
	if at, ok := s.seen[e.key]; ok && !at.Before(from) {
		s.opts.Observer.Checked(e.rule) // the application was there first
		return
	}
	if s.seenFull.After(from) || len(s.queue) >= s.opts.MaxKeys {
		s.opts.Observer.Unchecked(e.rule, UncheckedCap)
		return
	}
	en := &entry{key: e.key, rule: e.rule, commit: e.commit, deadline: e.commit.Add(s.opts.Window)}
	s.tracked[e.key] = en
	s.queue = append(s.queue, en)
}
