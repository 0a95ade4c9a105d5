package writebehind

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
)

// ID is a stream entry ID, ms-seq.
type ID struct{ MS, Seq uint64 }

// ParseID parses "ms-seq".
func ParseID(s string) (ID, error) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return ID{}, fmt.Errorf("stream entry ID %q is not ms-seq", s)
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return ID{}, fmt.Errorf("stream entry ID %q is not ms-seq", s)
	}
	return ID{a, b}, nil
}

func (id ID) String() string {
	return strconv.FormatUint(id.MS, 10) + "-" + strconv.FormatUint(id.Seq, 10)
}

// Less orders IDs as the stream does.
func (id ID) Less(o ID) bool { return id.MS < o.MS || (id.MS == o.MS && id.Seq < o.Seq) }

// next is the smallest ID after id.
func (id ID) next() ID {
	if id.Seq == ^uint64(0) {
		return ID{id.MS + 1, 0}
	}
	return ID{id.MS, id.Seq + 1}
}

// table is what the worker knows of its table: read at every (re)connect.
type table struct {
	spec *config.WriteBehind
	// ident is the quoted schema.name.
	ident string
	// columns are the table's writable columns; required those an INSERT
	// must give (NOT NULL, no default).
	columns, required map[string]bool
	// keys are the key columns, quoted, in spec order.
	keys []string
	// upserts caches upsertSQL by column set (used by the applier only).
	upserts map[string]string
}

func newTable(spec *config.WriteBehind, columns []column) *table {
	t := &table{spec: spec, ident: pgx.Identifier{spec.Table.Schema, spec.Table.Name}.Sanitize(), columns: map[string]bool{}, required: map[string]bool{}, upserts: map[string]string{}}
	for _, c := range columns {
		t.columns[c.Name] = true
		t.required[c.Name] = c.Required
	}
	for _, k := range spec.KeyColumns {
		t.keys = append(t.keys, pgx.Identifier{k}.Sanitize())
	}
	return t
}

// entry is one parsed stream entry.
type entry struct {
	msg redis.XMessage
	op  string
	// row holds the columns the entry writes (for delete, the key
	// columns); raw is the row as sent when nothing was dropped from it.
	row map[string]json.RawMessage
	raw []byte
	key string
}

// deadLetter is an entry that cannot apply, and why.
type deadLetter struct {
	msg redis.XMessage
	err string
}

// errEntry is an entry's own fault: it becomes a dead letter.
type errEntry struct{ msg string }

func (e *errEntry) Error() string { return e.msg }

func entryErrorf(format string, args ...any) error { return &errEntry{fmt.Sprintf(format, args...)} }

// parse checks one stream entry against the table: op, row, key columns,
// columns.
func (t *table) parse(msg redis.XMessage) (*entry, error) {
	e := &entry{msg: msg}
	op, _ := msg.Values[FieldOp].(string)
	rowText, ok := msg.Values[FieldRow].(string)
	switch {
	case op != OpUpsert && op != OpDelete:
		return nil, entryErrorf("field op is %q: want %q or %q", op, OpUpsert, OpDelete)
	case !ok:
		return nil, entryErrorf("field row is missing: want a JSON object of column values")
	case op == OpDelete && !t.spec.Delete:
		return nil, entryErrorf("op delete on write_behind %q, which has delete = false", t.spec.Name)
	}
	e.op = op
	var err error
	if e.row, err = scanObject([]byte(rowText)); err != nil {
		return nil, entryErrorf("field row is not a JSON object: %v", err)
	}
	if len(t.spec.KeyColumns) == 1 {
		// The common case, without a buffer.
		v, ok := e.row[t.spec.KeyColumns[0]]
		if !ok || string(v) == "null" {
			return nil, entryErrorf("row has no value for key column %q", t.spec.KeyColumns[0])
		}
		if bytes.ContainsAny(v, " \t\n\r") {
			var b bytes.Buffer
			if err := json.Compact(&b, v); err != nil {
				return nil, entryErrorf("key column %q: %v", t.spec.KeyColumns[0], err)
			}
			v = b.Bytes()
		}
		e.key = string(v)
	} else {
		var key bytes.Buffer
		for _, k := range t.spec.KeyColumns {
			v, ok := e.row[k]
			if !ok || string(v) == "null" {
				return nil, entryErrorf("row has no value for key column %q", k)
			}
			if err := json.Compact(&key, v); err != nil {
				return nil, entryErrorf("key column %q: %v", k, err)
			}
			key.WriteByte(0)
		}
		e.key = key.String()
	}
	dropped := false
	for c := range e.row {
		switch {
		case slices.Contains(t.spec.KeyColumns, c):
		case op == OpDelete:
			delete(e.row, c)
			dropped = true
		case t.spec.Columns != nil && !slices.Contains(t.spec.Columns, c):
			delete(e.row, c)
			dropped = true
		case !t.columns[c]:
			return nil, entryErrorf("table %s has no writable column %q", t.spec.Table, c)
		}
	}
	if !dropped {
		e.raw = []byte(rowText)
	}
	return e, nil
}

// write is what a batch does to one key after merging its entries: delete
// the row (del), then upsert cols (when non-nil).
type write struct {
	del bool
	// keyRow is the deleting entry's row (its key columns).
	keyRow []byte
	cols   map[string]json.RawMessage
	// raw is the only upsert's row as sent, when one entry gave cols.
	raw []byte
}

// merged is a batch's entries reduced to one write per key: the last write
// to a key wins; an upsert's columns merge into an earlier upsert's, a
// delete drops them.
type merged struct {
	order  []string
	writes map[string]*write
}

func merge(entries []*entry) merged {
	m := merged{writes: make(map[string]*write, len(entries))}
	for _, e := range entries {
		w := m.writes[e.key]
		if w == nil {
			w = &write{}
			m.writes[e.key] = w
			m.order = append(m.order, e.key)
		}
		if e.op == OpDelete {
			w.del, w.cols, w.raw = true, nil, nil
			w.keyRow, _ = json.Marshal(e.row)
			continue
		}
		if w.cols == nil {
			w.cols, w.raw = e.row, e.raw
			continue
		}
		if w.raw != nil {
			w.cols = maps.Clone(w.cols)
			w.raw = nil
		}
		for c, v := range e.row {
			w.cols[c] = v
		}
	}
	return m
}

// statement is one SQL statement of a batch with its one argument: a JSON
// array of rows.
type statement struct {
	sql  string
	rows []byte
}

// statements returns the batch's deletes, then its upserts grouped by
// column set, each as one statement over jsonb_populate_recordset.
func (t *table) statements(m merged) []statement {
	var dels bytes.Buffer
	nd := 0
	groups := map[string]*bytes.Buffer{}
	counts := map[string]int{}
	var order []string
	// Rows of a batch mostly carry the same columns: the previous row's
	// set is reused when it matches.
	var cols []string
	g := ""
	for _, k := range m.order {
		w := m.writes[k]
		if w.del {
			appendRow(&dels, nd, w.keyRow)
			nd++
		}
		if w.cols == nil {
			continue
		}
		if !sameColumns(cols, w.cols) {
			cols = cols[:0]
			for c := range w.cols {
				cols = append(cols, c)
			}
			sort.Strings(cols)
			g = strings.Join(cols, "\x00")
		}
		b := groups[g]
		if b == nil {
			b = &bytes.Buffer{}
			groups[g] = b
			order = append(order, g)
		}
		row := w.raw
		if row == nil {
			row, _ = json.Marshal(w.cols)
		}
		appendRow(b, counts[g], row)
		counts[g]++
	}
	var out []statement
	if nd > 0 {
		dels.WriteByte(']')
		out = append(out, statement{sql: t.deleteSQL(), rows: dels.Bytes()})
	}
	for _, g := range order {
		b := groups[g]
		b.WriteByte(']')
		sql, ok := t.upserts[g]
		if !ok {
			sql = t.upsertSQL(strings.Split(g, "\x00"))
			t.upserts[g] = sql
		}
		out = append(out, statement{sql: sql, rows: b.Bytes()})
	}
	return out
}

// sameColumns reports whether row has exactly the columns of cols.
func sameColumns(cols []string, row map[string]json.RawMessage) bool {
	if len(cols) != len(row) || len(cols) == 0 {
		return false
	}
	for _, c := range cols {
		if _, ok := row[c]; !ok {
			return false
		}
	}
	return true
}

func appendRow(b *bytes.Buffer, i int, row []byte) {
	if i == 0 {
		b.WriteByte('[')
	} else {
		b.WriteByte(',')
	}
	b.Write(row)
}

func (t *table) deleteSQL() string {
	var on []string
	for _, k := range t.keys {
		on = append(on, "t."+k+" = d."+k)
	}
	return "DELETE FROM " + t.ident + " AS t USING jsonb_populate_recordset(NULL::" + t.ident + ", $1::jsonb) AS d WHERE " + strings.Join(on, " AND ")
}

// upsertSQL writes rows of columns cols. When they include every column an
// INSERT needs, it is one INSERT … ON CONFLICT DO UPDATE. Otherwise the
// rows are partial updates: PostgreSQL checks NOT NULL before it looks for
// a conflict, so the existing rows are UPDATEd first, and only the others
// INSERTed (which fails, as it should, for a new row lacking a value).
func (t *table) upsertSQL(cols []string) string {
	quoted := make([]string, len(cols))
	var set, upd []string
	for i, c := range cols {
		quoted[i] = pgx.Identifier{c}.Sanitize()
		if !slices.Contains(t.spec.KeyColumns, c) {
			set = append(set, quoted[i]+" = EXCLUDED."+quoted[i])
			upd = append(upd, quoted[i]+" = d."+quoted[i])
		}
	}
	list := strings.Join(quoted, ", ")
	keys := strings.Join(t.keys, ", ")
	action := "DO NOTHING"
	if len(set) > 0 {
		action = "DO UPDATE SET " + strings.Join(set, ", ")
	}
	rows := "jsonb_populate_recordset(NULL::" + t.ident + ", $1::jsonb)"
	complete := true
	for c, req := range t.required {
		if req && !slices.Contains(cols, c) {
			complete = false
		}
	}
	if complete || len(upd) == 0 {
		return "INSERT INTO " + t.ident + " (" + list + ") SELECT " + list + " FROM " + rows + " ON CONFLICT (" + keys + ") " + action
	}
	var on, dk []string
	for _, k := range t.keys {
		on = append(on, "t."+k+" = d."+k)
		dk = append(dk, "d."+k)
	}
	return "WITH d AS (SELECT " + list + " FROM " + rows + "), u AS (UPDATE " + t.ident + " AS t SET " + strings.Join(upd, ", ") +
		" FROM d WHERE " + strings.Join(on, " AND ") + " RETURNING " + strings.Join(prefixed("t.", t.keys), ", ") + ")" +
		" INSERT INTO " + t.ident + " (" + list + ") SELECT " + list + " FROM d WHERE (" + strings.Join(dk, ", ") + ") NOT IN (SELECT " + keys + " FROM u)" +
		" ON CONFLICT (" + keys + ") " + action
}

func prefixed(p string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = p + n
	}
	return out
}
