package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
	"github.com/cachesync/cachesync/writer"
)

// calls records, in order, what the fakes below were asked to do.
type calls []string

type plainApplier struct{ calls *calls }

func (a plainApplier) Apply(context.Context, []mapping.Batch) error {
	*a.calls = append(*a.calls, "apply")
	return nil
}

// oneTripApplier can apply and advance in one round trip.
type oneTripApplier struct {
	plainApplier
	from writer.Position
	to   wal.LSN
	err  error
}

func (a *oneTripApplier) ApplyAdvance(_ context.Context, _ []mapping.Batch, _ string, from writer.Position, to wal.LSN) (bool, writer.Position, error) {
	*a.calls = append(*a.calls, "apply+advance")
	a.from, a.to = from, to
	if a.err != nil {
		return false, writer.Position{}, a.err
	}
	return true, writer.Position{LSN: to, OK: true}, nil
}

// advanceCache is a CacheState whose Advance always swaps.
type advanceCache struct {
	CacheState
	calls *calls
}

func (c advanceCache) Advance(_ context.Context, _ string, _ writer.Position, to wal.LSN) (bool, writer.Position, error) {
	*c.calls = append(*c.calls, "advance")
	return true, writer.Position{LSN: to, OK: true}, nil
}

func applyAdvanceSession(a Applier, c *calls, apart bool) *session {
	return &session{
		Daemon: &Daemon{opts: Options{
			Config:       &config.Config{Postgres: config.Postgres{Slot: "s"}},
			Applier:      a,
			Cache:        advanceCache{calls: c},
			AdvanceApart: apart,
		}, metrics: metrics.New()},
		mark: writer.Position{LSN: 0x100, OK: true},
	}
}

// TestApplyAdvanceInOneRoundTrip: an Applier that can send the applied
// position's swap with the effects does both at once, from the mark last
// written; Options.AdvanceApart, and an Applier that cannot, apply and then
// advance apart. A failed apply advances nothing.
func TestApplyAdvanceInOneRoundTrip(t *testing.T) {
	ctx := context.Background()
	group := []mapping.Batch{{XID: 1, EndLSN: 0x200, Ops: []mapping.Op{{Kind: mapping.OpDelete, Key: "k"}}}}
	for _, tc := range []struct {
		name     string
		oneTrip  bool
		apart    bool
		applyErr error
		swapErr  error // from ApplyAdvance, once its effects are applied
		want     string
	}{
		{name: "one round trip", oneTrip: true, want: "[apply+advance]"},
		{name: "apart", oneTrip: true, apart: true, want: "[apply advance]"},
		{name: "plain applier", want: "[apply advance]"},
		{name: "failed apply", oneTrip: true, applyErr: errors.New("refused"), want: "[apply+advance]"},
		// Every effect applied, only the swap failed: advance apart.
		{name: "applied, not advanced", oneTrip: true, swapErr: fmt.Errorf("%w: %w", writer.ErrNotAdvanced, errors.New("i/o timeout")), want: "[apply+advance advance]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c calls
			var a Applier = plainApplier{&c}
			one := &oneTripApplier{plainApplier: plainApplier{&c}, err: cmp.Or(tc.applyErr, tc.swapErr)}
			if tc.oneTrip {
				a = one
			}
			s := applyAdvanceSession(a, &c, tc.apart)
			_, err := s.applyAdvance(ctx, group, 1, 0x200)
			if got := fmt.Sprint([]string(c)); got != tc.want {
				t.Errorf("calls %s, want %s", got, tc.want)
			}
			if tc.applyErr != nil {
				if !errors.Is(err, tc.applyErr) || s.mark.LSN != 0x100 {
					t.Fatalf("err %v, mark %s: want the apply's error and the mark unmoved", err, s.mark.LSN)
				}
				return
			}
			if err != nil || s.mark.LSN != 0x200 {
				t.Fatalf("err %v, mark %s: want the mark at 0/200", err, s.mark.LSN)
			}
			if tc.want == "[apply+advance]" && (one.from.LSN != 0x100 || one.to != 0x200) {
				t.Errorf("swapped from %s to %s, want 0/100 to 0/200", one.from.LSN, one.to)
			}
		})
	}
}
