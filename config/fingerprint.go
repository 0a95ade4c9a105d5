package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// fingerprint computes Rule.Fingerprint from the rule and the source it was
// parsed from.
func fingerprint(r *Rule, src []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "table %s\naction %s\n", r.Table, r.Action)
	for _, p := range r.Keyspace {
		fmt.Fprintf(h, "keyspace %q\n", p)
	}
	if r.When != nil {
		writeExpr(h, "when", r.When, src)
	}
	templates := func(label string, ts []*Template) {
		for _, t := range ts {
			writeExpr(h, label, t.Expr, src)
		}
	}
	switch {
	case r.Invalidate != nil:
		templates("key", r.Invalidate.Keys)
		templates("tag", r.Invalidate.Tags)
	case r.BumpVersion != nil:
		templates("namespace", r.BumpVersion.Namespaces)
	case r.Refresh != nil:
		templates("key", []*Template{r.Refresh.Key})
		writeExpr(h, "value", r.Refresh.Value, src)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// writeExpr writes an expression's tokens, without comments and line
// breaks, so that reformatting a rule keeps its fingerprint.
func writeExpr(h hash.Hash, label string, expr hcl.Expression, src []byte) {
	fmt.Fprintf(h, "%s", label)
	rng := expr.Range()
	if rng.End.Byte > len(src) || rng.Start.Byte > rng.End.Byte {
		fmt.Fprintf(h, " %s\n", rng) // no source at hand: the position
		return
	}
	tokens, _ := hclsyntax.LexExpression(rng.SliceBytes(src), rng.Filename, rng.Start)
	for _, t := range tokens {
		switch t.Type {
		case hclsyntax.TokenComment, hclsyntax.TokenNewline, hclsyntax.TokenEOF:
			continue
		}
		fmt.Fprintf(h, " %q", t.Bytes)
	}
	h.Write([]byte{'\n'})
}
