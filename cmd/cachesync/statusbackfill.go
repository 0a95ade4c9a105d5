package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/writer"
)

// backfillReport is a refresh rule's backfill as its checkpoint in Redis
// tells it.
type backfillReport struct {
	Rule string `json:"rule"`
	// Automatic is the rule's backfill = true.
	Automatic bool                 `json:"automatic"`
	State     daemon.BackfillState `json:"state"`
	Rows      int64                `json:"rows"`
	Total     int64                `json:"total"`
	// TotalExact is false while Total is the planner's estimate.
	TotalExact bool       `json:"total_exact"`
	Where      string     `json:"where,omitempty"`
	Started    *time.Time `json:"started,omitempty"`
	Finished   *time.Time `json:"finished,omitempty"`
	// Error is why the last run stopped, if it failed.
	Error string `json:"error,omitempty"`
}

// backfillStatus reads the backfill checkpoints of the refresh rules: those
// with backfill = true, and the others that have one (`cachesync
// backfill`).
func backfillStatus(ctx context.Context, pos *writer.Positions, rules []*config.Rule) ([]backfillReport, error) {
	var out []backfillReport
	for _, r := range rules {
		if r.Refresh == nil {
			continue
		}
		flushes, err := pos.FlushCount(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		cp, ok, err := pos.Checkpoint(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		if !ok && !r.Refresh.Backfill {
			continue
		}
		out = append(out, newBackfillReport(r.Name, r.Refresh.Backfill, cp, ok, flushes))
	}
	return out, nil
}

func newBackfillReport(rule string, automatic bool, cp writer.Checkpoint, ok bool, flushes string) backfillReport {
	rep := backfillReport{Rule: rule, Automatic: automatic, State: daemon.BackfillStateOf(cp, ok, flushes)}
	if !ok {
		return rep
	}
	rep.Rows, rep.Total, rep.TotalExact, rep.Where, rep.Error = cp.Rows, cp.Total, cp.TotalExact, cp.Where, cp.Error
	if !cp.Started.IsZero() {
		rep.Started = &cp.Started
	}
	if !cp.Finished.IsZero() {
		rep.Finished = &cp.Finished
	}
	return rep
}

// printBackfills writes one status line per backfill.
func printBackfills(w io.Writer, cache *cacheReport) {
	if cache.BackfillsError != "" {
		fmt.Fprintf(w, "backfills\tunknown: %s\n", cache.BackfillsError)
	}
	for _, b := range cache.Backfills {
		fmt.Fprintf(w, "backfill %s\t%s\n", b.Rule, b.describe())
	}
}

// describe says where the backfill is, in one line.
func (b backfillReport) describe() string {
	total := fmt.Sprintf("~%d", b.Total)
	if b.TotalExact {
		total = fmt.Sprint(b.Total)
	}
	rows := fmt.Sprintf("%d/%s rows", b.Rows, total)
	started := ""
	if b.Started != nil {
		started = b.Started.UTC().Format(time.RFC3339)
	}
	var s string
	switch b.State {
	case daemon.BackfillNever:
		s = "never run"
		if b.Automatic {
			s += " (cachesync run starts it)"
		}
		return s
	case daemon.BackfillFinished:
		s = fmt.Sprintf("finished: %d rows, %s .. %s", b.Rows, started, b.Finished.UTC().Format(time.RFC3339))
		if b.Started != nil {
			s += fmt.Sprintf(" (%s)", b.Finished.Sub(*b.Started).Round(time.Second))
		}
	case daemon.BackfillRunning:
		s = fmt.Sprintf("running (or interrupted, resumed by the next run): %s since %s", rows, started)
	case daemon.BackfillPartial:
		s = fmt.Sprintf("partial: only rows where %s, %s, started %s", b.Where, rows, started)
	case daemon.BackfillFlushed:
		s = fmt.Sprintf("flushed since its last run (%s, started %s)", rows, started)
		if b.Automatic {
			s += "; cachesync run starts it again"
		}
	}
	if b.Error != "" {
		s += "; last error: " + b.Error
	}
	return s
}
