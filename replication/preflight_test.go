package replication

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
)

// preflightSchema has a column of every kind the trial rows must render.
const preflightSchema = `
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE users (
	id bigint PRIMARY KEY, email text, org_id int NOT NULL, active boolean NOT NULL DEFAULT true,
	created_at timestamptz, price numeric(10,2), score float8, uid uuid, profile jsonb, tags text[],
	scores int[], feeling mood, born date, span interval, addr inet);
ALTER TABLE users REPLICA IDENTITY FULL;
CREATE VIEW active_users AS SELECT * FROM users WHERE active;
CREATE MATERIALIZED VIEW user_counts AS SELECT org_id, count(*) FROM users GROUP BY org_id;
CREATE TABLE events (id bigint NOT NULL, name text);
ALTER TABLE events REPLICA IDENTITY FULL;`

// connectTestDatabase connects to a database of the test's own, closed at
// cleanup.
func connectTestDatabase(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// preflightRules runs Preflight on a database with preflightSchema and
// returns the diagnostics about rules, with the parser's files.
func preflightRules(t *testing.T, rules string) (hcl.Diagnostics, *config.Parser) {
	t.Helper()
	t.Parallel()
	ctx := context.Background()
	conn := connectTestDatabase(t)
	if _, err := conn.Exec(ctx, preflightSchema); err != nil {
		t.Fatal(err)
	}
	p := config.NewParser()
	cfg, diags := p.Parse([]byte(rules), "rules.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %s", p.FormatDiagnostics(diags))
	}
	diags, err := Preflight(ctx, conn, cfg.Rules, PreflightOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return diagsAbout(diags, "rule "), p
}

// diagsAbout returns the diagnostics whose summary starts with prefix.
func diagsAbout(diags hcl.Diagnostics, prefix string) hcl.Diagnostics {
	var out hcl.Diagnostics
	for _, d := range diags {
		if strings.HasPrefix(d.Summary, prefix) {
			out = append(out, d)
		}
	}
	return out
}

// Templates that fail on any row are errors at the template, saying what
// the daemon would do instead; the ones that are fine give nothing.
func TestPreflightEvaluatesTemplatesOnATrialRow(t *testing.T) {
	for _, tc := range []struct {
		name, rule string
		// where is "line:col" of the diagnostic's subject; want are in
		// its text, severity its severity. where "" means no diagnostic.
		where    string
		severity hcl.DiagnosticSeverity
		want     []string
	}{
		{
			name: "when is a string",
			rule: `rule "u" {
  table = "public.users"
  when  = "yes"
  invalidate { keys = ["user:${row.id}"] }
}`,
			where: "3:11", severity: hcl.DiagError,
			want: []string{`rule "u": when fails on every row of public.users`, "when must be a bool", "act on the row as if when were true on every change", "when must give true or false"},
		},
		{
			name: "value is an object",
			rule: `rule "u" {
  table = "public.users"
  refresh {
    key   = "user:${row.id}"
    value = row
    ttl   = "1h"
  }
}`,
			where: "5:13", severity: hcl.DiagError,
			want: []string{`rule "u": value fails on every row of public.users`, "value must be a string", "delete the key instead of writing the row on every change", "jsonencode(row)"},
		},
		{
			name: "arithmetic on a string",
			rule: `rule "u" {
  table = "public.users"
  invalidate { keys = ["user:${row.id * "x"}"] }
}`,
			where: "3:41", severity: hcl.DiagError,
			want: []string{`rule "u": key fails on every row of public.users`, "number is required", "flush the rule's whole key space", `trial row id bigint = "1"`},
		},
		{
			name: "value on a NULL",
			rule: `rule "u" {
  table = "public.users"
  refresh {
    key   = "user:${row.id}"
    value = "mail: ${row.email}"
    ttl   = "1h"
  }
}`,
			where: "5:22", severity: hcl.DiagWarning,
			want: []string{`rule "u": value fails when public.users.email is NULL`, "each change whose email is NULL would delete the key instead of writing the row", `coalesce(row.email, "")`},
		},
		{
			name: "old in a key",
			rule: `rule "u" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}", "was:${old.email}"] }
}`,
			where: "3:52", severity: hcl.DiagError,
			want: []string{`rule "u": key fails on every INSERT of public.users`, "null value", "each INSERT would flush the rule's whole key space", "old is null on an INSERT"},
		},
		{
			name: "text that may not fit",
			rule: `rule "u" {
  table = "public.users"
  invalidate { keys = ["domain:${split("@", row.email)[1]}"] }
}`,
			where: "3:55", severity: hcl.DiagWarning,
			want: []string{`rule "u": key fails on some trial rows of public.users`, `email text = "x"`, "each change with such values would flush the rule's whole key space"},
		},
		{
			name: "a function that refuses every probe",
			rule: `rule "u" {
  table = "public.users"
  invalidate { keys = ["code:${regex("^[A-Z]{3}$", row.email)}"] }
}`,
			where: "3:32", severity: hcl.DiagWarning,
			want: []string{`rule "u": key fails on some trial rows of public.users`, "pattern did not match"},
		},
		{
			name: "templates that fit the types",
			rule: `rule "u" {
  table = "public.users"
  when  = row.active && row.org_id > 0 && row.feeling != "sad"
  invalidate {
    keys = ["user:${row.id}", "user:email:${lower(row.email)}", "org:${row.org_id}:${formatdate("YYYY", row.created_at)}",
            "kind:${row.profile.kind}", "tag:${row.tags[3]}", "p:${row.price}:${row.score + 1}:${row.uid}:${row.born}:${row.span}:${row.addr}"]
    tags = ["org:${row.org_id}", "s:${row.scores[0] + 1}"]
  }
}
rule "cached" {
  table = "public.users"
  refresh {
    key   = "user:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diags, p := preflightRules(t, tc.rule)
			if tc.where == "" {
				if len(diags) != 0 {
					t.Fatalf("want no diagnostics, got:\n%s", p.FormatDiagnostics(diags))
				}
				return
			}
			if len(diags) != 1 {
				t.Fatalf("want one diagnostic, got %d:\n%s", len(diags), p.FormatDiagnostics(diags))
			}
			d := diags[0]
			text := p.FormatDiagnostics(diags)
			if d.Severity != tc.severity || d.Subject == nil || fmt.Sprintf("%d:%d", d.Subject.Start.Line, d.Subject.Start.Column) != tc.where {
				t.Errorf("want a %v at rules.hcl:%s, got:\n%s", tc.severity, tc.where, text)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("diagnostic lacks %q:\n%s", w, text)
				}
			}
		})
	}
}

// A mistyped table gets a "did you mean" at the table attribute; a view one
// error that says what to do, and nothing about its replica identity.
func TestPreflightTableDiagnostics(t *testing.T) {
	for _, tc := range []struct{ name, table, want string }{
		{"mistyped", "public.user", "table public.user does not exist; did you mean public.users?"},
		{"view", "public.active_users", "public.active_users is a view: logical replication publishes only tables; point the rule at the underlying table"},
		{"materialized view", "public.user_counts", "public.user_counts is a materialized view: logical replication publishes only tables"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diags, p := preflightRules(t, fmt.Sprintf(`rule "u" {
  invalidate { keys = ["user:${row.id}"] }
  table = %q
}`, tc.table))
			text := p.FormatDiagnostics(diags)
			if len(diags) != 1 {
				t.Fatalf("want one diagnostic, got %d:\n%s", len(diags), text)
			}
			if s := diags[0].Subject; s == nil || s.Start.Line != 3 || s.Start.Column != 11 {
				t.Errorf("want the diagnostic at the table attribute, rules.hcl:3:11, got:\n%s", text)
			}
			if !strings.Contains(text, tc.want) {
				t.Errorf("diagnostic lacks %q:\n%s", tc.want, text)
			}
		})
	}
}

// TestPreflightBackfillNeedsPrimaryKey: backfill = true on a table without a
// primary key is refused at the attribute, with the fix; with a primary
// key, or without backfill, nothing is said.
func TestPreflightBackfillNeedsPrimaryKey(t *testing.T) {
	for _, tc := range []struct{ name, table, backfill, want string }{
		{"no primary key", "public.events", "true", `backfill = true, but public.events has no primary key; a backfill reads the table in primary-key order, chunk by chunk. Run ALTER TABLE public.events ADD PRIMARY KEY (...); or remove backfill = true.`},
		{"primary key", "public.users", "true", ""},
		{"no backfill", "public.events", "false", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diags, p := preflightRules(t, fmt.Sprintf(`rule "r" {
  table = %q
  refresh {
    key      = "r:${row.id}"
    value    = jsonencode(row)
    ttl      = "1h"
    backfill = %s
  }
}`, tc.table, tc.backfill))
			text := p.FormatDiagnostics(diags)
			if tc.want == "" {
				if len(diags) != 0 {
					t.Errorf("want no diagnostic, got:\n%s", text)
				}
				return
			}
			if len(diags) != 1 || !strings.Contains(text, tc.want) {
				t.Fatalf("want one diagnostic saying %q, got:\n%s", tc.want, text)
			}
			if s := diags[0].Subject; s == nil || s.Start.Line != 7 || s.Start.Column != 16 {
				t.Errorf("want the diagnostic at the backfill attribute, rules.hcl:7:16, got:\n%s", text)
			}
		})
	}
}
