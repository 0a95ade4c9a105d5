package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
)

// The table where the write-behind workers keep each stream's last applied
// entry ID (writebehind.PositionsTable), created by the first worker.
const (
	positionsSchema = "cachesync"
	positionsTable  = "write_behind"
)

// wbTable is what the write_behind checks read about a table.
type wbTable struct {
	oid            uint32
	kind           byte
	schemaUsage    bool
	insert, update bool // on the whole table
	delete         bool
	rowSecurity    bool // row-level security applies to the role's writes
	columns        map[string]wbColumn
	names          []string // in attnum order
	uniqueKeys     []uniqueKey
}

type wbColumn struct {
	generated, identityAlways bool
	insert, update, sel       bool // the column's privileges (table's included)
}

// uniqueKey is a unique index of the table.
type uniqueKey struct {
	columns []string // key columns in index order; empty for an expression index
	primary bool
	// Why INSERT … ON CONFLICT cannot infer it as the arbiter; "" when it can.
	unusable string
}

func (k uniqueKey) String() string {
	s := "(" + strings.Join(k.columns, ", ") + ")"
	switch {
	case len(k.columns) == 0:
		s = "an expression index"
	case k.primary:
		s += " primary key"
	}
	if k.unusable != "" {
		s += " (" + k.unusable + ")"
	}
	return s
}

// checkWriteBehinds checks each write_behind block against its table and
// the role's privileges, and that the role can create or use the positions
// table. tableNames lists the database's tables for "did you mean".
func checkWriteBehinds(ctx context.Context, conn *pgx.Conn, wbs []*config.WriteBehind, role string, tableNames func() ([]string, error)) (hcl.Diagnostics, error) {
	if len(wbs) == 0 {
		return nil, nil
	}
	var diags hcl.Diagnostics
	for _, wb := range wbs {
		t, err := readWriteBehindTable(ctx, conn, wb.Table)
		if err != nil {
			return nil, err
		}
		var names []string
		if t == nil {
			if names, err = tableNames(); err != nil {
				return nil, err
			}
		}
		diags = append(diags, checkWriteBehind(wb, t, role, names)...)
	}
	d, err := checkPositionsTable(ctx, conn, role, wbs[0])
	if err != nil {
		return nil, err
	}
	return append(diags, d...), nil
}

func readWriteBehindTable(ctx context.Context, conn *pgx.Conn, name config.TableName) (*wbTable, error) {
	t := &wbTable{columns: map[string]wbColumn{}}
	var kind string
	// Row-level security applies unless the role bypasses it, or owns the
	// table and it is not forced.
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text, has_schema_privilege(n.oid, 'USAGE'),
			has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE'),
			c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
				AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, name.Schema, name.Name).
		Scan(&t.oid, &kind, &t.schemaUsage, &t.insert, &t.update, &t.delete, &t.rowSecurity)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read table %s: %w", name, err)
	}
	t.kind = kind[0]
	rows, err := conn.Query(ctx, `SELECT a.attname, a.attgenerated <> '', a.attidentity = 'a',
			has_column_privilege(a.attrelid, a.attnum, 'INSERT'), has_column_privilege(a.attrelid, a.attnum, 'UPDATE'),
			has_column_privilege(a.attrelid, a.attnum, 'SELECT')
		FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	for rows.Next() {
		var n string
		var c wbColumn
		if err := rows.Scan(&n, &c.generated, &c.identityAlways, &c.insert, &c.update, &c.sel); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read columns of %s: %w", name, err)
		}
		t.columns[n] = c
		t.names = append(t.names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	// Key columns only (not INCLUDE ones), in index order; an expression
	// index has none of its own that ON CONFLICT (columns) can name.
	rows, err = conn.Query(ctx, `SELECT i.indisprimary, i.indexprs IS NOT NULL, i.indpred IS NOT NULL,
			NOT i.indimmediate, NOT i.indisvalid,
			coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
				FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
				JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
				WHERE k.ord <= i.indnkeyatts), '{}')
		FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique ORDER BY NOT i.indisprimary, i.indexrelid`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("read unique keys of %s: %w", name, err)
	}
	for rows.Next() {
		var k uniqueKey
		var expr, partial, deferrable, invalid bool
		if err := rows.Scan(&k.primary, &expr, &partial, &deferrable, &invalid, &k.columns); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read unique keys of %s: %w", name, err)
		}
		switch {
		case expr:
			k.columns, k.unusable = nil, "on an expression"
		case partial:
			k.unusable = "partial: it has a WHERE"
		case deferrable:
			k.unusable = "deferrable"
		case invalid:
			k.unusable = "not valid yet"
		}
		t.uniqueKeys = append(t.uniqueKeys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read unique keys of %s: %w", name, err)
	}
	return t, nil
}

func wbDiag(wb *config.WriteBehind, subject hcl.Range, summary, detail string) *hcl.Diagnostic {
	return blockDiag("write_behind", wb.Name, subject, summary, detail)
}

// checkWriteBehind checks one block against its table (nil when it does
// not exist; tables then lists the database's tables).
func checkWriteBehind(wb *config.WriteBehind, t *wbTable, role string, tables []string) hcl.Diagnostics {
	name := wb.Table.String()
	quoted := sqlName(wb.Table.Schema, wb.Table.Name)
	if t == nil {
		fix := "Create the table, or fix the table attribute (schema.table, case-sensitive)."
		if s := config.Suggest(name, tables); s != "" {
			fix = fmt.Sprintf("did you mean %s? Fix the table attribute (schema.table, case-sensitive), or create the table.", s)
		}
		return hcl.Diagnostics{wbDiag(wb, wb.TableRange, fmt.Sprintf("table %s does not exist", name), fix)}
	}
	if t.kind != 'r' && t.kind != 'p' {
		what := relkindNames[t.kind]
		if what == "" {
			what = fmt.Sprintf("not a table (relkind %q)", t.kind)
		}
		return hcl.Diagnostics{wbDiag(wb, wb.TableRange, fmt.Sprintf("%s is %s: write-behind writes with INSERT … ON CONFLICT, which needs a table", name, what),
			"point table at the underlying table")}
	}
	var diags hcl.Diagnostics
	if !t.schemaUsage {
		diags = append(diags, wbDiag(wb, wb.TableRange, fmt.Sprintf("role %q may not use schema %s", role, wb.Table.Schema),
			fmt.Sprintf("Run GRANT USAGE ON SCHEMA %s TO %s;", sqlName(wb.Table.Schema), sqlName(role))))
	}
	known := true
	for _, attr := range []struct {
		cols []string
		rng  hcl.Range
	}{{wb.KeyColumns, wb.KeyColumnsRange}, {wb.Columns, wb.ColumnsRange}} {
		for _, c := range attr.cols {
			col, ok := t.columns[c]
			switch {
			case !ok:
				known = false
				detail := fmt.Sprintf("Columns: %s.", strings.Join(t.names, ", "))
				if s := config.Suggest(c, t.names); s != "" {
					detail = fmt.Sprintf("did you mean %q? %s", s, detail)
				}
				diags = append(diags, wbDiag(wb, attr.rng, fmt.Sprintf("table %s has no column %q", name, c), detail))
			case col.generated:
				diags = append(diags, wbDiag(wb, attr.rng, fmt.Sprintf("column %q of %s is generated: it cannot be written", c, name),
					"remove it; PostgreSQL computes it from the columns it is generated from"))
			case col.identityAlways:
				diags = append(diags, wbDiag(wb, attr.rng, fmt.Sprintf("column %q of %s is GENERATED ALWAYS AS IDENTITY: an INSERT may not set it", c, name),
					fmt.Sprintf("the entries carry its value; Run ALTER TABLE %s ALTER COLUMN %s SET GENERATED BY DEFAULT;", quoted, sqlName(c))))
			}
		}
	}
	if !known {
		return diags // the key and privileges are about columns that exist
	}
	diags = append(diags, checkArbiter(wb, t, quoted)...)
	diags = append(diags, checkWriteBehindPrivileges(wb, t, role, quoted)...)
	if t.rowSecurity {
		d := wbDiag(wb, wb.TableRange, fmt.Sprintf("row-level security of %s applies to role %q", name, role),
			fmt.Sprintf("its policies must let the role insert, update (and select for ON CONFLICT) every row the application writes: an entry they refuse goes to the dead-letter stream %s:dead", wb.Stream))
		d.Severity = hcl.DiagWarning
		d.Extra = config.Hint(fmt.Sprintf("give the role policies for the rows it writes, or Run ALTER ROLE %s BYPASSRLS;", sqlName(role)))
		diags = append(diags, d)
	}
	return diags
}

// checkArbiter checks that key_columns are exactly the columns of a unique
// index that INSERT … ON CONFLICT (key_columns) can infer: not partial, not
// on expressions, not deferrable.
func checkArbiter(wb *config.WriteBehind, t *wbTable, quoted string) hcl.Diagnostics {
	want := slices.Sorted(slices.Values(wb.KeyColumns))
	var keys []string
	for _, k := range t.uniqueKeys {
		if k.unusable == "" && slices.Equal(slices.Sorted(slices.Values(k.columns)), want) {
			return nil
		}
		keys = append(keys, k.String())
	}
	list := sqlColumns(wb.KeyColumns)
	summary := fmt.Sprintf("key_columns (%s) are not a unique key of %s", strings.Join(wb.KeyColumns, ", "), wb.Table)
	fix := fmt.Sprintf("entries are written with INSERT … ON CONFLICT (%s), which needs a unique index or constraint on exactly these columns, without WHERE, expressions or DEFERRABLE. Run ALTER TABLE %s ADD UNIQUE (%s);", list, quoted, list)
	if len(keys) == 0 {
		return hcl.Diagnostics{wbDiag(wb, wb.KeyColumnsRange, summary+" (it has no primary key or unique constraint)", fix)}
	}
	return hcl.Diagnostics{wbDiag(wb, wb.KeyColumnsRange, summary,
		fmt.Sprintf("its unique keys: %s. Set key_columns to a usable one, or: %s", strings.Join(keys, ", "), fix))}
}

// checkWriteBehindPrivileges checks what the worker's statements need:
// INSERT … ON CONFLICT (keys) DO UPDATE needs INSERT on the columns written,
// UPDATE on those it sets and SELECT on the conflict target; DELETE … WHERE
// keys needs DELETE and SELECT on the keys. Without columns, an entry may
// carry any column: the table-wide privileges are needed.
func checkWriteBehindPrivileges(wb *config.WriteBehind, t *wbTable, role string, quoted string) hcl.Diagnostics {
	var diags hcl.Diagnostics
	grantee := sqlName(role)
	lacking := func(cols []string, has func(wbColumn) bool) []string {
		var out []string
		for _, c := range cols {
			if !has(t.columns[c]) {
				out = append(out, c)
			}
		}
		return out
	}
	written := slices.Clone(wb.KeyColumns)
	var set []string // the columns DO UPDATE sets
	for _, c := range wb.Columns {
		if !slices.Contains(written, c) {
			written = append(written, c)
			set = append(set, c)
		}
	}
	at := wb.ColumnsRange
	for _, p := range []struct {
		priv    string
		table   bool
		cols    []string
		has     func(wbColumn) bool
		why     string
		subject hcl.Range
	}{
		{"INSERT", t.insert, written, func(c wbColumn) bool { return c.insert }, "to insert new rows", at},
		{"UPDATE", t.update, set, func(c wbColumn) bool { return c.update }, "for ON CONFLICT DO UPDATE", at},
		{"SELECT", false, wb.KeyColumns, func(c wbColumn) bool { return c.sel }, "to match rows on key_columns (ON CONFLICT, DELETE … WHERE)", wb.KeyColumnsRange},
	} {
		if wb.Columns == nil && p.priv != "SELECT" {
			if !p.table {
				diags = append(diags, wbDiag(wb, wb.TableRange, fmt.Sprintf("role %q may not %s %s", role, p.priv, wb.Table),
					fmt.Sprintf("it needs %s on every column an entry may carry (%s). Run GRANT %s ON %s TO %s; or list the columns written in columns and grant them.", p.priv, p.why, p.priv, quoted, grantee)))
			}
			continue
		}
		missing := lacking(p.cols, p.has)
		if len(missing) == 0 {
			continue
		}
		what := "column"
		if len(missing) > 1 {
			what = "columns"
		}
		diags = append(diags, wbDiag(wb, p.subject, fmt.Sprintf("role %q may not %s %s %s of %s", role, p.priv, what, strings.Join(missing, ", "), wb.Table),
			fmt.Sprintf("it needs %s on them %s. Run GRANT %s (%s) ON %s TO %s;", p.priv, p.why, p.priv, sqlColumns(missing), quoted, grantee)))
	}
	if wb.Delete && !t.delete {
		diags = append(diags, wbDiag(wb, wb.DeleteRange, fmt.Sprintf("role %q may not DELETE from %s, and op delete entries are allowed", role, wb.Table),
			fmt.Sprintf("Run GRANT DELETE ON %s TO %s; or set delete = false (op delete entries then go to the dead-letter stream %s:dead).", quoted, grantee, wb.Stream)))
	}
	return diags
}

// checkPositionsTable checks that the role can create the positions table
// (and its schema) or use it when it exists. Findings point at the first
// write_behind block: it is what needs the table.
func checkPositionsTable(ctx context.Context, conn *pgx.Conn, role string, first *config.WriteBehind) (hcl.Diagnostics, error) {
	var db string
	var schemaExists, tableExists, createDB, createSchema, useSchema, sel, ins, upd bool
	err := conn.QueryRow(ctx, `SELECT current_database(), n.oid IS NOT NULL, c.oid IS NOT NULL,
			has_database_privilege(current_database(), 'CREATE'),
			n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'CREATE'),
			n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE'),
			c.oid IS NOT NULL AND has_table_privilege(c.oid, 'SELECT'),
			c.oid IS NOT NULL AND has_table_privilege(c.oid, 'INSERT'),
			c.oid IS NOT NULL AND has_table_privilege(c.oid, 'UPDATE')
		FROM (SELECT 1) one
		LEFT JOIN pg_namespace n ON n.nspname = $1
		LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2`, positionsSchema, positionsTable).
		Scan(&db, &schemaExists, &tableExists, &createDB, &createSchema, &useSchema, &sel, &ins, &upd)
	if err != nil {
		return nil, fmt.Errorf("read privileges on %s.%s: %w", positionsSchema, positionsTable, err)
	}
	grantee, table := sqlName(role), positionsSchema+"."+positionsTable
	why := fmt.Sprintf("the write-behind workers keep each stream's last applied entry in %s, in the same transaction as the rows", table)
	var summary, fix string
	switch {
	case !schemaExists && !createDB:
		summary = fmt.Sprintf("role %q may not create schema %s for the table %s", role, positionsSchema, table)
		fix = fmt.Sprintf("Run GRANT CREATE ON DATABASE %s TO %s; or, as the database owner, CREATE SCHEMA %s AUTHORIZATION %s;", sqlName(db), grantee, positionsSchema, grantee)
	case schemaExists && !tableExists && (!createSchema || !useSchema):
		summary = fmt.Sprintf("role %q may not create the table %s", role, table)
		fix = fmt.Sprintf("Run GRANT USAGE, CREATE ON SCHEMA %s TO %s;", positionsSchema, grantee)
	case tableExists && (!useSchema || !sel || !ins || !upd):
		summary = fmt.Sprintf("role %q may not read and write the table %s", role, table)
		fix = fmt.Sprintf("Run GRANT USAGE ON SCHEMA %s TO %s; GRANT SELECT, INSERT, UPDATE ON %s TO %s;", positionsSchema, grantee, table, grantee)
	default:
		return nil, nil
	}
	return hcl.Diagnostics{wbDiag(first, first.DeclRange, summary, why+". "+fix)}, nil
}

// sqlColumns renders column names for a command the user will paste.
func sqlColumns(cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = sqlName(c)
	}
	return strings.Join(out, ", ")
}
