package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// Images are the variables templates can read.
var images = []string{"row", "old", "new"}

func isImage(name string) bool {
	for _, im := range images {
		if im == name {
			return true
		}
	}
	return false
}

// templateChecker checks the expressions of one rule statically.
type templateChecker struct {
	rule string
	// keyspace is true when the rule declares keyspace, which lifts the
	// requirement that templates start with literal text.
	keyspace bool
	funcs    map[string]function.Function
}

// templateList decodes keys, tags or namespaces: a static list whose every
// element is its own template.
func (tc *templateChecker) templateList(attr *hcl.Attribute, example string) ([]*Template, hcl.Diagnostics) {
	tuple, ok := attr.Expr.(*hclsyntax.TupleConsExpr)
	if !ok {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: %s must be a list of templates", tc.rule, attr.Name),
			Detail:   fmt.Sprintf("write the list out, one template per element: %s", example),
			Subject:  attr.Expr.Range().Ptr(),
		}}
	}
	var (
		out   []*Template
		diags hcl.Diagnostics
	)
	for _, e := range tuple.Exprs {
		t, ds := tc.template(e, attr.Name)
		diags = append(diags, ds...)
		if t != nil {
			out = append(out, t)
		}
	}
	return out, diags
}

// template checks one key, tag or namespace template and computes its prefix.
func (tc *templateChecker) template(expr hcl.Expression, what string) (*Template, hcl.Diagnostics) {
	t := &Template{Expr: expr, Range: expr.Range()}
	diags := tc.checkExpr(expr)
	for _, tr := range expr.Variables() {
		root := tr.RootName()
		if root != "old" && root != "new" {
			continue
		}
		missing := map[string]string{"old": "INSERT", "new": "DELETE"}[root]
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  fmt.Sprintf("rule %q: %s template reads %s", tc.rule, what, root),
			Detail: fmt.Sprintf("key, tag and namespace templates are evaluated once per row image, and row is that image (both of an UPDATE); %s is null on %s, which makes the key unknown there and flushes the rule's key space: write row.<column> instead",
				root, missing),
			Subject: tr.SourceRange().Ptr(),
		})
	}
	if syn, ok := expr.(hclsyntax.Expression); ok {
		switch e := unparen(syn).(type) {
		case *hclsyntax.LiteralValueExpr, *hclsyntax.TupleConsExpr, *hclsyntax.ObjectConsExpr:
			return nil, append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: %s template must be a string", tc.rule, what),
				Detail:   `write a string template like "user:${row.id}"`,
				Subject:  t.Range.Ptr(),
			})
		case *hclsyntax.TemplateExpr:
			t.Prefix, t.Literal = templatePrefix(e)
		}
	}
	switch {
	case t.Literal && t.Prefix == "":
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: empty %s template", tc.rule, what),
			Detail:   `write a template like "user:${row.id}"`,
			Subject:  t.Range.Ptr(),
		})
	case t.Prefix == "" && !tc.keyspace:
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: %s template has no literal prefix", tc.rule, what),
			Detail:   `key template must start with literal text (like "user:") or the rule must declare keyspace = ["...*"], so that TRUNCATE can flush its keys`,
			Subject:  t.Range.Ptr(),
		})
	}
	if diags.HasErrors() {
		return nil, diags
	}
	return t, diags
}

func unparen(e hclsyntax.Expression) hclsyntax.Expression {
	for {
		p, ok := e.(*hclsyntax.ParenthesesExpr)
		if !ok {
			return e
		}
		e = p.Expression
	}
}

// templatePrefix returns the literal text a template starts with, and whether
// the template is nothing but literal text.
func templatePrefix(e *hclsyntax.TemplateExpr) (string, bool) {
	var b strings.Builder
	for _, part := range e.Parts {
		lit, ok := part.(*hclsyntax.LiteralValueExpr)
		if !ok || !lit.Val.IsKnown() || lit.Val.IsNull() || lit.Val.Type() != cty.String {
			return b.String(), false
		}
		b.WriteString(lit.Val.AsString())
	}
	return b.String(), true
}

// checkExpr checks that an expression reads only row, old and new, and calls
// only known functions with a plausible number of arguments.
func (tc *templateChecker) checkExpr(expr hcl.Expression) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, tr := range expr.Variables() {
		root := tr.RootName()
		if isImage(root) {
			continue
		}
		detail := "templates can read row, old and new: write row.<column>"
		if s := suggest(root, images); s != "" {
			detail = fmt.Sprintf("templates can read row, old and new; did you mean %q?", s)
		}
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: unknown variable %q", tc.rule, root),
			Detail:   detail,
			Subject:  tr[0].SourceRange().Ptr(),
		})
	}
	syn, ok := expr.(hclsyntax.Expression)
	if !ok {
		return diags
	}
	if tc.funcs == nil {
		tc.funcs = Functions()
	}
	diags = append(diags, hclsyntax.VisitAll(syn, func(n hclsyntax.Node) hcl.Diagnostics {
		call, ok := n.(*hclsyntax.FunctionCallExpr)
		if !ok {
			return nil
		}
		return tc.checkCall(call)
	})...)
	return diags
}

func (tc *templateChecker) checkCall(call *hclsyntax.FunctionCallExpr) hcl.Diagnostics {
	f, ok := tc.funcs[call.Name]
	if !ok {
		if call.Name == "env" {
			return hcl.Diagnostics{{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: env() is only available in the postgres and redis blocks", tc.rule),
				Detail:   "templates are evaluated for every row and read only the row: build keys from row, old and new",
				Subject:  call.NameRange.Ptr(),
			}}
		}
		names := functionNames(tc.funcs)
		detail := "available functions: " + strings.Join(names, ", ")
		if s := suggest(call.Name, names); s != "" {
			detail = fmt.Sprintf("did you mean %s()? available functions: %s", s, strings.Join(names, ", "))
		}
		return hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: unknown function %s()", tc.rule, call.Name),
			Detail:   detail,
			Subject:  call.NameRange.Ptr(),
		}}
	}
	if call.ExpandFinal {
		return nil // the argument count is known only at evaluation
	}
	params, variadic := f.Params(), f.VarParam() != nil
	n := len(call.Args)
	if n >= len(params) && (variadic || n == len(params)) {
		return nil
	}
	want := fmt.Sprintf("%d argument%s", len(params), plural(len(params)))
	if variadic {
		want = "at least " + want
	}
	return hcl.Diagnostics{{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("rule %q: %s() takes %s, got %d", tc.rule, call.Name, want, n),
		Detail:   fmt.Sprintf("call it as %s(%s)", call.Name, paramList(params, f.VarParam())),
		Subject:  hcl.RangeBetween(call.NameRange, call.CloseParenRange).Ptr(),
	}}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func paramList(params []function.Parameter, varParam *function.Parameter) string {
	var names []string
	for _, p := range params {
		names = append(names, p.Name)
	}
	if varParam != nil {
		names = append(names, varParam.Name+"...")
	}
	return strings.Join(names, ", ")
}

func functionNames(funcs map[string]function.Function) []string {
	names := make([]string, 0, len(funcs))
	for name := range funcs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// columnRefs lists the columns of row, old and new that expr reads. A
// traversal that stops at the image, or continues with anything but a
// constant attribute or string index, reads the whole image (Column "").
func columnRefs(expr hcl.Expression) []ColumnRef {
	if expr == nil {
		return nil
	}
	var out []ColumnRef
	for _, tr := range expr.Variables() {
		root := tr.RootName()
		if !isImage(root) {
			continue
		}
		ref := ColumnRef{Image: root, Range: tr.SourceRange()}
		if len(tr) > 1 {
			switch step := tr[1].(type) {
			case hcl.TraverseAttr:
				ref.Column = step.Name
			case hcl.TraverseIndex:
				k := step.Key
				if k.IsKnown() && !k.IsNull() && k.Type() == cty.String {
					ref.Column = k.AsString()
				}
			}
		}
		out = append(out, ref)
	}
	return out
}

// Suggest returns the candidate closest to name when it is close enough to
// be a typo, or "" (for "did you mean" hints outside this package).
func Suggest(name string, candidates []string) string { return suggest(name, candidates) }

// suggest returns the candidate closest to name when it is close enough to
// be a typo.
func suggest(name string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
