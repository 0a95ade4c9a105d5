package mapping

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/cachesync/cachesync/config"
)

// TestFastTemplateMatchesHCL evaluates random rows through the fast key path
// and through HCL, and requires the same key, or the same NULL/unknown
// outcome, whenever the fast path answers.
func TestFastTemplateMatchesHCL(t *testing.T) {
	templates := []string{
		`"user:${row.id}"`,
		`"user:email:${lower(row.email)}"`,
		`"u:${upper(row.email)}:${row.id}:${row.flag}"`,
		`"plain"`,
		`"${row.id}"`,
		`"n:${row.num}"`,
		`"x:${lower(row.id)}"`,
		`"m:${row.missing}"`,
	}
	strs := []string{"", "a@X.io", "ÉCOLE", "e\u0301cole", "İstanbul", "ß", "\u0301x", "Ǆ", "a b", "ΣΑΣ"}
	rng := rand.New(rand.NewPCG(1, 2))
	value := func(kind int) cty.Value {
		switch rng.IntN(8) {
		case 0:
			return cty.NullVal(cty.DynamicPseudoType)
		case 1:
			return cty.DynamicVal
		}
		switch kind {
		case 0:
			return cty.NumberIntVal(rng.Int64N(1<<62) - 1<<61)
		case 1:
			return cty.StringVal(strs[rng.IntN(len(strs))] + strs[rng.IntN(len(strs))])
		case 2:
			return cty.BoolVal(rng.IntN(2) == 0)
		}
		switch rng.IntN(3) {
		case 0:
			return cty.NumberFloatVal(math.Copysign(0, -1))
		case 1:
			return cty.NumberFloatVal(float64(rng.IntN(100)))
		}
		return cty.NumberFloatVal(rng.Float64() * 1000)
	}
	funcs := config.Functions()
	answered := 0
	for _, src := range templates {
		expr, diags := hclsyntax.ParseExpression([]byte(src), "t.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		fast := compileFast(expr)
		if fast == nil {
			continue
		}
		for range 2000 {
			row := cty.ObjectVal(map[string]cty.Value{"id": value(0), "email": value(1), "flag": value(2), "num": value(3)})
			key, res := fast.eval(row)
			if res == fastFallback {
				continue
			}
			answered++
			ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"row": row}, Functions: funcs}
			v, diags := expr.Value(ctx)
			switch {
			case res == fastUnknown:
				if diags.HasErrors() || v.IsWhollyKnown() {
					t.Fatalf("%s on %#v: fast says unknown, HCL gives %#v %v", src, row, v, diags)
				}
			case res == fastNull:
				if !diags.HasErrors() && !v.IsNull() {
					t.Fatalf("%s on %#v: fast says NULL, HCL gives %#v", src, row, v)
				}
			default:
				if diags.HasErrors() || !v.IsKnown() || v.IsNull() || v.AsString() != key {
					t.Fatalf("%s on %#v: fast gives %q, HCL gives %#v %v", src, row, key, v, diags)
				}
			}
		}
	}
	if answered < 5000 {
		t.Fatalf("the fast path answered only %d evaluations", answered)
	}
}

// TestJSONRowMatchesJSONEncode compares the fast jsonencode(row) with HCL's.
func TestJSONRowMatchesJSONEncode(t *testing.T) {
	expr, diags := hclsyntax.ParseExpression([]byte(`jsonencode(row)`), "t.hcl", hcl.InitialPos)
	if diags.HasErrors() || !isJSONEncodeRow(expr) {
		t.Fatalf("jsonencode(row) not recognised: %v", diags)
	}
	strs := []string{"", "<a&b>", "e\u0301", "ÉCOLE", "\"quoted\"\n\ttab", "\u2028", "日本", "\x7f"}
	d := newDecoder()
	rng := rand.New(rand.NewPCG(3, 4))
	value := func() cty.Value {
		switch rng.IntN(9) {
		case 0:
			return cty.NullVal(cty.DynamicPseudoType)
		case 1:
			if rng.IntN(4) == 0 {
				return cty.DynamicVal
			}
			return cty.NumberIntVal(rng.Int64N(1<<62) - 1<<61)
		case 2:
			if rng.IntN(10) == 0 {
				return cty.NumberFloatVal(math.Copysign(0, -1))
			}
			return cty.NumberFloatVal(rng.NormFloat64() * 1e6)
		case 3:
			return cty.BoolVal(rng.IntN(2) == 0)
		case 4:
			return d.decode(oidJSONB, `{"a":[1,"x",null,{"b":true}],"c":1.5}`)
		case 5:
			return d.decode(1007, "{1,NULL,3}")
		}
		return cty.StringVal(strs[rng.IntN(len(strs))] + strs[rng.IntN(len(strs))])
	}
	funcs := config.Functions()
	compared := 0
	for range 5000 {
		attrs := map[string]cty.Value{}
		for _, name := range []string{"id", "b", "a", "Zed", "é"} {
			if rng.IntN(5) > 0 {
				attrs[name] = value()
			}
		}
		row := cty.ObjectVal(attrs)
		got, res := jsonRow(row)
		v, diags := expr.Value(&hcl.EvalContext{Variables: map[string]cty.Value{"row": row}, Functions: funcs})
		switch res {
		case fastFallback:
			continue
		case fastUnknown:
			if diags.HasErrors() || v.IsWhollyKnown() {
				t.Fatalf("%#v: fast says unknown, HCL gives %#v %v", row, v, diags)
			}
		default:
			compared++
			if diags.HasErrors() || !v.IsWhollyKnown() || v.AsString() != string(got) {
				t.Fatalf("%#v:\nfast %s\n HCL %#v %v", row, got, v, diags)
			}
		}
	}
	if compared < 2500 {
		t.Fatalf("only %d rows compared", compared)
	}
}
