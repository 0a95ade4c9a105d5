package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
)

// PreflightOptions select the checks that depend on the command.
type PreflightOptions struct {
	// Publication, when set, checks that the role may create or alter it.
	Publication string
	// WriteBehinds, when set, are checked too: their tables, columns and
	// unique keys, the privileges their workers need, and the positions
	// table (docs/rules.md, "write_behind").
	WriteBehinds []*config.WriteBehind
}

// Preflight checks the database against the rules before anything is created
// or streamed: wal_level, privileges, every rule table and column, and that
// each table's replica identity lets the old row carry every column the rules'
// keys read; then the write_behind blocks of opts. Every finding is an error
// diagnostic that says what to run.
func Preflight(ctx context.Context, conn *pgx.Conn, rules []*config.Rule, opts PreflightOptions) (hcl.Diagnostics, error) {
	var diags hcl.Diagnostics
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return nil, fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("wal_level is %q, logical replication needs \"logical\"", walLevel),
			Detail:   "Run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL.",
		})
	}
	var role string
	var super, repl, canCreate bool
	err := conn.QueryRow(ctx, `SELECT rolname, rolsuper, rolreplication,
			has_database_privilege(current_database(), 'CREATE')
		FROM pg_roles WHERE rolname = current_user`).Scan(&role, &super, &repl, &canCreate)
	if err != nil {
		return nil, fmt.Errorf("read role attributes: %w", err)
	}
	if !super && !repl {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("role %q may not use replication", role),
			Detail:   fmt.Sprintf("Run ALTER ROLE %s REPLICATION; (as a superuser).", sqlName(role)),
		})
	}
	if opts.Publication != "" {
		d, err := checkPublicationPrivileges(ctx, conn, opts.Publication, role, super, canCreate)
		if err != nil {
			return nil, err
		}
		diags = append(diags, d...)
	}
	checked := map[string]*tableInfo{}
	var tables []string // the database's tables, for "did you mean", read once
	tableNames := func() ([]string, error) {
		if tables == nil {
			var err error
			tables, err = readTableNames(ctx, conn)
			return tables, err
		}
		return tables, nil
	}
	var trialRules []*config.Rule
	for _, r := range rules {
		name := r.Table.String()
		ti, ok := checked[name]
		if !ok {
			if ti, err = readTable(ctx, conn, r.Table); err != nil {
				return nil, err
			}
			checked[name] = ti
		}
		if !ti.exists {
			if _, err = tableNames(); err != nil {
				return nil, err
			}
		}
		d := checkRule(r, ti, role, super, opts.Publication != "", tables)
		if !d.HasErrors() {
			trialRules = append(trialRules, r)
		}
		diags = append(diags, d...)
	}
	d, err := trialEvaluate(ctx, conn, trialRules, checked)
	if err != nil {
		return nil, err
	}
	diags = append(diags, d...)
	d, err = checkWriteBehinds(ctx, conn, opts.WriteBehinds, role, tableNames)
	if err != nil {
		return nil, err
	}
	return append(diags, d...), nil
}

// readTableNames lists the database's tables and views as schema.name, for
// a mistyped rule table's "did you mean".
func readTableNames(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
			AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
		ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	if names == nil {
		names = []string{}
	}
	return names, nil
}

func checkPublicationPrivileges(ctx context.Context, conn *pgx.Conn, pub, role string, super, canCreate bool) (hcl.Diagnostics, error) {
	var owner *string
	err := conn.QueryRow(ctx, `SELECT pg_get_userbyid(pubowner) FROM pg_publication WHERE pubname = $1`, pub).Scan(&owner)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read publication %q: %w", pub, err)
	}
	switch {
	case owner == nil && !super && !canCreate:
		return hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("role %q may not create publication %q", role, pub),
			Detail:   fmt.Sprintf("Run GRANT CREATE ON DATABASE <db> TO %s; or create the publication yourself with cachesync setup as the tables' owner.", sqlName(role)),
		}}, nil
	case owner != nil && *owner != role && !super:
		var member bool
		if err := conn.QueryRow(ctx, `SELECT pg_has_role(current_user, $1, 'USAGE')`, *owner).Scan(&member); err != nil {
			return nil, fmt.Errorf("check ownership of publication %q: %w", pub, err)
		}
		if !member {
			return hcl.Diagnostics{{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("publication %q belongs to %q, not %q", pub, *owner, role),
				Detail:   fmt.Sprintf("Run ALTER PUBLICATION %s OWNER TO %s; so cachesync can keep its table list in line with the rules.", sqlName(pub), sqlName(role)),
			}}, nil
		}
	}
	return nil, nil
}

type tableInfo struct {
	exists      bool
	kind        byte // relkind
	persistence byte
	identity    byte
	ownedByUs   bool
	columns     map[string]string // name → attgenerated ("" when not generated)
	identCols   []string          // columns the old tuple carries under the identity
	primaryKey  bool              // the table has one (a backfill reads in its order)
	attrs       []attribute       // in attnum order, for the trial rows
}

// attribute is a column as the trial rows need it.
type attribute struct {
	name      string
	typeOID   uint32
	typeName  string // format_type: what a cast names
	category  byte   // pg_type.typcategory (of the element type for arrays)
	array     bool
	enumLabel string // first label when the type (or element type) is an enum
	notNull   bool
	generated bool
	trials    []string // the trial rows' values, once trialRows chose them
}

func readTable(ctx context.Context, conn *pgx.Conn, t config.TableName) (*tableInfo, error) {
	ti := &tableInfo{columns: map[string]string{}}
	var oid uint32
	var kind, persistence, identity string
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text, c.relpersistence::text, c.relreplident::text,
			pg_has_role(current_user, c.relowner, 'USAGE')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).
		Scan(&oid, &kind, &persistence, &identity, &ti.ownedByUs)
	if errors.Is(err, pgx.ErrNoRows) {
		return ti, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read table %s: %w", t, err)
	}
	ti.exists, ti.kind, ti.persistence, ti.identity = true, kind[0], persistence[0], identity[0]
	// A domain's typcategory is its base type's; an array's is 'A', so the
	// element type's category is read instead.
	rows, err := conn.Query(ctx, `SELECT a.attname, a.attgenerated::text, a.atttypid, format_type(a.atttypid, a.atttypmod),
			coalesce(e.typcategory, t.typcategory)::text, e.oid IS NOT NULL, a.attnotnull,
			coalesce((SELECT l.enumlabel FROM pg_enum l
				WHERE l.enumtypid = coalesce(nullif(coalesce(e.typbasetype, t.typbasetype), 0), e.oid, t.oid)
				ORDER BY l.enumsortorder LIMIT 1), '')
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t, err)
	}
	for rows.Next() {
		var a attribute
		var gen, category string
		if err := rows.Scan(&a.name, &gen, &a.typeOID, &a.typeName, &category, &a.array, &a.notNull, &a.enumLabel); err != nil {
			rows.Close()
			return nil, err
		}
		a.category, a.generated = category[0], gen != ""
		ti.columns[a.name] = gen
		ti.attrs = append(ti.attrs, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1 AND indisprimary)`, oid).Scan(&ti.primaryKey)
	if err != nil {
		return nil, fmt.Errorf("read primary key of %s: %w", t, err)
	}
	// The identity columns: primary key under DEFAULT, the chosen index
	// under USING INDEX, every column under FULL.
	var indexCond string
	switch ti.identity {
	case 'd':
		indexCond = "i.indisprimary"
	case 'i':
		indexCond = "i.indisreplident"
	case 'f':
		for c := range ti.columns {
			ti.identCols = append(ti.identCols, c)
		}
		sort.Strings(ti.identCols)
		return ti, nil
	default:
		return ti, nil
	}
	err = conn.QueryRow(ctx, `SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = $1 AND `+indexCond, oid).Scan(&ti.identCols)
	if err != nil {
		return nil, fmt.Errorf("read replica identity of %s: %w", t, err)
	}
	return ti, nil
}

func ruleDiag(r *config.Rule, subject hcl.Range, summary, detail string) *hcl.Diagnostic {
	return blockDiag("rule", r.Name, subject, summary, detail)
}

// blockDiag is an error about the block `kind "name"` (a rule or a
// write_behind), whose summary starts with it.
func blockDiag(kind, name string, subject hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("%s %q: %s", kind, name, summary),
		Detail:   detail,
		Subject:  subject.Ptr(),
	}
}

// relkindNames name the relations a rule may point at by mistake.
var relkindNames = map[byte]string{
	'v': "a view", 'm': "a materialized view", 'f': "a foreign table",
	'S': "a sequence", 'c': "a composite type", 'i': "an index", 'I': "an index", 't': "a TOAST table",
}

// checkRule checks one rule against its table; tables lists the database's
// tables for a missing table's "did you mean".
func checkRule(r *config.Rule, ti *tableInfo, role string, super, creating bool, tables []string) hcl.Diagnostics {
	t := r.Table.String()
	quoted := sqlName(r.Table.Schema, r.Table.Name)
	at := tableSubject(r)
	if !ti.exists {
		fix := "Create the table, or fix the rule's table attribute (schema.table, case-sensitive)."
		if s := config.Suggest(t, tables); s != "" {
			fix = fmt.Sprintf("did you mean %s? Fix the rule's table attribute (schema.table, case-sensitive), or create the table.", s)
		}
		return hcl.Diagnostics{ruleDiag(r, at, fmt.Sprintf("table %s does not exist", t), fix)}
	}
	if ti.kind != 'r' && ti.kind != 'p' {
		// Nothing else matters: a view has no replica identity to fix.
		what := relkindNames[ti.kind]
		if what == "" {
			what = fmt.Sprintf("not a table (relkind %q)", ti.kind)
		}
		return hcl.Diagnostics{ruleDiag(r, at, fmt.Sprintf("%s is %s: logical replication publishes only tables", t, what),
			"point the rule at the underlying table")}
	}
	var diags hcl.Diagnostics
	if ti.persistence == 'u' {
		diags = append(diags, ruleDiag(r, at, fmt.Sprintf("%s is UNLOGGED: its changes never reach the WAL", t),
			fmt.Sprintf("Run ALTER TABLE %s SET LOGGED;", quoted)))
	}
	if creating && !ti.ownedByUs && !super {
		diags = append(diags, ruleDiag(r, at, fmt.Sprintf("role %q does not own %s, so it cannot add it to the publication", role, t),
			fmt.Sprintf("Run ALTER TABLE %s OWNER TO %s; or run cachesync setup as the table owner.", quoted, sqlName(role))))
	}
	refs := append(append(r.KeyColumns(), r.WhenColumns()...), r.ValueColumns()...)
	for _, ref := range refs {
		if ref.Column == "" {
			continue
		}
		gen, ok := ti.columns[ref.Column]
		switch {
		case !ok:
			diags = append(diags, ruleDiag(r, ref.Range, fmt.Sprintf("table %s has no column %q", t, ref.Column),
				fmt.Sprintf("Columns: %s.", strings.Join(sortedKeys(ti.columns), ", "))))
		case gen != "":
			diags = append(diags, ruleDiag(r, ref.Range, fmt.Sprintf("column %q of %s is generated, and PostgreSQL 15 does not publish generated columns", ref.Column, t),
				"Compute the value in the template from the columns it is generated from."))
		}
	}
	if r.Refresh != nil && r.Refresh.Backfill && !ti.primaryKey {
		diags = append(diags, ruleDiag(r, r.Refresh.BackfillRange, fmt.Sprintf("backfill = true, but %s has no primary key", t),
			fmt.Sprintf("a backfill reads the table in primary-key order, chunk by chunk. Run ALTER TABLE %s ADD PRIMARY KEY (...); or remove backfill = true.", quoted)))
	}
	diags = append(diags, checkIdentity(r, ti, quoted)...)
	return diags
}

// oldColumns lists what the old tuple must carry for the rule: every column
// read by key, tag and namespace templates through row or old, and columns
// that `when` reads through old. "" means every column.
func oldColumns(r *config.Rule) []config.ColumnRef {
	var out []config.ColumnRef
	for _, ref := range r.KeyColumns() {
		if ref.Image != "new" {
			out = append(out, ref)
		}
	}
	for _, ref := range r.WhenColumns() {
		if ref.Image == "old" {
			out = append(out, ref)
		}
	}
	return out
}

// tableSubject is where a diagnostic about the rule's table points: the
// table attribute.
func tableSubject(r *config.Rule) hcl.Range {
	if r.TableRange.Filename == "" {
		return r.DeclRange
	}
	return r.TableRange
}

func checkIdentity(r *config.Rule, ti *tableInfo, quoted string) hcl.Diagnostics {
	t := r.Table.String()
	at := tableSubject(r)
	fix := fmt.Sprintf("Run ALTER TABLE %s REPLICA IDENTITY FULL;", quoted)
	switch {
	case ti.identity == 'n':
		return hcl.Diagnostics{ruleDiag(r, at, fmt.Sprintf("%s has REPLICA IDENTITY NOTHING: deletes would carry no old row, and updates and deletes on it fail once it is published", t), fix)}
	case ti.identity == 'd' && len(ti.identCols) == 0:
		return hcl.Diagnostics{ruleDiag(r, at, fmt.Sprintf("%s has no primary key and REPLICA IDENTITY DEFAULT: once published, every UPDATE and DELETE on it would fail", t),
			fmt.Sprintf("Add a primary key, or %s", fix))}
	case ti.identity == 'i' && len(ti.identCols) == 0:
		return hcl.Diagnostics{ruleDiag(r, at, fmt.Sprintf("%s uses REPLICA IDENTITY USING INDEX but the index is gone", t), fix)}
	}
	var diags hcl.Diagnostics
	seen := map[string]bool{}
	for _, ref := range oldColumns(r) {
		if seen[ref.Column] || (ref.Column != "" && slices.Contains(ti.identCols, ref.Column)) {
			continue
		}
		if ref.Column == "" && ti.identity == 'f' {
			continue
		}
		if _, ok := ti.columns[ref.Column]; ref.Column != "" && !ok {
			continue // reported as a missing column
		}
		seen[ref.Column] = true
		what := fmt.Sprintf("column %q", ref.Column)
		if ref.Column == "" {
			what = "the whole row"
		}
		diags = append(diags, ruleDiag(r, ref.Range,
			fmt.Sprintf("%s is read to find the old row's keys, but the old row of %s carries only (%s) under its replica identity", what, t, strings.Join(ti.identCols, ", ")),
			"Without it, updates and deletes could not invalidate the old keys (a moved email or tenant would stay cached). "+fix))
	}
	return diags
}

// sqlName renders a qualified name for a command the user will paste,
// quoting only the parts that need it.
func sqlName(parts ...string) string {
	out := make([]string, len(parts))
	for i, p := range parts {
		if config.PlainIdent(p) {
			out[i] = p
		} else {
			out[i] = pgx.Identifier{p}.Sanitize()
		}
	}
	return strings.Join(out, ".")
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
