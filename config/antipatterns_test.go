package config_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/cachesync/cachesync/config"
)

// refreshRule is a refresh rule of public.users whose value is value.
func refreshRule(value string) string {
	return "rule \"u\" {\n  table = \"public.users\"\n  refresh {\n    key   = \"user:${row.id}\"\n    value = " + value + "\n    ttl   = \"1h\"\n  }\n}\n"
}

// wantWarnings parses src and checks its diagnostics, as "line:col
// severity: message | hint", against want.
func wantWarnings(t *testing.T, src string, want []string) {
	t.Helper()
	if got := warnings(t, src); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s\nin\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), src)
	}
}

// warnings parses src and returns its diagnostics as "line:col severity:
// message | hint", failing on an error.
func warnings(t *testing.T, src string) []string {
	t.Helper()
	cfg, diags := config.Parse([]byte(src), "rules.hcl")
	if cfg == nil || diags.HasErrors() {
		t.Fatalf("a warning must not stop the file:\n%s\n%s", src, config.FormatDiagnostics(diags, nil))
	}
	var out []string
	for _, r := range config.DiagnosticRecords(diags) {
		out = append(out, fmt.Sprintf("%d:%d %s: %s | %s", r.Line, r.Column, r.Severity, r.Message, r.Hint))
	}
	return out
}

const valueHint = "write only the columns the cache needs: value = jsonencode({ id = row.id, name = row.name })"

// TestSensitiveValueWarns: a refresh value that copies a column that looks
// sensitive, or one listed in sensitive_columns, into Redis is warned about
// at the column, once per column; a whole row only when sensitive_columns
// is given (the file does not say which columns the table has).
func TestSensitiveValueWarns(t *testing.T) {
	t.Parallel()
	named := func(pos, col, why string) string {
		return pos + ` warning: refresh value writes column "` + col + `" to Redis; ` + why + ": every refresh copies it into the cache, where whoever can read Redis reads it | " + valueHint
	}
	const looks, listed = "its name looks sensitive", "it is listed in sensitive_columns"
	tests := []struct {
		name, src string
		want      []string
	}{
		{"password column", refreshRule("jsonencode({ id = row.id, pw = row.password_hash })"),
			[]string{named("5:44", "password_hash", looks)}},
		{"camel-case token, read twice, once warned", refreshRule(`"${row.resetToken}:${row.resetToken}"`),
			[]string{named("5:16", "resetToken", looks)}},
		{"index syntax", refreshRule(`row["API_Key"]`),
			[]string{named("5:13", "API_Key", looks)}},
		{"ssn as a word", refreshRule("jsonencode([new.user_ssn, row.lessons])"),
			[]string{named("5:25", "user_ssn", looks)}},
		{"harmless columns", refreshRule("jsonencode({ id = row.id, name = row.name, lessons = row.lessons, tokens_used = row.tokens_used })"), nil},
		{"whole row without sensitive_columns", refreshRule("jsonencode(row)"), nil},
		{"listed column, any case", "sensitive_columns = [\"email\"]\n" + refreshRule("jsonencode({ e = row.Email })"),
			[]string{named("6:30", "Email", listed)}},
		{"whole row with sensitive_columns", "sensitive_columns = [\"email\", \"phone\"]\n" + refreshRule("jsonencode(merge(row, { v = 1 }))"),
			[]string{"6:30 warning: refresh value writes every column of public.users to Redis; sensitive_columns lists email, phone: if public.users has one of them, every refresh copies it into the cache, where whoever can read Redis reads it | " + valueHint}},
		{"listed column only in the key", "sensitive_columns = [\"email\"]\n" + strings.Replace(refreshRule("row.name"), "${row.id}", "${row.email}", 1), nil},
		{"invalidate rules write nothing", "rule \"u\" {\n  table = \"public.users\"\n  invalidate { keys = [\"user:${row.password}\"] }\n}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wantWarnings(t, tt.src, tt.want)
		})
	}
}

func TestSensitiveColumnName(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"password": true, "password_hash": true, "UserPassword": true, "passwd": true, "client_secret": true,
		"pwd": true, "token": true, "reset_token": true, "resetToken": true, "ssn": true, "user_ssn": true, "SSN": true,
		"api_key": true, "ApiKey": true, "apikey": true, "private_key": true, "access-key": true, "credit_card": true,
		"card_number": true, "cvv": true,
		"id": false, "name": false, "email": false, "lessons": false, "tokens_used": false, "keynote": false,
		"api": false, "card": false, "passage": false, "assn": false,
	} {
		if got := config.SensitiveColumnName(name); got != want {
			t.Errorf("SensitiveColumnName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestSensitiveColumnsMustBeNames(t *testing.T) {
	t.Parallel()
	for v, pos := range map[string]string{`"email"`: "1:21", `["email", 1]`: "1:21", `[""]`: "1:21", `[row.email]`: "1:22"} {
		src := "sensitive_columns = " + v + "\n" + refreshRule("row.name")
		cfg, diags := config.Parse([]byte(src), "rules.hcl")
		if cfg != nil || !diags.HasErrors() || diags[0].Subject == nil || posString(diags[0].Subject.Start) != pos {
			t.Errorf("sensitive_columns = %s: want an error at %s, got:\n%s", v, pos, config.FormatDiagnostics(diags, nil))
		}
	}
	cfg, diags := config.Parse([]byte("sensitive_columns = [\"email\", \"phone\"]\n"+refreshRule("row.name")), "rules.hcl")
	if diags.HasErrors() || !slices.Equal(cfg.SensitiveColumns, []string{"email", "phone"}) {
		t.Errorf("SensitiveColumns = %v:\n%s", cfg, config.FormatDiagnostics(diags, nil))
	}
}

// TestNeverTrueWhenWarns: a when that is false or null for every row lets
// nothing through. Only conditions whose value holds for every row are
// reported; a comparison with a row's column never is, whatever the
// literal (the column's type is not in the file).
func TestNeverTrueWhenWarns(t *testing.T) {
	t.Parallel()
	const hint = `compare a column of the row, like when = row.status != "archived", or remove the rule`
	never := func(pos, val string) []string {
		return []string{pos + " warning: when is never true; it is " + val + " whatever the row holds, so it lets no row of public.orders through and the rule does nothing | " + hint}
	}
	tests := []struct {
		when string
		want []string
	}{
		{"false", never("2:10", "false")},
		{"1 == 2", never("2:10", "false")},
		{"null", never("2:10", "null")},
		{`"false"`, never("2:10", `"false"`)},
		{`row.status == "open" && false`, never("2:10", "false")},
		{`length("ab") > 5`, never("2:10", "false")},
		{"true", nil},
		{`row.status == "open" || true`, nil},
		{`row.id == "5"`, nil},
		{`row.published`, nil},
		{`old == null`, nil},
		{`"yes"`, nil}, // fails for every row: an evaluation error, not a filter
	}
	for _, tt := range tests {
		wantWarnings(t, "rule \"o\" {\n  when = "+tt.when+"\n  table = \"public.orders\"\n  invalidate { keys = [\"order:${row.id}\"] }\n}\n", tt.want)
	}
}

// TestKeylessTemplateWarns: a key, tag or namespace template that gives
// null or "" for every row names no key. A constant key is fine (a
// namespace bumped by every change, a one-row table).
func TestKeylessTemplateWarns(t *testing.T) {
	t.Parallel()
	const hint = `build the key from the row, like "user:${row.id}"`
	keyless := func(pos, val string) string {
		return pos + " warning: template never names a key; it gives " + val + " whatever the row holds, and a null or empty key is skipped: it names no key for any row of public.orders | " + hint
	}
	tests := []struct {
		action string
		want   []string
	}{
		{`invalidate { keys = [tostring(null), "order:${row.id}"] }`, []string{keyless("4:24", "null")}},
		{`invalidate { tags = [format("%s", "")] }`, []string{keyless("4:24", `""`)}},
		{`bump_version { namespaces = [trimprefix("x", "x")] }`, []string{keyless("4:32", `""`)}},
		{`bump_version { namespaces = ["orders:all"] }`, nil},
		{`invalidate { keys = [format("o:%s", row.id)] }`, nil},
		{`invalidate { keys = [coalesce(row.code, "none")] }`, nil},
	}
	for _, tt := range tests {
		wantWarnings(t, "rule \"o\" {\n  table = \"public.orders\"\n  keyspace = [\"o*\"]\n  "+tt.action+"\n}\n", tt.want)
	}
}

// TestDiagnosticRecords: the JSON form of a diagnostic, field by field.
func TestDiagnosticRecords(t *testing.T) {
	t.Parallel()
	src := "rule \"o.1\" {\n  when = false\n  table = \"public.orders\"\n  invalidate { keys = [\"order:${row.id}\"] }\n}\n"
	_, diags := config.Parse([]byte(src), "dir/rules.hcl")
	diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "cannot read rules file x.hcl", Detail: "no such\nfile"})
	var got []map[string]any
	for _, r := range config.DiagnosticRecords(diags) {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		got = append(got, m)
	}
	want := []map[string]any{
		{"file": "dir/rules.hcl", "line": 2.0, "column": 10.0, "end_line": 2.0, "end_column": 15.0, "severity": "warning", "rule": "o.1",
			"message": "when is never true; it is false whatever the row holds, so it lets no row of public.orders through and the rule does nothing",
			"hint":    `compare a column of the row, like when = row.status != "archived", or remove the rule`},
		{"file": "", "line": 0.0, "column": 0.0, "end_line": 0.0, "end_column": 0.0, "severity": "error", "rule": "",
			"message": "cannot read rules file x.hcl; no such file", "hint": ""},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got\n%v\nwant\n%v", got, want)
	}
}
