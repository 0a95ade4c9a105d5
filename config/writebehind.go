package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/gocty"
)

// Defaults for a write_behind block.
const (
	DefaultWriteBehindBatchSize     = 500
	DefaultWriteBehindFlushInterval = 50 * time.Millisecond
)

// WriteBehind is a write_behind block: the application appends row writes
// to a Redis Stream (usually through cacheaside.WriteBehind), and cachesync
// drains them into Table in batched transactions (package writebehind).
//
//	write_behind "counters" {
//	  stream      = "wb:counters"
//	  table       = "public.counters"
//	  key_columns = ["id"]
//	}
type WriteBehind struct {
	Name string
	// Stream is the Redis Stream the entries are appended to; unique
	// across write_behind blocks.
	Stream string
	Table  TableName
	// KeyColumns form a unique key of Table (the ON CONFLICT target);
	// every entry carries them.
	KeyColumns []string
	// Columns are the columns written; nil when absent: the ones each
	// entry carries. When set, an entry's other columns are ignored.
	Columns []string
	// BatchSize is the most entries applied in one transaction (default
	// DefaultWriteBehindBatchSize).
	BatchSize int
	// FlushInterval is the longest an entry waits for its batch to fill
	// (default DefaultWriteBehindFlushInterval).
	FlushInterval time.Duration
	// Delete allows op delete entries (default true); when false they are
	// dead letters.
	Delete bool
	// DeclRange is the range of the `write_behind "name"` header;
	// TableRange the table attribute's value.
	DeclRange, TableRange hcl.Range
	// StreamRange, KeyColumnsRange, ColumnsRange and DeleteRange are the
	// ranges of those attributes' values, where diagnostics about them
	// point (DeclRange when the attribute is absent).
	StreamRange, KeyColumnsRange, ColumnsRange, DeleteRange hcl.Range
}

// Bounds of a write_behind block's settings.
const (
	// MaxWriteBehindBatchSize bounds a batch: one transaction of that many
	// rows stays short, and the worker holds at most one batch in memory.
	MaxWriteBehindBatchSize = 10000
	// MaxWriteBehindFlushInterval bounds how long an entry waits for its
	// batch to fill: longer only delays the write with nothing gained.
	MaxWriteBehindFlushInterval = time.Minute
)

// Reserved stream names: the dead-letter streams and cachesync's own keys.
const (
	deadLetterSuffix = ":dead"
	reservedPrefix   = "cachesync:"
)

// writeBehindSchema: required attributes are checked by hand so that the
// message names the block and shows what to write.
var writeBehindSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "stream"}, {Name: "table"}, {Name: "key_columns"}, {Name: "columns"},
		{Name: "batch_size"}, {Name: "flush_interval"}, {Name: "delete"},
	},
}

// wbDecoder decodes one write_behind block and collects its diagnostics,
// each starting with `write_behind "name": `.
type wbDecoder struct {
	name  string
	diags hcl.Diagnostics
}

func (d *wbDecoder) errorf(subject hcl.Range, detail, summary string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("write_behind %q: ", d.name) + fmt.Sprintf(summary, args...),
		Detail:   detail,
		Subject:  subject.Ptr(),
	})
}

// value evaluates a constant attribute (no variables, no functions).
func (d *wbDecoder) value(attr *hcl.Attribute) (cty.Value, bool) {
	v, ds := attr.Expr.Value(nil)
	d.diags = append(d.diags, prefixDiags(ds, fmt.Sprintf("write_behind %q: ", d.name))...)
	return v, !ds.HasErrors()
}

// str reads a constant, non-empty string.
func (d *wbDecoder) str(attr *hcl.Attribute, example string) (string, bool) {
	v, ok := d.value(attr)
	if !ok {
		return "", false
	}
	if v.IsNull() || v.Type() != cty.String || v.AsString() == "" {
		d.errorf(attr.Expr.Range(), fmt.Sprintf("write %s = %s", attr.Name, example), "%s must be a non-empty string", attr.Name)
		return "", false
	}
	return v.AsString(), true
}

// columnList reads a non-empty list of distinct column names.
func (d *wbDecoder) columnList(attr *hcl.Attribute, example string) []string {
	v, ok := d.value(attr)
	if !ok {
		return nil
	}
	cols, ok := stringList(v)
	if !ok || len(cols) == 0 {
		d.errorf(attr.Expr.Range(), fmt.Sprintf("write %s = %s, with the names as PostgreSQL stores them", attr.Name, example),
			"%s must be a non-empty list of column names", attr.Name)
		return nil
	}
	seen := map[string]bool{}
	for _, c := range cols {
		switch {
		case c == "" || len(c) > maxIdentLen:
			d.errorf(attr.Expr.Range(), "a column name has 1 to 63 bytes, as PostgreSQL stores it (unquoted names in lower case)",
				"%s: %q is not a column name", attr.Name, c)
			return nil
		case seen[c]:
			d.errorf(attr.Expr.Range(), "remove the second one", "%s lists %q twice", attr.Name, c)
			return nil
		}
		seen[c] = true
	}
	return cols
}

// decodeWriteBehind decodes a write_behind block. The returned block is nil
// when the diagnostics hold an error.
func decodeWriteBehind(b *hcl.Block) (*WriteBehind, hcl.Diagnostics) {
	name := b.Labels[0]
	wb := &WriteBehind{
		Name: name, DeclRange: b.DefRange, TableRange: b.DefRange,
		StreamRange: b.DefRange, KeyColumnsRange: b.DefRange, ColumnsRange: b.DefRange, DeleteRange: b.DefRange,
		BatchSize: DefaultWriteBehindBatchSize, FlushInterval: DefaultWriteBehindFlushInterval, Delete: true,
	}
	content, ds := b.Body.Content(writeBehindSchema)
	d := &wbDecoder{name: name}
	d.diags = withHint(prefixDiags(ds, fmt.Sprintf("write_behind %q: ", name)), "a write_behind block", writeBehindSchema)
	if !ruleNameRe.MatchString(name) {
		d.errorf(b.LabelRanges[0], `write_behind names are made of letters, digits, '_', '.' and '-' (they label metrics and logs); for example write_behind "counters"`,
			"invalid write_behind name")
	}
	missing := func(arg, example string) {
		d.errorf(b.DefRange, "add "+example, "missing %s", arg)
	}

	if attr, ok := content.Attributes["stream"]; ok {
		wb.StreamRange = attr.Expr.Range()
		if s, ok := d.str(attr, `"wb:counters"`); ok {
			wb.Stream = s
			switch {
			case strings.HasSuffix(s, deadLetterSuffix):
				d.errorf(attr.Expr.Range(), fmt.Sprintf("<stream>%s is where the entries of <stream> that cannot apply go; name the stream %q", deadLetterSuffix, strings.TrimSuffix(s, deadLetterSuffix)),
					"stream %q ends in %q", s, deadLetterSuffix)
			case strings.HasPrefix(s, reservedPrefix):
				d.errorf(attr.Expr.Range(), fmt.Sprintf("keys starting with %q are cachesync's own; name the stream after the data, like \"wb:%s\"", reservedPrefix, name),
					"stream %q starts with %q", s, reservedPrefix)
			}
		}
	} else {
		missing("stream", `stream = "wb:`+name+`": the Redis Stream the application appends entries to`)
	}

	if attr, ok := content.Attributes["table"]; ok {
		wb.TableRange = attr.Expr.Range()
		if s, ok := d.str(attr, `"public.counters"`); ok {
			t, err := parseTableName(s)
			if err != nil {
				d.errorf(attr.Expr.Range(), err.Error(), "invalid table %q", s)
			}
			wb.Table = t
		}
	} else {
		missing("table", `table = "schema.table", for example table = "public.counters"`)
	}

	if attr, ok := content.Attributes["key_columns"]; ok {
		wb.KeyColumnsRange = attr.Expr.Range()
		wb.KeyColumns = d.columnList(attr, `["id"]`)
	} else {
		missing("key_columns", `key_columns = ["id"]: a unique key of the table, which every entry carries (the ON CONFLICT target)`)
	}

	if attr, ok := content.Attributes["columns"]; ok {
		wb.ColumnsRange = attr.Expr.Range()
		wb.Columns = d.columnList(attr, `["hits", "note"]`)
	}

	if attr, ok := content.Attributes["batch_size"]; ok {
		if v, ok := d.value(attr); ok {
			var n int64
			if v.IsNull() || v.Type() != cty.Number || gocty.FromCtyValue(v, &n) != nil || n < 1 || n > MaxWriteBehindBatchSize {
				d.errorf(attr.Expr.Range(), fmt.Sprintf("write a whole number from 1 to %d, for example batch_size = %d (the default)", MaxWriteBehindBatchSize, DefaultWriteBehindBatchSize),
					"batch_size must be 1 to %d entries", MaxWriteBehindBatchSize)
			} else {
				wb.BatchSize = int(n)
			}
		}
	}

	if attr, ok := content.Attributes["flush_interval"]; ok {
		if s, ok := d.str(attr, `"50ms"`); ok {
			iv, err := time.ParseDuration(s)
			switch {
			case err != nil:
				d.errorf(attr.Expr.Range(), `use a Go duration like "50ms" or "1s" (units: ms, s, m)`, "flush_interval %q is not a duration", s)
			case iv <= 0 || iv > MaxWriteBehindFlushInterval:
				d.errorf(attr.Expr.Range(), fmt.Sprintf("write a duration above 0 and up to %s, for example flush_interval = %q (the default)", MaxWriteBehindFlushInterval, DefaultWriteBehindFlushInterval),
					"flush_interval %s is out of range", iv)
			default:
				wb.FlushInterval = iv
			}
		}
	}

	if attr, ok := content.Attributes["delete"]; ok {
		wb.DeleteRange = attr.Expr.Range()
		if v, ok := d.value(attr); ok {
			if v.IsNull() || v.Type() != cty.Bool {
				d.errorf(attr.Expr.Range(), "write delete = false to turn op delete entries into dead letters, or delete = true (the default) to apply them",
					"delete must be true or false")
			} else {
				wb.Delete = v.True()
			}
		}
	}
	if d.diags.HasErrors() {
		return nil, d.diags
	}
	return wb, d.diags
}

// uniqueStreams reports write_behind blocks that share a stream: a stream
// drained by two blocks would be written to two tables, or twice.
func uniqueStreams(wbs []*WriteBehind) hcl.Diagnostics {
	var diags hcl.Diagnostics
	byStream := map[string]*WriteBehind{}
	for _, wb := range wbs {
		first, ok := byStream[wb.Stream]
		if !ok {
			byStream[wb.Stream] = wb
			continue
		}
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("write_behind %q: stream %q is also the stream of write_behind %q", wb.Name, wb.Stream, first.Name),
			Detail:   fmt.Sprintf("write_behind %q is at %s; one block drains a stream: give this one its own stream", first.Name, rangeString(first.DeclRange)),
			Subject:  wb.StreamRange.Ptr(),
			Context:  hcl.RangeBetween(first.DeclRange, wb.StreamRange).Ptr(),
		})
	}
	return diags
}
