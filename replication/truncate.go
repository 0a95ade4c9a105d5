package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// EnsurePartitionTruncateTriggers covers a gap of publish_via_partition_root:
// a TRUNCATE of a single partition is not published at all. For each
// partitioned table among tables, every partition below it gets a BEFORE
// TRUNCATE statement trigger that emits a transactional logical message
// naming the root, so the root's rules flush their key spaces. It is run at
// start and again, while streaming, for each root whose partition tree
// changed (see ReadPartitionTrees). It returns the partitions that got a
// trigger.
func EnsurePartitionTruncateTriggers(ctx context.Context, conn *pgx.Conn, tables []config.TableName) ([]string, error) {
	var added []string
	for _, t := range tables {
		schema, name := t.Schema, t.Name
		rows, err := conn.Query(ctx, `
			SELECT n.nspname, c.relname,
			       EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = c.oid AND tg.tgname = 'cachesync_truncate')
			FROM pg_partition_tree(to_regclass($1)) pt
			JOIN pg_class c ON c.oid = pt.relid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE pt.level > 0`, sqlName(schema, name))
		if err != nil {
			return added, fmt.Errorf("list partitions of %s: %w", t.String(), err)
		}
		type part struct {
			schema, name string
			has          bool
		}
		var parts []part
		for rows.Next() {
			var p part
			if err := rows.Scan(&p.schema, &p.name, &p.has); err != nil {
				rows.Close()
				return added, err
			}
			parts = append(parts, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return added, err
		}
		if len(parts) == 0 {
			continue
		}
		fn := sqlName(schema, "cachesync_truncate_notify")
		_, err = conn.Exec(ctx, `CREATE OR REPLACE FUNCTION `+fn+`() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_logical_emit_message(true, '`+wal.TruncateMessagePrefix+`', TG_ARGV[0]);
  RETURN NULL;
END $$`)
		if err != nil {
			return added, fmt.Errorf("create the partition truncate function in schema %s: %w", schema, err)
		}
		for _, p := range parts {
			if p.has {
				continue
			}
			sql := fmt.Sprintf(`CREATE TRIGGER cachesync_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s('%s')`,
				sqlName(p.schema, p.name), fn, strings.ReplaceAll(t.String(), "'", "''"))
			if _, err := conn.Exec(ctx, sql); err != nil {
				return added, fmt.Errorf("create the truncate trigger on partition %s.%s of %s: %w", p.schema, p.name, t, err)
			}
			added = append(added, p.schema+"."+p.name)
		}
	}
	return added, nil
}

// RemovePartitionTruncateTriggers drops the truncate triggers that
// EnsurePartitionTruncateTriggers installed on partitions whose root no
// publication lists any more (its rules were removed, the publication was
// dropped, the partition was detached), then the notify functions no trigger
// uses. A root that some publication still lists keeps its triggers: another
// cachesync on the same database may rely on them (the messages reach every
// consumer). It returns the partitions it cleared.
func RemovePartitionTruncateTriggers(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, c.relname
		FROM pg_trigger tg
		JOIN pg_proc p ON p.oid = tg.tgfoid
		JOIN pg_class c ON c.oid = tg.tgrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_class r ON r.oid = pg_partition_root(tg.tgrelid)
		LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
		WHERE tg.tgname = 'cachesync_truncate' AND p.proname = 'cachesync_truncate_notify'
		  AND NOT EXISTS (SELECT 1 FROM pg_publication_tables pt
		                  WHERE pt.schemaname = rn.nspname AND pt.tablename = r.relname)`)
	if err != nil {
		return nil, fmt.Errorf("list the partition truncate triggers: %w", err)
	}
	type trigger struct{ schema, name string }
	stale, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (trigger, error) {
		var t trigger
		return t, r.Scan(&t.schema, &t.name)
	})
	if err != nil {
		return nil, fmt.Errorf("list the partition truncate triggers: %w", err)
	}
	var removed []string
	for _, t := range stale {
		if _, err := conn.Exec(ctx, "DROP TRIGGER IF EXISTS cachesync_truncate ON "+sqlName(t.schema, t.name)); err != nil {
			return removed, fmt.Errorf("drop the truncate trigger on %s.%s: %w", t.schema, t.name, err)
		}
		removed = append(removed, t.schema+"."+t.name)
	}
	fns, err := conn.Query(ctx, `
		SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE p.proname = 'cachesync_truncate_notify' AND p.pronargs = 0
		  AND NOT EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgfoid = p.oid)`)
	if err != nil {
		return removed, fmt.Errorf("list the partition truncate functions: %w", err)
	}
	schemas, err := pgx.CollectRows(fns, pgx.RowTo[string])
	if err != nil {
		return removed, err
	}
	for _, s := range schemas {
		if _, err := conn.Exec(ctx, "DROP FUNCTION IF EXISTS "+sqlName(s, "cachesync_truncate_notify")+"()"); err != nil {
			return removed, fmt.Errorf("drop the truncate function in schema %s: %w", s, err)
		}
	}
	return removed, nil
}
