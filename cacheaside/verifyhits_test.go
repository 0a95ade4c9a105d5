package cacheaside_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/mapping"
)

// source is a row that a test changes, with or without invalidating its key;
// started receives a value at each load once armed.
type source struct {
	row     atomic.Pointer[user]
	loads   atomic.Int64
	armed   atomic.Bool
	started chan struct{}
}

func newSource(u user) *source {
	s := &source{started: make(chan struct{}, 16)}
	s.row.Store(&u)
	return s
}

func (s *source) load(context.Context) (user, error) {
	s.loads.Add(1)
	if s.armed.Load() {
		s.started <- struct{}{}
	}
	return *s.row.Load(), nil
}

// filledVerifying is a client verifying every hit with window, and a
// source whose row (u) the client has cached under user:1.
func filledVerifying(t *testing.T, window time.Duration, u user) (*env, *cacheaside.Client, *source) {
	t.Helper()
	e := newEnv(t)
	c := e.client(t, cacheaside.Options{VerifyHits: 1, VerifyWindow: window})
	src := newSource(u)
	if _, err := cacheaside.GetOrLoad(context.Background(), c, "user:1", src.load); err != nil {
		t.Fatal(err)
	}
	return e, c, src
}

// awaitVerified waits until the client counted want verifications.
func awaitVerified(t *testing.T, c *cacheaside.Client, consistent, stale uint64) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, "the hit verification", func() (bool, string) {
		st := c.Stats()
		return st.VerifiedConsistent == consistent && st.VerifiedStale == stale,
			fmt.Sprintf("consistent %d, stale %d; want %d, %d", st.VerifiedConsistent, st.VerifiedStale, consistent, stale)
	})
}

// TestVerifyHits: a sampled hit is re-loaded in the background; a cached
// value that still differs from the source after the window is a stale read.
func TestVerifyHits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	oldRow, newRow := user{ID: 1, Email: "old@example.com"}, user{ID: 1, Email: "new@example.com"}

	t.Run("consistent", func(t *testing.T) {
		t.Parallel()
		_, c, src := filledVerifying(t, 100*time.Millisecond, oldRow)
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", src.load); err != nil {
			t.Fatal(err)
		}
		awaitVerified(t, c, 1, 0)
	})
	t.Run("write bypassed the invalidation", func(t *testing.T) {
		t.Parallel()
		e, c, src := filledVerifying(t, 100*time.Millisecond, oldRow)
		src.row.Store(&newRow) // changed, and nobody invalidates user:1
		if got, err := cacheaside.GetOrLoad(ctx, c, "user:1", src.load); err != nil || got != oldRow {
			t.Fatalf("hit got %+v, %v; want the cached %+v", got, err, oldRow)
		}
		awaitVerified(t, c, 0, 1)
		if n := src.loads.Load(); n != 3 {
			t.Errorf("%d loads, want 3: the fill and the verification's two", n)
		}
		if logs := e.logs.String(); !strings.Contains(logs, "stale read: user:1") {
			t.Errorf("no log line for the stale read: %q", logs)
		}
	})
	for _, refill := range []bool{false, true} {
		t.Run(fmt.Sprintf("invalidated within the window/refilled=%v", refill), func(t *testing.T) {
			t.Parallel()
			// The window only has to outlast the few Redis calls below.
			e, c, src := filledVerifying(t, 3*time.Second, oldRow)
			src.row.Store(&newRow) // the change is committed; its invalidation is on its way
			src.armed.Store(true)
			if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", src.load); err != nil {
				t.Fatal(err)
			}
			<-src.started // the verification loaded the new row: it now waits the window
			src.armed.Store(false)
			e.invalidate(t, mapping.Op{Kind: mapping.OpDelete, Key: "user:1"})
			if refill {
				if got, err := cacheaside.GetOrLoad(ctx, c, "user:1", src.load); err != nil || got != newRow {
					t.Fatalf("refill got %+v, %v", got, err)
				}
			}
			awaitVerified(t, c, 1, 0)
		})
	}
	t.Run("bounded and stopped by Close", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		// Not e.client: its cleanup's Close would hang the test if Close
		// did not stop the verifications; this one reports it.
		c, err := cacheaside.New(e.rdb, cacheaside.Options{VerifyHits: 1, VerifyWindow: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		var blocking atomic.Bool
		var loads atomic.Int64
		load := func(ctx context.Context) (user, error) {
			loads.Add(1)
			if blocking.Load() {
				select {
				case <-release:
				case <-ctx.Done():
					return user{}, ctx.Err()
				}
			}
			return newRow, nil
		}
		if _, err := cacheaside.GetOrLoad(ctx, c, "user:1", func(context.Context) (user, error) { return oldRow, nil }); err != nil {
			t.Fatal(err)
		}
		blocking.Store(true)
		// Hits return at once although every verification's load blocks.
		for range 10 {
			if got, err := cacheaside.GetOrLoad(ctx, c, "user:1", load); err != nil || got != oldRow {
				t.Fatalf("hit got %+v, %v", got, err)
			}
		}
		st := c.Stats()
		if st.Hits != 10 || st.VerifyDropped != 6 {
			t.Errorf("hits %d, dropped %d; want 10 hits and 6 dropped (4 verifications at most)", st.Hits, st.VerifyDropped)
		}
		testenv.Eventually(t, 10*time.Second, "the 4 verifications' loads", func() (bool, string) {
			return loads.Load() == 4, fmt.Sprintf("%d loads", loads.Load())
		})
		close(release) // they find a value that differs and wait the hour-long window
		closed := make(chan error, 1)
		go func() { closed <- c.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not stop the verifications waiting their window within 10s")
		}
		if st := c.Stats(); st.VerifiedConsistent+st.VerifiedStale != 0 {
			t.Errorf("verifications stopped by Close counted %+v", st)
		}
	})
}
