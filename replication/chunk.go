package replication

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// ErrNoPrimaryKey is returned by NewTableReader for a table without a
// primary key: its rows cannot be read in a stable order, chunk by chunk.
var ErrNoPrimaryKey = errors.New("no primary key")

// TableReader reads a table in primary-key order, chunk by chunk (keyset
// pagination), every column as its text output with the replication
// connection's settings: the tuples pgoutput would send for its rows, for a
// backfill.
type TableReader struct {
	rel   *CatalogRelation
	where string
	// sql is the chunk query after a key (the key's columns as $1..$n,
	// the limit as $n+1); first the one from the start (limit $1).
	sql, first string
}

// NewTableReader prepares to read table t on conn, whose output settings
// it pins (PinOutputSettings). where, if not empty, is an SQL predicate on
// the table's columns: only the rows it holds for are read. A table with no
// primary key is refused (ErrNoPrimaryKey).
func NewTableReader(ctx context.Context, conn *pgx.Conn, t config.TableName, where string) (*TableReader, error) {
	if err := PinOutputSettings(ctx, conn); err != nil {
		return nil, err
	}
	rel, err := ReadRelation(ctx, conn, t)
	if err != nil {
		return nil, err
	}
	if len(rel.PrimaryKey) == 0 {
		return nil, fmt.Errorf("table %s: %w: a backfill reads a table in primary-key order; add one (ALTER TABLE %s ADD PRIMARY KEY (...))",
			t, ErrNoPrimaryKey, t)
	}
	r := &TableReader{rel: rel, where: strings.TrimSpace(where)}
	cols := make([]string, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	pk := make([]string, len(rel.PrimaryKey))
	params := make([]string, len(rel.PrimaryKey))
	for n, i := range rel.PrimaryKey {
		pk[n] = cols[i]
		params[n] = fmt.Sprintf("$%d::%s", n+1, rel.TypeNames[i])
	}
	from := fmt.Sprintf("SELECT %s FROM %s", strings.Join(cols, ", "), pgx.Identifier{t.Schema, t.Name}.Sanitize())
	var conds []string
	if r.where != "" {
		conds = append(conds, "("+r.where+")")
	}
	order := " ORDER BY " + strings.Join(pk, ", ")
	r.first = from + whereClause(conds) + order + " LIMIT $1::bigint"
	// A row constructor compares column by column, each in its own type
	// and collation: the order of ORDER BY.
	after := fmt.Sprintf("(%s) > (%s)", strings.Join(pk, ", "), strings.Join(params, ", "))
	if len(pk) == 1 {
		after = fmt.Sprintf("%s > %s", pk[0], params[0])
	}
	r.sql = from + whereClause(append([]string{after}, conds...)) + order + fmt.Sprintf(" LIMIT $%d::bigint", len(pk)+1)
	return r, nil
}

func whereClause(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// Relation is the table as pgoutput describes it.
func (r *TableReader) Relation() *CatalogRelation { return r.rel }

// Chunk is the rows of one read.
type Chunk struct {
	// Rows are the tuples, in primary-key order.
	Rows []wal.Tuple
	// LastKey is the last row's primary key (text output per column);
	// nil when there were no rows.
	LastKey []string
	// Bytes is the size of the rows' values.
	Bytes int
	// More is false when the table has no row after LastKey (fewer rows
	// than asked, and no byte bound cut the chunk).
	More bool
}

// Read reads up to limit rows after the primary key after (none: from the
// first), stopping early once the values exceed maxBytes (at least one row
// is read), in one REPEATABLE READ READ ONLY transaction: the rows of one
// snapshot, taken when the transaction starts.
func (r *TableReader) Read(ctx context.Context, conn *pgx.Conn, after []string, limit, maxBytes int) (Chunk, error) {
	var ch Chunk
	if after != nil && len(after) != len(r.rel.PrimaryKey) {
		return ch, fmt.Errorf("read %s: a key of %d columns after a primary key of %d", r.rel.QualifiedName(), len(after), len(r.rel.PrimaryKey))
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return ch, fmt.Errorf("read %s: begin: %w", r.rel.QualifiedName(), err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit, a no-op
	// Parameters go as text, each cast to its column's type by the
	// query: a key's text output reads back as the same value.
	sql, params := r.first, [][]byte{[]byte(strconv.Itoa(limit))}
	if after != nil {
		sql, params = r.sql, make([][]byte, 0, len(after)+1)
		for _, v := range after {
			params = append(params, []byte(v))
		}
		params = append(params, []byte(strconv.Itoa(limit)))
	}
	rr := conn.PgConn().ExecParams(ctx, sql, params, nil, nil, nil)
	cut := false
	for rr.NextRow() {
		raw := rr.Values()
		for _, v := range raw {
			ch.Bytes += len(v)
		}
		ch.Rows = append(ch.Rows, textTuple(raw))
		if maxBytes > 0 && ch.Bytes > maxBytes {
			cut = true
			break
		}
	}
	if _, err := rr.Close(); err != nil {
		return Chunk{}, r.readError(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Chunk{}, r.readError(err)
	}
	if n := len(ch.Rows); n > 0 {
		last := ch.Rows[n-1]
		ch.LastKey = make([]string, len(r.rel.PrimaryKey))
		for k, i := range r.rel.PrimaryKey {
			ch.LastKey[k] = last[i].Text
		}
	}
	ch.More = cut || len(ch.Rows) == limit
	return ch, nil
}

func (r *TableReader) readError(err error) error {
	if r.where != "" {
		return fmt.Errorf("read %s where (%s): %w", r.rel.QualifiedName(), r.where, err)
	}
	return fmt.Errorf("read %s: %w", r.rel.QualifiedName(), err)
}

// Estimate returns the planner's estimate of the table's rows
// (pg_class.reltuples; 0 when the table was never analyzed).
func (r *TableReader) Estimate(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var n float64
	if err := conn.QueryRow(ctx, "SELECT reltuples FROM pg_class WHERE oid = $1", r.rel.ID).Scan(&n); err != nil {
		return 0, fmt.Errorf("estimate the rows of %s: %w", r.rel.QualifiedName(), err)
	}
	return max(int64(n), 0), nil
}

// Count counts the rows the reader reads (the predicate's, if any), in a
// READ ONLY transaction.
func (r *TableReader) Count(ctx context.Context, conn *pgx.Conn) (int64, error) {
	sql := "SELECT count(*) FROM " + pgx.Identifier{r.rel.Namespace, r.rel.Name}.Sanitize()
	if r.where != "" {
		sql += " WHERE (" + r.where + ")"
	}
	var n int64
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, sql).Scan(&n)
	})
	if err != nil {
		return 0, r.readError(err)
	}
	return n, nil
}
