package cacheaside_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// docExampleStart is the comment in Example after which its body is the
// package documentation's example, up to "// Output:".
const docExampleStart = "// The package documentation shows the rest."

// TestPackageDocExample: the example in the package documentation (doc.go)
// is the body of Example, which compiles and runs, line for line.
func TestPackageDocExample(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	docFile, err := parser.ParseFile(fset, "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	for line := range strings.Lines(docFile.Doc.Text()) {
		if code, ok := strings.CutPrefix(line, "\t"); ok {
			doc = append(doc, strings.TrimRight(code, "\n"))
		} else if len(doc) > 0 {
			break // the first code block only
		}
	}

	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	exFile, err := parser.ParseFile(fset, "example_test.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var body string
	for _, d := range exFile.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "Example" && fn.Recv == nil {
			body = string(src[fset.Position(fn.Body.Lbrace).Offset+1 : fset.Position(fn.Body.Rbrace).Offset])
		}
	}
	_, body, found := strings.Cut(body, docExampleStart+"\n")
	body, _, _ = strings.Cut(body, "\t// Output:")
	if !found || body == "" {
		t.Fatalf("example_test.go: no func Example with the line %q", docExampleStart)
	}
	var example []string
	for line := range strings.Lines(body) {
		example = append(example, strings.TrimRight(strings.TrimPrefix(line, "\t"), "\n"))
	}

	if strings.Join(doc, "\n") != strings.Join(example, "\n") {
		t.Errorf("the package documentation's example (doc.go) is not the body of Example (example_test.go, after %q); make them the same.\ndoc.go:\n%s\nExample:\n%s",
			docExampleStart, strings.Join(doc, "\n"), strings.Join(example, "\n"))
	}
}
