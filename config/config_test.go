package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/cachesync/cachesync/config"
)

// exampleFile is the repository's documented rules file.
const exampleFile = "../rules.hcl"

func diagMessage(d *hcl.Diagnostic) string {
	return d.Summary + "; " + d.Detail
}

// requireNoDiags fails on any diagnostic, errors and warnings alike.
func requireNoDiags(t *testing.T, p *config.Parser, diags hcl.Diagnostics) {
	t.Helper()
	if len(diags) > 0 {
		t.Fatalf("unexpected diagnostics:\n%s", p.FormatDiagnostics(diags))
	}
}

func TestExampleRulesFile(t *testing.T) {
	t.Parallel()
	p := config.NewParser()
	p.LookupEnv = func(string) (string, bool) { return "", false }
	cfg, diags := p.Load(exampleFile)
	requireNoDiags(t, p, diags)

	if cfg.Filename != exampleFile {
		t.Errorf("Filename = %q, want %q", cfg.Filename, exampleFile)
	}
	if cfg.Postgres.URL != "" || cfg.Postgres.Slot != "cachesync" || cfg.Postgres.Publication != "cachesync" {
		t.Errorf("Postgres = %+v", cfg.Postgres)
	}
	if cfg.Postgres.Range.Start.Line == 0 || cfg.Redis.Range.Start.Line == 0 {
		t.Errorf("postgres/redis ranges not set: %v %v", cfg.Postgres.Range, cfg.Redis.Range)
	}

	type wantTemplate struct {
		prefix  string
		literal bool
	}
	type wantRule struct {
		name       string
		table      string
		action     config.ActionKind
		templates  []wantTemplate
		keyCols    []string // image.column
		whenCols   []string
		valueCols  []string
		ttl        time.Duration
		jitter     time.Duration
		hasWhen    bool
		tags, keys int
	}
	want := []wantRule{
		{
			name: "user", table: "public.users", action: config.ActionInvalidate,
			templates: []wantTemplate{{"user:", false}, {"user:email:", false}, {"org:", false}},
			keyCols:   []string{"row.id", "row.email", "row.org_id"},
			keys:      2, tags: 1,
		},
		{
			name: "order_lists", table: "public.orders", action: config.ActionBumpVersion,
			templates: []wantTemplate{{"orders:customer:", false}},
			keyCols:   []string{"row.customer_id"},
		},
		{
			name: "product", table: "public.products", action: config.ActionRefresh,
			templates: []wantTemplate{{"product:", false}},
			keyCols:   []string{"row.id"},
			whenCols:  []string{"row.published"},
			valueCols: []string{"row."}, // jsonencode(row): every column
			ttl:       time.Hour, jitter: 5 * time.Minute,
			hasWhen: true,
		},
		{
			name: "page_views", table: "public.page_views", action: config.ActionRefresh,
			templates: []wantTemplate{{"page_views:", false}},
			keyCols:   []string{"row.page"},
			valueCols: []string{"row."},
			ttl:       time.Hour,
		},
	}
	if len(cfg.WriteBehinds) != 1 || cfg.WriteBehinds[0].Stream != "wb:page_views" || cfg.WriteBehinds[0].Table.String() != "public.page_views" {
		t.Errorf("write_behind blocks = %+v, want page_views on wb:page_views", cfg.WriteBehinds)
	}
	if len(cfg.Rules) != len(want) {
		t.Fatalf("got %d rules, want %d", len(cfg.Rules), len(want))
	}
	refs := func(rs []config.ColumnRef) []string {
		var out []string
		for _, r := range rs {
			if r.Range.Start.Line == 0 || r.Range.Filename != exampleFile {
				t.Errorf("column ref %+v has no range", r)
			}
			out = append(out, r.Image+"."+r.Column)
		}
		return out
	}
	for i, w := range want {
		r := cfg.Rules[i]
		t.Run(w.name, func(t *testing.T) {
			if r.Name != w.name || r.Table.String() != w.table || r.Action != w.action {
				t.Errorf("rule = %s %s %v, want %s %s %v", r.Name, r.Table, r.Action, w.name, w.table, w.action)
			}
			if r.DeclRange.Start.Line == 0 {
				t.Errorf("DeclRange not set")
			}
			if (r.When != nil) != w.hasWhen {
				t.Errorf("When = %v, want present %v", r.When, w.hasWhen)
			}
			if r.Keyspace != nil {
				t.Errorf("Keyspace = %v, want nil", r.Keyspace)
			}
			var got []wantTemplate
			for _, tm := range r.Templates() {
				got = append(got, wantTemplate{tm.Prefix, tm.Literal})
				if tm.Expr == nil || tm.Range.Start.Line == 0 {
					t.Errorf("template %+v lacks expression or range", tm)
				}
			}
			if !slices.Equal(got, w.templates) {
				t.Errorf("templates = %v, want %v", got, w.templates)
			}
			if g := refs(r.KeyColumns()); !slices.Equal(g, w.keyCols) {
				t.Errorf("KeyColumns = %v, want %v", g, w.keyCols)
			}
			if g := refs(r.WhenColumns()); !slices.Equal(g, w.whenCols) {
				t.Errorf("WhenColumns = %v, want %v", g, w.whenCols)
			}
			if g := refs(r.ValueColumns()); !slices.Equal(g, w.valueCols) {
				t.Errorf("ValueColumns = %v, want %v", g, w.valueCols)
			}
			switch r.Action {
			case config.ActionInvalidate:
				if r.Invalidate == nil || r.BumpVersion != nil || r.Refresh != nil {
					t.Fatalf("action blocks inconsistent with %v", r.Action)
				}
				if len(r.Invalidate.Keys) != w.keys || len(r.Invalidate.Tags) != w.tags {
					t.Errorf("keys/tags = %d/%d, want %d/%d", len(r.Invalidate.Keys), len(r.Invalidate.Tags), w.keys, w.tags)
				}
			case config.ActionBumpVersion:
				if r.BumpVersion == nil || r.Invalidate != nil || r.Refresh != nil {
					t.Fatalf("action blocks inconsistent with %v", r.Action)
				}
			case config.ActionRefresh:
				if r.Refresh == nil || r.Invalidate != nil || r.BumpVersion != nil {
					t.Fatalf("action blocks inconsistent with %v", r.Action)
				}
				if r.Refresh.TTL != w.ttl || r.Refresh.Jitter != w.jitter {
					t.Errorf("ttl/jitter = %v/%v, want %v/%v", r.Refresh.TTL, r.Refresh.Jitter, w.ttl, w.jitter)
				}
				if r.Refresh.Value == nil {
					t.Errorf("refresh value missing")
				}
			}
		})
	}
}

// TestExampleTemplatesEvaluate evaluates the example's templates the way the
// mapping package does: variables row, old and new, and Functions().
func TestExampleTemplatesEvaluate(t *testing.T) {
	t.Parallel()
	cfg, diags := config.Load(exampleFile)
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	row := cty.ObjectVal(map[string]cty.Value{
		"id":          cty.NumberIntVal(7),
		"email":       cty.StringVal("Ann@Example.COM"),
		"org_id":      cty.NumberIntVal(3),
		"customer_id": cty.NumberIntVal(11),
		"published":   cty.True,
		"page":        cty.StringVal("/home"),
	})
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{"row": row, "old": cty.NullVal(cty.DynamicPseudoType), "new": row},
		Functions: config.Functions(),
	}
	var got []string
	for _, r := range cfg.Rules {
		for _, tm := range r.Templates() {
			v, diags := tm.Expr.Value(ctx)
			if diags.HasErrors() {
				t.Fatalf("rule %s: %s", r.Name, diags.Error())
			}
			got = append(got, v.AsString())
		}
	}
	want := []string{"user:7", "user:email:ann@example.com", "org:3", "orders:customer:11", "product:7", "page_views:/home"}
	if !slices.Equal(got, want) {
		t.Errorf("keys = %q, want %q", got, want)
	}
	product := cfg.Rules[2]
	if v, diags := product.When.Value(ctx); diags.HasErrors() || !v.True() {
		t.Errorf("when = %#v, %s", v, diags.Error())
	}
	v, diags := product.Refresh.Value.Value(ctx)
	if diags.HasErrors() || !strings.Contains(v.AsString(), `"email":"Ann@Example.COM"`) {
		t.Errorf("value = %#v, %s", v, diags.Error())
	}
}

// badInput is a rules file with an error, the position of the error (as
// line:col) and a part of its message.
type badInput struct {
	name string
	src  string
	pos  string
	want string
}

var badInputs = []badInput{
	{
		name: "syntax error",
		src: `rule "a" {
  table = "public.users"
  invalidate {
    keys = ["user:${row.id"]
  }
}
`,
		pos: "4:14", want: "Unclosed template interpolation",
	},
	{
		name: "unknown attribute",
		src: `rule "a" {
  table = "public.users"
  ttl   = "1h"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "3:3", want: `rule "a": Unsupported argument; An argument named "ttl" is not expected here`,
	},
	{
		name: "unknown block",
		src: `rules "a" {
}
`,
		pos: "1:1", want: `Unsupported block type`,
	},
	{
		name: "duplicate rule name",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
rule "a" {
  table = "public.orders"
  invalidate { keys = ["order:${row.id}"] }
}
`,
		pos: "5:6", want: `duplicate rule "a"; the first rule "a" is at rules.hcl:1:1`,
	},
	{
		name: "bad rule name",
		src: `rule "user by id" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "1:6", want: `rule "user by id": invalid rule name`,
	},
	{
		name: "missing rule name",
		src: `rule {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "1:6", want: `Missing name for rule`,
	},
	{
		name: "two action blocks",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
  bump_version { namespaces = ["users:org:${row.org_id}"] }
}
`,
		pos: "4:3", want: `rule "a": more than one action block; a rule has exactly one of invalidate, bump_version and refresh, and this one already has invalidate at rules.hcl:3:3`,
	},
	{
		name: "no action block",
		src: `rule "a" {
  table = "public.users"
}
`,
		pos: "1:1", want: `rule "a": no action block`,
	},
	{
		name: "missing table",
		src: `rule "a" {
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "1:1", want: `rule "a": missing table; add table = "schema.table"`,
	},
	{
		name: "bad table name",
		src: `rule "a" {
  table = "Public.Users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:11", want: `rule "a": invalid table "Public.Users"; PostgreSQL folds unquoted names to lower case: write "public"`,
	},
	{
		name: "table with three parts",
		src: `rule "a" {
  table = "db.public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:11", want: `write "table" or "schema.table"`,
	},
	{
		name: "table not static",
		src: `rule "a" {
  table = row.table
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:11", want: `rule "a": Variables not allowed`,
	},
	{
		name: "bad slot name",
		src: `postgres {
  slot = "My-Slot"
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:10", want: `postgres: invalid slot name "My-Slot"; replication slot names are 1 to 63 lower-case letters, digits and underscores; for example slot = "my_slot"`,
	},
	{
		name: "bad publication name",
		src: `postgres {
  publication = "Cache Sync"
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:17", want: `invalid publication name "Cache Sync"; use 1 to 63 lower-case letters, digits and underscores, which need no quoting in SQL; for example publication = "cache_sync"`,
	},
	{
		name: "duplicate postgres block",
		src: `postgres {
}
postgres {
  slot = "other"
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "3:1", want: `duplicate postgres block; the first postgres block is at rules.hcl:1:1`,
	},
	{
		name: "variable in postgres block",
		src: `postgres {
  url = database_url
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:9", want: `Variables not allowed`,
	},
	{
		name: "bad redis url",
		src: `redis {
  url = "http://localhost:6379"
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "2:9", want: `redis: url is not a Redis URL`,
	},
	{
		name: "unknown variable",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${rwo.id}"] }
}
`,
		pos: "3:32", want: `rule "a": unknown variable "rwo"; templates can read row, old and new`,
	},
	{
		name: "unknown variable in when",
		src: `rule "a" {
  table = "public.users"
  when  = user.active
  invalidate { keys = ["user:${row.id}"] }
}
`,
		pos: "3:11", want: `unknown variable "user"; templates can read row, old and new`,
	},
	{
		name: "unknown function",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${lowr(row.email)}"] }
}
`,
		pos: "3:32", want: `rule "a": unknown function lowr(); did you mean lower()? available functions: abs,`,
	},
	{
		name: "unknown function in value",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key   = "product:${row.id}"
    value = yamlencode(row)
    ttl   = "1h"
  }
}
`,
		pos: "5:13", want: `unknown function yamlencode()`,
	},
	{
		name: "wrong number of arguments",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${lower(row.email, row.id)}"] }
}
`,
		pos: "3:32", want: `lower() takes 1 argument, got 2`,
	},
	{
		name: "env in a rule",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${env("PREFIX")}"] }
}
`,
		pos: "3:32", want: `env() is only available in the postgres and redis blocks`,
	},
	{
		name: "template without prefix",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["${row.id}"] }
}
`,
		pos: "3:24", want: `key template must start with literal text (like "user:") or the rule must declare keyspace = ["...*"], so that TRUNCATE can flush its keys`,
	},
	{
		name: "function call without prefix",
		src: `rule "a" {
  table = "public.users"
  invalidate {
    keys = ["user:${row.id}"]
    tags = [lower(row.org)]
  }
}
`,
		pos: "5:13", want: `tags template has no literal prefix`,
	},
	{
		name: "empty key",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = [""] }
}
`,
		pos: "3:24", want: `empty keys template`,
	},
	{
		name: "number as key",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = [42] }
}
`,
		pos: "3:24", want: `keys template must be a string`,
	},
	{
		name: "empty keyspace pattern",
		src: `rule "a" {
  table    = "public.users"
  keyspace = [""]
  invalidate { keys = ["${row.id}"] }
}
`,
		pos: "3:14", want: `keyspace must be a list of Redis key patterns; element 0 is not a non-empty string`,
	},
	{
		name: "non-list keys",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = "user:${row.id}" }
}
`,
		pos: "3:23", want: `rule "a": keys must be a list of templates; write the list out, one template per element`,
	},
	{
		name: "for expression as keys",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = [for k in row.tags : "tag:${k}"] }
}
`,
		pos: "3:23", want: `keys must be a list of templates`,
	},
	{
		name: "invalidate without keys or tags",
		src: `rule "a" {
  table = "public.users"
  invalidate { keys = [] }
}
`,
		pos: "3:3", want: `invalidate has no keys and no tags`,
	},
	{
		name: "bump_version without namespaces",
		src: `rule "a" {
  table = "public.users"
  bump_version {
  }
}
`,
		pos: "3:3", want: `bump_version has no namespaces`,
	},
	{
		name: "refresh key list",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key   = ["product:${row.id}"]
    value = jsonencode(row)
    ttl   = "1h"
  }
}
`,
		pos: "4:13", want: `refresh key must be a single template, not a list`,
	},
	{
		name: "refresh without value",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key = "product:${row.id}"
    ttl = "1h"
  }
}
`,
		pos: "3:3", want: `refresh has no value; add value = jsonencode(row)`,
	},
	{
		name: "refresh without ttl",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key   = "product:${row.id}"
    value = jsonencode(row)
  }
}
`,
		pos: "3:3", want: `refresh has no ttl; add ttl = "1h": without an expiry, every key the rule ever wrote stays in Redis and the cache only grows`,
	},
	{
		name: "bad ttl",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key   = "product:${row.id}"
    value = jsonencode(row)
    ttl   = "1 hour"
  }
}
`,
		pos: "6:13", want: `rule "p": ttl "1 hour" is not a duration; use a Go duration like "1h" or "90s"`,
	},
	{
		name: "zero ttl",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key   = "product:${row.id}"
    value = jsonencode(row)
    ttl   = "0s"
  }
}
`,
		pos: "6:13", want: `ttl must be greater than zero`,
	},
	{
		name: "jitter not less than ttl",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key    = "product:${row.id}"
    value  = jsonencode(row)
    ttl    = "1m"
    jitter = "1m"
  }
}
`,
		pos: "7:14", want: `rule "p": jitter 1m0s must be less than ttl 1m0s`,
	},
	{
		name: "negative jitter",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key    = "product:${row.id}"
    value  = jsonencode(row)
    ttl    = "1m"
    jitter = "-1s"
  }
}
`,
		pos: "7:14", want: `jitter must not be negative`,
	},
	{
		name: "backfill not a bool",
		src: `rule "p" {
  table = "public.products"
  refresh {
    key      = "product:${row.id}"
    value    = jsonencode(row)
    ttl      = "1m"
    backfill = "yes"
  }
}
`,
		pos: "7:16", want: `rule "p": backfill must be true or false`,
	},
	{
		name: "backfill in a rule, outside refresh",
		src: `rule "p" {
  table    = "public.products"
  backfill = true
  refresh {
    key   = "product:${row.id}"
    value = jsonencode(row)
    ttl   = "1m"
  }
}
`,
		pos: "3:3", want: `rule "p": backfill is only allowed inside a refresh block`,
	},
	{
		name: "backfill in an invalidate block",
		src: `rule "u" {
  table = "public.users"
  invalidate {
    keys     = ["user:${row.id}"]
    backfill = true
  }
}
`,
		pos: "5:5", want: `rule "u": backfill is only allowed inside a refresh block; only a refresh rule writes values`,
	},
	{
		name: "backfill in a bump_version block",
		src: `rule "o" {
  table = "public.orders"
  bump_version {
    namespaces = ["orders:${row.customer_id}"]
    backfill   = true
  }
}
`,
		pos: "5:5", want: `rule "o": backfill is only allowed inside a refresh block`,
	},
	{
		name: "no rules at all",
		src: `postgres {
  slot = "cachesync"
}
`,
		pos: "1:1", want: `no rule blocks: add at least one rule`,
	},
	{
		name: "empty file",
		src:  "",
		pos:  "1:1", want: `no rule blocks: add at least one rule`,
	},
}

func TestBadInputs(t *testing.T) {
	t.Parallel()
	for _, tc := range badInputs {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := config.NewParser()
			p.LookupEnv = func(string) (string, bool) { return "", false }
			cfg, diags := p.Parse([]byte(tc.src), "rules.hcl")
			if cfg != nil {
				t.Errorf("got a Config despite errors")
			}
			if !diags.HasErrors() {
				t.Fatalf("no error diagnostics, want %s %q", tc.pos, tc.want)
			}
			var found bool
			for _, d := range diags {
				if d.Severity != hcl.DiagError {
					continue
				}
				if d.Subject == nil {
					t.Errorf("error without subject: %s", diagMessage(d))
					continue
				}
				if d.Subject.Filename != "rules.hcl" {
					t.Errorf("subject file = %q", d.Subject.Filename)
				}
				pos := posString(d.Subject.Start)
				if pos == tc.pos && strings.Contains(diagMessage(d), tc.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no error at %s containing %q; got:\n%s", tc.pos, tc.want, p.FormatDiagnostics(diags))
			}
		})
	}
}

func posString(p hcl.Pos) string {
	return fmt.Sprintf("%d:%d", p.Line, p.Column)
}

func hclsyntaxParse(src string) (hcl.Expression, hcl.Diagnostics) {
	return hclsyntax.ParseExpression([]byte(src), "expr.hcl", hcl.InitialPos)
}

// TestAllDiagnosticsCollected checks that one parse reports every error,
// not only the first.
func TestAllDiagnosticsCollected(t *testing.T) {
	t.Parallel()
	src := `postgres {
  slot = "Bad"
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["${row.id}"] }
}
rule "b" {
  table = "public.orders"
  refresh {
    key   = "order:${row.id}"
    value = jsonencode(row)
    ttl   = "soon"
  }
}
rule "c" {
  invalidate { keys = ["c:${rwo.id}"] }
}
`
	_, diags := config.Parse([]byte(src), "rules.hcl")
	var got []string
	for _, d := range diags {
		got = append(got, posString(d.Subject.Start))
	}
	want := []string{"2:10", "6:24", "13:13", "16:1", "17:29"}
	if !slices.Equal(got, want) {
		t.Errorf("diagnostics at %v, want %v:\n%s", got, want, config.FormatDiagnostics(diags, nil))
	}
}

func TestGoodInputs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		src   string
		check func(t *testing.T, cfg *config.Config)
	}{
		{
			name: "template without prefix passes with keyspace",
			src: `rule "a" {
  table    = "public.users"
  keyspace = ["user:*", "u:?"]
  invalidate { keys = ["${row.id}"] }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				r := cfg.Rules[0]
				if !slices.Equal(r.Keyspace, []string{"user:*", "u:?"}) {
					t.Errorf("Keyspace = %v", r.Keyspace)
				}
				if tm := r.Invalidate.Keys[0]; tm.Prefix != "" || tm.Literal {
					t.Errorf("template = %+v", tm)
				}
			},
		},
		{
			name: "literal key, tags only, schema defaults to public",
			src: `rule "all_users" {
  table = "users"
  invalidate {
    tags = ["users:all"]
  }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				r := cfg.Rules[0]
				if r.Table != (config.TableName{Schema: "public", Name: "users"}) {
					t.Errorf("Table = %#v", r.Table)
				}
				tm := r.Invalidate.Tags[0]
				if tm.Prefix != "users:all" || !tm.Literal || len(r.Invalidate.Keys) != 0 {
					t.Errorf("template = %+v", tm)
				}
				if len(r.KeyColumns()) != 0 {
					t.Errorf("KeyColumns = %v", r.KeyColumns())
				}
			},
		},
		{
			name: "quoted table name",
			src: `rule "a" {
  table = "billing.\"Invoice.Lines\""
  invalidate { keys = ["line:${row.id}"] }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				if got := cfg.Rules[0].Table; got != (config.TableName{Schema: "billing", Name: "Invoice.Lines"}) {
					t.Errorf("Table = %#v", got)
				}
			},
		},
		{
			name: "column references",
			src: `rule "a" {
  table = "public.users"
  when  = new.active && old.email != new.email
  invalidate {
    keys = ["user:${row["id"]}", "user:${row.name}:${lower(row.email)}", "all:${jsonencode(row)}", "x:${join(",", [for c in row.tags : c])}"]
  }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				r := cfg.Rules[0]
				var keys, when []string
				for _, c := range r.KeyColumns() {
					keys = append(keys, c.Image+"."+c.Column)
				}
				for _, c := range r.WhenColumns() {
					when = append(when, c.Image+"."+c.Column)
				}
				if want := []string{"row.id", "row.name", "row.email", "row.", "row.tags"}; !slices.Equal(keys, want) {
					t.Errorf("KeyColumns = %v, want %v", keys, want)
				}
				if want := []string{"new.active", "old.email", "new.email"}; !slices.Equal(when, want) {
					t.Errorf("WhenColumns = %v, want %v", when, want)
				}
				if got := r.KeyColumns()[1].Range; posString(got.Start) != "5:42" {
					t.Errorf("row.name range = %v", got)
				}
			},
		},
		{
			name: "heredoc and parenthesised templates",
			src: `rule "a" {
  table = "public.users"
  bump_version {
    namespaces = [("users:${row.org_id}"), <<EOT
users:heredoc:${row.id}
EOT
    ]
  }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				ns := cfg.Rules[0].BumpVersion.Namespaces
				if ns[0].Prefix != "users:" || ns[1].Prefix != "users:heredoc:" {
					t.Errorf("prefixes = %q, %q", ns[0].Prefix, ns[1].Prefix)
				}
			},
		},
		{
			name: "refresh without jitter, when on new",
			src: `rule "p" {
  table = "public.products"
  when  = new.published
  refresh {
    key   = "product:${row.id}"
    value = jsonencode({ name = row.name, price = row.price })
    ttl   = "90s"
  }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				rf := cfg.Rules[0].Refresh
				if rf.TTL != 90*time.Second || rf.Jitter != 0 {
					t.Errorf("ttl/jitter = %v/%v", rf.TTL, rf.Jitter)
				}
				var cols []string
				for _, c := range cfg.Rules[0].ValueColumns() {
					cols = append(cols, c.Column)
				}
				if !slices.Equal(cols, []string{"name", "price"}) {
					t.Errorf("ValueColumns = %v", cols)
				}
			},
		},
		{
			name: "defaults without postgres and redis blocks",
			src: `rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`,
			check: func(t *testing.T, cfg *config.Config) {
				if cfg.Postgres.Slot != config.DefaultSlot || cfg.Postgres.Publication != config.DefaultPublication || cfg.Postgres.URL != "" || cfg.Redis.URL != "" {
					t.Errorf("defaults: %+v %+v", cfg.Postgres, cfg.Redis)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := config.NewParser()
			cfg, diags := p.Parse([]byte(tc.src), "rules.hcl")
			requireNoDiags(t, p, diags)
			tc.check(t, cfg)
		})
	}
}

func TestKeyspaceWithoutPrefixWarns(t *testing.T) {
	t.Parallel()
	src := `rule "a" {
  table    = "public.users"
  keyspace = ["*"]
  invalidate { keys = ["${row.id}"] }
}
`
	cfg, diags := config.Parse([]byte(src), "rules.hcl")
	if cfg == nil || diags.HasErrors() || len(diags) != 1 || diags[0].Severity != hcl.DiagWarning {
		t.Fatalf("want one warning and a config, got %v: %s", cfg, diags.Error())
	}
	if !strings.Contains(diags[0].Summary, `keyspace pattern "*" has no literal prefix`) {
		t.Errorf("warning = %s", diags[0].Summary)
	}
}

func TestEnv(t *testing.T) {
	t.Setenv("CACHESYNC_TEST_DATABASE_URL", "postgres://app@db.internal:5432/app")
	t.Setenv("CACHESYNC_TEST_REDIS_URL", "redis://cache.internal:6379/2")
	src := `postgres {
  url  = env("CACHESYNC_TEST_DATABASE_URL")
  slot = lower("CacheSync_${env("CACHESYNC_TEST_UNSET")}")
}
redis {
  url = env("CACHESYNC_TEST_REDIS_URL")
}
rule "a" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`
	p := config.NewParser()
	cfg, diags := p.Parse([]byte(src), "rules.hcl")
	requireNoDiags(t, p, diags)
	if cfg.Postgres.URL != "postgres://app@db.internal:5432/app" {
		t.Errorf("postgres url = %q", cfg.Postgres.URL)
	}
	if cfg.Postgres.Slot != "cachesync_" {
		t.Errorf("slot = %q (unset variables must give \"\")", cfg.Postgres.Slot)
	}
	if cfg.Redis.URL != "redis://cache.internal:6379/2" {
		t.Errorf("redis url = %q", cfg.Redis.URL)
	}

	// A Parser's LookupEnv replaces the process environment.
	p = config.NewParser()
	p.LookupEnv = func(name string) (string, bool) {
		if name == "CACHESYNC_TEST_REDIS_URL" {
			return "redis://from-lookup:6379", true
		}
		return "", false
	}
	cfg, diags = p.Parse([]byte(src), "rules.hcl")
	requireNoDiags(t, p, diags)
	if cfg.Redis.URL != "redis://from-lookup:6379" {
		t.Errorf("redis url = %q", cfg.Redis.URL)
	}
}

func TestFormatDiagnostics(t *testing.T) {
	t.Parallel()
	src := "rule \"a\" {\n  table = \"public.users\"\n  tabel = \"x\"\n\tinvalidate { keys = [\"user:${rwo.id}\"] }\n}\n"
	p := config.NewParser()
	cfg, diags := p.Parse([]byte(src), "rules.hcl")
	if cfg != nil || len(diags) != 2 {
		t.Fatalf("want 2 errors, got %d: %s", len(diags), diags.Error())
	}
	out := p.FormatDiagnostics(diags)
	for _, want := range []string{
		`rules.hcl:3:3: error: rule "a": Unsupported argument; An argument named "tabel" is not expected here.` + "\n" +
			"    3 |   tabel = \"x\"\n" +
			"      |   ^^^^^\n" +
			"      = hint: a rule block accepts arguments table, when, keyspace; blocks invalidate, bump_version, refresh\n",
		`rules.hcl:4:31: error: rule "a": unknown variable "rwo"; templates can read row, old and new; did you mean "row"?` + "\n" +
			"    4 | \tinvalidate { keys = [\"user:${rwo.id}\"] }\n" +
			"      | \t                             ^^^\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks\n%s\ngot:\n%s", want, out)
		}
	}

	// Without the sources, each diagnostic is one line.
	plain := config.FormatDiagnostics(diags, nil)
	if lines := strings.Split(strings.TrimSpace(plain), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "rules.hcl:3:3: error: ") {
		t.Errorf("plain output:\n%s", plain)
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.hcl")
	src := "rule \"a\" {\n  table = \"public.users\"\n}\n"
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	p := config.NewParser()
	cfg, diags := p.Load(path)
	if cfg != nil || !diags.HasErrors() {
		t.Fatalf("want an error, got %v", cfg)
	}
	if got := p.FormatDiagnostics(diags); !strings.HasPrefix(got, path+":1:1: error: rule \"a\": no action block") {
		t.Errorf("diagnostics:\n%s", got)
	}
	if p.Files()[path] == nil {
		t.Errorf("Files() lacks %s", path)
	}

	_, diags = config.Load(filepath.Join(dir, "missing.hcl"))
	if !diags.HasErrors() || diags[0].Subject != nil || !strings.Contains(diags[0].Summary, "cannot read rules file") {
		t.Errorf("missing file: %s", diags.Error())
	}
}

func TestFunctions(t *testing.T) {
	t.Parallel()
	funcs := config.Functions()
	for _, name := range []string{"lower", "upper", "format", "join", "replace", "substr", "trimspace", "coalesce", "jsonencode", "tostring", "tonumber", "jsondecode", "split", "trim", "trimprefix", "trimsuffix", "length", "concat", "formatdate"} {
		if _, ok := funcs[name]; !ok {
			t.Errorf("Functions() lacks %s", name)
		}
	}
	if _, ok := funcs["env"]; ok {
		t.Errorf("Functions() must not offer env")
	}
	delete(funcs, "lower")
	if _, ok := config.Functions()["lower"]; !ok {
		t.Errorf("Functions() returns a shared map")
	}

	row := cty.ObjectVal(map[string]cty.Value{
		"name":  cty.StringVal("Grüße Welt"),
		"tags":  cty.TupleVal([]cty.Value{cty.StringVal("a"), cty.StringVal("b")}),
		"sku":   cty.StringVal("AB-12/x"),
		"at":    cty.StringVal("2024-05-06T07:08:09Z"),
		"nil":   cty.NullVal(cty.String),
		"toast": cty.UnknownVal(cty.String),
	})
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"row": row}, Functions: config.Functions()}
	tests := []struct{ expr, want string }{
		{`tostring(length(row.name))`, "10"},
		{`"n=${length(row.tags)}"`, "n=2"},
		{`replace(row.sku, "-", "_")`, "AB_12/x"},
		{`replace(row.sku, "/[^a-z0-9]/", "")`, "12x"},
		{`upper(trimspace("  x "))`, "X"},
		{`format("p:%s:%05d", lower(row.sku), 42)`, "p:ab-12/x:00042"},
		{`coalesce(row.nil, "none")`, "none"},
		{`formatdate("YYYY-MM-DD", row.at)`, "2024-05-06"},
		{`join(",", row.tags)`, "a,b"},
	}
	for _, tc := range tests {
		expr, diags := hclsyntaxParse(tc.expr)
		if diags.HasErrors() {
			t.Fatalf("%s: %s", tc.expr, diags.Error())
		}
		v, diags := expr.Value(ctx)
		if diags.HasErrors() {
			t.Errorf("%s: %s", tc.expr, diags.Error())
			continue
		}
		if v.Type() != cty.String || v.AsString() != tc.want {
			t.Errorf("%s = %#v, want %q", tc.expr, v, tc.want)
		}
	}

	// A value that was not sent stays unknown through length and replace,
	// so the mapper can tell it apart from a real value.
	for _, src := range []string{`length(row.toast)`, `replace(row.toast, "/a/", "b")`} {
		expr, _ := hclsyntaxParse(src)
		v, diags := expr.Value(ctx)
		if diags.HasErrors() || v.IsKnown() {
			t.Errorf("%s = %#v, %s; want unknown", src, v, diags.Error())
		}
	}
}

func TestOnRedisReset(t *testing.T) {
	base := "rule \"u\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${row.id}\"] }\n}\n"
	for _, tt := range []struct {
		block string
		want  config.ResetPolicy
		err   string
	}{
		{"", "", ""},
		{"redis {}\n", config.ResetReplay, ""},
		{"redis {\n  on_redis_reset = \"flush\"\n}\n", config.ResetFlush, ""},
		{"redis {\n  on_redis_reset = \"ignore\"\n}\n", "", "rules.hcl:2:20"},
	} {
		cfg, diags := config.Parse([]byte(tt.block+base), "rules.hcl")
		if tt.err != "" {
			if !diags.HasErrors() || !strings.Contains(config.FormatDiagnostics(diags, nil), tt.err) {
				t.Errorf("%q: want an error at %s, got %v", tt.block, tt.err, diags)
			}
			continue
		}
		if diags.HasErrors() {
			t.Fatalf("%q: %v", tt.block, diags)
		}
		if cfg.Redis.OnReset != tt.want {
			t.Errorf("%q: on_redis_reset %q, want %q", tt.block, cfg.Redis.OnReset, tt.want)
		}
	}
}

func TestRedisModes(t *testing.T) {
	t.Parallel()
	base := "rule \"u\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${row.id}\"] }\n}\n"
	good := []struct {
		block string
		check func(config.Redis) bool
	}{
		{"redis {\n  url = \"redis://h:6379/0\"\n}\n", func(r config.Redis) bool { return r.Mode == config.RedisStandalone && r.URL != "" }},
		{"redis {\n  mode = \"cluster\"\n  addresses = [\"10.0.0.1:6379\", \"10.0.0.2:6379\"]\n  password = \"p\"\n  tls = true\n  ca_file = \"/ca.pem\"\n}\n",
			func(r config.Redis) bool {
				return r.Mode == config.RedisCluster && len(r.Addresses) == 2 && r.Password == "p" && r.TLS && r.CAFile == "/ca.pem"
			}},
		{"redis {\n  mode = \"sentinel\"\n  addresses = [\"s1:26379\"]\n  master_name = \"mymaster\"\n  sentinel_password = \"sp\"\n  db = 2\n}\n",
			func(r config.Redis) bool {
				return r.Mode == config.RedisSentinel && r.MasterName == "mymaster" && r.SentinelPassword == "sp" && r.DB == 2
			}},
	}
	for _, tt := range good {
		cfg, diags := config.Parse([]byte(tt.block+base), "rules.hcl")
		if diags.HasErrors() {
			t.Errorf("%q: %s", tt.block, config.FormatDiagnostics(diags, nil))
			continue
		}
		if !tt.check(cfg.Redis) {
			t.Errorf("%q: decoded %+v", tt.block, cfg.Redis)
		}
	}
	bad := []struct{ block, pos, want string }{
		{"redis {\n  mode = \"replicated\"\n}\n", "2:10", `mode "replicated" is not a Redis deployment`},
		{"redis {\n  mode = \"cluster\"\n}\n", "2:10", `mode "cluster" needs addresses`},
		{"redis {\n  mode = \"cluster\"\n  url = \"redis://h:6379\"\n  addresses = [\"h:1\"]\n}\n", "3:9", "url is for a standalone server"},
		{"redis {\n  mode = \"sentinel\"\n  addresses = [\"h:26379\"]\n}\n", "2:10", "needs master_name"},
		{"redis {\n  addresses = [\"h:6379\"]\n}\n", "2:15", "addresses are for cluster and sentinel modes"},
		{"redis {\n  mode = \"cluster\"\n  addresses = [\"nohost\"]\n}\n", "3:15", `address "nohost" is not host:port`},
		{"redis {\n  mode = \"cluster\"\n  addresses = \"h:1\"\n}\n", "3:15", "addresses must be a list"},
		{"redis {\n  mode = \"cluster\"\n  addresses = [\"h:1\"]\n  db = 3\n}\n", "4:8", "a cluster has only database 0"},
		{"redis {\n  mode = \"cluster\"\n  addresses = [\"h:1\"]\n  master_name = \"m\"\n}\n", "4:17", "master_name is for sentinel mode"},
		{"redis {\n  tls = \"yes\"\n}\n", "2:9", "tls must be true or false"},
	}
	for _, tt := range bad {
		_, diags := config.Parse([]byte(tt.block+base), "rules.hcl")
		msg := config.FormatDiagnostics(diags, nil)
		if !diags.HasErrors() || !strings.Contains(msg, "rules.hcl:"+tt.pos) || !strings.Contains(msg, tt.want) {
			t.Errorf("%q: want an error at %s containing %q, got:\n%s", tt.block, tt.pos, tt.want, msg)
		}
	}
}

func TestKeyTemplateReadingOldOrNewWarns(t *testing.T) {
	t.Parallel()
	src := "rule \"u\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${new.id}\", \"user:${row.id}\"] }\n}\n"
	cfg, diags := config.Parse([]byte(src), "rules.hcl")
	if diags.HasErrors() || cfg == nil {
		t.Fatalf("a warning must not stop the file: %s", config.FormatDiagnostics(diags, nil))
	}
	msg := config.FormatDiagnostics(diags, nil)
	if len(diags) != 1 || !strings.Contains(msg, "rules.hcl:3:32") || !strings.Contains(msg, "new is null on DELETE") {
		t.Errorf("want one warning at 3:32 about new on DELETE, got:\n%s", msg)
	}
}

// TestFingerprint: a rule's fingerprint follows what it does to the cache,
// not how it is written.
func TestFingerprint(t *testing.T) {
	t.Parallel()
	const base = `
rule "user" {
  table = "public.users"
  when  = row.active
  invalidate {
    keys = ["user:${row.id}", "user:email:${lower(row.email)}"]
    tags = ["org:${row.org_id}"]
  }
}
rule "page" {
  table = "public.pages"
  refresh {
    key   = "page:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}
`
	fingerprints := func(t *testing.T, src string) map[string]string {
		t.Helper()
		p := config.NewParser()
		cfg, diags := p.Parse([]byte(src), "rules.hcl")
		if diags.HasErrors() {
			t.Fatalf("%s\n%s", src, p.FormatDiagnostics(diags))
		}
		out := map[string]string{}
		for _, r := range cfg.Rules {
			if r.Fingerprint == "" {
				t.Fatalf("rule %s has no fingerprint", r.Name)
			}
			out[r.Name] = r.Fingerprint
		}
		return out
	}
	want := fingerprints(t, base)
	if want["user"] == want["page"] {
		t.Fatal("two different rules share a fingerprint")
	}
	for _, c := range []struct {
		name, old, new string
		changes        string // the rule whose fingerprint must change, "" for none
	}{
		{"layout and comments", `keys = ["user:${row.id}", "user:email:${lower(row.email)}"]`,
			"keys = [ # by id and by email\n      \"user:${row.id}\",\n      \"user:email:${lower(row.email)}\",\n    ]", ""},
		{"a rule moved after another", "", "", ""},
		{"ttl", `ttl   = "1h"`, `ttl = "2h"`, ""},
		// Turning backfill on must not flush the key space it is to fill.
		{"backfill on", `ttl   = "1h"`, "ttl = \"1h\"\n    backfill = true", ""},
		{"a key template", `"user:${row.id}"`, `"user:v2:${row.id}"`, "user"},
		{"a tag added", `tags = ["org:${row.org_id}"]`, `tags = ["org:${row.org_id}", "all"]`, "user"},
		{"when", `when  = row.active`, `when = !row.active`, "user"},
		{"the table", `"public.users"`, `"public.members"`, "user"},
		{"the value", `jsonencode(row)`, `jsonencode({id = row.id})`, "page"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(base, c.old, c.new, 1)
			if c.old == "" {
				i := strings.Index(base, `rule "page"`)
				src = base[i:] + base[:i]
			}
			got := fingerprints(t, src)
			for name, fp := range want {
				if changed := got[name] != fp; changed != (name == c.changes) {
					t.Errorf("rule %s: fingerprint changed = %v, want %v", name, changed, name == c.changes)
				}
			}
		})
	}
}

// TestWhenReadingOnlyNewWarns: the `when` of an invalidate or bump_version
// rule that reads new but neither row nor old gives both images of an UPDATE
// the new row's answer, so a row leaving the filter invalidates nothing.
func TestWhenReadingOnlyNewWarns(t *testing.T) {
	t.Parallel()
	const invalidate = "invalidate { keys = [\"order:${row.id}\"] }"
	const bump = "bump_version { namespaces = [\"orders:${row.id}\"] }"
	const refresh = "refresh {\n    key = \"order:${row.id}\"\n    value = jsonencode(row)\n    ttl = \"1h\"\n  }"
	tests := []struct {
		when, action string
		pos          string // "" when no warning is expected
	}{
		{`new.status != "archived"`, invalidate, "2:10"},
		{`new.status != "archived"`, bump, "2:10"},
		{`new == null || new.status != "archived"`, invalidate, "2:10"},
		{`true && new.flag`, invalidate, "2:18"},
		{`row.status != "archived"`, invalidate, ""},
		{`row.status != "archived" && new.flag`, invalidate, ""},
		{`old == null || new == null || old.price != new.price`, invalidate, ""},
		{`new.status != "archived"`, refresh, ""},
		{`true`, invalidate, ""},
	}
	for _, tt := range tests {
		src := "rule \"o\" {\n  when = " + tt.when + "\n  table = \"public.orders\"\n  " + tt.action + "\n}\n"
		cfg, diags := config.Parse([]byte(src), "rules.hcl")
		msg := config.FormatDiagnostics(diags, map[string]*hcl.File{"rules.hcl": {Bytes: []byte(src)}})
		if cfg == nil || diags.HasErrors() {
			t.Fatalf("%s: a warning must not stop the file:\n%s", tt.when, msg)
		}
		if tt.pos == "" {
			if len(diags) != 0 {
				t.Errorf("when = %s in %.12s: want no warning, got:\n%s", tt.when, tt.action, msg)
			}
			continue
		}
		if len(diags) != 1 || diags[0].Severity != hcl.DiagWarning ||
			!strings.Contains(msg, "rules.hcl:"+tt.pos+": warning: rule \"o\": when reads only new") ||
			!strings.Contains(msg, "^^^") || !strings.Contains(msg, "= hint: write row.<column> instead of new.<column>") {
			t.Errorf("when = %s in %.12s: want one warning at %s with a caret and a hint, got:\n%s", tt.when, tt.action, tt.pos, msg)
		}
	}
}

// TestRefreshBackfill: backfill is false unless a refresh block says true.
func TestRefreshBackfill(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		attr string
		want bool
	}{{"", false}, {"backfill = true", true}, {"backfill = false", false}} {
		src := "rule \"p\" {\n  table = \"public.products\"\n  refresh {\n    key = \"product:${row.id}\"\n    value = jsonencode(row)\n    ttl = \"1h\"\n    " + tt.attr + "\n  }\n}\n"
		p := config.NewParser()
		cfg, diags := p.Parse([]byte(src), "rules.hcl")
		requireNoDiags(t, p, diags)
		if got := cfg.Rules[0].Refresh.Backfill; got != tt.want {
			t.Errorf("%q: Backfill = %v, want %v", tt.attr, got, tt.want)
		}
	}
}
