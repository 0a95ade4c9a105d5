package mapping

import (
	"encoding/json"
	"math/big"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
	"golang.org/x/text/unicode/norm"
)

// fastTemplate evaluates the common key template, literal text joined with
// row columns and lower()/upper() of them ("user:email:${lower(row.email)}"),
// without the HCL evaluator: that machinery was most of the mapper's CPU.
// It gives exactly what HCL gives, or says it cannot (fastFallback) and HCL
// evaluates the template; TestFastTemplateMatchesHCL compares the two.
type fastTemplate struct {
	parts []fastPart
}

type fastPart struct {
	literal string
	column  string // "" for a literal part
	fn      func(string) string
}

type fastResult uint8

const (
	fastOK fastResult = iota
	fastNull
	fastUnknown
	fastFallback
)

// compileFast returns nil when the template is not of the fast form.
func compileFast(expr hcl.Expression) *fastTemplate {
	tmpl, ok := expr.(*hclsyntax.TemplateExpr)
	if !ok {
		return nil
	}
	f := &fastTemplate{}
	for _, p := range tmpl.Parts {
		switch p := p.(type) {
		case *hclsyntax.LiteralValueExpr:
			if p.Val.Type() != cty.String || p.Val.IsNull() {
				return nil
			}
			f.parts = append(f.parts, fastPart{literal: p.Val.AsString()})
		case *hclsyntax.ScopeTraversalExpr:
			col, ok := rowColumn(p)
			if !ok {
				return nil
			}
			f.parts = append(f.parts, fastPart{column: col})
		case *hclsyntax.FunctionCallExpr:
			var fn func(string) string
			switch p.Name {
			case "lower":
				fn = strings.ToLower
			case "upper":
				fn = strings.ToUpper
			default:
				return nil
			}
			if len(p.Args) != 1 || p.ExpandFinal {
				return nil
			}
			arg, ok := p.Args[0].(*hclsyntax.ScopeTraversalExpr)
			if !ok {
				return nil
			}
			col, ok := rowColumn(arg)
			if !ok {
				return nil
			}
			f.parts = append(f.parts, fastPart{column: col, fn: fn})
		default:
			return nil
		}
	}
	return f
}

// rowColumn recognises row.<column>.
func rowColumn(e *hclsyntax.ScopeTraversalExpr) (string, bool) {
	if len(e.Traversal) != 2 || e.Traversal.RootName() != "row" {
		return "", false
	}
	attr, ok := e.Traversal[1].(hcl.TraverseAttr)
	return attr.Name, ok
}

// eval evaluates the template against a row image.
func (f *fastTemplate) eval(row cty.Value) (string, fastResult) {
	if row.IsNull() || !row.IsKnown() || !row.Type().IsObjectType() {
		return "", fastFallback
	}
	var b strings.Builder
	unknown := false
	for _, p := range f.parts {
		if p.column == "" {
			b.WriteString(p.literal)
			continue
		}
		if !row.Type().HasAttribute(p.column) {
			return "", fastFallback // HCL reports the missing attribute
		}
		v := row.GetAttr(p.column)
		if !v.IsKnown() {
			// A NULL elsewhere still wins, as in the HCL path: no key.
			unknown = true
			continue
		}
		if v.IsNull() {
			return "", fastNull
		}
		var s string
		switch v.Type() {
		case cty.String:
			s = v.AsString()
		case cty.Bool:
			if p.fn != nil {
				return "", fastFallback
			}
			s = strconv.FormatBool(v.True())
		case cty.Number:
			bf := v.AsBigFloat()
			if p.fn != nil || !bf.IsInt() || (bf.Sign() == 0 && bf.Signbit()) {
				return "", fastFallback // -0 prints as "-0"
			}
			i, acc := bf.Int64()
			if acc != big.Exact {
				return "", fastFallback
			}
			s = strconv.FormatInt(i, 10)
		default:
			return "", fastFallback
		}
		if p.fn != nil {
			// As cty's function returns it: normalized.
			s = norm.NFC.String(p.fn(s))
		}
		b.WriteString(s)
	}
	if unknown {
		return "", fastUnknown
	}
	// cty strings are NFC-normalized; so is the HCL template's result.
	return norm.NFC.String(b.String()), fastOK
}

// isJSONEncodeRow recognises the value expression jsonencode(row).
func isJSONEncodeRow(expr hcl.Expression) bool {
	call, ok := expr.(*hclsyntax.FunctionCallExpr)
	if !ok || call.Name != "jsonencode" || len(call.Args) != 1 || call.ExpandFinal {
		return false
	}
	arg, ok := call.Args[0].(*hclsyntax.ScopeTraversalExpr)
	return ok && len(arg.Traversal) == 1 && arg.Traversal.RootName() == "row"
}

// jsonRow writes a row image as cty's jsonencode does (attributes sorted by
// name, strings through encoding/json, numbers in their shortest exact
// form), without building the function call. It reports fastUnknown when a
// value was not sent.
func jsonRow(row cty.Value) ([]byte, fastResult) {
	if row.IsNull() || !row.IsKnown() || !row.Type().IsObjectType() {
		return nil, fastFallback
	}
	names := make([]string, 0, len(row.Type().AttributeTypes()))
	for name := range row.Type().AttributeTypes() {
		names = append(names, name)
	}
	sort.Strings(names)
	buf := make([]byte, 0, 64*len(names))
	buf = append(buf, '{')
	for i, name := range names {
		v := row.GetAttr(name)
		if !v.IsWhollyKnown() {
			return nil, fastUnknown
		}
		if i > 0 {
			buf = append(buf, ',')
		}
		k, _ := json.Marshal(norm.NFC.String(name))
		buf = append(append(buf, k...), ':')
		switch {
		case v.IsNull():
			buf = append(buf, "null"...)
		case v.Type() == cty.String:
			s, err := json.Marshal(v.AsString())
			if err != nil {
				return nil, fastFallback
			}
			buf = append(buf, s...)
		case v.Type() == cty.Number:
			if v.RawEquals(cty.PositiveInfinity) || v.RawEquals(cty.NegativeInfinity) {
				return nil, fastFallback
			}
			bf := v.AsBigFloat()
			if i, acc := bf.Int64(); acc == big.Exact && bf.IsInt() && !(bf.Sign() == 0 && bf.Signbit()) { // -0 prints as "-0"
				buf = strconv.AppendInt(buf, i, 10) // what Text('f', -1) gives, without rounding work
			} else {
				buf = bf.Append(buf, 'f', -1)
			}
		case v.Type() == cty.Bool:
			buf = strconv.AppendBool(buf, v.True())
		default:
			b, err := ctyjson.Marshal(v, v.Type())
			if err != nil {
				return nil, fastFallback
			}
			buf = append(buf, b...)
		}
	}
	buf = append(buf, '}')
	// jsonencode's result is a cty string: NFC-normalized.
	return norm.NFC.Append(nil, buf...), fastOK
}
