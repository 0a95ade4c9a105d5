package config

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// valueHint is what to do about a refresh value that copies sensitive
// columns into the cache.
const valueHint = Hint("write only the columns the cache needs: value = jsonencode({ id = row.id, name = row.name })")

// antiPatterns warns about rules that are valid but almost certainly not
// what their author meant (docs/rules.md, "Warnings"). Every check is
// decided from the file alone, and only where the answer holds for every
// row: a warning here is never a guess about the table's columns or
// types, except the sensitive-name heuristic, which is one by design.
func antiPatterns(cfg *Config) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, r := range cfg.Rules {
		diags = append(diags, neverTrueWhen(r)...)
		for _, t := range r.Templates() {
			diags = append(diags, keylessTemplate(r, t)...)
		}
		diags = append(diags, sensitiveValue(r, cfg.SensitiveColumns)...)
	}
	diags = append(diags, invalidatedWriteBehind(cfg)...)
	return diags
}

// invalidatedWriteBehind warns about an invalidate rule on a write_behind
// table: the worker's own upserts come back through the WAL and delete the
// value the application has just written with them, so the next read
// misses. A refresh rule whose value is what the application writes puts
// the same value back instead, ordered by its LSN guard.
func invalidatedWriteBehind(cfg *Config) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, r := range cfg.Rules {
		if r.Invalidate == nil {
			continue
		}
		for _, wb := range cfg.WriteBehinds {
			if wb.Table != r.Table {
				continue
			}
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagWarning,
				Summary:  fmt.Sprintf("rule %q: invalidates keys of %s, the table of write_behind %q", r.Name, r.Table, wb.Name),
				Detail: fmt.Sprintf("write_behind %q (%s) writes the application's rows into %s, and each write comes back through the WAL: this rule then deletes the value the application has just written to the cache, so the next read misses",
					wb.Name, rangeString(wb.DeclRange), r.Table),
				Subject: r.Invalidate.Range.Ptr(),
				Extra:   Hint("make it a refresh rule whose value is exactly what the application writes to the key (docs/rules.md, \"Rules for a write_behind table\")"),
			})
			break
		}
	}
	return diags
}

// anyRowContext evaluates an expression for every row at once: row, old
// and new are unknown, so a known result is the result for any row (cty's
// unknowns propagate through every operator and function).
func anyRowContext() *hcl.EvalContext {
	return &hcl.EvalContext{
		Variables: map[string]cty.Value{"row": cty.DynamicVal, "old": cty.DynamicVal, "new": cty.DynamicVal},
		Functions: Functions(),
	}
}

// evalForAnyRow returns the value expr has for every row, and false when
// it depends on the row or fails.
func evalForAnyRow(expr hcl.Expression) (cty.Value, bool) {
	v, diags := expr.Value(anyRowContext())
	if diags.HasErrors() || !v.IsWhollyKnown() {
		return cty.NilVal, false
	}
	return v, true
}

// neverTrueWhen warns about a when that is false or null for every row,
// as mapping evaluates it: the rule never acts.
func neverTrueWhen(r *Rule) hcl.Diagnostics {
	if r.When == nil {
		return nil
	}
	v, ok := evalForAnyRow(r.When)
	if !ok {
		return nil
	}
	if !v.IsNull() {
		b, err := convert.Convert(v, cty.Bool)
		if err != nil || b.True() {
			return nil // a non-bool is an evaluation error, not a filter
		}
	}
	return hcl.Diagnostics{{
		Severity: hcl.DiagWarning,
		Summary:  fmt.Sprintf("rule %q: when is never true", r.Name),
		Detail:   fmt.Sprintf("it is %s whatever the row holds, so it lets no row of %s through and the rule does nothing", showValue(v), r.Table),
		Subject:  r.When.Range().Ptr(),
		Extra:    Hint("compare a column of the row, like when = row.status != \"archived\", or remove the rule"),
	}}
}

// showValue renders a known value as HCL writes it: false, null, "".
func showValue(v cty.Value) string {
	if v.IsNull() {
		return "null"
	}
	b, err := ctyjson.Marshal(v, v.Type())
	if err != nil {
		return v.GoString()
	}
	return string(b)
}

// keylessTemplate warns about a key, tag or namespace template that gives
// null or "" for every row: such a template names no key, so it never
// acts.
func keylessTemplate(r *Rule, t *Template) hcl.Diagnostics {
	v, ok := evalForAnyRow(t.Expr)
	if !ok {
		return nil
	}
	if !v.IsNull() {
		s, err := convert.Convert(v, cty.String)
		if err != nil || s.IsNull() || s.AsString() != "" {
			return nil
		}
	}
	return hcl.Diagnostics{{
		Severity: hcl.DiagWarning,
		Summary:  fmt.Sprintf("rule %q: template never names a key", r.Name),
		Detail:   fmt.Sprintf("it gives %s whatever the row holds, and a null or empty key is skipped: it names no key for any row of %s", showValue(v), r.Table),
		Subject:  t.Range.Ptr(),
		Extra:    Hint(`build the key from the row, like "user:${row.id}"`),
	}}
}

// sensitiveValue warns about a refresh value that copies a column that
// looks sensitive (SensitiveColumnName) or is listed in sensitive_columns
// into Redis, and, when sensitive_columns is given, about a value that
// copies a whole row image: the file does not say which columns the table
// has, so the whole row may carry one of them.
func sensitiveValue(r *Rule, listed []string) hcl.Diagnostics {
	var diags hcl.Diagnostics
	seen := map[string]bool{}
	for _, ref := range r.ValueColumns() {
		if ref.Column == "" {
			if len(listed) == 0 || seen[""] {
				continue
			}
			seen[""] = true
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagWarning,
				Summary:  fmt.Sprintf("rule %q: refresh value writes every column of %s to Redis", r.Name, r.Table),
				Detail: fmt.Sprintf("sensitive_columns lists %s: if %s has one of them, every refresh copies it into the cache, where whoever can read Redis reads it",
					strings.Join(listed, ", "), r.Table),
				Subject: ref.Range.Ptr(),
				Extra:   valueHint,
			})
			continue
		}
		col := strings.ToLower(ref.Column)
		if seen[col] {
			continue
		}
		why := ""
		switch {
		case containsFold(listed, ref.Column):
			why = "it is listed in sensitive_columns"
		case SensitiveColumnName(ref.Column):
			why = "its name looks sensitive"
		default:
			continue
		}
		seen[col] = true
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  fmt.Sprintf("rule %q: refresh value writes column %q to Redis", r.Name, ref.Column),
			Detail:   fmt.Sprintf("%s: every refresh copies it into the cache, where whoever can read Redis reads it", why),
			Subject:  ref.Range.Ptr(),
			Extra:    valueHint,
		})
	}
	return diags
}

func containsFold(list []string, s string) bool {
	for _, e := range list {
		if strings.EqualFold(e, s) {
			return true
		}
	}
	return false
}

// Names that make a column look sensitive: substrings of the lower-cased
// name, whole words of it, and pairs of adjacent words. Words are split at
// anything but letters and digits and at lower-to-upper case changes, so
// that "ssn" matches user_ssn and ssnLast4 but not lessons.
var (
	sensitiveSubstrings = []string{"password", "passwd", "secret"}
	sensitiveWords      = []string{"pwd", "token", "ssn", "apikey", "cvv"}
	sensitivePairs      = [][2]string{{"api", "key"}, {"private", "key"}, {"access", "key"}, {"credit", "card"}, {"card", "number"}}
)

// SensitiveColumnName reports whether a column's name looks like it holds
// a credential or personal secret (password_hash, api_key, user_ssn,
// resetToken). It is a heuristic on the name alone.
func SensitiveColumnName(name string) bool {
	lower := strings.ToLower(name)
	for _, s := range sensitiveSubstrings {
		if strings.Contains(lower, s) {
			return true
		}
	}
	words := nameWords(name)
	for i, w := range words {
		for _, s := range sensitiveWords {
			if w == s {
				return true
			}
		}
		if i+1 < len(words) {
			for _, p := range sensitivePairs {
				if w == p[0] && words[i+1] == p[1] {
					return true
				}
			}
		}
	}
	return false
}

// nameWords splits a column name into lower-case words: resetToken and
// reset_token both give [reset token].
func nameWords(name string) []string {
	var (
		words []string
		cur   []rune
		prev  rune
	)
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	for _, c := range name {
		switch {
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			flush()
		case unicode.IsUpper(c) && unicode.IsLower(prev):
			flush()
			cur = append(cur, c)
		default:
			cur = append(cur, c)
		}
		prev = c
	}
	flush()
	return words
}
