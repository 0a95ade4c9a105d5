package daemon

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
)

// TestPlanRecovery: what a start does in every case of the recovery table
// of docs/operations.md ("What a start recovers"). The first rows carry the
// table's names, in its order; the rows after them combine cases.
func TestPlanRecovery(t *testing.T) {
	t.Parallel()
	const (
		name = "cachesync"
		sys  = "7000000000000000001"
		tl   = int32(1)
	)
	pid := int32(4242)
	var (
		ours               = &journal.State{SystemID: sys, Timeline: tl, Slot: name}
		otherSystem        = &journal.State{SystemID: "7000000000000000002", Timeline: tl, Slot: name}
		otherTimeline      = &journal.State{SystemID: sys, Timeline: tl + 1, Slot: name}
		otherSlot          = &journal.State{SystemID: sys, Timeline: tl, Slot: "renamed_from"}
		renamedAndRestored = &journal.State{SystemID: "7000000000000000002", Timeline: tl, Slot: "renamed_from"}
		kept               = &replication.SlotInfo{Name: name, WALStatus: "reserved"}
		invalidated        = &replication.SlotInfo{Name: name, WALStatus: "lost"}
		inUse              = &replication.SlotInfo{Name: name, WALStatus: "reserved", Active: true, ActivePID: &pid}
	)
	const (
		behind = wal.LSN(0x100) // the cache's position when behind the slot
		start  = wal.LSN(0x200) // the slot's confirmed_flush_lsn
		ahead  = wal.LSN(0x300) // past the slot: applied, not confirmed
	)
	const (
		missingCause     = "the slot was missing"
		invalidatedCause = "wal_status = lost"
		systemCause      = "system identifier or timeline changed from"
	)
	type want struct {
		err          error
		drop, create bool
		cause        []string // substrings of the cause, in order; none: no cause
		step         cacheStep
		reason       string
		replay       bool
		flushChanged bool
		mark         wal.LSN
		journal      journalStep
	}
	tests := []struct {
		name      string
		slot      *replication.SlotInfo
		saved     *journal.State // nil: none saved
		applied   wal.LSN
		appliedOK bool
		journaled wal.LSN
		policy    config.ResetPolicy
		want      want
	}{
		// The rows of the recovery table, in its order.
		{name: "slot in use", slot: inUse, saved: ours, applied: start, appliedOK: true, journaled: start,
			want: want{err: replication.ErrSlotActive}},
		{name: "slot invalidated", slot: invalidated, saved: ours, applied: start, appliedOK: true, journaled: start,
			want: want{drop: true, create: true, cause: []string{invalidatedCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalCompleteFrom}},
		{name: "system changed", slot: kept, saved: otherSystem, applied: ahead, appliedOK: true, journaled: ahead,
			want: want{cause: []string{systemCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalReset}},
		{name: "slot missing", slot: nil, saved: ours, applied: start, appliedOK: true, journaled: start,
			want: want{create: true, cause: []string{missingCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalCompleteFrom}},
		{name: "new slot", slot: nil, saved: nil, applied: 0, appliedOK: false, journaled: 0,
			want: want{create: true, step: cacheFlushNewSlot, reason: mapping.ReasonSlot, mark: start, journal: journalCompleteFrom}},
		{name: "no applied position", slot: kept, saved: ours, applied: 0, appliedOK: false, journaled: start,
			want: want{step: cacheFlushNoPosition, reason: mapping.ReasonCacheReset, mark: start, journal: journalKeep}},
		{name: "cache behind, replay", slot: kept, saved: ours, applied: behind, appliedOK: true, journaled: start, policy: config.ResetReplay,
			want: want{cause: []string{"the cache's applied position 0/100 is behind the slot's 0/200"}, step: cacheHeal, replay: true, flushChanged: true, mark: start, journal: journalKeep}},
		{name: "cache behind, flush", slot: kept, saved: ours, applied: behind, appliedOK: true, journaled: ahead, policy: config.ResetFlush,
			want: want{cause: []string{"Redis restored from an older backup"}, step: cacheHeal, replay: false, flushChanged: true, mark: start, journal: journalKeep}},
		{name: "slot ahead", slot: kept, saved: ours, applied: behind, appliedOK: true, journaled: behind, policy: config.ResetReplay,
			want: want{step: cacheFlushAhead, reason: mapping.ReasonSlotLost, mark: start, journal: journalCompleteFrom}},
		{name: "cache at slot", slot: kept, saved: ours, applied: start, appliedOK: true, journaled: start,
			want: want{step: cacheKeep, flushChanged: true, mark: start, journal: journalKeep}},
		{name: "cache ahead", slot: kept, saved: ours, applied: ahead, appliedOK: true, journaled: ahead,
			want: want{step: cacheKeep, flushChanged: true, mark: ahead, journal: journalKeep}},

		// Combinations: the first row that applies wins, the journal column
		// is decided on its own.
		{name: "slot in use, invalidated", slot: &replication.SlotInfo{Name: name, WALStatus: "lost", Active: true}, saved: ours,
			want: want{err: replication.ErrSlotActive}},
		{name: "slot invalidated, system changed", slot: invalidated, saved: otherTimeline, applied: start, appliedOK: true, journaled: start,
			want: want{drop: true, create: true, cause: []string{invalidatedCause, systemCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalReset}},
		{name: "system changed, slot missing", slot: nil, saved: otherTimeline, applied: start, appliedOK: true, journaled: start,
			want: want{create: true, cause: []string{systemCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalReset}},
		{name: "system changed, no applied position", slot: kept, saved: otherSystem, applied: 0, appliedOK: false, journaled: 0,
			want: want{cause: []string{systemCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalReset}},
		{name: "new slot, journal saved for another slot (renamed)", slot: nil, saved: otherSlot, applied: ahead, appliedOK: true, journaled: ahead,
			want: want{create: true, step: cacheFlushNewSlot, reason: mapping.ReasonSlot, mark: start, journal: journalCompleteFrom}},
		{name: "new slot, renamed and system changed", slot: nil, saved: renamedAndRestored, applied: 0, appliedOK: false,
			want: want{create: true, step: cacheFlushNewSlot, reason: mapping.ReasonSlot, mark: start, journal: journalReset}},
		{name: "slot kept, renamed and system changed", slot: kept, saved: renamedAndRestored, applied: start, appliedOK: true, journaled: start,
			want: want{step: cacheKeep, flushChanged: true, mark: start, journal: journalReset}},
		{name: "slot kept, no journal saved", slot: kept, saved: nil, applied: start, appliedOK: true, journaled: 0,
			want: want{step: cacheKeep, flushChanged: true, mark: start, journal: journalCompleteFrom}},
		{name: "no applied position, journal behind", slot: kept, saved: ours, applied: 0, appliedOK: false, journaled: behind,
			want: want{step: cacheFlushNoPosition, reason: mapping.ReasonCacheReset, mark: start, journal: journalCompleteFrom}},
		{name: "cache at slot, journal behind (another instance streamed)", slot: kept, saved: ours, applied: start, appliedOK: true, journaled: behind,
			want: want{step: cacheKeep, flushChanged: true, mark: start, journal: journalCompleteFrom}},
		{name: "cache ahead, journal behind", slot: kept, saved: ours, applied: ahead, appliedOK: true, journaled: behind,
			want: want{step: cacheKeep, flushChanged: true, mark: ahead, journal: journalCompleteFrom}},
		{name: "cache behind, default policy replays", slot: kept, saved: ours, applied: behind, appliedOK: true, journaled: start,
			want: want{cause: []string{"is behind the slot's"}, step: cacheHeal, replay: true, flushChanged: true, mark: start, journal: journalKeep}},
		{name: "slot missing, cache ahead", slot: nil, saved: ours, applied: ahead, appliedOK: true, journaled: ahead,
			want: want{create: true, cause: []string{missingCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalCompleteFrom}},
		{name: "slot invalidated, no applied position", slot: invalidated, saved: ours, applied: 0, appliedOK: false, journaled: start,
			want: want{drop: true, create: true, cause: []string{invalidatedCause}, step: cacheFlushLost, reason: mapping.ReasonSlotLost, mark: start, journal: journalCompleteFrom}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := slotInput{Name: name, Slot: tt.slot, SystemID: sys, Timeline: tl}
			if tt.saved != nil {
				in.Saved, in.HasSaved = *tt.saved, true
			}
			sp, err := planSlot(in)
			if tt.want.err != nil || err != nil {
				if !errors.Is(err, tt.want.err) {
					t.Fatalf("planSlot: %v, want %v", err, tt.want.err)
				}
				return
			}
			if sp.Drop != tt.want.drop || sp.Create != tt.want.create {
				t.Errorf("slot: drop %v, create %v; want drop %v, create %v", sp.Drop, sp.Create, tt.want.drop, tt.want.create)
			}
			state := journal.State{SystemID: sys, Timeline: tl, Slot: name}
			if sp.State != state || sp.SaveState != (tt.saved == nil || *tt.saved != state) {
				t.Errorf("journal state: %+v (save %v), want %+v saved unless it was", sp.State, sp.SaveState, state)
			}
			p := planCache(cacheInput{Slot: sp, Start: start, Applied: tt.applied, AppliedOK: tt.appliedOK, Journaled: tt.journaled, Policy: tt.policy})
			if p.Step != tt.want.step || p.Reason != tt.want.reason {
				t.Errorf("cache: %s (reason %q), want %s (reason %q)", p.Step, p.Reason, tt.want.step, tt.want.reason)
			}
			if rest := causeMissing(p.Cause, tt.want.cause); rest != "" || (len(tt.want.cause) == 0) != (p.Cause == "") {
				t.Errorf("cause %q, want %q in this order", p.Cause, tt.want.cause)
			}
			if p.Step == cacheHeal && (p.HealFrom != tt.applied || p.Replay != tt.want.replay) {
				t.Errorf("heal from %s (replay %v), want from the cache's %s (replay %v)", p.HealFrom, p.Replay, tt.applied, tt.want.replay)
			}
			if p.FlushChanged != tt.want.flushChanged {
				t.Errorf("flush changed rules and partitions: %v, want %v", p.FlushChanged, tt.want.flushChanged)
			}
			if p.Mark != tt.want.mark {
				t.Errorf("applied position recorded: %s, want %s", p.Mark, tt.want.mark)
			}
			if p.Journal != tt.want.journal {
				t.Errorf("journal: %s, want %s", p.Journal, tt.want.journal)
			}
		})
	}
}

// causeMissing returns the first of want not found in cause after the
// previous one, "" when all are there in order.
func causeMissing(cause string, want []string) string {
	for _, w := range want {
		i := strings.Index(cause, w)
		if i < 0 {
			return w
		}
		cause = cause[i+len(w):]
	}
	return ""
}

// TestChangedRules: which rules' key spaces a start flushes by name because
// the cache never had them applied in their current form.
func TestChangedRules(t *testing.T) {
	t.Parallel()
	rule := func(name, table, fp string) *config.Rule {
		return &config.Rule{Name: name, Table: config.TableName{Schema: "public", Name: table}, Fingerprint: fp}
	}
	rules := []*config.Rule{rule("users", "users", "u1"), rule("orders", "orders", "o2"), rule("items", "items", "i1")}
	tests := []struct {
		name     string
		recorded map[string]string
		ok       bool
		added    []string
		want     []string
	}{
		{"no record", nil, false, nil, nil},
		{"unchanged", map[string]string{"users": "u1", "orders": "o2", "items": "i1"}, true, nil, nil},
		{"changed and added rules", map[string]string{"users": "u1", "orders": "o1"}, true, nil, []string{"orders", "items"}},
		{"rules of added tables are flushed by table", map[string]string{"users": "u1"}, true, []string{"public.orders"}, []string{"items"}},
		{"removed rules are nothing to flush", map[string]string{"users": "u1", "orders": "o2", "items": "i1", "gone": "g1"}, true, nil, nil},
	}
	for _, tt := range tests {
		if got := changedRules(rules, tt.recorded, tt.ok, tt.added); !slices.Equal(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
