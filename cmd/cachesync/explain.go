package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
)

func explainCommand() *cli.Command {
	return &cli.Command{
		Name:  "explain",
		Usage: "print the Redis operations a row change would produce, without touching Redis",
		Description: "explain maps one row change through the rules exactly as run does (the same mapper) and prints the result: " +
			"--row alone is an INSERT, --row with --old an UPDATE, --old alone a DELETE. Row values are JSON; with --database-url " +
			"they are read as the table's real column types, without one their types are inferred from the JSON (see docs/rules.md).",
		ArgsUsage: " ",
		Flags: flags(
			&cli.StringFlag{Name: "database-url", EnvVars: []string{"DATABASE_URL"}, Usage: "PostgreSQL URL to read the table's columns, types and replica identity from, and --pk rows (postgres.url of the rules file is not used)"},
			&cli.StringFlag{Name: "table", Usage: "the changed table: schema.table (a bare name is in public)"},
			&cli.StringFlag{Name: "row", Usage: `the new row as a JSON object, like {"id":42,"email":"a@x.io"}: an INSERT, or an UPDATE with --old`},
			&cli.StringFlag{Name: "old", Usage: "the old row as a JSON object: an UPDATE with --row or --pk, a DELETE alone"},
			&cli.StringFlag{Name: "pk", Usage: `read the new row from the database by primary key instead of --row: 42, or {"a":1,"b":2} for a composite key`},
			&cli.BoolFlag{Name: "json", Usage: "print the operations as JSON lines, in run --dry-run's format"},
		),
		Action: explain,
	}
}

// explainUsage is a usage error (exit 2) of explain's: a flag the user
// must fix.
func explainUsage(format string, args ...any) error {
	return usageError("cachesync explain: "+format, args...)
}

func explain(c *cli.Context) error {
	rowFlag, oldFlag, pkFlag := c.String("row"), c.String("old"), c.String("pk")
	switch {
	case c.String("table") == "":
		return explainUsage("--table is required: the table whose change to explain, like --table public.users")
	case rowFlag == "" && oldFlag == "" && pkFlag == "":
		return explainUsage("give the change: --row (INSERT), --row and --old (UPDATE), --old (DELETE), or --pk to read the row from the database")
	case pkFlag != "" && rowFlag != "":
		return explainUsage("--pk and --row both give the new row: use one of them")
	case pkFlag != "" && c.String("database-url") == "":
		return explainUsage("--pk reads the row from the database: give --database-url (or DATABASE_URL)")
	}
	row, err := parseRowFlag("--row", rowFlag)
	if err != nil {
		return err
	}
	old, err := parseRowFlag("--old", oldFlag)
	if err != nil {
		return err
	}
	e, err := setupEnv(c, false)
	if err != nil {
		return err
	}
	// The daemon's mapper, with run's defaults.
	mapper, err := mapping.New(e.cfg.Rules, daemon.MapperOptions(0, daemon.DefaultMaxQueuedBytes, e.log))
	if err != nil {
		return &exitError{code: 1, msg: "cachesync explain: " + err.Error()}
	}
	table, err := ruleTable(c.String("table"), mapper.Tables())
	if err != nil {
		return err
	}
	var rules []*config.Rule
	for _, r := range e.cfg.Rules {
		if r.Table == table {
			rules = append(rules, r)
		}
	}
	ch := explainedChange{rules: rules, row: row, old: old}
	if u := c.String("database-url"); u != "" {
		err = ch.fromDatabase(c, u, table, pkFlag)
	} else {
		err = ch.inferred(table)
	}
	if err != nil {
		return err
	}
	batch, err := mapper.Map(wal.Txn{Changes: []wal.Change{ch.change}})
	if err != nil {
		return &exitError{code: 1, msg: "cachesync explain: " + err.Error()}
	}
	if c.Bool("json") {
		return (&jsonLines{out: c.App.Writer}).Apply(c.Context, []mapping.Batch{batch})
	}
	printExplain(c.App.Writer, &ch, batch)
	return nil
}

// jsonRow is a row given on the command line: column → JSON value.
type jsonRow map[string]json.RawMessage

func parseRowFlag(flag, s string) (jsonRow, error) {
	if s == "" {
		return nil, nil
	}
	var row jsonRow
	if err := json.Unmarshal([]byte(s), &row); err != nil || row == nil {
		return nil, explainUsage(`%s must be a JSON object of column values, like {"id":42,"email":"a@x.io"}: %s`, flag, jsonProblem(err))
	}
	return row, nil
}

func jsonProblem(err error) string {
	if err == nil {
		return "got null"
	}
	return err.Error()
}

// names returns the row's columns, sorted.
func (r jsonRow) names() []string {
	out := make([]string, 0, len(r))
	for k := range r {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// inputText is the text a JSON value stands for as PostgreSQL input:
// strings as they are, numbers as written, true/false, objects and arrays
// as their JSON text. null is NULL.
func inputText(raw json.RawMessage) (text string, kind jsonKind) {
	switch raw[0] {
	case 'n':
		return "", jsonNull
	case 't', 'f':
		return string(raw), jsonBool
	case '"':
		var s string
		_ = json.Unmarshal(raw, &s) // valid: the row parsed
		return s, jsonString
	case '{', '[':
		return string(raw), jsonObject
	}
	return string(raw), jsonNumber
}

type jsonKind uint8

const (
	jsonNull jsonKind = iota
	jsonBool
	jsonString
	jsonNumber
	jsonObject
)

// Type OIDs explain infers from JSON values without a database.
const (
	oidBool    = 16
	oidInt8    = 20
	oidText    = 25
	oidJSON    = 114
	oidNumeric = 1700
)

// inferred gives a value without a database the type and text PostgreSQL
// would most likely have for it: integers are bigint, other numbers numeric
// (as written), booleans bool (sent as t/f), strings text, objects and
// arrays json (as written).
func inferred(raw json.RawMessage) (oid uint32, v wal.Value) {
	text, kind := inputText(raw)
	switch kind {
	case jsonNull:
		return 0, wal.Value{Kind: wal.Null}
	case jsonBool:
		return oidBool, wal.Value{Kind: wal.Text, Text: text[:1]}
	case jsonNumber:
		if _, err := strconv.ParseInt(text, 10, 64); err == nil {
			return oidInt8, wal.Value{Kind: wal.Text, Text: text}
		}
		return oidNumeric, wal.Value{Kind: wal.Text, Text: text}
	case jsonObject:
		return oidJSON, wal.Value{Kind: wal.Text, Text: text}
	}
	return oidText, wal.Value{Kind: wal.Text, Text: text}
}

// ruleTable finds the rules' table named by --table.
func ruleTable(name string, tables []config.TableName) (config.TableName, error) {
	t, err := config.ParseTableName(name)
	if err != nil {
		return t, explainUsage("--table %q: %v", name, err)
	}
	known := make([]string, len(tables))
	for i, rt := range tables {
		if rt == t {
			return t, nil
		}
		known[i] = rt.String()
	}
	return t, explainUsage("no rule reads table %s%s; the rules read %s", t, didYouMean(t.String(), known), strings.Join(known, ", "))
}

// explainedChange is the change explain maps, built as pgoutput would send it.
type explainedChange struct {
	rules    []*config.Rule
	row, old jsonRow
	change   wal.Change
	// types says where the column types come from; note, when set,
	// what the replica identity leaves out of the old row.
	types, note string
}

func (ch *explainedChange) kind() wal.Kind {
	switch {
	case ch.old == nil:
		return wal.Insert
	case ch.row == nil && ch.change.New == nil:
		return wal.Delete
	}
	return wal.Update
}

// readColumns returns the columns the table's rules read, each with the
// first rule reading it; whole names a rule that reads whole rows.
func (ch *explainedChange) readColumns() (cols map[string]string, whole string) {
	cols = map[string]string{}
	for _, r := range ch.rules {
		refs := append(append(r.KeyColumns(), r.WhenColumns()...), r.ValueColumns()...)
		for _, ref := range refs {
			if ref.Column == "" && whole == "" {
				whole = r.Name
			}
			if _, ok := cols[ref.Column]; ref.Column != "" && !ok {
				cols[ref.Column] = r.Name
			}
		}
	}
	return cols, whole
}

// checkRead refuses an image that lacks a column a rule reads: the mapper
// would see no such attribute, which is not what any committed row sends.
func (ch *explainedChange) checkRead(flag string, row jsonRow, columns []string) error {
	read, whole := ch.readColumns()
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range read {
			if !yield(k) {
				return
			}
		}
	})
	if whole != "" && columns != nil {
		names = columns
	}
	for _, col := range names {
		if _, ok := row[col]; ok {
			continue
		}
		by := read[col]
		if by == "" {
			by = whole
		}
		hint := ""
		if s := config.Suggest(col, row.names()); s != "" {
			hint = fmt.Sprintf(" (is %q a typo for it?)", s)
		}
		return explainUsage("%s has no column %q, which rule %q reads%s: give every column the rules read, null for NULL", flag, col, by, hint)
	}
	return nil
}

// inferred builds the change without a database: the columns are those
// given, every one carried by the old row (REPLICA IDENTITY FULL, which
// validate asks for), each typed by its JSON value.
func (ch *explainedChange) inferred(table config.TableName) error {
	for flag, img := range map[string]jsonRow{"--row": ch.row, "--old": ch.old} {
		if img != nil {
			if err := ch.checkRead(flag, img, nil); err != nil {
				return err
			}
		}
	}
	rel := &wal.Relation{Namespace: table.Schema, Name: table.Name, ReplicaIdentity: wal.IdentityFull}
	names := append(ch.row.names(), ch.old.names()...)
	sort.Strings(names)
	names = slices.Compact(names)
	for _, name := range names {
		col := wal.Column{Name: name, TypeOID: oidText, Key: true}
		// The type of the first non-null value, the new row's first.
		for _, img := range []jsonRow{ch.row, ch.old} {
			if raw, ok := img[name]; ok {
				if oid, _ := inferred(raw); oid != 0 {
					col.TypeOID = oid
					break
				}
			}
		}
		rel.Columns = append(rel.Columns, col)
	}
	tuple := func(img jsonRow) wal.Tuple {
		if img == nil {
			return nil
		}
		t := make(wal.Tuple, len(names))
		for i, name := range names {
			t[i] = wal.Value{Kind: wal.Null}
			if raw, ok := img[name]; ok {
				_, t[i] = inferred(raw)
			}
		}
		return t
	}
	ch.types = "inferred from the JSON values (--database-url reads the table's)"
	ch.change = wal.Change{Relation: rel, Kind: ch.kind(), New: tuple(ch.row), Old: tuple(ch.old)}
	if ch.old != nil {
		ch.change.OldKind = wal.OldFull
	}
	return nil
}

// fromDatabase builds the change from the table's catalog entry: its
// columns and types, the old row its replica identity carries, and the new
// row read by primary key (pk) or from --row as the columns store it.
func (ch *explainedChange) fromDatabase(c *cli.Context, url string, table config.TableName, pk string) error {
	conn, err := connectPG(c, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(c.Context))
	if err := replication.PinOutputSettings(c.Context, conn); err != nil {
		return &exitError{code: 1, msg: "cachesync explain: " + err.Error()}
	}
	rel, err := replication.ReadRelation(c.Context, conn, table)
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("cachesync explain: %v; check --table and the database", err)}
	}
	columns := make([]string, len(rel.Columns))
	for i, col := range rel.Columns {
		columns[i] = col.Name
	}
	tuple := func(flag string, img jsonRow) (wal.Tuple, error) {
		if img == nil {
			return nil, nil
		}
		if err := checkColumns(flag, img, rel.QualifiedName(), columns); err != nil {
			return nil, err
		}
		if err := ch.checkRead(flag, img, columns); err != nil {
			return nil, err
		}
		t := make(wal.Tuple, len(rel.Columns))
		for i, col := range rel.Columns {
			t[i] = wal.Value{Kind: wal.Null}
			raw, ok := img[col.Name]
			if !ok {
				continue
			}
			if text, kind := inputText(raw); kind != jsonNull {
				out, err := rel.OutputText(c.Context, conn, i, text)
				if err != nil {
					return nil, explainUsage("%s: %v", flag, err)
				}
				t[i] = wal.Value{Kind: wal.Text, Text: out}
			}
		}
		return t, nil
	}
	newRow, err := tuple("--row", ch.row)
	if err != nil {
		return err
	}
	oldRow, err := tuple("--old", ch.old)
	if err != nil {
		return err
	}
	if pk != "" {
		if newRow, err = readByKey(c.Context, conn, rel, pk); err != nil {
			return err
		}
	}
	ch.types = "read from the database"
	ch.change = wal.Change{Relation: &rel.Relation, New: newRow}
	ch.change.Kind = ch.kind()
	ch.change.OldKind, ch.change.Old, ch.note = identityOld(&rel.Relation, ch.change.Kind, oldRow, newRow)
	return nil
}

// identityOld returns the old tuple pgoutput sends under the table's
// replica identity: all of it under FULL; under DEFAULT or USING INDEX the
// key columns only, and on an UPDATE that keeps the key none at all;
// nothing under NOTHING.
func identityOld(rel *wal.Relation, kind wal.Kind, old, new wal.Tuple) (wal.OldKind, wal.Tuple, string) {
	if old == nil {
		return wal.OldNone, nil, ""
	}
	if rel.ReplicaIdentity == wal.IdentityFull {
		return wal.OldFull, old, ""
	}
	var keys []string
	keyChanged := false
	sent := make(wal.Tuple, len(old))
	for i, col := range rel.Columns {
		if col.Key {
			keys = append(keys, col.Name)
			sent[i] = old[i]
			keyChanged = keyChanged || new == nil || old[i] != new[i]
		}
	}
	note := fmt.Sprintf("%s has REPLICA IDENTITY %s: ", rel.QualifiedName(), identityName(rel.ReplicaIdentity))
	if rel.ReplicaIdentity == wal.IdentityNothing || (kind == wal.Update && !keyChanged) {
		return wal.OldNone, nil, note + "the old row is not sent"
	}
	return wal.OldKey, sent, note + fmt.Sprintf("the old row carries only (%s)", strings.Join(keys, ", "))
}

func identityName(b byte) string {
	switch b {
	case wal.IdentityNothing:
		return "NOTHING"
	case wal.IdentityIndex:
		return "USING INDEX"
	}
	return "DEFAULT"
}

// checkColumns refuses a column the table does not have.
func checkColumns(flag string, img jsonRow, table string, columns []string) error {
	for _, name := range img.names() {
		if slices.Contains(columns, name) {
			continue
		}
		hint := ""
		if s := config.Suggest(name, columns); s != "" {
			hint = fmt.Sprintf(" (did you mean %q?)", s)
		}
		return explainUsage("%s: %s has no column %q%s; its columns: %s", flag, table, name, hint, strings.Join(columns, ", "))
	}
	return nil
}

// readByKey reads the row --pk names: the value of a single key column,
// or a JSON object of the key columns' values.
func readByKey(ctx context.Context, conn *pgx.Conn, rel *replication.CatalogRelation, pk string) (wal.Tuple, error) {
	t := rel.QualifiedName()
	keyCols := make([]string, len(rel.PrimaryKey))
	for n, i := range rel.PrimaryKey {
		keyCols[n] = rel.Columns[i].Name
	}
	if len(keyCols) == 0 {
		return nil, explainUsage("--pk: %s has no primary key; give the row with --row", t)
	}
	var key []string
	if strings.HasPrefix(strings.TrimSpace(pk), "{") {
		obj, err := parseRowFlag("--pk", pk)
		if err != nil {
			return nil, err
		}
		for _, name := range obj.names() {
			if !slices.Contains(keyCols, name) {
				return nil, explainUsage("--pk: %q is not a column of the primary key of %s (%s)", name, t, strings.Join(keyCols, ", "))
			}
		}
		for _, name := range keyCols {
			raw, ok := obj[name]
			text, kind := "", jsonNull
			if ok {
				text, kind = inputText(raw)
			}
			if kind == jsonNull {
				return nil, explainUsage("--pk: give every column of the primary key of %s (%s); %q is missing or null", t, strings.Join(keyCols, ", "), name)
			}
			key = append(key, text)
		}
	} else {
		if len(keyCols) > 1 {
			return nil, explainUsage(`--pk: the primary key of %s is (%s): give it as a JSON object, like --pk '{"%s":...}'`, t, strings.Join(keyCols, ", "), strings.Join(keyCols, `":...,"`))
		}
		key = []string{pk}
	}
	tuple, ok, err := rel.ReadRow(ctx, conn, key)
	if err != nil {
		return nil, &exitError{code: 1, msg: "cachesync explain: " + err.Error()}
	}
	if !ok {
		conds := make([]string, len(key))
		for n := range key {
			conds[n] = fmt.Sprintf("%s = %s", keyCols[n], key[n])
		}
		return nil, &exitError{code: 1, msg: fmt.Sprintf("cachesync explain: no row of %s has %s", t, strings.Join(conds, " and "))}
	}
	return tuple, nil
}

// skipReason says why a rule of the table produced nothing for the change:
// mapped alone, the rule either met NULL keys or its when was false.
func skipReason(r *config.Rule, change wal.Change) string {
	m, err := mapping.New([]*config.Rule{r}, mapping.Options{Logger: zerolog.Nop()})
	if err != nil {
		return err.Error()
	}
	if _, err := m.Map(wal.Txn{Changes: []wal.Change{change}}); err != nil {
		return err.Error()
	}
	switch {
	case m.Stats().NullKeys > 0:
		return "its key templates gave NULL for this row: no such key"
	case r.When != nil:
		return fmt.Sprintf("when (%s) is false for this row", rangeOf(r.When.Range()))
	}
	return "no operations"
}

// printExplain prints the operations of the change, one block per rule of
// the table, in the rules file's order.
func printExplain(w io.Writer, ch *explainedChange, b mapping.Batch) {
	fmt.Fprintf(w, "%s %s %s\ncolumn types: %s\n", strings.ToUpper(ch.change.Kind.String()), map[wal.Kind]string{wal.Insert: "into", wal.Update: "of", wal.Delete: "from"}[ch.change.Kind],
		ch.change.Relation.QualifiedName(), ch.types)
	if ch.note != "" {
		fmt.Fprintf(w, "note: %s\n", ch.note)
	}
	for _, r := range ch.rules {
		fmt.Fprintf(w, "\nrule %q (%s)\n", r.Name, rangeOf(r.DeclRange))
		n := 0
		for _, op := range b.Ops {
			if op.Rule == r.Name {
				fmt.Fprintf(w, "  %s\n", describeOp(op))
				n++
			}
		}
		if n == 0 {
			fmt.Fprintf(w, "  nothing: %s\n", skipReason(r, ch.change))
		}
	}
	if len(b.Ops) == 0 {
		fmt.Fprintf(w, "\nno rule acts on this change: nothing would be sent to Redis\n")
	}
}

func rangeOf(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

// describeOp says what an operation does to Redis, in one line (two for a
// refresh: its value on the second).
func describeOp(op mapping.Op) string {
	switch op.Kind {
	case mapping.OpDelete:
		return "DELETE " + op.Key
	case mapping.OpDeleteTag:
		return fmt.Sprintf("DELETE TAG %s (every key in the set %s, then the set)", op.Key, keyspace.TagKey(op.Key))
	case mapping.OpBumpVersion:
		return fmt.Sprintf("BUMP VERSION %s (INCR %s)", op.Key, keyspace.VersionKey(op.Key))
	case mapping.OpSet:
		return fmt.Sprintf("SET %s %s\n    value %s", op.Key, ttlRange(op.TTL, op.Jitter), op.Value)
	case mapping.OpUnset:
		return fmt.Sprintf("UNSET %s (deleted, with a guard that keeps an older change from writing it back)", op.Key)
	case mapping.OpFlush:
		return fmt.Sprintf("FLUSH %s (reason: %s)", describeKeyspace(op.Keyspace), op.Reason)
	}
	return op.Kind.String() + " " + op.Key
}

// ttlRange is a refresh's expiry: ttl ± jitter, and the range that spans.
func ttlRange(ttl, jitter time.Duration) string {
	switch {
	case ttl == 0:
		return "no TTL"
	case jitter == 0:
		return "TTL " + formatDuration(ttl)
	}
	return fmt.Sprintf("TTL %s ± %s (%s to %s)", formatDuration(ttl), formatDuration(jitter), formatDuration(ttl-jitter), formatDuration(ttl+jitter))
}

func describeKeyspace(ks *mapping.Keyspace) string {
	if ks == nil {
		return "everything"
	}
	var parts []string
	for _, p := range []struct {
		what     string
		patterns []string
	}{{"keys", ks.Keys}, {"tags", ks.Tags}, {"versions", ks.Versions}} {
		if len(p.patterns) > 0 {
			parts = append(parts, p.what+" "+strings.Join(p.patterns, ", "))
		}
	}
	return strings.Join(parts, "; ")
}
