package replication

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

// Trial evaluation. The parser checks what templates read, not what they
// compute: `when = "yes"`, `value = row` (an object where a string is
// needed) or "${row.id * "x"}" only fail on a real row, and at run time a
// failed evaluation is not an error but a conservative act (a flush, a
// deleted key) logged once a minute. So the preflight builds trial rows of
// each table's real column types, as pgoutput would send them, and runs
// them through the daemon's own mapper as an INSERT, an UPDATE and a
// DELETE: any evaluation that fails becomes a diagnostic at the template.
// Only a failure on every row is certain; one that needs a NULL, a kind of
// change or some text contents is a warning (trialDiagnostics).

// trialEvaluate evaluates the rules on trial rows of their tables (tables
// maps schema.table to what readTable found; every rule's table exists and
// is a table).
func trialEvaluate(ctx context.Context, conn *pgx.Conn, rules []*config.Rule, tables map[string]*tableInfo) (hcl.Diagnostics, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	var failed []trialFailure
	nullColumn := "" // the column the current trial row has NULL, "" for none
	var kind wal.Kind
	probe := 0 // the text probe of the current trial row
	m, err := mapping.New(rules, mapping.Options{
		Logger:      zerolog.Nop(),
		OnEvalError: func(e mapping.EvalError) { failed = append(failed, trialFailure{e, kind, probe, nullColumn}) },
	})
	if err != nil {
		return nil, err
	}
	byTable := map[string][]*config.Rule{}
	var order []string
	for _, r := range rules {
		t := r.Table.String()
		if byTable[t] == nil {
			order = append(order, t)
		}
		byTable[t] = append(byTable[t], r)
	}
	attrs := map[string]map[string]attribute{}
	for i, t := range order {
		ti := tables[t]
		read := readColumns(byTable[t])
		probeRows, err := trialRows(ctx, conn, ti, read)
		if err != nil {
			return nil, err
		}
		row := probeRows[0]
		rel := trialRelation(uint32(i+1), byTable[t][0].Table, ti)
		attrs[t] = map[string]attribute{}
		for _, a := range ti.attrs {
			attrs[t][a.name] = a
		}
		run := func(tuple wal.Tuple) error {
			for _, c := range []wal.Change{
				{Relation: rel, Kind: wal.Insert, New: tuple},
				// The whole old row, whatever the replica identity:
				// checkIdentity reports what it would lack, and here every
				// template is to be evaluated on known values.
				{Relation: rel, Kind: wal.Update, OldKind: wal.OldFull, Old: tuple, New: tuple},
				{Relation: rel, Kind: wal.Delete, OldKind: wal.OldFull, Old: tuple},
			} {
				kind = c.Kind
				if _, err := m.Map(wal.Txn{XID: 1, Changes: []wal.Change{c}}); err != nil {
					return fmt.Errorf("trial %s on %s: %w", c.Kind, rel.QualifiedName(), err)
				}
			}
			return nil
		}
		for p, r := range probeRows {
			probe = p
			if err := run(r); err != nil {
				return nil, err
			}
		}
		probe = 0
		// One NULL at a time, so a warning names the column.
		for i, a := range rel.Columns {
			if !(read[""] || read[a.Name]) || attrs[t][a.Name].notNull || row[i].Kind != wal.Text {
				continue
			}
			nullColumn = a.Name
			withNull := append(wal.Tuple(nil), row...)
			withNull[i] = wal.Value{Kind: wal.Null}
			if err := run(withNull); err != nil {
				return nil, err
			}
		}
		nullColumn = ""
	}
	return trialDiagnostics(failed, byRule(rules), attrs), nil
}

// trialFailure is an evaluation that failed on a trial row, in a change of
// kind, with text columns holding textProbes[probe]; nullColumn is the
// column that row had NULL ("" when none).
type trialFailure struct {
	mapping.EvalError
	kind       wal.Kind
	probe      int // index in textProbes
	nullColumn string
}

func byRule(rules []*config.Rule) map[string]*config.Rule {
	out := make(map[string]*config.Rule, len(rules))
	for _, r := range rules {
		out[r.Name] = r
	}
	return out
}

// readColumns lists the columns the rules read; "" is set when one reads a
// whole row.
func readColumns(rules []*config.Rule) map[string]bool {
	read := map[string]bool{}
	for _, r := range rules {
		for _, ref := range append(append(r.KeyColumns(), r.WhenColumns()...), r.ValueColumns()...) {
			read[ref.Column] = true
		}
	}
	return read
}

// trialHints say how to write each kind of template.
var trialHints = map[string]string{
	"when":  `when must give true or false: compare columns, e.g. when = row.status == "active" or when = row.active`,
	"key":   `a key template must give a string made of the row's scalar columns; check each operator and function against the column's type, e.g. "user:${row.id}"`,
	"value": "a refresh value must be a string: wrap rows and objects in jsonencode(), e.g. value = jsonencode(row)",
}

// trialDiagnostics turns trial failures into diagnostics, one per template
// and cause. An error when the template fails on every trial row, for every
// kind of change it is evaluated for: that is a type mistake, and at run
// time every change fails. A warning when it fails only on some kinds (old.x
// on an INSERT; an error still for a key, whose failure flushes the key
// space), on some text contents, or with a NULL.
func trialDiagnostics(failed []trialFailure, rules map[string]*config.Rule, attrs map[string]map[string]attribute) hcl.Diagnostics {
	type finding struct {
		trialFailure
		diag       *hcl.Diagnostic    // the cause
		fails      map[int][]wal.Kind // per text probe, the kinds failing without NULLs
		nullColumn string             // the first column whose NULL makes it fail
	}
	var found []*finding
	byID := map[string]*finding{}
	for _, f := range failed {
		r := rules[f.Rule]
		if readsInsideCollection(f.Expr, attrs[r.Table.String()]) {
			// row.doc.kind or row.tags[2]: the trial's {} and one-element
			// arrays cannot stand for the application's documents.
			continue
		}
		d := f.Diags[0]
		for _, x := range f.Diags {
			if x.Severity == hcl.DiagError {
				d = x
				break
			}
		}
		if d.Subject == nil {
			d.Subject = f.Expr.Range().Ptr()
		}
		id := fmt.Sprintf("%s\x00%s\x00%s\x00%s", f.Rule, f.Template, d.Subject, d.Summary)
		x := byID[id]
		if x == nil {
			x = &finding{trialFailure: f, diag: d, fails: map[int][]wal.Kind{}}
			byID[id] = x
			found = append(found, x)
		}
		switch {
		case f.nullColumn == "" && !slices.Contains(x.fails[f.probe], f.kind):
			x.fails[f.probe] = append(x.fails[f.probe], f.kind)
		case f.nullColumn != "" && x.nullColumn == "":
			x.nullColumn = f.nullColumn
		}
	}
	var diags hcl.Diagnostics
	failing := map[string]bool{} // templates with an error: nothing more is said of them
	for _, x := range found {
		r := rules[x.Rule]
		tmpl := fmt.Sprintf("%s\x00%s\x00%s", x.Rule, x.Template, x.Expr.Range())
		if failing[tmpl] {
			continue
		}
		table := attrs[r.Table.String()]
		why := strings.TrimSuffix(x.diag.Summary, ".")
		if detail := strings.TrimSpace(x.diag.Detail); detail != "" {
			why += ": " + strings.TrimSuffix(detail, ".")
		}
		// The kinds that fail whatever the text.
		var kinds []wal.Kind
		evaluated := evaluatedOn(r, x.Template)
		for _, k := range evaluated {
			every := true
			for p := range textProbes {
				every = every && slices.Contains(x.fails[p], k)
			}
			if every {
				kinds = append(kinds, k)
			}
		}
		diag := &hcl.Diagnostic{Severity: hcl.DiagWarning, Subject: x.diag.Subject}
		switch {
		case len(kinds) == len(evaluated) && !functionOfText(x.diag, x.Expr, table):
			failing[tmpl] = true
			diag.Severity = hcl.DiagError
			diag.Summary = fmt.Sprintf("rule %q: %s fails on every row of %s", r.Name, x.Template, r.Table)
			diag.Detail = fmt.Sprintf("%s (trial row %s). At run time this would %s on every change.", why, describeRow(x.Expr, table, 0), x.Effect)
			diag.Extra = config.Hint(trialHints[x.Template])
		case len(kinds) > 0 && len(kinds) < len(evaluated):
			var names []string
			for _, k := range kinds {
				names = append(names, strings.ToUpper(k.String()))
			}
			what := strings.Join(names, " and ")
			if x.Template == "key" {
				// A flush of the whole key space on every such change
				// is never what a rule means.
				failing[tmpl] = true
				diag.Severity = hcl.DiagError
			}
			diag.Summary = fmt.Sprintf("rule %q: %s fails on every %s of %s", r.Name, x.Template, what, r.Table)
			diag.Detail = fmt.Sprintf("%s (trial row %s). At run time each %s would %s.", why, describeRow(x.Expr, table, 0), what, x.Effect)
			diag.Extra = config.Hint("old is null on an INSERT and new on a DELETE: read row.<column> (each image in turn), or test old or new against null first")
		case len(x.fails) > 0:
			p := slices.Min(slices.Collect(maps.Keys(x.fails)))
			diag.Summary = fmt.Sprintf("rule %q: %s fails on some trial rows of %s", r.Name, x.Template, r.Table)
			diag.Detail = fmt.Sprintf("%s (trial row %s). At run time each change with such values would %s.", why, describeRow(x.Expr, table, p), x.Effect)
			diag.Extra = config.Hint(`check the template against the values the columns really hold; a conditional can guard it, e.g. length(regexall("@", row.email)) > 0 ? ... : ...`)
		default:
			diag.Summary = fmt.Sprintf("rule %q: %s fails when %s.%s is NULL", r.Name, x.Template, r.Table, x.nullColumn)
			diag.Detail = fmt.Sprintf("%s. At run time each change whose %s is NULL would %s.", why, x.nullColumn, x.Effect)
			diag.Extra = config.Hint(fmt.Sprintf(`give the NULL a value, e.g. coalesce(%s, ""), or declare the column NOT NULL`, rowRef(x.Expr, x.nullColumn)))
		}
		diags = append(diags, diag)
	}
	return diags
}

// functionOfText reports whether a failure is a function's refusal of an
// argument in a template that reads a text column: parseint(row.code, 10)
// or regex(...) may hold for every real value and none of the probes.
func functionOfText(d *hcl.Diagnostic, expr hcl.Expression, attrs map[string]attribute) bool {
	if d.Summary != "Invalid function argument" && d.Summary != "Error in function call" {
		return false
	}
	for _, tr := range expr.Variables() {
		if len(tr) >= 2 {
			if a, ok := tr[1].(hcl.TraverseAttr); ok && attrs[a.Name].category == 'S' && !attrs[a.Name].array {
				return true
			}
		}
	}
	return false
}

// evaluatedOn lists the kinds of change a template is evaluated for: a
// refresh rule's when and value only for the row it writes.
func evaluatedOn(r *config.Rule, template string) []wal.Kind {
	if r.Action == config.ActionRefresh && template != "key" {
		return []wal.Kind{wal.Insert, wal.Update}
	}
	return []wal.Kind{wal.Insert, wal.Update, wal.Delete}
}

// rowRef is how the expression reads column, for a hint.
func rowRef(expr hcl.Expression, column string) string {
	for _, tr := range expr.Variables() {
		if len(tr) >= 2 {
			if a, ok := tr[1].(hcl.TraverseAttr); ok && a.Name == column {
				return tr.RootName() + "." + column
			}
		}
	}
	return "row." + column
}

// readsInsideCollection reports whether expr reads into a json or array
// column (row.doc.kind, row.tags[2]).
func readsInsideCollection(expr hcl.Expression, attrs map[string]attribute) bool {
	for _, tr := range expr.Variables() {
		if len(tr) < 3 {
			continue
		}
		a, ok := tr[1].(hcl.TraverseAttr)
		if !ok {
			continue
		}
		if at, ok := attrs[a.Name]; ok && (at.array || at.typeOID == oidJSON || at.typeOID == oidJSONB) {
			return true
		}
	}
	return false
}

// describeRow shows the values of trial row p in the columns expr reads
// (a few columns when it reads a whole row).
func describeRow(expr hcl.Expression, attrs map[string]attribute, p int) string {
	var names []string
	for _, tr := range expr.Variables() {
		if len(tr) == 1 {
			names = slices.Sorted(maps.Keys(attrs))
			break
		}
		if a, ok := tr[1].(hcl.TraverseAttr); ok && !slices.Contains(names, a.Name) {
			names = append(names, a.Name)
		}
	}
	var parts []string
	for _, name := range names {
		at := attrs[name]
		if len(at.trials) == 0 {
			continue
		}
		if v := at.trials[min(p, len(at.trials)-1)]; v != "" {
			parts = append(parts, fmt.Sprintf("%s %s = %q", name, at.typeName, v))
		}
	}
	const most = 4
	if len(parts) > most {
		parts = append(parts[:most], "...")
	}
	if len(parts) == 0 {
		return "of the table's column types"
	}
	return strings.Join(parts, ", ")
}

// Type OIDs whose trial values need care.
const (
	oidJSON  = 114
	oidJSONB = 3802
)

// trialRelation describes the table as a pgoutput Relation message would:
// published columns only (PostgreSQL 15 does not publish generated ones),
// identity columns flagged.
func trialRelation(id uint32, t config.TableName, ti *tableInfo) *wal.Relation {
	rel := &wal.Relation{ID: id, Namespace: t.Schema, Name: t.Name, ReplicaIdentity: ti.identity}
	for _, a := range ti.attrs {
		if a.generated {
			continue
		}
		key := ti.identity == 'f'
		for _, c := range ti.identCols {
			key = key || c == a.name
		}
		rel.Columns = append(rel.Columns, wal.Column{Name: a.name, TypeOID: a.typeOID, Key: key})
	}
	return rel
}

// textProbes are the contents the trial rows give text columns in turn.
// Types fail whatever the text (a string where a bool is needed); content
// can fail only some (split("@", row.email)[1] on "x"), and is then only
// worth a warning.
var textProbes = []string{"x", "42", "true", "user@example.com", "a-b_c.d:e/f,g h"}

// trialRows builds the trial rows, one per text probe: per published
// column, the first candidate value its type accepts, as PostgreSQL prints
// it under the replication session's settings, so exactly the text pgoutput
// would send. read lists the columns the table's rules read ("" for a whole
// row): a column read by name takes each probe if it is text, another read
// column one value, an unread one none (NotSent: the mapper decodes only
// what rules read), so a wide table costs few queries. A column no candidate
// fits is NotSent (unknown): templates reading it are not judged. The values
// are recorded in ti.attrs[].trials for messages.
func trialRows(ctx context.Context, conn *pgx.Conn, ti *tableInfo, read map[string]bool) ([]wal.Tuple, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("trial row: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	var sets []string
	var args []any
	for k, v := range sessionSettings {
		if k != "application_name" && k != "client_encoding" {
			sets = append(sets, fmt.Sprintf("set_config($%d, $%d, true)", len(args)+1, len(args)+2))
			args = append(args, k, v)
		}
	}
	if _, err := tx.Exec(ctx, "SELECT "+strings.Join(sets, ", "), args...); err != nil {
		return nil, fmt.Errorf("trial row: pin the replication session's settings: %w", err)
	}
	rows := make([]wal.Tuple, len(textProbes))
	for i := range ti.attrs {
		a := &ti.attrs[i]
		if a.generated {
			continue
		}
		probes := textProbes[:1]
		switch {
		case !read[""] && !read[a.name]:
			probes = nil
		case read[a.name] && a.category == 'S' && !a.array:
			probes = textProbes
		}
		var vals []wal.Value
		for _, probe := range probes {
			cands := a.candidates()
			if len(probes) > 1 {
				cands = append([]string{probe}, cands...)
			}
			v := wal.Value{Kind: wal.NotSent}
			for _, cand := range cands {
				text, ok, err := castText(ctx, tx, cand, a.typeName)
				if err != nil {
					return nil, err
				}
				if ok {
					v = wal.Value{Kind: wal.Text, Text: text}
					break
				}
			}
			vals = append(vals, v)
			a.trials = append(a.trials, v.Text)
		}
		for p := range rows {
			v := wal.Value{Kind: wal.NotSent}
			if len(vals) > 0 {
				v = vals[min(p, len(vals)-1)]
			}
			rows[p] = append(rows[p], v)
		}
	}
	return rows, nil
}

// castText casts text to the type and returns the value as the type's output
// function prints it; ok is false when the type refuses the text.
func castText(ctx context.Context, tx pgx.Tx, text, typeName string) (string, bool, error) {
	sp, err := tx.Begin(ctx) // a savepoint: a refused cast must not end the transaction
	if err != nil {
		return "", false, fmt.Errorf("trial row: %w", err)
	}
	// typeName comes from format_type, which quotes what needs quoting.
	rows, err := sp.Query(ctx, "SELECT CAST($1::text AS "+typeName+")", pgx.QueryResultFormats{pgx.TextFormatCode}, text)
	if err != nil {
		_ = sp.Rollback(ctx)
		return "", false, nil
	}
	var out string
	var got bool
	for rows.Next() {
		if raw := rows.RawValues(); len(raw) == 1 && raw[0] != nil {
			out, got = string(raw[0]), true
		}
	}
	rows.Close()
	if rows.Err() != nil {
		if err := sp.Rollback(ctx); err != nil {
			return "", false, fmt.Errorf("trial row: %w", err)
		}
		return "", false, nil
	}
	if err := sp.Commit(ctx); err != nil {
		return "", false, fmt.Errorf("trial row: %w", err)
	}
	return out, got, nil
}

// candidates are texts to try for the column's type, most plausible first.
func (a *attribute) candidates() []string {
	var base []string
	switch a.category {
	case 'B':
		base = []string{"true"}
	case 'N':
		base = []string{"1", "42"}
	case 'S':
		base = []string{"x"}
	case 'D':
		base = []string{"2024-01-02 03:04:05.5+00", "2024-01-02", "03:04:05.5"}
	case 'T':
		base = []string{"1 day"}
	case 'E':
		base = []string{a.enumLabel}
	case 'U':
		base = []string{"00000000-0000-0000-0000-000000000001", "{}"}
	case 'I':
		base = []string{"192.0.2.1"}
	case 'V':
		base = []string{"1"}
	case 'R':
		base = []string{"[1,2)", "[2024-01-02,2024-01-03)"}
	case 'G':
		base = []string{"(0,0)", "((0,0),(1,1))", "<(0,0),1>"}
	case 'C':
		base = []string{"()"}
	}
	base = append(base, "x", "1", "{}", "()")
	if !a.array {
		return base
	}
	out := make([]string, len(base))
	for i, c := range base {
		out[i] = `{"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(c) + `"}`
	}
	return out
}
