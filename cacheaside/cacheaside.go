package cacheaside

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
)

// ErrNotFound is what a loader returns for a row that does not exist. The
// absence is cached for Options.NotFoundTTL, and GetOrLoad returns
// ErrNotFound (wrapped errors match with errors.Is).
var ErrNotFound = errors.New("cacheaside: not found")

// ErrMiss is what Get returns for a key that holds nothing: it was never
// written, expired or was invalidated. Read the source then; GetOrLoad does
// that by itself.
var ErrMiss = errors.New("cacheaside: key not cached")

// ErrClosed is what every call of a Client returns once Client.Close was
// called (Stats excepted), and the cause of the context of a load that Close
// cancelled.
var ErrClosed = errors.New("cacheaside: client is closed; make a new one with cacheaside.New")

// notFound is the cached value of an absent row. No JSON document starts
// with a NUL byte.
const notFound = "\x00cachesync:notfound"

// Codec turns values into cached bytes and back. The default is JSON, which
// is also what the daemon's write-through rules write (jsonencode(row)).
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default Codec.
type JSON struct{}

// Marshal encodes v with encoding/json.
func (JSON) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes data with encoding/json.
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Options configures a Client. Zero fields take the defaults given.
type Options struct {
	// TTL of a cached value (default 1h), varied by ± Jitter.
	TTL time.Duration
	// Jitter is the fraction of TTL by which each write varies it at random,
	// so that keys filled together do not expire together (default 0.1;
	// negative for none).
	Jitter float64
	// NotFoundTTL is how long a loader's ErrNotFound is cached (default
	// 30s; negative: not cached).
	NotFoundTTL time.Duration
	// SoftTTL, when set, turns on stale-while-revalidate: a value that has
	// been cached for longer than about SoftTTL (give or take the jitter) is
	// returned at once and one background load refreshes it. It must be
	// shorter than TTL.
	SoftTTL time.Duration
	// LoadTimeout bounds one load from the source, and how long the loading
	// process holds the key's lock (default 5s).
	LoadTimeout time.Duration
	// LockWait is how long a process that did not get the key's lock re-reads
	// the key before it loads from the source itself (default 250ms).
	LockWait time.Duration
	// RedisRetryAfter is how long reads go straight to the source after a
	// Redis failure before Redis is tried again (default 1s), so that an
	// outage costs each read nothing rather than a connection timeout.
	RedisRetryAfter time.Duration
	// DisableFencing writes fills with a plain SET, without the fence. It
	// exists to show the race the fence prevents; do not use it in production.
	DisableFencing bool
	// NoFillStamps turns off the fill stamps. By default every write of a
	// value (a fill, a background refresh, Set, WriteBehind) also writes
	// keyspace.StampKey(key), the Unix milliseconds taken before the value
	// was loaded (for Set and WriteBehind: the time of the call), in the same
	// script and with the same TTL, which lets cachesync verify find values
	// loaded from a row older than its last change. The cost is one more key
	// per cached value, about 150 bytes of Redis memory with its TTL (Redis
	// 7, keys of ~10 bytes), and no extra round trip.
	NoFillStamps bool
	// VerifyHits is the fraction of GetOrLoad's cache hits (0 to 1, default
	// 0: none) that are checked in the background against the source: the
	// loader runs again and, if its value differs from the cached one,
	// again after VerifyWindow, and a cached value that still differs from
	// the source then is counted as a stale read (Stats.VerifiedStale). It
	// doubles the loader's cost for the sampled hits; at most a few
	// verifications run at once, and a sampled hit that finds them all busy
	// is dropped (Stats.VerifyDropped). The caller never waits for one.
	VerifyHits float64
	// VerifyWindow is W, how long a value may differ from the source
	// before a verification counts it stale (default 5s): changes in flight
	// to the cache are not stale reads.
	VerifyWindow time.Duration
	// Codec encodes values (default JSON). Hit verification compares the
	// encoded bytes, so with VerifyHits the codec must encode equal values
	// to equal bytes (JSON does; maps' keys are sorted).
	Codec Codec
	// Logger receives failures (Redis down, a value that does not decode), at
	// most one line per ErrorLogInterval (default slog.Default(), 10s).
	Logger           *slog.Logger
	ErrorLogInterval time.Duration
}

func (o *Options) defaults() error {
	if o.TTL == 0 {
		o.TTL = time.Hour
	}
	if o.TTL < time.Millisecond {
		return fmt.Errorf("cacheaside: TTL %s is shorter than 1ms", o.TTL)
	}
	if o.Jitter == 0 {
		o.Jitter = 0.1
	}
	if o.Jitter < 0 {
		o.Jitter = 0
	}
	if o.Jitter >= 1 {
		return fmt.Errorf("cacheaside: Jitter %g must be below 1", o.Jitter)
	}
	if o.NotFoundTTL == 0 {
		o.NotFoundTTL = 30 * time.Second
	}
	if o.SoftTTL < 0 || (o.SoftTTL > 0 && o.SoftTTL >= o.TTL) {
		return fmt.Errorf("cacheaside: SoftTTL %s must be positive and shorter than TTL %s", o.SoftTTL, o.TTL)
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = 5 * time.Second
	}
	if o.LockWait <= 0 {
		o.LockWait = 250 * time.Millisecond
	}
	if o.RedisRetryAfter <= 0 {
		o.RedisRetryAfter = time.Second
	}
	if !(o.VerifyHits >= 0 && o.VerifyHits <= 1) {
		return fmt.Errorf("cacheaside: VerifyHits %g must be a fraction between 0 and 1", o.VerifyHits)
	}
	if o.VerifyWindow < 0 {
		return fmt.Errorf("cacheaside: VerifyWindow %s must not be negative", o.VerifyWindow)
	}
	if o.VerifyWindow == 0 {
		o.VerifyWindow = 5 * time.Second
	}
	if o.Codec == nil {
		o.Codec = JSON{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ErrorLogInterval <= 0 {
		o.ErrorLogInterval = 10 * time.Second
	}
	return nil
}

// Client reads and fills cache keys. It is safe for concurrent use; make one
// per set of Options and share it.
type Client struct {
	rdb    redis.UniversalClient
	opts   Options
	flight singleflight.Group
	// refreshing holds the keys with a background refresh running.
	refreshing sync.Map
	// verifySlots bounds the hit verifications running at once.
	verifySlots chan struct{}
	stats       counters
	errLog      rateLog
	// downUntil (unix nanoseconds) is when Redis may be tried again after
	// a failure; 0 while it works.
	downUntil atomic.Int64
	scripts   struct{ ticket, fill, tagAdd, unlock, deleteTag, tagDetach, writeBehind *redis.Script }

	// Close cancels stop (with ErrClosed as its cause) and waits on running
	// for every goroutine the client started: background refreshes and the
	// shared loads of GetOrLoad, whose callers may have left. closed is set
	// under mu, and running grows only under mu while closed is false, so
	// that no goroutine starts once Close waits.
	mu      sync.Mutex
	closed  atomic.Bool
	running sync.WaitGroup
	stop    context.Context
	cancel  context.CancelCauseFunc
}

// New returns a Client on rdb (a *redis.Client, *redis.ClusterClient or a
// failover client). It fails only on invalid Options.
func New(rdb redis.UniversalClient, opts Options) (*Client, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	c := &Client{rdb: rdb, opts: opts, verifySlots: make(chan struct{}, maxVerifications)}
	c.stop, c.cancel = context.WithCancelCause(context.Background())
	c.errLog.every = opts.ErrorLogInterval
	c.errLog.log = opts.Logger
	c.scripts.ticket = redis.NewScript(redisops.TicketScript)
	c.scripts.fill = redis.NewScript(redisops.FillScript)
	c.scripts.tagAdd = redis.NewScript(redisops.TagAddScript)
	c.scripts.unlock = redis.NewScript(redisops.UnlockScript)
	c.scripts.deleteTag = redis.NewScript(redisops.DeleteTagScript)
	c.scripts.tagDetach = redis.NewScript(redisops.TagDetachScript)
	c.scripts.writeBehind = redis.NewScript(redisops.WriteBehindScript)
	return c, nil
}

// Close stops the client: it cancels the background refreshes and the loads
// in flight (their context's cause is ErrClosed) and returns once every one
// of them has returned, so that nothing the client started reads the source
// or writes to Redis afterwards. A loader that ignores its context delays
// Close until it returns. Every later call returns ErrClosed; Close itself
// may be called again and returns nil. It does not close the Redis client,
// which belongs to the caller.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed.Store(true)
	c.mu.Unlock()
	c.cancel(ErrClosed)
	c.running.Wait()
	return nil
}

// enter registers a goroutine of the client with Close, and reports false
// once the client is closed (then the goroutine must not run).
func (c *Client) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	c.running.Add(1)
	return true
}

// leave ends what enter began.
func (c *Client) leave() { c.running.Done() }

// loadContext is the context of a load that runs apart from its caller:
// ctx's values but not its cancellation (other callers may wait for the
// same load), bounded by Options.LoadTimeout, and cancelled by Close.
func (c *Client) loadContext(ctx context.Context) (context.Context, context.CancelFunc) {
	lctx, cancelCause := context.WithCancelCause(context.WithoutCancel(ctx))
	lctx, cancelTimeout := context.WithTimeout(lctx, c.opts.LoadTimeout)
	stop := context.AfterFunc(c.stop, func() { cancelCause(context.Cause(c.stop)) })
	return lctx, func() {
		stop()
		cancelTimeout()
		cancelCause(context.Canceled)
	}
}

// FillOption qualifies one GetOrLoad.
type FillOption func(*fill)

type fill struct {
	tags    []string
	ttl     time.Duration
	version string
	hasVer  bool
}

// Tags registers the key under tags (tag:<tag> sets), as rules.hcl's
// invalidate { tags = [...] } deletes them.
func Tags(tags ...string) FillOption {
	return func(f *fill) { f.tags = append(f.tags, tags...) }
}

// TTL overrides Options.TTL for this key.
func TTL(d time.Duration) FillOption { return func(f *fill) { f.ttl = d } }

// Versioned caches the key in namespace ns, under
// keyspace.VersionedKey(ns, n, key) where n is the namespace's current
// version (version:<ns>, which rules.hcl's bump_version increments).
func Versioned(ns string) FillOption {
	return func(f *fill) { f.version, f.hasVer = ns, true }
}

// GetOrLoad returns the value cached under key, or loads it with load, caches
// it and returns it. See the package documentation for what happens on a miss,
// on a cached "not found", when Redis is down, and how fills are fenced
// against concurrent invalidations.
//
// load runs with a context bounded by Options.LoadTimeout that is not
// cancelled when ctx is (other callers may be waiting for the same load), but
// is by Close; GetOrLoad itself returns when ctx is done.
func GetOrLoad[T any](ctx context.Context, c *Client, key string, load func(context.Context) (T, error), opts ...FillOption) (T, error) {
	var zero T
	f, err := c.fillOptions(key, opts)
	if err != nil {
		return zero, err
	}
	if c.bypass() {
		return loadDirect(ctx, c, key, load)
	}
	if f.hasVer {
		v, err := c.Version(ctx, f.version)
		if err != nil {
			c.redisFailed(ctx, "read the version of "+f.version, err)
			return loadDirect(ctx, c, key, load)
		}
		key = keyspace.VersionedKey(f.version, v, key)
	}

	raw, pttl, err := c.read(ctx, key)
	switch {
	case err != nil:
		c.redisFailed(ctx, "read "+key, err)
		return loadDirect(ctx, c, key, load)
	case raw != nil:
		v, err := decode[T](c, raw)
		if err == nil || errors.Is(err, ErrNotFound) {
			switch {
			case err == nil && c.stale(f, pttl):
				c.stats.staleServed.Add(1)
				refreshInBackground(c, key, f, load)
			case err == nil && c.sampleHit():
				verifyInBackground(c, key, raw, load)
			}
			return v, err
		}
		// A value that does not decode (another codec, a changed type) is
		// a miss: the fill below replaces it.
		c.errLog.report(fmt.Sprintf("cached value of %s does not decode; loading it again", key), err)
	}
	c.stats.misses.Add(1)

	// One load per key per process; every caller waits on its own ctx.
	ch := c.flight.DoChan(key, func() (any, error) {
		if !c.enter() {
			return nil, ErrClosed
		}
		defer c.leave()
		lctx, cancel := c.loadContext(ctx)
		defer cancel()
		return loadShared(lctx, c, key, f, load)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return zero, res.Err
		}
		if v, ok := res.Val.(T); ok {
			return v, nil
		}
		// Another caller of the same key asked for another type.
		return loadDirect(ctx, c, key, load)
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// fillOptions applies opts to the Client's defaults, and refuses a closed
// Client.
func (c *Client) fillOptions(key string, opts []FillOption) (fill, error) {
	f := fill{ttl: c.opts.TTL}
	for _, o := range opts {
		o(&f)
	}
	if c.closed.Load() {
		return f, ErrClosed
	}
	if f.ttl <= 0 {
		return f, fmt.Errorf("cacheaside: TTL for %q must be positive", key)
	}
	return f, nil
}

// read returns the cached bytes of key (nil on a miss) and its remaining TTL.
func (c *Client) read(ctx context.Context, key string) ([]byte, time.Duration, error) {
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, key)
		pttl = p.PTTL(ctx, key)
		return nil
	})
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	if err != nil {
		return nil, 0, err
	}
	b, err := get.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, 0, nil
	}
	return b, pttl.Val(), err
}

// decode turns the bytes a read found into a value, counting the hit, the
// cached "not found" (ErrNotFound) or the value that does not decode.
func decode[T any](c *Client, raw []byte) (T, error) {
	v, err := decodeQuiet[T](c, raw)
	switch {
	case err == nil:
		c.stats.hits.Add(1)
	case errors.Is(err, ErrNotFound):
		c.stats.notFoundHits.Add(1)
	default:
		c.stats.decodeErrors.Add(1)
	}
	return v, err
}

// decodeQuiet decodes without counting: for the re-reads of a miss.
func decodeQuiet[T any](c *Client, raw []byte) (T, error) {
	var v T
	if string(raw) == notFound {
		return v, ErrNotFound
	}
	err := c.opts.Codec.Unmarshal(raw, &v)
	return v, err
}

// stale reports whether a value with pttl left has outlived Options.SoftTTL.
// Its age is estimated from the TTL it was written with, so the soft TTL is
// as approximate as the jitter.
func (c *Client) stale(f fill, pttl time.Duration) bool {
	return c.opts.SoftTTL > 0 && pttl > 0 && pttl < f.ttl-c.opts.SoftTTL
}

// loadShared is the one load of key in this process: it takes the key's
// lock, or waits for the holder's fill, and fills the key.
func loadShared[T any](ctx context.Context, c *Client, key string, f fill, load func(context.Context) (T, error)) (any, error) {
	token := newToken()
	locked, err := c.rdb.SetNX(ctx, keyspace.LockKey(key), token, c.opts.LoadTimeout).Result()
	if err != nil {
		c.redisFailed(ctx, "lock "+key, err)
		return callLoad(ctx, c, load)
	}
	if !locked {
		c.stats.lockWaits.Add(1)
		if raw, err := c.waitForFill(ctx, key); err == nil && raw != nil {
			v, err := decodeQuiet[T](c, raw)
			if err == nil || errors.Is(err, ErrNotFound) {
				return v, err
			}
		}
		// The holder is slow, failed or refused: load without the lock.
		c.stats.lockTimeouts.Add(1)
		return fillFromSource(ctx, c, key, f, load)
	}
	defer c.unlock(key, token)
	// Double-check: the previous holder may have filled the key between our
	// miss and our lock.
	if raw, _, err := c.read(ctx, key); err == nil && raw != nil {
		if v, err := decodeQuiet[T](c, raw); err == nil || errors.Is(err, ErrNotFound) {
			return v, err
		}
	}
	return fillFromSource(ctx, c, key, f, load)
}

// waitForFill re-reads key until it is cached or Options.LockWait passed.
func (c *Client) waitForFill(ctx context.Context, key string) ([]byte, error) {
	deadline := time.Now().Add(c.opts.LockWait)
	pause := 2 * time.Millisecond
	for {
		wait := min(pause, time.Until(deadline))
		if wait <= 0 {
			return nil, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		raw, _, err := c.read(ctx, key)
		if err != nil || raw != nil {
			return raw, err
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// fillFromSource is a fenced fill: ticket (and tags), load, conditional write.
func fillFromSource[T any](ctx context.Context, c *Client, key string, f fill, load func(context.Context) (T, error)) (any, error) {
	token := newToken()
	ticketed := c.ticket(ctx, key, token, f)
	stamp := time.Now()
	v, err := callLoad(ctx, c, load)
	if !ticketed {
		// Redis failed before the load: return what was loaded, uncached.
		return v, err
	}
	var value []byte
	ttl := c.jittered(f.ttl)
	switch {
	case err == nil:
		if value, err = c.opts.Codec.Marshal(v); err != nil {
			c.release(key, token)
			return v, fmt.Errorf("cacheaside: encode the value of %s: %w", key, err)
		}
	case errors.Is(err, ErrNotFound) && c.opts.NotFoundTTL > 0:
		value, ttl = []byte(notFound), c.opts.NotFoundTTL
	default:
		c.release(key, token)
		return v, err
	}
	c.write(ctx, key, token, value, ttl, stamp)
	return v, err
}

func callLoad[T any](ctx context.Context, c *Client, load func(context.Context) (T, error)) (T, error) {
	c.stats.loads.Add(1)
	v, err := load(ctx)
	if err != nil && !errors.Is(err, ErrNotFound) {
		c.stats.loadErrors.Add(1)
	}
	return v, err
}

// ticket opens a fenced fill of key and registers key under f's tags, before
// the source is read. It reports false when Redis failed (then nothing is
// written).
func (c *Client) ticket(ctx context.Context, key, token string, f fill) bool {
	// On Redis Cluster the fence and the tag sets live on different
	// servers, and one pipeline reaches them in parallel: a tag deletion
	// could take the key's registration before the token reached the
	// fence, then delete the fence without it, and the fill would land
	// unregistered, never to be invalidated by that tag again. So there
	// the fence goes first, acknowledged, then the tags. On one server the
	// pipeline keeps that order by itself.
	_, cluster := c.rdb.(*redis.ClusterClient)
	apart := cluster && len(f.tags) > 0 && !c.opts.DisableFencing
	err := c.runScripts(ctx, func(p redis.Pipeliner) {
		if !c.opts.DisableFencing {
			c.scripts.ticket.EvalSha(ctx, p, []string{keyspace.FenceKey(key)}, token, (c.opts.LoadTimeout + 5*time.Second).Milliseconds())
		}
		if !apart {
			c.queueTags(ctx, p, key, f)
		}
	})
	if err == nil && apart {
		err = c.runScripts(ctx, func(p redis.Pipeliner) { c.queueTags(ctx, p, key, f) })
	}
	if err != nil {
		c.redisFailed(ctx, "open the fill of "+key, err)
		return false
	}
	return true
}

// queueTags registers key, and its fence, under f's tags.
func (c *Client) queueTags(ctx context.Context, p redis.Pipeliner, key string, f fill) {
	members := []any{key}
	if !c.opts.DisableFencing {
		members = append(members, keyspace.FenceKey(key))
	}
	// The tag sets must outlive every member: the longest TTL a fill can
	// give, counted from the end of the longest load.
	tagTTL := c.maxTTL(f.ttl) + c.opts.LoadTimeout + time.Minute
	for _, tag := range f.tags {
		c.scripts.tagAdd.EvalSha(ctx, p, []string{keyspace.TagKey(tag)}, append([]any{tagTTL.Milliseconds()}, members...)...)
	}
}

// write stores value under key, and its fill stamp, if no invalidation
// deleted the fill's token.
func (c *Client) write(ctx context.Context, key, token string, value []byte, ttl time.Duration, stamp time.Time) {
	var written bool
	err := c.runScripts(ctx, func(p redis.Pipeliner) {
		if c.opts.DisableFencing {
			// Not atomic: this mode only shows the race the fence prevents.
			p.Set(ctx, key, value, ttl)
			if !c.opts.NoFillStamps {
				p.Set(ctx, keyspace.StampKey(key), stampValue(stamp), ttl)
			}
			return
		}
		keys, args := []string{key, keyspace.FenceKey(key)}, []any{token, value, ttl.Milliseconds()}
		if !c.opts.NoFillStamps {
			keys, args = append(keys, keyspace.StampKey(key)), append(args, stampValue(stamp))
		}
		c.scripts.fill.EvalSha(ctx, p, keys, args...)
	}, func(cmds []redis.Cmder) {
		if c.opts.DisableFencing {
			written = true
			return
		}
		n, _ := cmds[0].(*redis.Cmd).Int64()
		written = n == 1
	})
	switch {
	case err != nil:
		c.redisFailed(ctx, "fill "+key, err)
	case written:
		c.stats.fills.Add(1)
	default:
		c.stats.fencedFills.Add(1)
	}
}

// release gives up a ticket whose fill will not happen (best effort: the
// fence expires anyway).
func (c *Client) release(key, token string) {
	if c.opts.DisableFencing {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.rdb.SRem(ctx, keyspace.FenceKey(key), token).Err(); err != nil {
		c.redisFailed(ctx, "release the fill of "+key, err)
	}
}

func (c *Client) unlock(key, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.scripts.unlock.Run(ctx, c.rdb, []string{keyspace.LockKey(key)}, token).Err(); err != nil {
		c.redisFailed(ctx, "unlock "+key, err)
	}
}

// runScripts runs a pipeline of script calls (EVALSHA), loading the scripts
// and running it once more if Redis had lost them (a restart, SCRIPT FLUSH).
// Every call in it must be safe to repeat. done, if given, sees the results.
func (c *Client) runScripts(ctx context.Context, queue func(redis.Pipeliner), done ...func([]redis.Cmder)) error {
	for attempt := 0; ; attempt++ {
		cmds, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			queue(p)
			return nil
		})
		if err != nil && attempt == 0 && redisops.IsNoScript(err) {
			if lerr := c.loadScripts(ctx); lerr != nil {
				return lerr
			}
			continue
		}
		if err == nil {
			for _, d := range done {
				d(cmds)
			}
		}
		return err
	}
}

func (c *Client) loadScripts(ctx context.Context) error {
	return redisops.LoadScripts(ctx, c.rdb, c.scripts.ticket, c.scripts.fill, c.scripts.tagAdd, c.scripts.unlock, c.scripts.deleteTag, c.scripts.tagDetach, c.scripts.writeBehind)
}

// refreshInBackground reloads a soft-expired key with a fenced fill: one
// goroutine per key per process, and only in the process that gets the key's
// lock.
func refreshInBackground[T any](c *Client, key string, f fill, load func(context.Context) (T, error)) {
	// One goroutine per key: the stale reads that arrive while it runs
	// start nothing.
	if _, running := c.refreshing.LoadOrStore(key, struct{}{}); running {
		return
	}
	if !c.enter() {
		c.refreshing.Delete(key)
		return // closed: the stale value stays until its TTL
	}
	go func() {
		defer c.leave()
		defer c.refreshing.Delete(key)
		ctx, cancel := context.WithTimeout(c.stop, c.opts.LoadTimeout)
		defer cancel()
		token := newToken()
		locked, err := c.rdb.SetNX(ctx, keyspace.LockKey(key), token, c.opts.LoadTimeout).Result()
		if err != nil {
			c.redisFailed(ctx, "lock "+key, err)
			return
		}
		if !locked {
			return // another process refreshes it
		}
		defer c.unlock(key, token)
		c.stats.refreshes.Add(1)
		_, _ = fillFromSource(ctx, c, key, f, load) // a failed load is counted; the stale value stays until its TTL
	}()
}

// loadDirect loads from the source without the cache (Redis failed), once per
// key per process.
func loadDirect[T any](ctx context.Context, c *Client, key string, load func(context.Context) (T, error)) (T, error) {
	ch := c.flight.DoChan("direct\x00"+key, func() (any, error) {
		if !c.enter() {
			return nil, ErrClosed
		}
		defer c.leave()
		lctx, cancel := c.loadContext(ctx)
		defer cancel()
		return callLoad(lctx, c, load)
	})
	var zero T
	select {
	case res := <-ch:
		if v, ok := res.Val.(T); ok {
			return v, res.Err
		}
		if res.Err != nil {
			return zero, res.Err
		}
		return callLoad(ctx, c, load)
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// Get returns the value cached under key without loading or filling
// anything: for keys that the daemon's refresh rules write, which belong to
// the daemon (rules.hcl), and for reads that must not reach the source. It
// decodes as GetOrLoad does (Options.Codec, JSON by default, which reads what
// jsonencode(row) writes). A key that holds nothing is ErrMiss, a cached "not
// found" ErrNotFound; a Redis failure or a value that does not decode is
// returned as an error (there is no source to fall back on). Hits and misses
// are counted in Stats as GetOrLoad's are.
//
// Get reads key as given: for an entry of a version namespace, read
// Client.Version and pass keyspace.VersionedKey(ns, version, key).
func Get[T any](ctx context.Context, c *Client, key string) (T, error) {
	var zero T
	if c.closed.Load() {
		return zero, ErrClosed
	}
	raw, err := c.rdb.Get(ctx, key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		c.stats.misses.Add(1)
		return zero, ErrMiss
	case err != nil:
		return zero, fmt.Errorf("cacheaside: read %s: %w", key, err)
	}
	v, err := decode[T](c, raw)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return zero, fmt.Errorf("cacheaside: the value of %s does not decode into a %T: %w", key, zero, err)
	}
	return v, err
}

// Set writes value under key as GetOrLoad's fill would (Options.Codec, the
// TTL ± jitter, Tags, TTL and Versioned), for a value the application has
// from elsewhere, such as a row it has just written.
//
// What Set guarantees, with the fence (see the package documentation):
//
//   - Set is an invalidation for the fills of key in flight: it deletes the
//     key's fence in the same transaction as it writes, so a GetOrLoad whose
//     load began before Set and may have read an older row does not overwrite
//     value afterwards (the fill is refused and counted in FencedFills).
//   - The key (and its fence) is registered under the tags before the value
//     is written, so every invalidation the daemon applies after Set, of the
//     key, of a tag, of the namespace, or a flush, removes value, and nothing
//     of the Set writes it back.
//
// What it cannot know is when value was read: an invalidation applied between
// the application's read of value and Set (another writer's change of the same
// row) is not seen, and value then lives until the next invalidation of the
// key or its TTL. A fill's loader reads after its ticket, which is why
// GetOrLoad is the safe way to cache a row that others change. Do not Set
// the keys of refresh rules: they belong to the daemon (read them with Get).
func Set[T any](ctx context.Context, c *Client, key string, value T, opts ...FillOption) error {
	f, err := c.fillOptions(key, opts)
	if err != nil {
		return err
	}
	stamp := time.Now()
	raw, err := c.opts.Codec.Marshal(value)
	if err != nil {
		return fmt.Errorf("cacheaside: encode the value of %s: %w", key, err)
	}
	if key, err = c.versionedKey(ctx, key, f); err != nil {
		return err
	}
	if err := c.registerTags(ctx, key, f); err != nil {
		return err
	}
	// The key, its stamp and its fence share a cluster slot: one transaction.
	ttl := c.jittered(f.ttl)
	_, err = c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, key, raw, ttl)
		if !c.opts.NoFillStamps {
			p.Set(ctx, keyspace.StampKey(key), stampValue(stamp), ttl)
		}
		if !c.opts.DisableFencing {
			p.Unlink(ctx, keyspace.FenceKey(key))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cacheaside: write %s: %w", key, err)
	}
	return nil
}

// versionedKey is where a write of key goes: with Versioned, its name in
// the namespace's current version.
func (c *Client) versionedKey(ctx context.Context, key string, f fill) (string, error) {
	if !f.hasVer {
		return key, nil
	}
	v, err := c.Version(ctx, f.version)
	if err != nil {
		return "", fmt.Errorf("cacheaside: read the version of %s: %w", f.version, err)
	}
	return keyspace.VersionedKey(f.version, v, key), nil
}

// registerTags registers key (and its fence) under f's tags before a write
// of key, so that every invalidation of a tag after the write removes it.
func (c *Client) registerTags(ctx context.Context, key string, f fill) error {
	if len(f.tags) == 0 {
		return nil
	}
	if err := c.runScripts(ctx, func(p redis.Pipeliner) { c.queueTags(ctx, p, key, f) }); err != nil {
		return fmt.Errorf("cacheaside: register %s under its tags: %w", key, err)
	}
	return nil
}

// Version returns the current version of namespace ns (0 when it was never
// bumped).
func (c *Client) Version(ctx context.Context, ns string) (int64, error) {
	if c.closed.Load() {
		return 0, ErrClosed
	}
	s, err := c.rdb.Get(ctx, keyspace.VersionKey(ns)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cacheaside: %s holds %q, not a version number", keyspace.VersionKey(ns), s)
	}
	return v, nil
}

// Invalidate deletes keys and refuses their fills in flight, as the daemon
// does, for applications that change data the daemon does not see. It
// deletes the keys' fill stamps too (the daemon leaves them to expire: a
// stamp without its value describes nothing).
func (c *Client) Invalidate(ctx context.Context, keys ...string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Unlink(ctx, k, keyspace.FenceKey(k), keyspace.StampKey(k))
		}
		return nil
	})
	return err
}

// InvalidateTags deletes every key registered under tags, and the tag sets,
// as the daemon does: atomically, or on Redis Cluster, for a tag without a
// hash tag, in steps (the members move to a pending set, are deleted slot by
// slot, then the pending set goes).
func (c *Client) InvalidateTags(ctx context.Context, tags ...string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	_, cluster := c.rdb.(*redis.ClusterClient)
	var atomic, stepwise []string
	for _, t := range tags {
		if cluster && !keyspace.HasHashTag(keyspace.TagKey(t)) {
			stepwise = append(stepwise, keyspace.TagKey(t))
		} else {
			atomic = append(atomic, keyspace.TagKey(t))
		}
	}
	if err := c.runScripts(ctx, func(p redis.Pipeliner) {
		for _, k := range atomic {
			c.scripts.deleteTag.EvalSha(ctx, p, []string{k})
		}
	}); err != nil {
		return err
	}
	for _, k := range stepwise {
		pending := keyspace.TagPendingKey(k)
		members, err := c.scripts.tagDetach.Run(ctx, c.rdb, []string{k, pending}).StringSlice()
		if err != nil {
			return err
		}
		if _, err := redisops.DeleteDetachedTag(ctx, c.rdb, k, members); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) jittered(ttl time.Duration) time.Duration {
	if c.opts.Jitter == 0 {
		return ttl
	}
	j := time.Duration(float64(ttl) * c.opts.Jitter * (2*rand.Float64() - 1))
	return max(ttl+j, time.Millisecond)
}

func (c *Client) maxTTL(ttl time.Duration) time.Duration {
	return ttl + time.Duration(float64(ttl)*c.opts.Jitter) + time.Millisecond
}

// bypass reports whether Redis failed less than Options.RedisRetryAfter
// ago; such reads go straight to the source.
func (c *Client) bypass() bool {
	until := c.downUntil.Load()
	if until == 0 {
		return false
	}
	if time.Now().UnixNano() < until {
		c.stats.bypassed.Add(1)
		return true
	}
	c.downUntil.CompareAndSwap(until, 0) // try Redis again
	return false
}

// redisFailed counts a Redis failure, makes the next reads bypass Redis for
// a while, and logs it, at most once per interval.
func (c *Client) redisFailed(ctx context.Context, what string, err error) {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return // the caller gave up (or the load timed out); Redis did not fail
	}
	c.stats.redisErrors.Add(1)
	c.downUntil.Store(time.Now().Add(c.opts.RedisRetryAfter).UnixNano())
	c.errLog.report("redis failed to "+what+"; serving from the source", err)
}

// stampValue is a fill stamp's value: Unix milliseconds, in decimal.
func stampValue(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func newToken() string {
	var b [12]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// rateLog logs at most one failure per interval, with the number of the
// ones it did not log.
type rateLog struct {
	mu         sync.Mutex
	log        *slog.Logger
	every      time.Duration
	last       time.Time
	suppressed int
}

func (r *rateLog) report(msg string, err error) {
	r.mu.Lock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	r.log.Warn("cacheaside: "+msg, "err", err, "suppressed", n)
}
