package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/verify"
)

// verifyListed bounds the stale and orphaned keys verify lists.
const verifyListed = 20

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check a sample of each rule's cached keys against PostgreSQL and report the consistency in nines; exit 1 if a key is stale or orphaned",
		Flags: flags(databaseURLFlag(), redisURLFlag(),
			&cli.StringFlag{Name: "rule", Usage: "check only this rule (default: every rule)"},
			&cli.IntFlag{Name: "sample", Value: verify.DefaultSample, Usage: "rows and keys sampled per rule, in each direction"},
			&cli.DurationFlag{Name: "window", Value: verify.DefaultWindow, Usage: "W: a mismatch counts as stale only if it persists after W (changes in flight are not stale)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		),
		Action: runVerify,
	}
}

func runVerify(c *cli.Context) error {
	switch {
	case c.Int("sample") <= 0:
		return usageError("--sample %d: give a positive number of rows and keys per rule", c.Int("sample"))
	case c.Duration("window") < 0:
		return usageError("--window %s: give a duration of zero or more, like 5s", c.Duration("window"))
	}
	e, err := setupEnv(c, true)
	if err != nil {
		return err
	}
	rules, err := verifyRules(e.cfg, c.String("rule"))
	if err != nil {
		return err
	}
	conn, err := connectPG(c, e.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(c.Context))
	rdb, err := redisClient(c, e.cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	rep, err := verify.Run(c.Context, conn, rdb, verify.Options{
		Rules:  rules,
		Sample: c.Int("sample"),
		Window: c.Duration("window"),
		Mapper: daemon.MapperOptions(0, daemon.DefaultMaxQueuedBytes, e.log),
	})
	if err != nil {
		return &exitError{code: 1, msg: "cachesync verify: " + err.Error()}
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printVerify(c.App.Writer, rep)
	}
	if rep.Bad() {
		return &exitError{code: 1, msg: fmt.Sprintf("cachesync verify: %d stale or orphaned keys found", len(rep.Findings))}
	}
	return nil
}

// verifyRules is every rule, or the one --rule names.
func verifyRules(cfg *config.Config, name string) ([]*config.Rule, error) {
	if name == "" {
		return cfg.Rules, nil
	}
	var names []string
	for _, r := range cfg.Rules {
		if r.Name == name {
			return []*config.Rule{r}, nil
		}
		names = append(names, r.Name)
	}
	return nil, usageError("no rule %q%s; the rules are %s", name, didYouMean(name, names), strings.Join(names, ", "))
}

func printVerify(w io.Writer, rep *verify.Report) {
	for _, r := range rep.Rules {
		if r.NotVerified != "" {
			fmt.Fprintf(w, "rule %s (%s): not verified: %s\n", r.Rule, r.Action, r.NotVerified)
			if r.Checked == 0 {
				continue
			}
		}
		fmt.Fprintf(w, "rule %s (%s): checked %d, consistent %d (absent %d), stale %d, orphaned %d, unverifiable %d; %s",
			r.Rule, r.Action, r.Checked, r.Consistent, r.Absent, r.Stale, r.Orphaned, r.Unverifiable, ninesText(r))
		if r.OldestStale > 0 {
			fmt.Fprintf(w, "; oldest stale %s", r.OldestStale.Round(time.Millisecond))
		}
		fmt.Fprintln(w)
		reasons := make([]string, 0, len(r.Notes))
		for reason := range r.Notes {
			reasons = append(reasons, reason)
		}
		sort.Strings(reasons)
		for _, reason := range reasons {
			fmt.Fprintf(w, "  unverifiable: %d: %s\n", r.Notes[reason], reason)
		}
	}
	if !rep.Bad() {
		return
	}
	fmt.Fprintf(w, "%d stale or orphaned keys (still wrong after the %s window)", len(rep.Findings), rep.Window)
	if len(rep.Findings) > verifyListed {
		fmt.Fprintf(w, ", the first %d", verifyListed)
	}
	fmt.Fprintln(w, ":")
	for i, f := range rep.Findings {
		if i == verifyListed {
			break
		}
		age := "age unknown"
		if f.Age >= 0 {
			age = "age " + f.Age.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "  %s %s %s (%s): %s\n", f.Rule, f.Key, f.Result, age, f.Reason)
	}
}

// ninesText shows a rule's consistency: the ratio and the nines, "≥ N
// nines" when nothing was stale (the sample bounds what it can show).
func ninesText(r verify.RuleReport) string {
	switch {
	case r.Nines == nil || r.Ratio == nil:
		return "consistency unknown (nothing verified)"
	case r.NinesAtLeast:
		return fmt.Sprintf("consistency %.6g = ≥ %.1f nines", *r.Ratio, *r.Nines)
	}
	return fmt.Sprintf("consistency %.6g = %.1f nines", *r.Ratio, *r.Nines)
}
