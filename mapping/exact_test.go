package mapping

import (
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"golang.org/x/text/unicode/norm"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// TestExactMatchesHCL evaluates random rows through the exact path and
// through HCL. Whenever the exact path answers, HCL must give the same
// outcome (NULL, unknown) or, for a value, the same text up to Unicode NFC:
// the exact path keeps the committed bytes where HCL normalises. Floats are
// drawn where PostgreSQL's notation is plain decimal, as cty's is.
func TestExactMatchesHCL(t *testing.T) {
	exprs := []string{
		`"user:${row.id}"`,
		`"user:email:${lower(row.email)}"`,
		`"u:${upper(row.email)}:${row.id}:${row.flag}"`,
		`"plain"`,
		`"${row.id}"`,
		`row.email`,
		`row["email"]`,
		`("p:${row.id}")`,
		`"n:${row.n}:${row.f}:${row.ts}"`,
		`"x:${lower(row.id)}:${upper(row.flag)}"`,
		`"m:${row.missing}"`,
		`"o:${old.id}"`,
		`"d:${row.doc}"`,
		`jsonencode(row)`,
		`jsonencode({ id = row.id, "e" = row.email, l = [row.f, row.n, null, 1.5, "s"], t = "${row.email}!" })`,
		`jsonencode(row.arr)`,
		`jsonencode(row.tags)`,
		`jsonencode(row.doc)`,
		`jsonencode(lower(row.email))`,
	}
	strs := []string{"", "a@X.io", "ÉCOLE", "e\u0301cole", "İstanbul", "ß", "\u0301x", "Ǆ", "a b", "ΣΑΣ",
		"<a&b>", "\"q\"\n\t", "\u2028", "\u1100\u1161\u11a8"}
	floats := []string{"0", "-0", "1.5", "-2.25", "0.001", "123456.789", "100", "NaN", "Infinity", "-Infinity"}
	docs := []string{`{"a":[1,"x",null,{"b":true}],"c":1.5}`, "{\"k\":\"e\u0301\"}", `"s"`, `[]`, `null`}
	arrs := []string{"{1,NULL,3}", "{}", "{{1,2},{3,4}}"}
	tags := []string{`{"a b",c}`, `{e` + "\u0301" + `,NULL}`, "{}"}
	pick := func(rng *rand.Rand, list []string) string { return list[rng.IntN(len(list))] }

	m := newMapper(t, testRules, 0)
	b := m.bind(exactRel)
	funcs := config.Functions()
	rng := rand.New(rand.NewPCG(1, 2))
	answered := 0
	for _, src := range exprs {
		expr, diags := hclsyntax.ParseExpression([]byte(src), "t.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		x := compileExact(expr)
		if x == nil {
			t.Fatalf("%s is not evaluated exactly", src)
		}
		for range 1500 {
			vals := make(wal.Tuple, len(exactRel.Columns))
			obj := map[string]cty.Value{}
			for i, col := range exactRel.Columns {
				var v wal.Value
				switch rng.IntN(10) {
				case 0:
					v = wal.Value{Kind: wal.Null}
				case 1:
					v = wal.Value{Kind: wal.NotSent}
				default:
					text := map[string]func() string{
						"id":    func() string { return pick(rng, []string{"0", "7", "-42", "9223372036854775807"}) },
						"email": func() string { return pick(rng, strs) + pick(rng, strs) },
						"flag":  func() string { return pick(rng, []string{"t", "f"}) },
						"f":     func() string { return pick(rng, floats) },
						"n":     func() string { return pick(rng, []string{"1.50", "0", "-3.000", "NaN"}) },
						"ts":    func() string { return pick(rng, []string{"2024-03-01 10:20:30.5+00", "infinity"}) },
						"doc":   func() string { return pick(rng, docs) },
						"arr":   func() string { return pick(rng, arrs) },
						"tags":  func() string { return pick(rng, tags) },
					}[col.Name]()
					v = wal.Value{Kind: wal.Text, Text: text}
				}
				vals[i] = v
				obj[col.Name] = m.value(col, v)
			}
			row := cty.ObjectVal(obj)
			img := &rowImage{b: b, vals: vals}
			got, res := x.str(imageSet{row: img, new: img}, m.dec)
			if res == fastFallback {
				continue
			}
			answered++
			null := cty.NullVal(cty.DynamicPseudoType)
			ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"row": row, "new": row, "old": null}, Functions: funcs}
			v, diags := expr.Value(ctx)
			switch res {
			case fastUnknown:
				if diags.HasErrors() || v.IsWhollyKnown() {
					t.Fatalf("%s on %#v: exact says unknown, HCL gives %#v %v", src, row, v, diags)
				}
			case fastNull:
				if !diags.HasErrors() && !v.IsNull() {
					t.Fatalf("%s on %#v: exact says NULL, HCL gives %#v", src, row, v)
				}
			default:
				if !diags.HasErrors() && v.IsKnown() && !v.IsNull() && v.Type() != cty.String {
					if s, err := convertString(v); err == nil {
						v = s
					}
				}
				if diags.HasErrors() || !v.IsKnown() || v.IsNull() || v.Type() != cty.String || v.AsString() != norm.NFC.String(got) {
					t.Fatalf("%s on %#v:\nexact %q\n  HCL %#v %v", src, row, got, v, diags)
				}
			}
		}
	}
	if answered < 15000 {
		t.Fatalf("the exact path answered only %d evaluations", answered)
	}
}

func TestIsJSONNumber(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "-0": true, "1e+308": true, "1e-05": true, "1.5": true, "-2.25E3": true, "42": true,
		"": false, "-": false, "01": false, "1.": false, ".5": false, "1e": false, "NaN": false, "Infinity": false, "+1": false, "1 ": false,
	} {
		if isJSONNumber(s) != want {
			t.Errorf("isJSONNumber(%q) = %v", s, !want)
		}
	}
}

func convertString(v cty.Value) (cty.Value, error) { return convert.Convert(v, cty.String) }

// FuzzAppendJSON: whatever text PostgreSQL sends for a column, jsonencode's
// rendering of it is valid JSON, or the exact path leaves it to HCL.
func FuzzAppendJSON(f *testing.F) {
	oids := []uint32{oidBool, oidInt8, oidFloat8, oidFloat4, oidNumeric, oidJSON, oidJSONB, oidTimestampTZ, 1007, 1009, 1021, oidText}
	for _, s := range []string{"t", "42", "1e+308", "-0", "NaN", "1.50", `{"a": 1e308}`, "2024-03-01 10:20:30.5+00", "{1,NULL,3}", `{"a b",c}`, "{{1,2},{3,4}}", "e\u0301", "\xff"} {
		for i := range oids {
			f.Add(uint8(i), s)
		}
	}
	d := newDecoder()
	f.Fuzz(func(t *testing.T, which uint8, text string) {
		oid := oids[int(which)%len(oids)]
		b, res := d.appendJSON(nil, oid, d.class(oid), text)
		if res == fastOK && !json.Valid(b) {
			t.Fatalf("oid %d, text %q: invalid JSON %q", oid, text, b)
		}
	})
}
