package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/journal"
	"github.com/cachesync/cachesync/replication"
)

type statusReport struct {
	Cache       *cacheReport          `json:"cache,omitempty"`
	Slot        string                `json:"slot"`
	Exists      bool                  `json:"exists"`
	Info        *replication.SlotInfo `json:"info,omitempty"`
	Publication string                `json:"publication"`
	Tables      []string              `json:"publication_tables"`
	Journal     *journal.Range        `json:"journal,omitempty"`
	Warnings    []string              `json:"warnings,omitempty"`
	Rules       int                   `json:"rules"`
}

func printStatus(w io.Writer, asJSON bool, cfg *config.Config, slot *replication.SlotInfo, pub *replication.Publication, jr *journal.Range, cache *cacheReport, warnRetained int64) error {
	r := statusReport{Slot: cfg.Postgres.Slot, Exists: slot != nil, Info: slot, Publication: cfg.Postgres.Publication, Rules: len(cfg.Rules), Journal: jr, Cache: cache}
	if slot != nil {
		if slot.RetainedBytes > warnRetained {
			r.Warnings = append(r.Warnings, fmt.Sprintf("the slot retains %s of WAL (over %s): is cachesync running and keeping up? Set max_slot_wal_keep_size so a stalled slot cannot fill the disk", bytesString(slot.RetainedBytes), bytesString(warnRetained)))
		}
		if slot.WALStatus == "unreserved" || slot.WALStatus == "lost" {
			r.Warnings = append(r.Warnings, fmt.Sprintf("wal_status is %s: the slot is losing or has lost WAL it needs; cachesync will recreate it and flush every key space", slot.WALStatus))
		}
	}
	if pub != nil {
		r.Tables = pub.Tables
	}
	if cache != nil {
		for _, wb := range cache.WriteBehind {
			if w := wb.warning(); w != "" {
				r.Warnings = append(r.Warnings, w)
			}
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "slot\t%s\n", r.Slot)
	if slot == nil {
		fmt.Fprintf(tw, "state\tmissing (cachesync setup or run creates it)\n")
	} else {
		state := "inactive"
		if slot.Active {
			state = "active"
			if slot.ActivePID != nil {
				state = fmt.Sprintf("active (walsender pid %d)", *slot.ActivePID)
			}
		}
		fmt.Fprintf(tw, "state\t%s\n", state)
		fmt.Fprintf(tw, "confirmed LSN\t%s\n", slot.ConfirmedFlushLSN)
		switch {
		case cache == nil:
			fmt.Fprintf(tw, "applied LSN\t(no Redis URL given)\n")
		case cache.AppliedLSN != nil:
			fmt.Fprintf(tw, "applied LSN\t%s (in Redis; ahead of confirmed while the journal catches up)\n", *cache.AppliedLSN)
		default:
			fmt.Fprintf(tw, "applied LSN\tunknown: %s\n", cache.Error)
		}
		fmt.Fprintf(tw, "current WAL LSN\t%s\n", slot.CurrentLSN)
		fmt.Fprintf(tw, "lag\t%s\n", bytesString(slot.LagBytes))
		fmt.Fprintf(tw, "retained WAL\t%s (restart LSN %s)\n", bytesString(slot.RetainedBytes), slot.RestartLSN)
		fmt.Fprintf(tw, "wal_status\t%s\n", slot.WALStatus)
	}
	if pub == nil {
		fmt.Fprintf(tw, "publication\t%s (missing)\n", r.Publication)
	} else {
		fmt.Fprintf(tw, "publication\t%s: %s\n", r.Publication, strings.Join(pub.Tables, ", "))
	}
	fmt.Fprintf(tw, "rules\t%d\n", r.Rules)
	if cache != nil {
		printBackfills(tw, cache)
		printWriteBehinds(tw, cache.WriteBehind)
	}
	if jr == nil || jr.Entries == 0 {
		fmt.Fprintf(tw, "journal\tempty or absent\n")
	} else {
		fmt.Fprintf(tw, "journal\t%s (%s) .. %s (%s), %s\n", jr.OldestLSN, jr.OldestTime.Format(time.RFC3339), jr.NewestLSN, jr.NewestTime.Format(time.RFC3339), bytesString(jr.Bytes))
	}
	for _, warning := range r.Warnings {
		fmt.Fprintf(tw, "WARNING\t%s\n", warning)
	}
	return tw.Flush()
}

func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
