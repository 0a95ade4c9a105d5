package config_test

import (
	"os"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/cachesync/cachesync/config"
)

// FuzzParse checks that no input makes Parse panic, and that it returns
// either a Config or error diagnostics that say where or what.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile(exampleFile)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	for _, tc := range badInputs {
		f.Add(tc.src)
	}
	f.Add(`rule "a" {
  table    = "public.\"T\"\"x\""
  keyspace = ["a:*"]
  when     = old.x != new.x
  invalidate {
    keys = ["${row.id}", "k:%{ if row.a }yes%{ else }no%{ endif }", <<EOT
h:${row.b}
EOT
    ]
    tags = [format("t:%s", row.c)]
  }
}
`)

	f.Add(`write_behind "c" {
  stream         = "wb:c"
  table          = "public.c"
  key_columns    = ["id", "k"]
  columns        = ["n"]
  batch_size     = 10
  flush_interval = "5ms"
  delete         = false
}
`)

	f.Fuzz(func(t *testing.T, src string) {
		p := config.NewParser()
		p.LookupEnv = func(name string) (string, bool) { return "redis://fuzz:6379", true }
		cfg, diags := p.Parse([]byte(src), "rules.hcl")

		if diags.HasErrors() {
			if cfg != nil {
				t.Fatalf("Config returned with errors: %s", diags.Error())
			}
			for _, d := range diags {
				if d.Severity == hcl.DiagError && d.Subject == nil && d.Summary == "" {
					t.Fatalf("error diagnostic with neither subject nor summary: %#v", d)
				}
			}
		} else if cfg == nil {
			t.Fatalf("nil Config without errors")
		}
		_ = p.FormatDiagnostics(diags)
		if cfg == nil {
			return
		}

		if len(cfg.Rules)+len(cfg.WriteBehinds) == 0 {
			t.Fatalf("Config without rules or write_behind blocks")
		}
		streams := map[string]bool{}
		for _, wb := range cfg.WriteBehinds {
			if streams[wb.Stream] || wb.Stream == "" || len(wb.KeyColumns) == 0 || wb.Table.Name == "" ||
				wb.BatchSize < 1 || wb.BatchSize > config.MaxWriteBehindBatchSize ||
				wb.FlushInterval <= 0 || wb.FlushInterval > config.MaxWriteBehindFlushInterval {
				t.Fatalf("bad write_behind accepted: %+v", wb)
			}
			streams[wb.Stream] = true
		}
		names := map[string]bool{}
		for _, r := range cfg.Rules {
			if names[r.Name] {
				t.Fatalf("duplicate rule %q accepted", r.Name)
			}
			names[r.Name] = true
			set := 0
			for _, present := range []bool{r.Invalidate != nil, r.BumpVersion != nil, r.Refresh != nil} {
				if present {
					set++
				}
			}
			if set != 1 {
				t.Fatalf("rule %q has %d action blocks", r.Name, set)
			}
			switch r.Action {
			case config.ActionInvalidate:
				if r.Invalidate == nil || len(r.Invalidate.Keys)+len(r.Invalidate.Tags) == 0 {
					t.Fatalf("rule %q: bad invalidate", r.Name)
				}
			case config.ActionBumpVersion:
				if r.BumpVersion == nil || len(r.BumpVersion.Namespaces) == 0 {
					t.Fatalf("rule %q: bad bump_version", r.Name)
				}
			case config.ActionRefresh:
				rf := r.Refresh
				if rf == nil || rf.Key == nil || rf.Value == nil || rf.TTL <= 0 || rf.Jitter < 0 || rf.Jitter >= rf.TTL {
					t.Fatalf("rule %q: bad refresh %+v", r.Name, rf)
				}
			default:
				t.Fatalf("rule %q: action %v", r.Name, r.Action)
			}
			if r.Table.Schema == "" || r.Table.Name == "" {
				t.Fatalf("rule %q: table %#v", r.Name, r.Table)
			}
			for _, tm := range r.Templates() {
				if tm == nil || tm.Expr == nil {
					t.Fatalf("rule %q: nil template", r.Name)
				}
				if tm.Prefix == "" && len(r.Keyspace) == 0 {
					t.Fatalf("rule %q: template without prefix or keyspace accepted", r.Name)
				}
			}
			_ = r.KeyColumns()
			_ = r.WhenColumns()
			_ = r.ValueColumns()
		}
	})
}
