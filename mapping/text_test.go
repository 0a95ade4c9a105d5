package mapping

import (
	"strings"
	"testing"

	"github.com/cachesync/cachesync/wal"
)

// exactRel has a column of each value class.
var exactRel = rel(20, "t", wal.IdentityFull,
	wal.Column{Name: "id", TypeOID: oidInt8, Key: true},
	wal.Column{Name: "email", TypeOID: oidText},
	wal.Column{Name: "flag", TypeOID: oidBool},
	wal.Column{Name: "f", TypeOID: oidFloat8},
	wal.Column{Name: "n", TypeOID: oidNumeric},
	wal.Column{Name: "ts", TypeOID: oidTimestampTZ},
	wal.Column{Name: "doc", TypeOID: oidJSONB},
	wal.Column{Name: "arr", TypeOID: 1007},  // int4[]
	wal.Column{Name: "tags", TypeOID: 1009}, // text[]
)

// TestExactText: keys and refresh values carry PostgreSQL's text byte for
// byte (no NFC), floats in PostgreSQL's notation, numeric with its digits,
// json as sent. Shapes HCL evaluates (here substr) still normalise.
func TestExactText(t *testing.T) {
	const decomposed = "e\u0301"      // 65 cc 81, NFC would make it c3 a9
	const jamo = "\u1100\u1161\u11a8" // NFC would make it one syllable, U+AC01
	tests := []struct {
		name, key, value string
		row              wal.Tuple // id, email, flag, f, n, ts, doc, arr, tags
		wantKey          string
		wantValue        string
	}{
		{"plain column", `"t:${row.email}"`, `row.email`,
			tup("1", decomposed, null, null, null, null, null, null, null), "t:" + decomposed, decomposed},
		{"hangul jamo", `"t:${row.email}:${row.id}"`, `"${row.email}"`,
			tup("1", jamo, null, null, null, null, null, null, null), "t:" + jamo + ":1", jamo},
		{"lower keeps the marks", `"t:${lower(row.email)}"`, `upper(row.email)`,
			tup("1", "E\u0301COLE", null, null, null, null, null, null, null), "t:e\u0301cole", "E\u0301COLE"},
		{"float notation", `"t:${row.f}"`, `row.f`,
			tup("1", null, null, "1e+308", null, null, null, null, null), "t:1e+308", "1e+308"},
		{"small float", `"t:${row.f}"`, `jsonencode({ f = row.f, n = row.n })`,
			tup("1", null, null, "1e-300", "1.50", null, null, null, null), "t:1e-300", `{"f":1e-300,"n":"1.50"}`},
		{"negative zero and NaN", `"t:${row.f}:${row.n}"`, `jsonencode([row.f, row.n])`,
			tup("1", null, null, "-0", "NaN", null, null, null, null), "t:-0:NaN", `[-0,"NaN"]`},
		{"infinity is a string", `"t:${row.f}"`, `jsonencode(row.f)`,
			tup("1", null, null, "-Infinity", null, null, null, null, null), "t:-Infinity", `"-Infinity"`},
		{"jsonencode(row)", `"t:${row.id}"`, `jsonencode(row)`,
			tup("1", decomposed, "t", "1e+308", "1.50", "2024-03-01 10:20:30.5+00", `{"b": 1e308, "aa": "`+decomposed+`", "c": 1.50}`, "{{1,NULL},{3,4}}", `{"a `+jamo+`",NULL}`),
			"t:1",
			`{"arr":[[1,null],[3,4]],"doc":{"b":1e308,"aa":"` + decomposed + `","c":1.50},"email":"` + decomposed + `","f":1e+308,"flag":true,"id":1,"n":"1.50","tags":["a ` + jamo + `",null],"ts":"2024-03-01T10:20:30.5Z"}`},
		{"length counts what a reader sees, substr cuts there", `"t:${length(row.email)}"`, `substr(row.email, 0, 1)`,
			tup("1", decomposed, null, null, null, null, null, null, null), "t:1", "\u00e9"},
		{"the rules file's literal text is NFC, the column's is not", `"caf` + decomposed + `:${row.email}"`, `"caf` + decomposed + `"`,
			tup("1", decomposed, null, null, null, null, null, null, null), "caf\u00e9:" + decomposed, "caf\u00e9"},
		{"a function HCL evaluates normalises", `"t:${substr(row.email, 0, 3)}"`, `jsonencode({ e = substr(row.email, 0, 3) })`,
			tup("1", decomposed+"x", null, null, null, null, null, null, null), "t:\u00e9x", `{"e":"` + "\u00e9x" + `"}`},
	}
	for _, tt := range tests {
		src := `
rule "t" {
  table = "public.t"
  refresh {
    key   = ` + tt.key + `
    value = ` + tt.value + `
    ttl   = "1m"
  }
}`
		m := newMapper(t, src, 0)
		b, err := m.Map(wal.Txn{XID: 1, CommitLSN: 1, EndLSN: 2, Changes: []wal.Change{{Relation: exactRel, Kind: wal.Insert, New: tt.row}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Ops) != 1 || b.Ops[0].Kind != OpSet {
			t.Errorf("%s: ops %q", tt.name, describe(b.Ops))
			continue
		}
		if op := b.Ops[0]; op.Key != tt.wantKey || string(op.Value) != tt.wantValue {
			t.Errorf("%s:\n key  %q (% x)\nwant %q (% x)\nvalue %s\n want %s", tt.name, op.Key, op.Key, tt.wantKey, tt.wantKey, op.Value, tt.wantValue)
		}
	}
}

// TestExactInvalidateKeys: invalidation keys, tags and namespaces of both
// images of an UPDATE keep the committed bytes too.
func TestExactInvalidateKeys(t *testing.T) {
	src := `
rule "k" {
  table = "public.t"
  invalidate {
    keys = ["k:${row.email}"]
    tags = ["g:${lower(row.email)}"]
  }
}
rule "v" {
  table = "public.t"
  bump_version { namespaces = ["v:${row.f}"] }
}`
	m := newMapper(t, src, 0)
	b, err := m.Map(wal.Txn{XID: 1, CommitLSN: 1, EndLSN: 2, Changes: []wal.Change{{
		Relation: exactRel, Kind: wal.Update, OldKind: wal.OldFull,
		Old: tup("1", "A\u0301", null, "1e+308", null, null, null, null, null),
		New: tup("1", "\u1100\u1161", null, "1e-05", null, null, null, null, null),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(describe(b.Ops), "|")
	want := "delete k:A\u0301|delete_tag g:a\u0301|delete k:\u1100\u1161|delete_tag g:\u1100\u1161|bump_version v:1e+308|bump_version v:1e-05"
	if got != want {
		t.Errorf("ops\n got %q\nwant %q", got, want)
	}
}
