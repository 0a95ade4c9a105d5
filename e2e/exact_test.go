package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/cachesync/cachesync/keyspace"
)

// TestCommittedBytes: keys and refresh values are PostgreSQL's own text of
// the committed row, byte for byte. Text that is not in Unicode NFC (e +
// U+0301, Hangul jamo) is not normalised, floats keep PostgreSQL's notation
// (1e+308, not 309 digits), numeric keeps its digits, and jsonencode(row)
// holds, field by field, what row_to_json holds, numbers as exact text.
func TestCommittedBytes(t *testing.T) {
	e := setup(t, `
CREATE TABLE docs (id bigint PRIMARY KEY, tx text, f8 float8, f4 float4, n numeric, j jsonb, tags text[], touched int);
ALTER TABLE docs REPLICA IDENTITY FULL;`, `
rule "doc_text" {
  table = "public.docs"
  refresh {
    key   = "doc:${row.id}"
    value = row.tx
    ttl   = "1h"
  }
}
rule "doc_json" {
  table = "public.docs"
  refresh {
    key   = "docjson:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}
rule "doc_keys" {
  table = "public.docs"
  invalidate {
    keys = ["k:${row.tx}:${row.f8}:${row.f4}:${row.n}"]
    tags = ["t:${row.tx}"]
  }
}
`)
	d := e.start()
	e.waitStreaming(d)

	e.exec(`INSERT INTO docs VALUES
	  (1, 'e' || U&'\0301', 1e308, 1.1, 1.50, '{"a": 1e308, "b": 1.50, "s": "e\u0301", "f": 2.5e-7}', ARRAY['e' || U&'\0301', 'x'], 0),
	  (2, U&'\1100\1161\11A8', 1e-300, '-0', 0.000, '[1.0, -0, 2e-5, "\u1100\u1161"]', '{}', 0),
	  (3, U&'A\030A and \00C5', '-0', 3.4028235e38, 123456789012345678901234567890.123, NULL, NULL, 0),
	  (4, 'plain', 'NaN', 'Infinity', 'NaN', '{}', ARRAY[NULL, 'b'], 0),
	  (5, 'ß', '-Infinity', 1e-40, 1e-20, '"e\u0301"', ARRAY['{', '"'], 0)`)
	e.caughtUp(d, 60*time.Second)

	type pgRow struct {
		id          int64
		tx, key     string
		rowJSON     string
		tagOfTheRow string
	}
	var rows []pgRow
	res, err := e.db.Query(e.ctx, `SELECT id, tx::text, 'k:' || tx::text || ':' || f8::text || ':' || f4::text || ':' || n::text,
	  row_to_json(docs)::text, 't:' || tx::text FROM docs ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		var r pgRow
		if err := res.Scan(&r.id, &r.tx, &r.key, &r.rowJSON, &r.tagOfTheRow); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	if res.Close(); res.Err() != nil || len(rows) != 5 {
		t.Fatalf("rows: %v (%d)", res.Err(), len(rows))
	}
	if rows[0].tx != "e\u0301" || rows[1].tx != "\u1100\u1161\u11a8" {
		t.Fatalf("the database did not store the decomposed text: % x, % x", rows[0].tx, rows[1].tx)
	}

	for _, r := range rows {
		got, err := e.rdb.Get(e.ctx, fmt.Sprintf("doc:%d", r.id)).Result()
		if err != nil || got != r.tx {
			t.Errorf("doc:%d = %q (% x), want PostgreSQL's %q (% x) (err %v)", r.id, got, got, r.tx, r.tx, err)
		}
		raw, err := e.rdb.Get(e.ctx, fmt.Sprintf("docjson:%d", r.id)).Result()
		if err != nil {
			t.Errorf("docjson:%d: %v", r.id, err)
			continue
		}
		if diffs := sameJSONRow(raw, r.rowJSON); len(diffs) > 0 {
			t.Errorf("docjson:%d differs from row_to_json:\n cached %s\n     pg %s\n %v", r.id, raw, r.rowJSON, diffs)
		}
	}

	// The invalidation keys and tags of both images of an UPDATE are the
	// names an application builds from PostgreSQL's text of the row.
	for _, r := range rows {
		e.set(r.key)
		if err := e.rdb.SAdd(e.ctx, keyspace.TagKey(r.tagOfTheRow), "member:"+fmt.Sprint(r.id)).Err(); err != nil {
			t.Fatal(err)
		}
		e.set("member:" + fmt.Sprint(r.id))
	}
	e.exec(`UPDATE docs SET touched = touched + 1`)
	for _, r := range rows {
		e.gone(r.key, keyspace.TagKey(r.tagOfTheRow), "member:"+fmt.Sprint(r.id))
	}
}

// sameJSONRow compares a cached jsonencode(row) with PostgreSQL's
// row_to_json of the row, field by field: strings byte for byte, numbers as
// their exact text. numeric is cached as a string holding PostgreSQL's digits
// (docs/rules.md), so for n the string must equal the number's text.
func sameJSONRow(cached, pg string) []string {
	parse := func(s string) (map[string]any, error) {
		dec := json.NewDecoder(bytes.NewReader([]byte(s)))
		dec.UseNumber()
		var m map[string]any
		return m, dec.Decode(&m)
	}
	c, err := parse(cached)
	if err != nil {
		return []string{"cached value: " + err.Error()}
	}
	p, err := parse(pg)
	if err != nil {
		return []string{"row_to_json: " + err.Error()}
	}
	var diffs []string
	if len(c) != len(p) {
		diffs = append(diffs, fmt.Sprintf("%d fields, want %d", len(c), len(p)))
	}
	for k, pv := range p {
		cv := c[k]
		if num, ok := pv.(json.Number); ok && k == "n" {
			pv = num.String()
		}
		if !sameJSON(cv, pv) {
			diffs = append(diffs, fmt.Sprintf("%s: %#v, want %#v", k, cv, pv))
		}
	}
	return diffs
}

func sameJSON(a, b any) bool {
	switch b := b.(type) {
	case map[string]any:
		a, ok := a.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k := range b {
			if !sameJSON(a[k], b[k]) {
				return false
			}
		}
		return true
	case []any:
		a, ok := a.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range b {
			if !sameJSON(a[i], b[i]) {
				return false
			}
		}
		return true
	}
	return a == b // json.Number and string compare as text, byte for byte
}
