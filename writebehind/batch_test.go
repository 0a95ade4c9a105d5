package writebehind

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
)

func testSpec() *config.WriteBehind {
	return &config.WriteBehind{Name: "c", Stream: "wb", Table: config.TableName{Schema: "public", Name: "counters"},
		KeyColumns: []string{"id"}, BatchSize: 100, Delete: true}
}

func cols(names ...string) []column {
	var out []column
	for _, n := range names {
		out = append(out, column{Name: n})
	}
	return out
}

func msg(id, op, row string) redis.XMessage {
	return redis.XMessage{ID: id, Values: map[string]any{FieldOp: op, FieldRow: row}}
}

// TestParse: each way an entry can be bad is a dead letter with a reason
// that names the fix; a good one keeps its row as sent.
func TestParse(t *testing.T) {
	tab := newTable(testSpec(), cols("id", "hits", "note"))
	for _, tc := range []struct {
		msg  redis.XMessage
		want string // "" ok, else part of the error
	}{
		{msg("1-0", "upsert", `{"id":1,"hits":2}`), ""},
		{msg("1-1", "delete", `{"id":1,"hits":2}`), ""},
		{msg("1-2", "insert", `{"id":1}`), `field op is "insert"`},
		{redis.XMessage{ID: "1-3", Values: map[string]any{FieldOp: "upsert"}}, "field row is missing"},
		{msg("1-4", "upsert", `{"id":1,`), "not a JSON object"},
		{msg("1-5", "upsert", `[1]`), "not a JSON object"},
		{msg("1-6", "upsert", `null`), "not a JSON object"},
		{msg("1-7", "upsert", `{"hits":1}`), `no value for key column "id"`},
		{msg("1-8", "upsert", `{"id":null}`), `no value for key column "id"`},
		{msg("1-9", "upsert", `{"id":1,"nope":1}`), `no writable column "nope"`},
	} {
		e, err := tab.parse(tc.msg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.msg.ID, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.msg.ID, err, tc.want)
		case tc.want == "" && tc.msg.Values[FieldOp] == "delete" && (e.raw != nil || len(e.row) != 1):
			t.Errorf("%s: a delete keeps only the key columns, got %v", tc.msg.ID, e.row)
		}
	}
	spec := testSpec()
	spec.Delete = false
	if _, err := newTable(spec, cols("id")).parse(msg("2-0", "delete", `{"id":1}`)); err == nil || !strings.Contains(err.Error(), "delete = false") {
		t.Errorf("delete with delete = false: %v", err)
	}
	spec = testSpec()
	spec.Columns = []string{"hits"}
	e, err := newTable(spec, cols("id", "hits", "note")).parse(msg("3-0", "upsert", `{"id":1,"hits":2,"note":"x","extra":1}`))
	if err != nil || len(e.row) != 2 || e.raw != nil {
		t.Errorf("columns = [hits] keeps id and hits only: %v %v", e, err)
	}
}

// TestMergeAndStatements: the last write to a key wins; upserts merge
// their columns, a delete drops them, a delete then an upsert deletes
// and inserts; statements group upserts by column set, deletes first.
func TestMergeAndStatements(t *testing.T) {
	tab := newTable(testSpec(), cols("id", "hits", "note"))
	var entries []*entry
	for _, m := range []redis.XMessage{
		msg("1-0", "upsert", `{"id":1,"hits":1}`),
		msg("1-1", "upsert", `{"id":1,"note":"a"}`),
		msg("1-2", "upsert", `{"id":2,"hits":5}`),
		msg("1-3", "delete", `{"id":2}`),
		msg("1-4", "delete", `{"id":3}`),
		msg("1-5", "upsert", `{"id":3,"hits":9}`),
		msg("1-6", "upsert", `{"id": 1, "hits":7}`),
		msg("1-7", "upsert", `{"id":4,"hits":1,"note":"n"}`),
	} {
		e, err := tab.parse(m)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	m := merge(entries)
	if got := len(m.order); got != 4 {
		t.Fatalf("%d keys, want 4", got)
	}
	stmts := tab.statements(m)
	var got []string
	for _, st := range stmts {
		var rows []map[string]any
		if err := json.Unmarshal(st.rows, &rows); err != nil {
			t.Fatalf("%s: %v", st.rows, err)
		}
		b, _ := json.Marshal(rows)
		got = append(got, st.sql[:6]+" "+string(b))
	}
	want := []string{
		`DELETE [{"id":2},{"id":3}]`,
		`INSERT [{"hits":7,"id":1,"note":"a"},{"hits":1,"id":4,"note":"n"}]`,
		`INSERT [{"hits":9,"id":3}]`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("statements:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stmts[1].sql, `ON CONFLICT ("id") DO UPDATE SET "hits" = EXCLUDED."hits", "note" = EXCLUDED."note"`) {
		t.Errorf("upsert SQL: %s", stmts[1].sql)
	}
}

func TestParseID(t *testing.T) {
	a, _ := ParseID("5-3")
	b, _ := ParseID("10-0")
	if !a.Less(b) || b.Less(a) || a.next().String() != "5-4" || b.String() != "10-0" {
		t.Errorf("%v %v", a, b)
	}
	if _, err := ParseID("x"); err == nil {
		t.Error("ParseID(x) succeeded")
	}
}
