package mapping

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/cachesync/cachesync/wal"
)

// diffRel is the relation of the differential tests: a column of each
// class whose PostgreSQL text the general evaluator renders the same way,
// up to NFC (json and jsonb are left out: the exact path embeds them as
// sent, where HCL sorts their keys and rewrites their numbers, as
// docs/rules.md says).
var diffRel = rel(21, "d", wal.IdentityDefault,
	wal.Column{Name: "id", TypeOID: oidInt8, Key: true},
	wal.Column{Name: "email", TypeOID: oidText},
	wal.Column{Name: "flag", TypeOID: oidBool},
	wal.Column{Name: "f", TypeOID: oidFloat8},
	wal.Column{Name: "n", TypeOID: oidNumeric},
	wal.Column{Name: "ts", TypeOID: oidTimestampTZ},
	wal.Column{Name: "arr", TypeOID: 1007},  // int4[]
	wal.Column{Name: "tags", TypeOID: 1009}, // text[]
)

// diffRules use every shape the exact path evaluates, and a `when` on a
// bool column and on a literal, the shapes it decides without HCL; rule
// general needs HCL for its when and one key, beside rules that do not,
// so that a change's objects are built midway.
const diffRules = `
rule "row" {
  table = "public.d"
  when  = row.flag
  refresh {
    key   = "d:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}
rule "object" {
  table = "public.d"
  refresh {
    key   = "o:${lower(row.email)}:${row.id}"
    value = jsonencode({ id = row.id, "e" = row.email, l = [row.f, row.n, null, 1.5, "s"], s = "${upper(row.email)}!", t = row.ts, a = row.arr, g = row.tags, b = row.flag })
    ttl   = "1h"
  }
}
rule "text" {
  table = "public.d"
  when  = true
  refresh {
    key   = "x:${row.id}"
    value = row.email
    ttl   = "1h"
  }
}
rule "inv" {
  table = "public.d"
  when  = row.flag
  invalidate {
    keys = ["i:${row.id}", "e:${upper(row.email)}:${row.f}:${row.n}", "t:${row.ts}"]
    tags = ["f:${row.flag}"]
  }
}
rule "general" {
  table = "public.d"
  when  = row.n != "0"
  invalidate {
    keys = ["g:${substr(row.email, 0, 2)}:${row.id}", "g:${row.id}"]
  }
}
rule "versions" {
  table = "public.d"
  when  = false
  bump_version {
    namespaces = ["v:${row.id}"]
  }
}
`

// generalOnly makes m evaluate every template, value and condition with
// HCL, as it did before the exact path: the reference of the differential
// tests.
func generalOnly(m *Mapper) *Mapper {
	clear(m.exact)
	for _, r := range m.rules {
		r.value, r.when = nil, nil
	}
	return m
}

// sameOps compares the exact mapper's operations with the general one's:
// the same operations, keys and values, up to Unicode NFC (HCL normalises
// strings, the exact path keeps the committed bytes). Every value a
// jsonencode rule writes must be valid JSON.
func sameOps(t *testing.T, what string, fast, general []Op) {
	t.Helper()
	if len(fast) != len(general) {
		t.Fatalf("%s:\nexact   %q\ngeneral %q", what, describe(fast), describe(general))
	}
	for i := range fast {
		f, g := fast[i], general[i]
		if f.Kind == OpSet && f.Rule != "text" && !json.Valid(f.Value) {
			t.Fatalf("%s: rule %s wrote invalid JSON %q", what, f.Rule, f.Value)
		}
		fv := f.Value
		f.Key, f.Value = norm.NFC.String(f.Key), norm.NFC.Bytes(f.Value)
		if !bytes.Equal(f.Value, g.Value) || !reflect.DeepEqual(f, g) {
			t.Fatalf("%s: op %d:\nexact   %s %q %q (as sent %q)\ngeneral %s %q %q", what, i, f.Kind, f.Key, f.Value, fv, g.Kind, g.Key, g.Value)
		}
	}
}

// mapBoth maps one transaction with the exact mapper and the general one.
func mapBoth(t *testing.T, fast, general *Mapper, changes []wal.Change) (Batch, Batch) {
	t.Helper()
	txn := wal.Txn{XID: 1, CommitLSN: 10, EndLSN: 11, Changes: changes}
	fb, err := fast.Map(txn)
	if err != nil {
		t.Fatal(err)
	}
	gb, err := general.Map(txn)
	if err != nil {
		t.Fatal(err)
	}
	return fb, gb
}

// pgFloat prints f as PostgreSQL prints a float8 (shortest, with an
// exponent below 1e-4 and from 1e15), or "" where its notation is not
// plain decimal, which HCL's numbers would print differently.
func pgFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f != 0 && (math.Abs(f) < 1e-4 || math.Abs(f) >= 1e15):
		return ""
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// diffValue draws the text PostgreSQL sends for column i of diffRel.
func diffValue(rng *rand.Rand, i int, strs []string) string {
	pick := func(list []string) string { return list[rng.IntN(len(list))] }
	switch diffRel.Columns[i].Name {
	case "id":
		return strconv.FormatInt(rng.Int64N(1<<40)-1<<39, 10)
	case "email":
		return pick(strs) + pick(strs)
	case "flag":
		return pick([]string{"t", "f"})
	case "f":
		if s := pgFloat(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(12)-3))); s != "" {
			return s
		}
		return pick([]string{"0", "-0", "NaN", "Infinity"})
	case "n":
		return pick([]string{"1.50", "0", "-3.000", "NaN", "12345678901234567890.123"})
	case "ts":
		return pick([]string{"2024-03-01 10:20:30.5+00", "2024-03-01 10:20:30+00", "infinity", "1999-12-31 23:59:59.999999+00"})
	case "arr":
		return pick([]string{"{1,NULL,3}", "{}", "{{1,2},{3,4}}", "{-7}"})
	}
	return pick([]string{`{"a b",c}`, `{e` + "\u0301" + `,NULL}`, "{}", `{"\"q\"","<&>"}`})
}

// diffStrings are texts whose JSON form or NFC form is not the text itself.
var diffStrings = []string{"", "a@X.io", "ÉCOLE", "e\u0301cole", "İstanbul", "ß", "\u0301x", "Ǆ", "a b", "ΣΑΣ",
	"<a&b>", "\"q\"\n\t\b\f\r\x00\x1f\x7f", "\u2028\u2029", "\u1100\u1161\u11a8", "\\", "\ufffd", "😀"}

// randomChange draws a change of diffRel: any kind, any old tuple PostgreSQL
// may send, NULLs, and values not sent.
func randomChange(rng *rand.Rand) wal.Change {
	tuple := func(notSent bool) wal.Tuple {
		t := make(wal.Tuple, len(diffRel.Columns))
		for i := range t {
			switch n := rng.IntN(12); {
			case n == 0:
				t[i] = wal.Value{Kind: wal.Null}
			case n == 1 && notSent && i > 0:
				t[i] = wal.Value{Kind: wal.NotSent}
			default:
				t[i] = wal.Value{Kind: wal.Text, Text: diffValue(rng, i, diffStrings)}
			}
		}
		return t
	}
	c := wal.Change{Relation: diffRel, Kind: []wal.Kind{wal.Insert, wal.Update, wal.Delete}[rng.IntN(3)]}
	if c.Kind != wal.Delete {
		c.New = tuple(c.Kind == wal.Update)
	}
	if c.Kind != wal.Insert {
		c.OldKind = []wal.OldKind{wal.OldNone, wal.OldKey, wal.OldFull}[rng.IntN(3)]
		if c.Kind == wal.Delete && c.OldKind == wal.OldNone {
			c.OldKind = wal.OldKey
		}
		switch c.OldKind {
		case wal.OldKey:
			c.Old = tuple(false)
			for i := 1; i < len(c.Old); i++ {
				c.Old[i] = wal.Value{Kind: wal.NotSent}
			}
		case wal.OldFull:
			c.Old = tuple(false)
		}
	}
	return c
}

// TestExactMapperMatchesGeneral maps random transactions with the exact
// mapper and with one that evaluates everything with HCL (as before lazy
// images): the same operations, keys and values up to NFC, and the same
// counters.
func TestExactMapperMatchesGeneral(t *testing.T) {
	fast := newMapper(t, diffRules, 0)
	general := generalOnly(newMapper(t, diffRules, 0))
	rng := rand.New(rand.NewPCG(3, 4))
	sets := 0
	for n := range 3000 {
		changes := make([]wal.Change, 1+rng.IntN(3))
		for i := range changes {
			changes[i] = randomChange(rng)
		}
		fb, gb := mapBoth(t, fast, general, changes)
		sameOps(t, fmt.Sprintf("transaction %d %+v", n, changes), fb.Ops, gb.Ops)
		for _, op := range fb.Ops {
			if op.Kind == OpSet {
				sets++
			}
		}
	}
	if fs, gs := fast.Stats(), general.Stats(); !reflect.DeepEqual(fs, gs) {
		t.Fatalf("stats differ:\nexact   %+v\ngeneral %+v", fs, gs)
	}
	if sets < 1000 {
		t.Fatalf("only %d values written: the test draws too few", sets)
	}
}

// FuzzRefreshValuesMatchHCL: for any row (any text in the text column and
// its array, any int and float), the exact path's keys and values are the
// general evaluator's up to NFC, and valid JSON where jsonencode writes
// them.
func FuzzRefreshValuesMatchHCL(f *testing.F) {
	f.Add(uint8(0), int64(7), "a@x.io", 1.5, uint16(0))
	f.Add(uint8(1), int64(-1), "e\u0301\u2028<&>\x00\"\\", math.Copysign(0, -1), uint16(0x8))
	f.Add(uint8(2), int64(1<<62), "\xff\xfe", math.Inf(1), uint16(0xffff))
	f.Add(uint8(4), int64(0), "ΣΑΣ\u0301", 1e-5, uint16(0x2))
	fast := newMapper(&testing.T{}, diffRules, 0)
	general := generalOnly(newMapper(&testing.T{}, diffRules, 0))
	f.Fuzz(func(t *testing.T, kind uint8, id int64, text string, fl float64, nulls uint16) {
		// lower and upper change the case of the committed text (the exact
		// path, docs/rules.md), HCL that of its NFC form: where the two
		// orders differ ("h" + U+0331 is ẖ in NFC, which has no upper case,
		// while upper of the committed text is "H" + U+0331), no NFC of the
		// exact key gives HCL's. HCL never evaluates these shapes.
		for _, change := range []func(string) string{strings.ToUpper, strings.ToLower} {
			if norm.NFC.String(change(text)) != norm.NFC.String(change(norm.NFC.String(text))) {
				t.Skip("case mapping and NFC do not commute on this text")
			}
		}
		fs := pgFloat(fl)
		if fs == "" {
			// PostgreSQL prints 1e+20 and 1e-05, cty 100000000000000000000
			// and 0.00001 (TestExactText): draw in the plain range.
			if fs = pgFloat(math.Mod(fl, 1e14)); fs == "" {
				fs = "0"
			}
		}
		vals := []string{strconv.FormatInt(id, 10), text, []string{"t", "f"}[kind>>3&1], fs, "1.50",
			"2024-03-01 10:20:30.5+00", "{1,NULL,3}", arrayText(text)}
		row := make(wal.Tuple, len(vals))
		for i, v := range vals {
			switch {
			case nulls>>i&1 != 0:
				row[i] = wal.Value{Kind: wal.Null}
			case nulls>>(i+8)&1 != 0 && i > 0 && kind%3 == 1:
				row[i] = wal.Value{Kind: wal.NotSent}
			default:
				row[i] = wal.Value{Kind: wal.Text, Text: v}
			}
		}
		c := wal.Change{Relation: diffRel, Kind: []wal.Kind{wal.Insert, wal.Update, wal.Delete}[kind%3]}
		switch c.Kind {
		case wal.Insert:
			c.New = row
		case wal.Update:
			c.New, c.OldKind = row, wal.OldNone
		case wal.Delete:
			c.Old, c.OldKind = row, wal.OldFull
		}
		fb, gb := mapBoth(t, fast, general, []wal.Change{c})
		sameOps(t, fmt.Sprintf("%+v", c), fb.Ops, gb.Ops)
	})
}

// arrayText quotes s as one element of a PostgreSQL text[] (only valid
// UTF-8 is quoted: PostgreSQL sends no other).
func arrayText(s string) string {
	if !utf8.ValidString(s) {
		return "{}"
	}
	var b bytes.Buffer
	b.WriteString(`{"`)
	for _, r := range s {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteString(`"}`)
	return b.String()
}

// FuzzAppendJSONString: the exact path's JSON strings are encoding/json's
// (cty's jsonencode) byte for byte, from a string or from bytes, appended
// to what the buffer holds.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range diffStrings {
		f.Add(s)
	}
	f.Add("\xff\xc3(\xe2\x28\xa1\xf0\x90\x80")
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("%q: got %s, want %s", s, got, want)
		}
		if got := appendJSONString([]byte("x"), []byte(s)); !bytes.Equal(got, append([]byte("x"), want...)) {
			t.Fatalf("%q as bytes: got %s, want x%s", s, got, want)
		}
	})
}

// TestFastWhen: a `when` on a bool column or a literal is decided without
// HCL, as HCL decides it: NULL is false, a value not sent acts on the row.
func TestFastWhen(t *testing.T) {
	m := newMapper(t, diffRules, 0)
	b := m.bind(diffRel)
	var row, lit *exactExpr
	for _, r := range m.rules {
		switch r.cfg.Name {
		case "row":
			row = r.when
		case "versions":
			lit = r.when
		}
	}
	if row == nil || lit == nil {
		t.Fatal("when = row.flag and when = false are not compiled")
	}
	for _, tt := range []struct {
		v             wal.Value
		want, decided bool
	}{
		{wal.Value{Kind: wal.Text, Text: "t"}, true, true},
		{wal.Value{Kind: wal.Text, Text: "f"}, false, true},
		{wal.Value{Kind: wal.Null}, false, true},
		{wal.Value{Kind: wal.NotSent}, true, false},
	} {
		vals := make([]wal.Value, len(diffRel.Columns))
		vals[2] = tt.v
		img := &rowImage{b: b, vals: vals}
		got, res := row.truth(imageSet{row: img, new: img})
		if got != tt.want || (res == fastOK) != tt.decided || res == fastFallback {
			t.Errorf("when = row.flag on %+v: %v %v", tt.v, got, res)
		}
	}
	if got, res := lit.truth(imageSet{}); got || res != fastOK {
		t.Errorf("when = false: %v %v", got, res)
	}
}
