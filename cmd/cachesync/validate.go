package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/replication"
)

func validateCommand() *cli.Command {
	return &cli.Command{
		Name:  "validate",
		Usage: "check the rules file (FILE, or --config); with --database-url also tables, columns and replica identity",
		Flags: flags(databaseURLFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print each problem as one JSON line on stdout (file, line, column, severity, rule, message, hint), nothing when there is none"},
			&cli.BoolFlag{Name: "strict", Usage: "exit 1 on warnings too"},
		),
		ArgsUsage: "[FILE]",
		Action: func(c *cli.Context) error {
			path, err := validateFile(c)
			if err != nil {
				return err
			}
			if _, err := newLogger(c); err != nil {
				return err
			}
			p := config.NewParser()
			cfg, diags := p.Load(path)
			if u := c.String("database-url"); u != "" && cfg != nil {
				conn, err := connectPG(c, u)
				if err != nil {
					return err
				}
				defer conn.Close(context.WithoutCancel(c.Context))
				more, err := replication.Preflight(c.Context, conn, cfg.Rules, replication.PreflightOptions{WriteBehinds: cfg.WriteBehinds})
				if err != nil {
					return err
				}
				diags = append(diags, more...)
			}
			return reportValidation(c, p, path, cfg, diags)
		},
	}
}

// validateFile is the file validate checks: its argument, else --config
// (CACHESYNC_CONFIG, default rules.hcl). The argument overrides
// CACHESYNC_CONFIG but must agree with a --config given beside it.
func validateFile(c *cli.Context) (string, error) {
	flag := c.String("config")
	if c.NArg() == 0 {
		return flag, nil
	}
	file := c.Args().First()
	fromEnv := false
	if v, ok := os.LookupEnv("CACHESYNC_CONFIG"); ok && v == flag {
		fromEnv = true // or given twice, the same: nothing contradicts the argument
	}
	if c.IsSet("config") && !fromEnv && filepath.Clean(flag) != filepath.Clean(file) {
		return "", usageError("cachesync validate: --config %s and the argument %s name different files: give one of them", flag, file)
	}
	return file, nil
}

// reportValidation prints the diagnostics, as text on stderr followed by
// "FILE: N rules OK" (", M write_behind blocks" when there are) on stdout when there is no error, or as JSON lines on
// stdout with --json. It fails with exit 1 on an error, and with --strict
// on a warning.
func reportValidation(c *cli.Context, p *config.Parser, path string, cfg *config.Config, diags hcl.Diagnostics) error {
	warnings := 0
	for _, d := range diags {
		if d.Severity == hcl.DiagWarning {
			warnings++
		}
	}
	failed := diags.HasErrors() || (c.Bool("strict") && warnings > 0)
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		for _, rec := range config.DiagnosticRecords(diags) {
			if err := enc.Encode(rec); err != nil {
				return err
			}
		}
		if failed {
			return &exitError{code: 1}
		}
		return nil
	}
	text := strings.TrimRight(p.FormatDiagnostics(diags), "\n")
	if diags.HasErrors() {
		return &exitError{code: 1, msg: text}
	}
	if text != "" {
		fmt.Fprintln(c.App.ErrWriter, text)
	}
	if failed {
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %s (--strict fails on warnings)", path, plural(warnings, "warning"))}
	}
	blocks := plural(len(cfg.Rules), "rule")
	if n := len(cfg.WriteBehinds); n > 0 {
		blocks += ", " + plural(n, "write_behind block")
	}
	fmt.Fprintf(c.App.Writer, "%s: %s OK\n", cfg.Filename, blocks)
	return nil
}

// plural is "1 rule", "2 rules".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
