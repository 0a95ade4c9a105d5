package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/backfill"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/replication"
)

func backfillCommand() *cli.Command {
	return &cli.Command{
		Name:  "backfill",
		Usage: "load a refresh rule's rows into Redis, chunk by chunk, beside a running `cachesync run`; resumable",
		Flags: flags(databaseURLFlag(), redisURLFlag(),
			&cli.StringFlag{Name: "rule", Usage: "the refresh rule to backfill (required)"},
			&cli.StringFlag{Name: "where", Usage: "load only the rows this SQL predicate on the table's columns holds for"},
			&cli.Float64Flag{Name: "rate", Usage: "read at most this many rows per second (0: no limit)"},
			&cli.IntFlag{Name: "chunk-rows", Value: backfill.DefaultChunkRows, Usage: "rows per chunk: per snapshot, write and checkpoint"},
			&cli.BoolFlag{Name: "restart", Usage: "start from the first row, not from the checkpoint"},
		),
		Action: runBackfill,
	}
}

func runBackfill(c *cli.Context) error {
	name := c.String("rule")
	switch {
	case name == "":
		return usageError("--rule is required: the refresh rule to backfill, like --rule product")
	case c.Float64("rate") < 0:
		return usageError("--rate %v: give a number of rows per second, or 0 for no limit", c.Float64("rate"))
	case c.Int("chunk-rows") <= 0:
		return usageError("--chunk-rows %d: give a positive number of rows", c.Int("chunk-rows"))
	}
	e, err := setupEnv(c, true)
	if err != nil {
		return err
	}
	rule, err := backfillRule(e.cfg, name)
	if err != nil {
		return err
	}
	fail := func(err error) error { return &exitError{code: 1, msg: "cachesync backfill: " + err.Error()} }
	// The guards it writes belong to the server's WAL history, as the
	// stream's do.
	repl, err := replication.ConnectReplication(c.Context, e.dbURL)
	if err != nil {
		return fail(err)
	}
	sys, err := repl.IdentifySystem(c.Context)
	repl.Close(context.WithoutCancel(c.Context))
	if err != nil {
		return fail(err)
	}
	conn, err := connectPG(c, e.dbURL)
	if err != nil {
		return err
	}
	// Ctrl-C stops after the current chunk (run's context goes on until
	// then); a second one stops at once.
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.Context))
	defer cancel()
	defer conn.Close(context.WithoutCancel(ctx))
	s, err := e.stack(c, false, nil)
	if err != nil {
		return err
	}
	defer s.close()
	s.writer.SetHistory(keyspace.History(sys.SystemID, sys.Timeline))
	stop := make(chan struct{})
	go func() {
		select {
		case <-c.Context.Done():
		case <-ctx.Done():
			return
		}
		fmt.Fprintln(c.App.ErrWriter, "cachesync backfill: stopping after the current chunk (the checkpoint is kept; Ctrl-C again to stop at once)")
		close(stop)
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(again)
		select {
		case <-again:
			cancel()
		case <-ctx.Done():
		}
	}()
	shown := newProgressView(c.App.ErrWriter, rule.Name)
	defer shown.close()
	p, err := backfill.Run(ctx, conn, s.writer, backfill.Options{
		Rule:            rule,
		Slot:            e.cfg.Postgres.Slot,
		Where:           c.String("where"),
		ChunkRows:       c.Int("chunk-rows"),
		Rate:            c.Float64("rate"),
		Restart:         c.Bool("restart"),
		Count:           true,
		Mapper:          daemon.MapperOptions(0, daemon.DefaultMaxQueuedBytes, e.log),
		OnProgress:      shown.update,
		AfterCheckpoint: backfillFailpoint(),
		Stop:            stop,
		Logger:          e.log,
	})
	shown.close()
	switch {
	case errors.Is(err, backfill.ErrStopped):
		fmt.Fprintf(c.App.Writer, "backfill of rule %q stopped after %d of %s rows; run it again to resume\n", rule.Name, p.Rows, total(p))
		return &exitError{code: 1, msg: "cachesync backfill: stopped before the last row"}
	case err != nil:
		return fail(err)
	}
	resumed := ""
	if p.Resumed {
		resumed = fmt.Sprintf(", resumed from the checkpoint at row %d", p.Rows-p.Read)
	}
	fmt.Fprintf(c.App.Writer, "backfilled rule %q: %d rows (read %d%s), %d keys written, %d left to newer stream writes, in %s\n",
		rule.Name, p.Rows, p.Read, resumed, p.Written, p.Skipped, time.Since(p.Started).Round(time.Millisecond))
	return nil
}

// backfillRule finds the refresh rule --rule names.
func backfillRule(cfg *config.Config, name string) (*config.Rule, error) {
	var names []string
	for _, r := range cfg.Rules {
		if r.Name == name {
			if r.Refresh == nil {
				return nil, usageError("rule %q is not a refresh rule: only a refresh rule writes rows to keys, so only one can be backfilled", name)
			}
			return r, nil
		}
		if r.Refresh != nil {
			names = append(names, r.Name)
		}
	}
	hint := didYouMean(name, names)
	if len(names) == 0 {
		return nil, usageError("no rule %q%s: the rules file has no refresh rule to backfill", name, hint)
	}
	return nil, usageError("no rule %q%s; the refresh rules are %s", name, hint, strings.Join(names, ", "))
}

// backfillFailpoint is CACHESYNC_FAILPOINT=after-backfill-checkpoint (kill
// the process after the first chunk's checkpoint), for fault tests.
func backfillFailpoint() func() {
	fp := failpoint(os.Getenv("CACHESYNC_FAILPOINT"))
	if fp == nil {
		return nil
	}
	return func() { fp("after-backfill-checkpoint") }
}

func total(p backfill.Progress) string {
	if p.TotalExact {
		return fmt.Sprint(p.Total)
	}
	return fmt.Sprintf("about %d", p.Total)
}

// progressView shows a backfill's progress: a bar on a terminal, else a
// line every few seconds.
type progressView struct {
	out         io.Writer
	rule        string
	tty         bool
	bar         *progressbar.ProgressBar
	start, last time.Time
	once        sync.Once
}

// progressLogEvery is how often progress is logged without a terminal.
const progressLogEvery = 5 * time.Second

func newProgressView(out io.Writer, rule string) *progressView {
	v := &progressView{out: out, rule: rule, start: time.Now()}
	if f, ok := out.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		v.tty = true
	}
	return v
}

func (v *progressView) update(p backfill.Progress) {
	if !v.tty {
		if now := time.Now(); p.Done || now.Sub(v.last) >= progressLogEvery {
			v.last = now
			fmt.Fprintf(v.out, "backfill %s: %d of %s rows, %.0f rows/s\n", v.rule, p.Rows, total(p), v.rate(p))
		}
		return
	}
	if v.bar == nil {
		v.bar = progressbar.NewOptions64(max(p.Total, p.Rows, 1),
			progressbar.OptionSetWriter(v.out),
			progressbar.OptionSetDescription("backfill "+v.rule),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("rows"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionFullWidth(),
		)
	}
	if t := max(p.Total, p.Rows); t != v.bar.GetMax64() {
		v.bar.ChangeMax64(t)
	}
	_ = v.bar.Set64(p.Rows)
	if p.Done {
		v.close() // before the run's last log line
	}
}

// rate is the rows read per second since the view was made.
func (v *progressView) rate(p backfill.Progress) float64 {
	if d := time.Since(v.start).Seconds(); d > 0 {
		return float64(p.Read) / d
	}
	return 0
}

func (v *progressView) close() {
	v.once.Do(func() {
		if v.bar != nil {
			_ = v.bar.Finish()
			fmt.Fprintln(v.out)
		}
	})
}
