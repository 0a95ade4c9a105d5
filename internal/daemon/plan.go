package daemon

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
)

// What a start recovers is decided by two pure functions, one per phase,
// and executed by ensureSlot (recovery.go), which does the I/O around them:
//
//   - planSlot, from the slot as read, the server's system identifier and
//     timeline and the journal's saved state: whether the slot is dropped
//     and created again, and what may have been lost with it;
//   - planCache, once the slot exists and its position is known, from the
//     cache's applied position, what the journal reaches and on_redis_reset:
//     how the cache is made trustworthy before streaming (a flush of every
//     key space, a replay of the journal, or only the key spaces of rules
//     and partitions changed since the last record), the applied position
//     recorded afterwards, and what the journal records.
//
// Each row of the recovery table in docs/operations.md ("What a start
// recovers") is a row of TestPlanRecovery.

// slotInput is what planSlot decides from.
type slotInput struct {
	// Name is the slot of rules.hcl.
	Name string
	// Slot is the slot as read, nil when it does not exist.
	Slot *replication.SlotInfo
	// SystemID and Timeline are what IDENTIFY_SYSTEM answered.
	SystemID string
	Timeline int32
	// Saved is the journal's saved state; HasSaved is false when none was
	// saved (a new journal).
	Saved    journal.State
	HasSaved bool
}

// slotPlan is what happens to the slot before the cache is looked at.
type slotPlan struct {
	// Drop: the slot was invalidated (wal_status = lost) and is dropped
	// before it is created again.
	Drop bool
	// Create: the slot is created (it is missing, or was dropped).
	Create bool
	// Lost says why changes may have been missed (the cause SLOT LOST
	// logs); empty when nothing was lost.
	Lost []string
	// SystemChanged: the journal was saved for another system or timeline,
	// so its positions mean nothing here.
	SystemChanged bool
	// State is what the journal belongs to from now on; SaveState says
	// whether it differs from what was saved.
	State     journal.State
	SaveState bool
}

// planSlot decides what happens to the slot. It fails when another process
// streams from the slot: the instance stands by.
func planSlot(in slotInput) (slotPlan, error) {
	if in.Slot != nil && in.Slot.Active {
		pid := int32(0)
		if in.Slot.ActivePID != nil {
			pid = *in.Slot.ActivePID
		}
		return slotPlan{}, fmt.Errorf("%w: pid %d", replication.ErrSlotActive, pid)
	}
	p := slotPlan{State: journal.State{SystemID: in.SystemID, Timeline: in.Timeline, Slot: in.Name}}
	p.SaveState = !in.HasSaved || in.Saved != p.State
	p.SystemChanged = in.HasSaved && (in.Saved.SystemID != in.SystemID || in.Saved.Timeline != in.Timeline)
	exists := in.Slot != nil
	if exists && in.Slot.WALStatus == "lost" {
		p.Drop = true
		p.Lost = append(p.Lost, "the slot was invalidated (wal_status = lost: it fell behind max_slot_wal_keep_size) and was dropped")
		exists = false
	}
	// Only a journal saved for this slot knows the slot's history: after a
	// rename, the slot is new to it.
	ours := in.HasSaved && in.Saved.Slot == in.Name
	if ours && p.SystemChanged {
		p.Lost = append(p.Lost, fmt.Sprintf("the database's system identifier or timeline changed from %s/%d to %s/%d (a restore or a promoted standby)",
			in.Saved.SystemID, in.Saved.Timeline, in.SystemID, in.Timeline))
	}
	if !exists {
		p.Create = true
		if ours && len(p.Lost) == 0 {
			p.Lost = append(p.Lost, "the slot was missing (dropped, or lost in a failover)")
		}
	}
	return p, nil
}

// cacheInput is what planCache decides from, once the slot exists.
type cacheInput struct {
	// Slot is what planSlot decided (and ensureSlot did).
	Slot slotPlan
	// Start is the slot's confirmed_flush_lsn: where streaming starts.
	Start wal.LSN
	// Applied is the cache's applied position; AppliedOK is false when the
	// cache holds none (a new or emptied Redis).
	Applied   wal.LSN
	AppliedOK bool
	// Journaled is the highest position the journal vouches for
	// (Journal.LastLSN).
	Journaled wal.LSN
	// Policy is redis { on_redis_reset }.
	Policy config.ResetPolicy
}

// cacheStep is how the cache is made trustworthy for the slot's position.
type cacheStep int

const (
	// cacheKeep: the cache reaches the slot's position; nothing is flushed
	// but the key spaces of rules and partitions changed since the record.
	cacheKeep cacheStep = iota
	// cacheFlushLost: SLOT LOST, every key space is flushed.
	cacheFlushLost
	// cacheFlushNewSlot: a new slot, every key space is flushed.
	cacheFlushNewSlot
	// cacheFlushNoPosition: the cache holds no applied position, every key
	// space is flushed.
	cacheFlushNoPosition
	// cacheHeal: the cache is behind the slot and the journal reaches the
	// slot: the journal is replayed from the cache's position (heal), or
	// every key space flushed per on_redis_reset or when the journal does
	// not reach back that far (the journal tells as it is read).
	cacheHeal
	// cacheFlushAhead: SLOT AHEAD, every key space is flushed.
	cacheFlushAhead
)

func (s cacheStep) String() string {
	switch s {
	case cacheKeep:
		return "keep"
	case cacheFlushLost:
		return "flush: slot lost"
	case cacheFlushNewSlot:
		return "flush: new slot"
	case cacheFlushNoPosition:
		return "flush: no applied position"
	case cacheHeal:
		return "heal"
	case cacheFlushAhead:
		return "flush: slot ahead"
	}
	return fmt.Sprintf("cacheStep(%d)", int(s))
}

// journalStep is what the journal records once the cache is recovered.
type journalStep int

const (
	// journalKeep: the journal reaches the slot and belongs to this system.
	journalKeep journalStep = iota
	// journalReset: the journal belongs to another system or timeline:
	// every entry is discarded, complete from the slot's position.
	journalReset
	// journalCompleteFrom: the journal does not reach the slot (a new
	// journal, a new slot, or another instance streamed meanwhile): it is
	// complete from the slot's position on.
	journalCompleteFrom
)

func (s journalStep) String() string {
	switch s {
	case journalKeep:
		return "keep"
	case journalReset:
		return "reset"
	case journalCompleteFrom:
		return "complete from"
	}
	return fmt.Sprintf("journalStep(%d)", int(s))
}

// cachePlan is how ensureSlot recovers the cache, in order: Step, then the
// changed rules and partitions when FlushChanged, then Mark recorded as the
// applied position, then Journal at the slot's position.
type cachePlan struct {
	Step cacheStep
	// Reason is the flush reason of a step that flushes every key space
	// (mapping.Reason*); empty otherwise.
	Reason string
	// Cause is what the step logs as its cause: SLOT LOST's, or the heal's.
	Cause string
	// HealFrom is the position cacheHeal replays the journal from, when
	// Replay (on_redis_reset = "replay"); otherwise it flushes.
	HealFrom wal.LSN
	Replay   bool
	// FlushChanged: the step did not flush every key space, so the rules
	// added or changed and the partition trees changed since the cache was
	// last streamed have their key spaces flushed.
	FlushChanged bool
	// Mark is the applied position recorded once the cache is recovered:
	// the slot's position, or the cache's when it is ahead (never moved
	// back).
	Mark    wal.LSN
	Journal journalStep
}

// planCache decides how the cache is recovered for the slot's position.
func planCache(in cacheInput) cachePlan {
	lost, created := len(in.Slot.Lost) > 0, in.Slot.Create
	var p cachePlan
	switch {
	case lost:
		p.Step, p.Reason = cacheFlushLost, mapping.ReasonSlotLost
		p.Cause = strings.Join(in.Slot.Lost, "; ")
	case created:
		p.Step, p.Reason = cacheFlushNewSlot, mapping.ReasonSlot
	case !in.AppliedOK:
		p.Step, p.Reason = cacheFlushNoPosition, mapping.ReasonCacheReset
	case in.Applied < in.Start && in.Journaled >= in.Start:
		// This instance applied and journaled everything up to the slot's
		// position, but the cache lost part of it: a restored backup.
		p.Step, p.HealFrom, p.Replay = cacheHeal, in.Applied, in.Policy != config.ResetFlush
		p.Cause = fmt.Sprintf("the cache's applied position %s is behind the slot's %s (Redis restored from an older backup)", in.Applied, in.Start)
	case in.Applied < in.Start:
		// Neither the cache nor this instance's journal reaches the slot's
		// position: someone advanced the slot (or the cache was restored
		// while another instance was streaming). The changes in between
		// were never applied here, and no replay can bring them back.
		p.Step, p.Reason = cacheFlushAhead, mapping.ReasonSlotLost
	}
	p.FlushChanged = p.Step == cacheKeep || p.Step == cacheHeal
	// The cache now reflects everything before Start; effects beyond an
	// older position are redelivered. Never move the position back.
	p.Mark = in.Start
	if in.AppliedOK && in.Applied > in.Start && !lost && !created {
		p.Mark = in.Applied
	}
	switch {
	case in.Slot.SystemChanged:
		// Positions of another system or timeline mean nothing here.
		p.Journal = journalReset
	case created || lost || in.Journaled < in.Start:
		p.Journal = journalCompleteFrom
	}
	return p
}

// changedRules are the rules whose key spaces flushNewRules flushes by
// name: those whose fingerprint differs from the one recorded (added or
// changed since the last instance streamed), but for the rules of tables
// just added to the publication, which are flushed by table. Without a
// record (ok false: the first start of a version that keeps one), none.
func changedRules(rules []*config.Rule, recorded map[string]string, ok bool, addedTables []string) []string {
	if !ok {
		return nil
	}
	var changed []string
	for _, r := range rules {
		if recorded[r.Name] != r.Fingerprint && !slices.Contains(addedTables, r.Table.String()) {
			changed = append(changed, r.Name)
		}
	}
	return changed
}
