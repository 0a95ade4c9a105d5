package verify

import (
	"math"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/cachesync/cachesync/config"
)

// Result is the verdict on one sampled key.
type Result string

// Results. Absent is a kind of consistent: the key holds nothing, which a
// cache may (it need not hold every row).
const (
	Consistent   Result = "consistent"
	Absent       Result = "absent"
	Stale        Result = "stale"
	Orphaned     Result = "orphaned"
	Unverifiable Result = "unverifiable"
)

// Counts are a rule's verdicts. Checked = Consistent + Stale + Orphaned +
// Unverifiable; Absent counts the consistent keys that were absent.
type Counts struct {
	Checked      int `json:"checked"`
	Consistent   int `json:"consistent"`
	Stale        int `json:"stale"`
	Orphaned     int `json:"orphaned"`
	Unverifiable int `json:"unverifiable"`
	Absent       int `json:"absent"`
}

// Add counts one verdict.
func (c *Counts) Add(r Result) {
	c.Checked++
	switch r {
	case Consistent:
		c.Consistent++
	case Absent:
		c.Consistent++
		c.Absent++
	case Stale:
		c.Stale++
	case Orphaned:
		c.Orphaned++
	default:
		c.Unverifiable++
	}
}

// Verified is the keys whose consistency could be decided.
func (c Counts) Verified() int { return c.Checked - c.Unverifiable }

// Nines is the consistency of counts c in nines: −log10(1 − ratio), where
// ratio = Consistent / Verified. With nothing stale or orphaned the ratio is
// 1 and the nines unbounded: the sample then shows only that there are at
// least log10(Verified) nines (1000 consistent keys: ≥ 3), and atLeast is
// true. ok is false when nothing was verified.
func (c Counts) Nines() (nines float64, atLeast, ok bool) {
	v := c.Verified()
	if v <= 0 {
		return 0, false, false
	}
	if c.Consistent >= v {
		return math.Log10(float64(v)), true, true
	}
	return -math.Log10(1 - float64(c.Consistent)/float64(v)), false, true
}

// Ratio is Consistent / Verified (0 when nothing was verified).
func (c Counts) Ratio() float64 {
	if v := c.Verified(); v > 0 {
		return float64(c.Consistent) / float64(v)
	}
	return 0
}

// Inverse reads a key back into the one column value it was made from: a
// template that is a literal prefix followed by one row.<column>
// ("product:${row.id}").
type Inverse struct {
	// Prefix is the template's literal text; Column the column it reads.
	Prefix, Column string
}

// Invert returns the inverse of template t, or ok false when t is not a
// literal prefix followed by exactly one row.<column> (or new.<column>).
func Invert(t *config.Template) (inv Inverse, ok bool) {
	if t == nil || t.Literal {
		return inv, false
	}
	e, isTemplate := unwrap(t.Expr).(*hclsyntax.TemplateExpr)
	if !isTemplate {
		return inv, false
	}
	var prefix strings.Builder
	parts := e.Parts
	for len(parts) > 0 {
		lit, isLit := parts[0].(*hclsyntax.LiteralValueExpr)
		if !isLit {
			break
		}
		if !lit.Val.IsKnown() || lit.Val.IsNull() || lit.Val.Type() != cty.String {
			return inv, false
		}
		prefix.WriteString(lit.Val.AsString())
		parts = parts[1:]
	}
	if len(parts) != 1 || prefix.Len() == 0 {
		return inv, false
	}
	ref, isRef := unwrap(parts[0]).(*hclsyntax.ScopeTraversalExpr)
	if !isRef || len(ref.Traversal) != 2 {
		return inv, false
	}
	if root := ref.Traversal.RootName(); root != "row" && root != "new" {
		return inv, false
	}
	attr, isAttr := ref.Traversal[1].(hcl.TraverseAttr)
	if !isAttr {
		return inv, false
	}
	return Inverse{Prefix: prefix.String(), Column: attr.Name}, true
}

func unwrap(e hcl.Expression) hcl.Expression {
	for {
		switch x := e.(type) {
		case *hclsyntax.ParenthesesExpr:
			e = x.Expression
		case *hclsyntax.TemplateWrapExpr:
			e = x.Wrapped
		default:
			return e
		}
	}
}

// Value returns the column value key was made from, ok false when key
// does not start with the prefix.
func (inv Inverse) Value(key string) (string, bool) {
	if !strings.HasPrefix(key, inv.Prefix) {
		return "", false
	}
	return key[len(inv.Prefix):], true
}
