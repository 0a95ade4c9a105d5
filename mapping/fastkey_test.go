package mapping

import (
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
