package verify

import (
	"math"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/cachesync/cachesync/config"
)

func TestCounts(t *testing.T) {
	var c Counts
	for _, r := range []Result{Consistent, Absent, Absent, Stale, Orphaned, Unverifiable} {
		c.Add(r)
	}
	want := Counts{Checked: 6, Consistent: 3, Absent: 2, Stale: 1, Orphaned: 1, Unverifiable: 1}
	if c != want {
		t.Fatalf("counts %+v, want %+v", c, want)
	}
	if c.Verified() != 5 || c.Ratio() != 0.6 {
		t.Fatalf("verified %d ratio %v, want 5 and 0.6", c.Verified(), c.Ratio())
	}
}

func TestNines(t *testing.T) {
	for _, tc := range []struct {
		c       Counts
		nines   float64
		atLeast bool
		ok      bool
	}{
		{c: Counts{}, ok: false},
		{c: Counts{Checked: 3, Unverifiable: 3}, ok: false},
		// 999 of 1000: 1 − ratio = 10^-3.
		{c: Counts{Checked: 1000, Consistent: 999, Stale: 1}, nines: 3, ok: true},
		{c: Counts{Checked: 100, Consistent: 90, Orphaned: 10}, nines: 1, ok: true},
		// Nothing stale among 1000 verified: at least 3 nines, whatever
		// was unverifiable.
		{c: Counts{Checked: 1010, Consistent: 1000, Unverifiable: 10}, nines: 3, atLeast: true, ok: true},
		{c: Counts{Checked: 1, Consistent: 1}, nines: 0, atLeast: true, ok: true},
	} {
		n, atLeast, ok := tc.c.Nines()
		if ok != tc.ok || atLeast != tc.atLeast || (ok && math.Abs(n-tc.nines) > 1e-9) {
			t.Errorf("%+v: nines %v at least %v ok %v, want %v %v %v", tc.c, n, atLeast, ok, tc.nines, tc.atLeast, tc.ok)
		}
	}
}

func template(t *testing.T, src string) *config.Template {
	t.Helper()
	expr, diags := hclsyntax.ParseExpression([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return &config.Template{Expr: expr}
}

func TestInvert(t *testing.T) {
	for _, tc := range []struct {
		src    string
		ok     bool
		prefix string
		column string
	}{
		{src: `"product:${row.id}"`, ok: true, prefix: "product:", column: "id"},
		{src: `"user:${new.email}"`, ok: true, prefix: "user:", column: "email"},
		{src: `("a:b:${row.sku}")`, ok: true, prefix: "a:b:", column: "sku"},
		{src: `"user:email:${lower(row.email)}"`}, // a function: not one-to-one
		{src: `"order:${row.id}:${row.line}"`},    // two columns
		{src: `"order:${row.id}:lines"`},          // text after the column
		{src: `"${row.id}"`},                      // no prefix
		{src: `"static"`},                         // no column
		{src: `"p:${old.id}"`},                    // old is the row before
		{src: `"p:${row.data.id}"`},               // a field of a column
		{src: `format("product:%s", row.id)`},     // not a template
	} {
		tpl := template(t, tc.src)
		tpl.Literal = tc.src == `"static"`
		inv, ok := Invert(tpl)
		if ok != tc.ok || inv.Prefix != tc.prefix || inv.Column != tc.column {
			t.Errorf("Invert(%s) = %+v %v, want {%s %s} %v", tc.src, inv, ok, tc.prefix, tc.column, tc.ok)
		}
	}
	inv := Inverse{Prefix: "product:", Column: "id"}
	if v, ok := inv.Value("product:42"); !ok || v != "42" {
		t.Errorf("Value(product:42) = %q %v", v, ok)
	}
	if _, ok := inv.Value("user:42"); ok {
		t.Errorf("Value(user:42) matched another prefix")
	}
}

func TestSampleSQL(t *testing.T) {
	if got, want := sampleSQL("SELECT a FROM t", 5000, 1000), "SELECT a FROM t ORDER BY random() LIMIT 1000"; got != want {
		t.Errorf("small table: %q, want %q", got, want)
	}
	if got, want := sampleSQL("SELECT a FROM t", 4_000_000, 1000), "SELECT a FROM t TABLESAMPLE SYSTEM (0.1) ORDER BY random() LIMIT 1000"; got != want {
		t.Errorf("large table: %q, want %q", got, want)
	}
}
