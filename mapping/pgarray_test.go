package mapping

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// The mapper decoded arrays with pgx's pgtype until mapping was made
// independent of any database client. These tests hold the replacement to
// what pgtype does on everything PostgreSQL prints, so that no template sees
// a different value.
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

// printedArrays are array texts as PostgreSQL prints them: both parsers
// accept each and agree.
var printedArrays = []string{
	`{}`, `{1,2,3}`, `{NULL}`, `{"NULL"}`, `{a,NULL,"b c",""}`, `{{1,2},{3,4}}`,
	`{{{1},{2}},{{3},{4}}}`, `[0:1]={a,b}`, `[-2:-1][1:2]={{a,b},{c,d}}`,
	`{"a\"b","c\\d","{}","x,y"}`, `{(1,2),(3,4)}`, `{(1,1),(0,0);(2,2),(1,1)}`,
	`{"é","日本"}`, `{"2026-12-03 10:00:00+00","2026-12-04 10:00:00+00"}`, `{"{\"a\": 1}"}`,
}

// arrayTexts are the fuzz seeds: the printed ones and malformed ones.
var arrayTexts = append(slices.Clone(printedArrays),
	`  {1} `, `{ 1 , 2 }`, `{"é","日本"}`, `{{1,2},{3}}`, `{{1},2}`, `{1,{2}}`,
	`[1:3]={a,b}`, `[1:2]={}`, `{`, `}`, `{1`, `{"a}`, `{1}x`, `[1:2={a,b}`, `[a:b]={a}`,
	`[1:2]`, `{1,2}}`, ``, ` `, "{\xff,\xfe}", `{{},{}}`, `{{}}`, `{,}`, `{a,,b}`,
	`[99999999999:1]={a}`, `{"a"b}`, `{"a"`, `{\}`,
)

func TestPrintedArraysMatchPgtype(t *testing.T) {
	for _, text := range printedArrays {
		for _, oid := range []uint32{1009, 1020} {
			if oid == 1020 && !strings.Contains(text, ";") {
				continue
			}
			checkArrayAgainstPgtype(t, oid, text, true)
		}
	}
}

func FuzzParseTextArray(f *testing.F) {
	for _, s := range arrayTexts {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, text string, box bool) {
		oid := uint32(1009) // text[]: delimiter ','
		if box {
			oid = 1020 // box[]: delimiter ';'
		}
		checkArrayAgainstPgtype(t, oid, text, false)
	})
}

// checkArrayAgainstPgtype parses text as an array of type oid with both
// parsers. Whatever parseArray accepts, pgtype accepts with the same
// dimensions and elements. pgtype also accepts some malformed texts
// PostgreSQL never prints ({a,,b}); parseArray may refuse those (they then
// reach templates as text), unless mustAccept.
func checkArrayAgainstPgtype(t *testing.T, oid uint32, text string, mustAccept bool) {
	t.Helper()
	if !utf8.ValidString(text) {
		// PostgreSQL prints UTF-8 (the session's client_encoding); pgtype
		// would turn invalid bytes into U+FFFD, parseArray keeps them.
		return
	}
	var want pgtype.Array[*string]
	wantErr := pgtype.NewMap().Scan(oid, pgtype.TextFormatCode, []byte(text), &want)
	_, got, ok := parseArray(oid, text)
	switch {
	case !ok && mustAccept:
		t.Fatalf("parseArray(%d, %q) refused what PostgreSQL prints (pgtype: %v)", oid, text, wantErr)
	case !ok:
		return
	case wantErr != nil:
		t.Fatalf("parseArray(%d, %q) accepted what pgtype refuses: %v", oid, text, wantErr)
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
