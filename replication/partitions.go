package replication

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
)

// PartitionTrees fingerprints the partition trees of partitioned tables:
// root ("schema.table") → a digest of every partition below it, each with
// its parent and the transaction that attached or created it. A table that
// is not partitioned (or does not exist) has no entry.
//
// ATTACH, DETACH and DROP of a partition add or remove rows of the root, and
// PostgreSQL publishes none of it (nor a partition's CREATE, which leaves a
// partition without a truncate trigger). Each of them inserts or deletes the
// partition's pg_inherits row, so its digest changes, even when a partition
// is detached and attached again between two looks: the new row has another
// xmin. Nothing else updates pg_inherits rows (DETACH ... CONCURRENTLY marks
// its row first, which counts as a change too).
type PartitionTrees map[string]string

// Changed returns the roots whose tree differs between t (seen before) and
// now, sorted: attached to, detached from, a partition dropped or created,
// the root itself partitioned anew or gone.
func (t PartitionTrees) Changed(now PartitionTrees) []string {
	var out []string
	for root, digest := range now {
		if t[root] != digest {
			out = append(out, root)
		}
	}
	for root := range t {
		if _, ok := now[root]; !ok {
			out = append(out, root)
		}
	}
	slices.Sort(out)
	return out
}

// ReadPartitionTrees reads the partition trees of tables. It walks
// pg_inherits from each root instead of calling pg_partition_tree, which
// would lock every partition: polling must never queue behind DDL.
func ReadPartitionTrees(ctx context.Context, conn *pgx.Conn, tables []config.TableName) (PartitionTrees, error) {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = sqlName(t.Schema, t.Name)
	}
	rows, err := conn.Query(ctx, `
		WITH RECURSIVE roots AS (
			SELECT r.ord, c.oid
			FROM unnest($1::text[]) WITH ORDINALITY AS r(name, ord)
			JOIN pg_class c ON c.oid = to_regclass(r.name) AND c.relkind = 'p'
		), tree AS (
			SELECT roots.ord, i.inhrelid, i.inhparent, i.xmin::text AS xmin
			FROM roots JOIN pg_inherits i ON i.inhparent = roots.oid
			UNION ALL
			SELECT tree.ord, i.inhrelid, i.inhparent, i.xmin::text
			FROM tree JOIN pg_inherits i ON i.inhparent = tree.inhrelid
		)
		SELECT roots.ord, coalesce(string_agg(tree.inhrelid::oid::text || '<' || tree.inhparent::oid::text || '@' || tree.xmin, ','
		                                      ORDER BY tree.inhrelid::oid::int8), '')
		FROM roots LEFT JOIN tree ON tree.ord = roots.ord
		GROUP BY roots.ord`, names)
	if err != nil {
		return nil, fmt.Errorf("read the partition trees of the rule tables: %w", err)
	}
	trees := PartitionTrees{}
	var ord int64
	var members string
	_, err = pgx.ForEachRow(rows, []any{&ord, &members}, func() error {
		sum := sha256.Sum256([]byte(members))
		trees[tables[ord-1].String()] = hex.EncodeToString(sum[:12])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the partition trees of the rule tables: %w", err)
	}
	return trees, nil
}
