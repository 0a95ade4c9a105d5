package replication

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// SlotInfo is a replication slot as pg_replication_slots shows it, with the
// server's current WAL position for lag figures.
type SlotInfo struct {
	Name              string
	Plugin            string
	Database          string
	Temporary         bool
	Active            bool
	ActivePID         *int32
	ConfirmedFlushLSN wal.LSN
	RestartLSN        wal.LSN
	WALStatus         string
	SafeWALSize       *int64
	CurrentLSN        wal.LSN
	LagBytes          int64 // current WAL position − confirmed_flush_lsn
	RetainedBytes     int64 // current WAL position − restart_lsn
}

// ReadSlot returns the slot, or nil when it does not exist.
func ReadSlot(ctx context.Context, conn *pgx.Conn, name string) (*SlotInfo, error) {
	var s SlotInfo
	var confirmed, restart, current *string
	var walStatus, plugin, db *string
	var lag, retained *int64
	err := conn.QueryRow(ctx, `
		SELECT slot_name, plugin, database, temporary, active, active_pid,
		       confirmed_flush_lsn::text, restart_lsn::text, wal_status, safe_wal_size,
		       pg_current_wal_lsn()::text,
		       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
		       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, name).
		Scan(&s.Name, &plugin, &db, &s.Temporary, &s.Active, &s.ActivePID,
			&confirmed, &restart, &walStatus, &s.SafeWALSize, &current, &lag, &retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read slot %q: %w", name, err)
	}
	s.Plugin, s.Database, s.WALStatus = deref(plugin), deref(db), deref(walStatus)
	for _, f := range []struct {
		src *string
		dst *wal.LSN
	}{{confirmed, &s.ConfirmedFlushLSN}, {restart, &s.RestartLSN}, {current, &s.CurrentLSN}} {
		if f.src == nil {
			continue
		}
		if *f.dst, err = wal.ParseLSN(*f.src); err != nil {
			return nil, err
		}
	}
	if lag != nil {
		s.LagBytes = *lag
	}
	if retained != nil {
		s.RetainedBytes = *retained
	}
	return &s, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// CheckSlot verifies that an existing slot is one we can stream from.
func CheckSlot(s *SlotInfo, database string) error {
	switch {
	case s.Plugin != "pgoutput":
		return fmt.Errorf("slot %q uses plugin %q, not pgoutput: drop it (cachesync teardown) or choose another slot name", s.Name, s.Plugin)
	case s.Database != database:
		return fmt.Errorf("slot %q belongs to database %q, not %q: choose another slot name", s.Name, s.Database, database)
	case s.WALStatus == "lost":
		return fmt.Errorf("slot %q: %w (wal_status = lost): drop it with cachesync teardown and run again, which recreates it and flushes the rules' key spaces", s.Name, ErrSlotInvalidated)
	}
	return nil
}

// SlotCreateTimeout bounds slot creation, which waits for every transaction
// in progress to finish.
const SlotCreateTimeout = 2 * time.Minute

// CreateSlot creates a permanent (or, for dry runs, temporary) pgoutput slot
// on a replication connection and returns its consistent point. Changes
// committed before that point are never delivered: the caller must flush the
// key spaces after this returns and before streaming.
func CreateSlot(ctx context.Context, conn *ReplConn, name string, temporary bool) (wal.LSN, error) {
	if err := config.ValidateName("slot", name); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, SlotCreateTimeout)
	defer cancel()
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn.pg, name, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary:      temporary,
		SnapshotAction: "NOEXPORT_SNAPSHOT",
		Mode:           pglogrepl.LogicalReplication,
	})
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("create slot %q: waited %s for transactions in progress to finish (see pg_stat_activity for long-running ones): %w", name, SlotCreateTimeout, err)
		}
		return 0, fmt.Errorf("create slot %q: %w", name, err)
	}
	lsn, err := wal.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("create slot %q: consistent point: %w", name, err)
	}
	return lsn, nil
}

// DropSlot drops the slot if it exists. An active slot is not touched: the
// error says which process holds it.
func DropSlot(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	s, err := ReadSlot(ctx, conn, name)
	if err != nil || s == nil {
		return false, err
	}
	if s.Active {
		pid := int32(0)
		if s.ActivePID != nil {
			pid = *s.ActivePID
		}
		return false, fmt.Errorf("slot %q is in use by process %d: stop cachesync first", name, pid)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, name); err != nil {
		return false, fmt.Errorf("drop slot %q: %w", name, err)
	}
	return true, nil
}

// Publication is the state of a publication.
type Publication struct {
	Name      string
	AllTables bool
	Insert    bool
	Update    bool
	Delete    bool
	Truncate  bool
	ViaRoot   bool
	Tables    []string // "schema.table", sorted
	Filtered  bool     // some table has a row filter or column list
}

// ReadPublication returns the publication, or nil when it does not exist.
func ReadPublication(ctx context.Context, conn *pgx.Conn, name string) (*Publication, error) {
	p := Publication{Name: name}
	err := conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot
		FROM pg_publication WHERE pubname = $1`, name).
		Scan(&p.AllTables, &p.Insert, &p.Update, &p.Delete, &p.Truncate, &p.ViaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", name, err)
	}
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname, pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL
		FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid
		JOIN pg_class c ON c.oid = pr.prrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1 ORDER BY 1`, name)
	if err != nil {
		return nil, fmt.Errorf("read tables of publication %q: %w", name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var filtered bool
		if err := rows.Scan(&t, &filtered); err != nil {
			return nil, err
		}
		p.Tables = append(p.Tables, t)
		p.Filtered = p.Filtered || filtered
	}
	return &p, rows.Err()
}

// EnsurePublication creates the publication for exactly the given tables, or
// brings an existing one in line (tables, operations, publish_via_partition_root,
// no row filters or column lists). It returns the tables that were added, whose
// key spaces the caller must flush: changes before the addition were never sent.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []config.TableName) (added []string, err error) {
	if err := config.ValidateName("publication", name); err != nil {
		return nil, err
	}
	// Names are compared as "schema.table" (as pg_publication_tables
	// lists them) but quoted part by part: either part may hold a dot.
	quoted := map[string]string{}
	for _, t := range tables {
		quoted[t.String()] = pgx.Identifier{t.Schema, t.Name}.Sanitize()
	}
	want := slices.Sorted(maps.Keys(quoted))
	list := make([]string, len(want))
	for i, t := range want {
		list[i] = quoted[t]
	}
	pub, err := ReadPublication(ctx, conn, name)
	if err != nil {
		return nil, err
	}
	const with = `WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`
	if pub == nil {
		forTables := "FOR TABLE " + strings.Join(list, ", ")
		if len(list) == 0 {
			forTables = "" // no rule (write_behind blocks only): a publication of no table
		}
		sql := fmt.Sprintf("CREATE PUBLICATION %s %s %s", pgx.Identifier{name}.Sanitize(), forTables, with)
		if _, err := conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("create publication %q: %w", name, err)
		}
		return want, nil
	}
	if pub.AllTables {
		return nil, fmt.Errorf("publication %q is FOR ALL TABLES: cachesync manages its own publication; choose another name in rules.hcl (postgres { publication = ... })", name)
	}
	for _, t := range want {
		if !slices.Contains(pub.Tables, t) {
			added = append(added, t)
		}
	}
	if len(added) > 0 || pub.Filtered || !slices.Equal(pub.Tables, want) {
		if err := setPublicationTables(ctx, conn, name, list); err != nil {
			return nil, err
		}
	}
	if !pub.Insert || !pub.Update || !pub.Delete || !pub.Truncate || !pub.ViaRoot {
		sql := fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)", pgx.Identifier{name}.Sanitize())
		if _, err := conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("update options of publication %q: %w", name, err)
		}
	}
	return added, nil
}

// setPublicationTables makes quoted the publication's tables. SET TABLE
// needs one table at least: no table (no rule, write_behind blocks only)
// drops the ones it has.
func setPublicationTables(ctx context.Context, conn *pgx.Conn, name string, quoted []string) error {
	sql := fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s", pgx.Identifier{name}.Sanitize(), strings.Join(quoted, ", "))
	if len(quoted) == 0 {
		var have []string
		err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(format('%I.%I', n.nspname, c.relname)), '{}')
			FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
			JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE p.pubname = $1`, name).Scan(&have)
		if err != nil {
			return fmt.Errorf("read tables of publication %q: %w", name, err)
		}
		if len(have) == 0 {
			return nil
		}
		sql = fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s", pgx.Identifier{name}.Sanitize(), strings.Join(have, ", "))
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("update tables of publication %q: %w", name, err)
	}
	return nil
}

// DropPublication drops the publication if it exists.
func DropPublication(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	if err := config.ValidateName("publication", name); err != nil {
		return false, err
	}
	pub, err := ReadPublication(ctx, conn, name)
	if err != nil || pub == nil {
		return false, err
	}
	_, err = conn.Exec(ctx, "DROP PUBLICATION "+pgx.Identifier{name}.Sanitize())
	if err != nil {
		return false, fmt.Errorf("drop publication %q: %w", name, err)
	}
	return true, nil
}
