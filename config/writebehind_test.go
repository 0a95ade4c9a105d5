package config_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/cachesync/cachesync/config"
)

// A file of write_behind blocks only is a valid rules file; absent
// settings take their defaults.
func TestWriteBehindParse(t *testing.T) {
	t.Parallel()
	src := `write_behind "counters" {
  stream         = "wb:counters"
  table          = "public.counters"
  key_columns    = ["id"]
  columns        = ["hits", "note"]
  batch_size     = 200
  flush_interval = "10ms"
  delete         = false
}
write_behind "carts" {
  stream      = "wb:carts"
  table       = "shop.\"Carts\""
  key_columns = ["user_id", "sku"]
}
`
	p := config.NewParser()
	cfg, diags := p.Parse([]byte(src), "rules.hcl")
	requireNoDiags(t, p, diags)
	if len(cfg.Rules) != 0 || len(cfg.WriteBehinds) != 2 {
		t.Fatalf("got %d rules and %d write_behind blocks, want 0 and 2", len(cfg.Rules), len(cfg.WriteBehinds))
	}
	c, carts := cfg.WriteBehinds[0], cfg.WriteBehinds[1]
	if c.Name != "counters" || c.Stream != "wb:counters" || c.Table.String() != "public.counters" ||
		!slices.Equal(c.KeyColumns, []string{"id"}) || !slices.Equal(c.Columns, []string{"hits", "note"}) ||
		c.BatchSize != 200 || c.FlushInterval != 10*time.Millisecond || c.Delete {
		t.Errorf("counters = %+v", c)
	}
	if carts.Name != "carts" || carts.Table != (config.TableName{Schema: "shop", Name: "Carts"}) ||
		!slices.Equal(carts.KeyColumns, []string{"user_id", "sku"}) || carts.Columns != nil ||
		carts.BatchSize != config.DefaultWriteBehindBatchSize || carts.FlushInterval != config.DefaultWriteBehindFlushInterval || !carts.Delete {
		t.Errorf("carts (defaults) = %+v", carts)
	}
	for what, r := range map[string]hcl.Range{"decl": c.DeclRange, "table": c.TableRange, "stream": c.StreamRange,
		"key_columns": c.KeyColumnsRange, "columns": c.ColumnsRange, "delete": c.DeleteRange} {
		want := map[string]string{"decl": "1:1", "table": "3:20", "stream": "2:20", "key_columns": "4:20", "columns": "5:20", "delete": "8:20"}[what]
		if got := posString(r.Start); got != want || r.Filename != "rules.hcl" {
			t.Errorf("%s range at %s:%s, want rules.hcl:%s", what, r.Filename, got, want)
		}
	}
	if posString(carts.KeyColumnsRange.Start) != "13:17" || carts.DeleteRange != carts.DeclRange {
		t.Errorf("carts: key_columns at %s, delete at %v (want 13:17 and the header)", posString(carts.KeyColumnsRange.Start), carts.DeleteRange)
	}
}

// Every mistake in a write_behind block is an error at its attribute (or
// the header when one is missing) that says what to write; all of them are
// reported at once.
func TestWriteBehindBadInputs(t *testing.T) {
	t.Parallel()
	const ok = "  stream = \"wb:c\"\n  table = \"public.c\"\n  key_columns = [\"id\"]\n"
	block := func(body string) string { return "write_behind \"c\" {\n" + body + "}\n" }
	for _, tc := range []struct {
		name, src string
		pos, want string
	}{
		{"missing stream", block("  table = \"public.c\"\n  key_columns = [\"id\"]\n"), "1:1", `write_behind "c": missing stream; add stream = "wb:c"`},
		{"missing table", block("  stream = \"wb:c\"\n  key_columns = [\"id\"]\n"), "1:1", `write_behind "c": missing table; add table = "schema.table"`},
		{"missing key_columns", block("  stream = \"wb:c\"\n  table = \"public.c\"\n"), "1:1", `write_behind "c": missing key_columns; add key_columns = ["id"]`},
		{"empty stream", block("  stream = \"\"\n  table = \"public.c\"\n  key_columns = [\"id\"]\n"), "2:12", `stream must be a non-empty string; write stream = "wb:counters"`},
		{"dead-letter stream", block("  stream = \"wb:c:dead\"\n  table = \"public.c\"\n  key_columns = [\"id\"]\n"), "2:12",
			`stream "wb:c:dead" ends in ":dead"; <stream>:dead is where the entries of <stream> that cannot apply go; name the stream "wb:c"`},
		{"reserved stream", block("  stream = \"cachesync:wb\"\n  table = \"public.c\"\n  key_columns = [\"id\"]\n"), "2:12",
			`stream "cachesync:wb" starts with "cachesync:"; keys starting with "cachesync:" are cachesync's own`},
		{"bad table", block("  stream = \"wb:c\"\n  table = \"Public.C\"\n  key_columns = [\"id\"]\n"), "3:11", `write_behind "c": invalid table "Public.C"; PostgreSQL folds unquoted names to lower case`},
		{"table not a string", block("  stream = \"wb:c\"\n  table = 3\n  key_columns = [\"id\"]\n"), "3:11", `table must be a non-empty string`},
		{"empty key_columns", block("  stream = \"wb:c\"\n  table = \"public.c\"\n  key_columns = []\n"), "4:17", `key_columns must be a non-empty list of column names; write key_columns = ["id"]`},
		{"key_columns not a list", block("  stream = \"wb:c\"\n  table = \"public.c\"\n  key_columns = \"id\"\n"), "4:17", `key_columns must be a non-empty list of column names`},
		{"duplicate key column", block("  stream = \"wb:c\"\n  table = \"public.c\"\n  key_columns = [\"id\", \"id\"]\n"), "4:17", `key_columns lists "id" twice; remove the second one`},
		{"empty column name", block(ok + "  columns = [\"a\", \"\"]\n"), "5:13", `columns: "" is not a column name`},
		{"duplicate column", block(ok + "  columns = [\"a\", \"a\"]\n"), "5:13", `columns lists "a" twice`},
		{"empty columns", block(ok + "  columns = []\n"), "5:13", `columns must be a non-empty list of column names`},
		{"batch_size zero", block(ok + "  batch_size = 0\n"), "5:16", `batch_size must be 1 to 10000 entries; write a whole number from 1 to 10000, for example batch_size = 500 (the default)`},
		{"batch_size too big", block(ok + "  batch_size = 10001\n"), "5:16", `batch_size must be 1 to 10000 entries`},
		{"batch_size fraction", block(ok + "  batch_size = 1.5\n"), "5:16", `batch_size must be 1 to 10000 entries`},
		{"batch_size string", block(ok + "  batch_size = \"500\"\n"), "5:16", `batch_size must be 1 to 10000 entries`},
		{"flush_interval not a duration", block(ok + "  flush_interval = \"soon\"\n"), "5:20", `flush_interval "soon" is not a duration; use a Go duration like "50ms"`},
		{"flush_interval zero", block(ok + "  flush_interval = \"0s\"\n"), "5:20", `flush_interval 0s is out of range; write a duration above 0 and up to 1m0s, for example flush_interval = "50ms" (the default)`},
		{"flush_interval too long", block(ok + "  flush_interval = \"2m\"\n"), "5:20", `flush_interval 2m0s is out of range`},
		{"flush_interval a number", block(ok + "  flush_interval = 50\n"), "5:20", `flush_interval must be a non-empty string; write flush_interval = "50ms"`},
		{"delete not a bool", block(ok + "  delete = \"no\"\n"), "5:12", `delete must be true or false`},
		{"unknown attribute", block(ok + "  flush_intervall = \"1s\"\n"), "5:3", `write_behind "c": Unsupported argument; An argument named "flush_intervall" is not expected here. Did you mean "flush_interval"?`},
		{"variable in a value", block(ok + "  batch_size = row.n\n"), "5:16", `write_behind "c": Variables not allowed`},
		{"invalid name", "write_behind \"a b\" {\n" + ok + "}\n", "1:14", `write_behind "a b": invalid write_behind name`},
		{"duplicate name", block(ok) + "write_behind \"c\" {\n  stream = \"wb:d\"\n  table = \"public.c\"\n  key_columns = [\"id\"]\n}\n", "6:14",
			`duplicate write_behind "c"; the first write_behind "c" is at rules.hcl:1:1; write_behind names must be unique`},
		{"duplicate stream", block(ok) + "write_behind \"d\" {\n  stream = \"wb:c\"\n  table = \"public.d\"\n  key_columns = [\"id\"]\n}\n", "7:12",
			`write_behind "d": stream "wb:c" is also the stream of write_behind "c"; write_behind "c" is at rules.hcl:1:1; one block drains a stream: give this one its own stream`},
		{"missing label", "write_behind {\n" + ok + "}\n", "1:14", `Missing name for write_behind`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := config.NewParser()
			cfg, diags := p.Parse([]byte(tc.src), "rules.hcl")
			if cfg != nil {
				t.Errorf("got a Config despite errors")
			}
			for _, d := range diags {
				if d.Severity == hcl.DiagError && d.Subject != nil && d.Subject.Filename == "rules.hcl" &&
					posString(d.Subject.Start) == tc.pos && strings.Contains(diagMessage(d), tc.want) {
					return
				}
			}
			t.Errorf("no error at %s containing %q; got:\n%s", tc.pos, tc.want, p.FormatDiagnostics(diags))
		})
	}
}

// One parse reports every mistake of every write_behind block.
func TestWriteBehindAllDiagnosticsCollected(t *testing.T) {
	t.Parallel()
	src := `write_behind "a" {
  stream      = "wb:a:dead"
  table       = "public.a"
  key_columns = []
  batch_size  = 0
}
write_behind "b" {
  table = "public.b"
  key_columns = ["id"]
  delete = 1
}
`
	_, diags := config.Parse([]byte(src), "rules.hcl")
	var got []string
	for _, d := range diags {
		got = append(got, posString(d.Subject.Start))
	}
	if want := []string{"2:17", "4:17", "5:17", "7:1", "10:12"}; !slices.Equal(got, want) {
		t.Errorf("diagnostics at %v, want %v:\n%s", got, want, config.FormatDiagnostics(diags, nil))
	}
}

// An invalidate rule on a write_behind table is valid but warned about at
// its invalidate block; a refresh rule on it is the recommended rule and
// gives nothing, and so does an invalidate rule on another table.
func TestWriteBehindInvalidateRuleWarns(t *testing.T) {
	t.Parallel()
	src := `write_behind "counters" {
  stream      = "wb:counters"
  table       = "public.counters"
  key_columns = ["id"]
}
rule "counter" {
  table = "counters"
  invalidate { keys = ["counter:${row.id}"] }
}
rule "counter_value" {
  table = "public.counters"
  refresh {
    key   = "counter:${row.id}"
    value = jsonencode({ id = row.id, hits = row.hits })
    ttl   = "1h"
  }
}
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`
	p := config.NewParser()
	cfg, diags := p.Parse([]byte(src), "rules.hcl")
	if cfg == nil || len(diags) != 1 {
		t.Fatalf("want a config and one warning, got:\n%s", p.FormatDiagnostics(diags))
	}
	d := diags[0]
	const want = `rule "counter": invalidates keys of public.counters, the table of write_behind "counters"; write_behind "counters" (rules.hcl:1:1) writes the application's rows into public.counters`
	if d.Severity != hcl.DiagWarning || posString(d.Subject.Start) != "8:3" || !strings.HasPrefix(diagMessage(d), want) {
		t.Errorf("got %s, want a warning at 8:3: %s", p.FormatDiagnostics(diags), want)
	}
	if h, _ := d.Extra.(config.Hint); !strings.Contains(string(h), "refresh rule whose value is exactly what the application writes") {
		t.Errorf("hint = %q", h)
	}
}
