package config_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/cachesync/cachesync/config"
)

// rulesDoc is the reference of rules.hcl. Every fenced code block marked
// ```hcl in it must parse; examples of mistakes are marked ```text.
const rulesDoc = "../docs/rules.md"

// placeholderRule completes a snippet that shows only the postgres or redis
// block: the parser refuses a file without rules.
const placeholderRule = `
rule "docs_placeholder" {
  table = "public.docs_placeholder"
  invalidate {
    keys = ["docs:placeholder"]
  }
}
`

// docBlock is one fenced code block of a Markdown file.
type docBlock struct {
	lang string
	// line is the 1-based line of the opening fence; the block's first
	// line of code is line+1.
	line int
	src  string
}

// fencedBlocks returns the fenced code blocks of a Markdown document, and
// an error for a fence that is never closed.
func fencedBlocks(doc []byte) ([]docBlock, error) {
	var (
		blocks []docBlock
		cur    *docBlock
		body   strings.Builder
		fence  string
	)
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur == nil {
			if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
				fence = trimmed[:3]
				info := strings.TrimSpace(strings.TrimLeft(trimmed, fence[:1]))
				lang, _, _ := strings.Cut(info, " ")
				cur = &docBlock{lang: strings.ToLower(lang), line: n}
				body.Reset()
			}
			continue
		}
		if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]) == "" {
			cur.src = body.String()
			blocks = append(blocks, *cur)
			cur = nil
			continue
		}
		body.WriteString(line)
		body.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur != nil {
		return blocks, fmt.Errorf("the code block opened at line %d is never closed", cur.line)
	}
	return blocks, nil
}

// hasRuleBlock reports whether src declares a rule at the top level. A src
// that does not parse counts as having one, so that the parser reports the
// syntax error against the block as written.
func hasRuleBlock(src string) bool {
	f, diags := hclsyntax.ParseConfig([]byte(src), "block.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		return true
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return true
	}
	for _, b := range body.Blocks {
		if b.Type == "rule" {
			return true
		}
	}
	return false
}

// TestRulesDocExamples parses every ```hcl block of docs/rules.md with the
// real parser. Blocks without a rule (a postgres or redis block on its own)
// get a placeholder rule appended; nothing else is changed. Any diagnostic,
// warnings included, fails the test with the block's line in the document.
func TestRulesDocExamples(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(rulesDoc)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := fencedBlocks(doc)
	if err != nil {
		t.Fatalf("%s: %v", rulesDoc, err)
	}
	parsed := 0
	for _, b := range blocks {
		if b.lang != "hcl" {
			continue
		}
		parsed++
		src := b.src
		if !hasRuleBlock(src) {
			src += placeholderRule
		}
		p := config.NewParser()
		// env() gives "" whatever the environment of the test holds.
		p.LookupEnv = func(string) (string, bool) { return "", false }
		name := fmt.Sprintf("rules.md block at line %d", b.line)
		cfg, diags := p.Parse([]byte(src), name)
		if len(diags) > 0 || cfg == nil {
			var where []string
			for _, d := range diags {
				if d.Subject != nil {
					where = append(where, fmt.Sprintf("%s:%d", rulesDoc, b.line+d.Subject.Start.Line))
				}
			}
			t.Errorf("%s:%d: the hcl block does not parse cleanly (mark an example of a mistake ```text); problems at %s:\n%s",
				rulesDoc, b.line, strings.Join(where, ", "), p.FormatDiagnostics(diags))
		}
	}
	if parsed == 0 {
		t.Fatalf("%s: no ```hcl blocks found", rulesDoc)
	}
	t.Logf("%s: %d hcl blocks parsed", rulesDoc, parsed)
}

// TestFencedBlocks checks the extraction itself, so that a broken scanner
// cannot let the documentation test pass on nothing.
func TestFencedBlocks(t *testing.T) {
	t.Parallel()
	doc := "# Title\n\n```hcl\nrule \"a\" {}\n```\n\ntext\n\n```text\nbad {\n```\n\n  ```HCL\n  redis {}\n  ```\n"
	blocks, err := fencedBlocks([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := []docBlock{
		{lang: "hcl", line: 3, src: "rule \"a\" {}\n"},
		{lang: "text", line: 9, src: "bad {\n"},
		{lang: "hcl", line: 13, src: "  redis {}\n"},
	}
	if len(blocks) != len(want) {
		t.Fatalf("got %d blocks %+v, want %d", len(blocks), blocks, len(want))
	}
	for i := range want {
		if blocks[i] != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, blocks[i], want[i])
		}
	}
	if _, err := fencedBlocks([]byte("```hcl\nrule \"a\" {}\n")); err == nil {
		t.Error("an unclosed block gave no error")
	}
	if hasRuleBlock("redis {}\n") || !hasRuleBlock("redis {}\nrule \"a\" {}\n") {
		t.Error("hasRuleBlock is wrong")
	}
}
