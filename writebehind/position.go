package writebehind

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
)

// ensurePositions creates the positions table when missing. The
// existence check comes first so that a role without CREATE can use a
// table an administrator created.
func ensurePositions(ctx context.Context, conn *pgx.Conn) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", PositionsTable).Scan(&exists); err != nil {
		return fmt.Errorf("look up %s: %w", PositionsTable, err)
	}
	if exists {
		return nil
	}
	_, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS cachesync;
CREATE TABLE IF NOT EXISTS `+PositionsTable+` (
	stream text PRIMARY KEY,
	last_id text NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE `+PositionsTable+` IS 'cachesync write-behind: the last entry ID applied from each Redis stream, moved in the transaction that applies the entries'`)
	if err != nil {
		return fmt.Errorf("create %s (the write-behind positions; or create it as an administrator, see docs/rules.md): %w", PositionsTable, err)
	}
	return nil
}

// readPosition returns the stream's recorded position, recording 0-0 for
// a stream never drained.
func readPosition(ctx context.Context, conn *pgx.Conn, stream string) (ID, error) {
	if _, err := conn.Exec(ctx, "INSERT INTO "+PositionsTable+" (stream, last_id) VALUES ($1, '0-0') ON CONFLICT (stream) DO NOTHING", stream); err != nil {
		return ID{}, fmt.Errorf("record stream %q in %s: %w", stream, PositionsTable, err)
	}
	var s string
	if err := conn.QueryRow(ctx, "SELECT last_id FROM "+PositionsTable+" WHERE stream = $1", stream).Scan(&s); err != nil {
		return ID{}, fmt.Errorf("read the position of stream %q: %w", stream, err)
	}
	return ParseID(s)
}

// ReadPosition returns the stream's recorded position ("" when the stream
// was never drained or the table does not exist).
func ReadPosition(ctx context.Context, conn *pgx.Conn, stream string) (string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", PositionsTable).Scan(&exists); err != nil || !exists {
		return "", err
	}
	var s string
	err := conn.QueryRow(ctx, "SELECT last_id FROM "+PositionsTable+" WHERE stream = $1", stream).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return s, err
}

// column is a writable column of the table; required when an INSERT must
// give it a value (NOT NULL without a default).
type column struct {
	Name     string
	Required bool
}

// readColumns returns the table's writable columns (not dropped, not
// generated).
func readColumns(ctx context.Context, conn *pgx.Conn, t config.TableName) ([]column, error) {
	ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	rows, err := conn.Query(ctx, `SELECT a.attname, a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum`, ident)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", t, err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowToStructByPos[column])
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", t, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s does not exist or has no columns this role can see", t)
	}
	return cols, nil
}
