package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// CatalogRelation is a table as pgoutput announces it in a Relation
// message, read from the catalog instead of the stream: for tools that show
// what a change would carry (cachesync explain) without a slot.
type CatalogRelation struct {
	wal.Relation
	// TypeNames holds each column's type as format_type writes it
	// (numeric(10,2)), to read a value as the column would store it.
	TypeNames []string
	// PrimaryKey holds the primary key's column indexes, in key order.
	PrimaryKey []int
}

// ErrNoTable is returned by ReadRelation for a table that does not exist.
var ErrNoTable = errors.New("no such table")

// PinOutputSettings gives a catalog connection the replication connection's
// output settings, so that the values it reads as text are byte for byte
// what pgoutput sends (timestamps in UTC, ISO dates, hex bytea, floats with
// extra_float_digits).
func PinOutputSettings(ctx context.Context, conn *pgx.Conn) error {
	for k, v := range sessionSettings {
		if k == "application_name" {
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", k, v); err != nil {
			return fmt.Errorf("set %s: %w", k, err)
		}
	}
	return nil
}

// ReadRelation reads table t as pgoutput would describe it: its published
// columns in order (not dropped, not generated) with their type OIDs, the
// replica identity, and which columns the old tuple carries (every column
// under REPLICA IDENTITY FULL, else the identity index's).
func ReadRelation(ctx context.Context, conn *pgx.Conn, t config.TableName) (*CatalogRelation, error) {
	var oid uint32
	var ident string
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relreplident::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, t.Schema, t.Name).Scan(&oid, &ident)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("table %s: %w", t, ErrNoTable)
	}
	if err != nil {
		return nil, fmt.Errorf("read table %s: %w", t, err)
	}
	rel := &CatalogRelation{Relation: wal.Relation{ID: oid, Namespace: t.Schema, Name: t.Name, ReplicaIdentity: ident[0]}}
	rows, err := conn.Query(ctx, `SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod),
			$2 = 'f' OR coalesce(a.attnum = ANY(ri.indkey), false),
			coalesce(array_position(pk.indkey::int2[], a.attnum) - array_lower(pk.indkey::int2[], 1) + 1, 0)
		FROM pg_attribute a
		LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND (($2 = 'd' AND ri.indisprimary) OR ($2 = 'i' AND ri.indisreplident))
		LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, oid, ident)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t, err)
	}
	defer rows.Close()
	var pkPos []int // per column: position in the primary key (1-based), 0 if not in it
	for rows.Next() {
		var col wal.Column
		var typeName string
		var pos int
		if err := rows.Scan(&col.Name, &col.TypeOID, &col.TypeMod, &typeName, &col.Key, &pos); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", t, err)
		}
		rel.Columns = append(rel.Columns, col)
		rel.TypeNames = append(rel.TypeNames, typeName)
		pkPos = append(pkPos, pos)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t, err)
	}
	for pos := 1; ; pos++ {
		i := slices.Index(pkPos, pos)
		if i < 0 {
			break
		}
		rel.PrimaryKey = append(rel.PrimaryKey, i)
	}
	return rel, nil
}

// OutputText reads input as a value of column i and returns its text output:
// what pgoutput would send for the value once stored (9.5 in a
// numeric(10,2) column is "9.50", true in a bool column is "t").
func (rel *CatalogRelation) OutputText(ctx context.Context, conn *pgx.Conn, i int, input string) (string, error) {
	res := conn.PgConn().ExecParams(ctx, "SELECT $1::"+rel.TypeNames[i], [][]byte{[]byte(input)}, nil, nil, nil).Read()
	if res.Err != nil {
		return "", fmt.Errorf("column %q (%s): %w", rel.Columns[i].Name, rel.TypeNames[i], res.Err)
	}
	return string(res.Rows[0][0]), nil
}

// ReadRow reads the row whose primary key columns equal key (text input,
// one per PrimaryKey column), every column as its text output: the tuple
// pgoutput would send for it. ok is false when there is no such row.
func (rel *CatalogRelation) ReadRow(ctx context.Context, conn *pgx.Conn, key []string) (tuple wal.Tuple, ok bool, err error) {
	cols := make([]string, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	conds := make([]string, len(rel.PrimaryKey))
	params := make([][]byte, len(rel.PrimaryKey))
	for n, i := range rel.PrimaryKey {
		conds[n] = fmt.Sprintf("%s = $%d::%s", cols[i], n+1, rel.TypeNames[i])
		params[n] = []byte(key[n])
	}
	sql := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(cols, ", "),
		pgx.Identifier{rel.Namespace, rel.Name}.Sanitize(), strings.Join(conds, " AND "))
	res := conn.PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, false, fmt.Errorf("read the row of %s: %w", rel.QualifiedName(), res.Err)
	}
	if len(res.Rows) == 0 {
		return nil, false, nil
	}
	return textTuple(res.Rows[0]), true, nil
}

// textTuple is a row read in text format, as pgoutput sends it: each value
// as text, or null.
func textTuple(raw [][]byte) wal.Tuple {
	tuple := make(wal.Tuple, len(raw))
	for i, v := range raw {
		if v == nil {
			tuple[i] = wal.Value{Kind: wal.Null}
		} else {
			tuple[i] = wal.Value{Kind: wal.Text, Text: string(v)}
		}
	}
	return tuple
}
