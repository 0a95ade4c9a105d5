package config

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// Hint is what to do about a diagnostic, beyond its Detail. This package
// stores it in hcl.Diagnostic.Extra (for HCL's own "Unsupported argument"
// errors: what the block accepts); FormatDiagnostics prints it.
type Hint string

// FormatDiagnostics renders diagnostics compactly, one entry per diagnostic:
//
//	rules.hcl:12:15: error: rule "user": unknown variable "rwo"; templates can read row, old and new; did you mean "row"?
//	   12 |     keys = ["user:${rwo.id}"]
//	      |                     ^^^
//	      = hint: ...
//
// files maps file names to parsed files (Parser.Files) for the source
// lines; a diagnostic whose file is missing is printed without them. A
// diagnostic without a subject prints as "error: Summary; Detail".
func FormatDiagnostics(diags hcl.Diagnostics, files map[string]*hcl.File) string {
	var b strings.Builder
	for _, d := range diags {
		if d.Subject != nil {
			fmt.Fprintf(&b, "%s: ", rangeString(*d.Subject))
		}
		fmt.Fprintf(&b, "%s: %s", severityName(d), d.Summary)
		if detail := oneLine(d.Detail); detail != "" {
			fmt.Fprintf(&b, "; %s", detail)
		}
		b.WriteByte('\n')
		gutter := ""
		if d.Subject != nil {
			if f := files[d.Subject.Filename]; f != nil {
				gutter = writeSnippet(&b, f.Bytes, *d.Subject)
			}
		}
		if h, ok := d.Extra.(Hint); ok && h != "" {
			if gutter == "" {
				gutter = "  "
			}
			fmt.Fprintf(&b, "%s= hint: %s\n", gutter, h)
		}
	}
	return b.String()
}

func severityName(d *hcl.Diagnostic) string {
	if d.Severity == hcl.DiagWarning {
		return "warning"
	}
	return "error"
}

// DiagnosticRecord is one diagnostic as `cachesync validate --json` prints
// it, one JSON object per line, for editors and CI. Positions are 1-based
// (columns count characters) and 0 when the diagnostic has none (a file
// that cannot be read).
type DiagnosticRecord struct {
	File      string `json:"file"`
	Line      int    `json:"line"`
	Column    int    `json:"column"`
	EndLine   int    `json:"end_line"`
	EndColumn int    `json:"end_column"`
	// Severity is "error" or "warning".
	Severity string `json:"severity"`
	// Rule is the name of the rule the diagnostic is about, "" for the
	// file, the postgres block or the redis block.
	Rule string `json:"rule"`
	// Message is what FormatDiagnostics prints after the severity,
	// without the `rule "name": ` prefix.
	Message string `json:"message"`
	// Hint is what to do, when the diagnostic says more than its message.
	Hint string `json:"hint"`
}

// rulePrefixRe is the `rule "name": ` every rule's diagnostics start with
// (prefixRule, and the replication preflight).
var rulePrefixRe = regexp.MustCompile(`^rule ("(?:[^"\\]|\\.)*"): `)

// DiagnosticRecords converts diagnostics for JSON output.
func DiagnosticRecords(diags hcl.Diagnostics) []DiagnosticRecord {
	out := make([]DiagnosticRecord, 0, len(diags))
	for _, d := range diags {
		rec := DiagnosticRecord{Severity: severityName(d), Message: d.Summary}
		if d.Subject != nil {
			rec.File = d.Subject.Filename
			rec.Line, rec.Column = d.Subject.Start.Line, d.Subject.Start.Column
			rec.EndLine, rec.EndColumn = d.Subject.End.Line, d.Subject.End.Column
		}
		if m := rulePrefixRe.FindStringSubmatch(d.Summary); m != nil {
			if name, err := strconv.Unquote(m[1]); err == nil {
				rec.Rule, rec.Message = name, d.Summary[len(m[0]):]
			}
		}
		if detail := oneLine(d.Detail); detail != "" {
			rec.Message += "; " + detail
		}
		if h, ok := d.Extra.(Hint); ok {
			rec.Hint = string(h)
		}
		out = append(out, rec)
	}
	return out
}

// oneLine folds a multi-line detail into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// writeSnippet prints the subject's first line and a caret line under the
// subject, and returns the blank gutter used, for a hint line to align with.
func writeSnippet(b *strings.Builder, src []byte, subject hcl.Range) string {
	start := subject.Start.Byte
	if start < 0 || start > len(src) {
		return ""
	}
	lineStart := bytes.LastIndexByte(src[:start], '\n') + 1
	lineEnd := len(src)
	if i := bytes.IndexByte(src[start:], '\n'); i >= 0 {
		lineEnd = start + i
	}
	line := strings.TrimRight(string(src[lineStart:lineEnd]), "\r")
	if !utf8.ValidString(line) {
		line = strings.ToValidUTF8(line, "\uFFFD")
	}
	num := fmt.Sprintf("%5d", subject.Start.Line)
	gutter := strings.Repeat(" ", len(num)) + " | "
	fmt.Fprintf(b, "%s | %s\n", num, line)

	// Keep tabs so the caret lines up with the source as printed.
	var pad strings.Builder
	for _, r := range string(src[lineStart:start]) {
		if r == '\t' {
			pad.WriteByte('\t')
		} else {
			pad.WriteByte(' ')
		}
	}
	end := subject.End.Byte
	if end > lineEnd || end < start {
		end = lineEnd
	}
	width := max(utf8.RuneCount(src[start:end]), 1)
	fmt.Fprintf(b, "%s%s%s\n", gutter, pad.String(), strings.Repeat("^", width))
	return strings.Repeat(" ", len(num)+1)
}
