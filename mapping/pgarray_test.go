package mapping

import (
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// The mapper decoded arrays with pgx's pgtype until issue 13 made mapping
// independent of any database client. These tests hold the replacement to
// exactly what pgtype does, so that no template sees a different value.
// (pgtype is imported by the tests only: go list -deps ./mapping stays
// free of it, see TestMappingAndConfigArePure.)

// TestArrayTypesMatchPgtype checks that arrayTypes lists every array type of
// pgtype's default type map, with its element type and delimiter, and
// nothing else.
func TestArrayTypesMatchPgtype(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	seen := 0
	for oid := uint32(0); oid < 1<<17; oid++ {
		want, wantOK := arrayType{}, false
		if ty, ok := m.TypeForOID(oid); ok {
			if c, ok := ty.Codec.(*pgtype.ArrayCodec); ok && c.ElementType != nil {
				want, wantOK = arrayType{elem: c.ElementType.OID, delimiter: ','}, true
				if c.Delimiter != 0 {
					want.delimiter = c.Delimiter
				}
			}
		}
		got, gotOK := arrayTypes[oid]
		if got != want || gotOK != wantOK {
			t.Errorf("OID %d: arrayTypes has %+v (%t), pgtype %+v (%t)", oid, got, gotOK, want, wantOK)
		}
		if gotOK {
			seen++
		}
	}
	if seen != len(arrayTypes) {
		t.Errorf("arrayTypes has %d entries above OID %d", len(arrayTypes)-seen, 1<<17)
	}
}

// arrayTexts are array texts as PostgreSQL prints them, and malformed ones.
var arrayTexts = []string{
	`{}`, `{1,2,3}`, `{NULL}`, `{"NULL"}`, `{a,NULL,"b c",""}`, `{{1,2},{3,4}}`,
	`{{{1},{2}},{{3},{4}}}`, `[0:1]={a,b}`, `[-2:-1][1:2]={{a,b},{c,d}}`,
	`{"a\"b","c\\d","{}","x,y"}`, `{(1,2),(3,4)}`, `{(1,1),(0,0);(2,2),(1,1)}`,
	`  {1} `, `{ 1 , 2 }`, `{"é","日本"}`, `{{1,2},{3}}`, `{{1},2}`, `{1,{2}}`,
	`[1:3]={a,b}`, `[1:2]={}`, `{`, `}`, `{1`, `{"a}`, `{1}x`, `[1:2={a,b}`, `[a:b]={a}`,
	`[1:2]`, `{1,2}}`, ``, ` `, "{\xff,\xfe}", `{{},{}}`, `{{}}`, `{,}`, `{a,,b}`,
	`[99999999999:1]={a}`, `{"a"b}`, `{"a"`, `{\}`,
}

func FuzzParseTextArray(f *testing.F) {
	for _, s := range arrayTexts {
		f.Add(s, false)
		f.Add(s, true)
	}
	m := pgtype.NewMap()
	f.Fuzz(func(t *testing.T, text string, box bool) {
		oid := uint32(1009) // text[]: delimiter ','
		if box {
			oid = 1020 // box[]: delimiter ';'
		}
		var want pgtype.Array[*string]
		wantErr := m.Scan(oid, pgtype.TextFormatCode, []byte(text), &want)
		_, got, ok := parseArray(oid, text)
		if ok != (wantErr == nil) {
			t.Fatalf("parseArray(%d, %q) ok=%t; pgtype: %v", oid, text, ok, wantErr)
		}
		if !ok {
			return
		}
		if len(got.dims) != len(want.Dims) {
			t.Fatalf("%q: dims %+v, pgtype %+v", text, got.dims, want.Dims)
		}
		for i, d := range want.Dims {
			if got.dims[i] != (arrayDimension{length: d.Length, lowerBound: d.LowerBound}) {
				t.Fatalf("%q: dims %+v, pgtype %+v", text, got.dims, want.Dims)
			}
		}
		if !slices.EqualFunc(got.elements, want.Elements, func(a, b *string) bool {
			return (a == nil) == (b == nil) && (a == nil || *a == *b)
		}) {
			t.Fatalf("%q: elements %q, pgtype %q", text, deref(got.elements), deref(want.Elements))
		}
	})
}

func deref(ss []*string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = "<NULL>"
		if s != nil {
			out[i] = *s
		}
	}
	return out
}
