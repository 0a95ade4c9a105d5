package mapping

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/cachesync/cachesync/wal"
)

// Exact evaluation. A cached value must be the committed value byte for
// byte, and a key must be the one an application builds from the same row.
// HCL cannot give either: every cty string is normalised to Unicode NFC
// (e + U+0301 becomes é), and cty numbers are big floats printed in plain
// decimal (float8 1e308 becomes a 309-digit integer). So the mapper
// evaluates the shapes rules are written in itself, from the text
// PostgreSQL sent: literal text, row/old/new and their columns, string
// templates of those, lower(), upper(), jsonencode(), and object and tuple
// constructors inside jsonencode(). Anything else (operators, conditionals,
// other functions, json paths such as row.doc.kind) is evaluated by HCL, whose
// strings are NFC; docs/rules.md says so.
//
// Where the HCL result and the exact one differ only by NFC or by the
// notation of a float, the exact one is written; in every other outcome
// (NULL, unknown, error) both agree, which TestExactMatchesHCL checks.

// fastResult is the outcome of an exact evaluation.
type fastResult uint8

const (
	fastOK       fastResult = iota
	fastNull                // a NULL: no key, or no value
	fastUnknown             // reads a value that was not sent
	fastFallback            // not decided here: HCL evaluates the expression
)

// rowImage is one row image as PostgreSQL sent it. A nil *rowImage is a
// missing image (old of an INSERT, new of a DELETE).
type rowImage struct {
	b    *binding
	vals []wal.Value // per relation column; NotSent means unknown
}

// imageSet binds the variables of an evaluation.
type imageSet struct{ row, old, new *rowImage }

func (s imageSet) get(root string) *rowImage {
	switch root {
	case "row":
		return s.row
	case "old":
		return s.old
	}
	return s.new
}

// valueClass is how a column type renders (see decoder.decode for the
// typed cty values of the same classes).
type valueClass uint8

const (
	classText valueClass = iota
	classBool
	classInt
	classFloat
	classNumeric
	classJSON
	classTimestamp
	classArray
)

func (d *decoder) class(oid uint32) valueClass {
	switch oid {
	case oidBool:
		return classBool
	case oidInt2, oidInt4, oidInt8, oidOID:
		return classInt
	case oidFloat4, oidFloat8:
		return classFloat
	case oidNumeric:
		return classNumeric
	case oidJSON, oidJSONB:
		return classJSON
	case oidTimestamp, oidTimestampTZ:
		return classTimestamp
	}
	if _, ok := d.arrayElement(oid); ok {
		return classArray
	}
	return classText
}

// arrayElement returns the element type of a known array type (arrayTypes).
func (d *decoder) arrayElement(oid uint32) (uint32, bool) {
	t, ok := arrayTypes[oid]
	return t.elem, ok
}

// appendText appends a non-NULL value where HCL would convert it to a
// string (keys, string templates, a refresh value): PostgreSQL's text,
// except bool (true, false) and timestamps (RFC 3339 in UTC), which
// templates see typed. JSON and arrays have no string form: HCL decides
// (an error).
func (d *decoder) appendText(buf []byte, class valueClass, text string) ([]byte, fastResult) {
	switch class {
	case classBool:
		switch text {
		case "t", "true":
			return append(buf, "true"...), fastOK
		case "f", "false":
			return append(buf, "false"...), fastOK
		}
	case classTimestamp:
		if v, ok := decodeTimestamp(text); ok {
			return append(buf, v.AsString()...), fastOK
		}
	case classJSON, classArray:
		return buf, fastFallback
	}
	return append(buf, text...), fastOK
}

// appendJSON renders a non-NULL value as jsonencode does, keeping
// PostgreSQL's text: integers and floats are JSON numbers written as
// PostgreSQL prints them (1e+308, -0, 1.5), NaN and ±Infinity are strings,
// numeric is a string with its exact digits ("1.50"), json and jsonb are
// embedded as sent (whitespace removed), arrays are JSON arrays.
func (d *decoder) appendJSON(buf []byte, oid uint32, class valueClass, text string) ([]byte, fastResult) {
	switch class {
	case classBool:
		switch text {
		case "t", "true":
			return append(buf, "true"...), fastOK
		case "f", "false":
			return append(buf, "false"...), fastOK
		}
	case classInt, classFloat:
		if isJSONNumber(text) {
			return append(buf, text...), fastOK
		}
	case classJSON:
		out := bytes.NewBuffer(buf)
		if err := json.Compact(out, []byte(text)); err != nil {
			return buf, fastFallback
		}
		return out.Bytes(), fastOK
	case classTimestamp:
		if v, ok := decodeTimestamp(text); ok {
			return appendJSONString(buf, v.AsString()), fastOK
		}
	case classArray:
		if b, ok := d.appendJSONArray(buf, oid, text); ok {
			return b, fastOK
		}
	}
	return appendJSONString(buf, text), fastOK
}

// appendJSONArray renders an array value; multi-dimensional arrays nest.
func (d *decoder) appendJSONArray(buf []byte, oid uint32, text string) ([]byte, bool) {
	t, arr, ok := parseArray(oid, text)
	if !ok {
		return buf, false
	}
	elemOID := t.elem
	if len(arr.dims) == 0 {
		return append(buf, "[]"...), true
	}
	class := d.class(elemOID)
	elems := arr.elements
	var nest func(buf []byte, dims []arrayDimension) ([]byte, bool)
	nest = func(buf []byte, dims []arrayDimension) ([]byte, bool) {
		buf = append(buf, '[')
		for i := 0; i < int(dims[0].length); i++ {
			if i > 0 {
				buf = append(buf, ',')
			}
			var ok bool
			if len(dims) > 1 {
				if buf, ok = nest(buf, dims[1:]); !ok {
					return buf, false
				}
				continue
			}
			if len(elems) == 0 {
				return buf, false
			}
			e := elems[0]
			elems = elems[1:]
			if e == nil {
				buf = append(buf, "null"...)
				continue
			}
			var res fastResult
			if buf, res = d.appendJSON(buf, elemOID, class, *e); res != fastOK {
				return buf, false
			}
		}
		return append(buf, ']'), true
	}
	return nest(buf, arr.dims)
}

// appendJSONString writes s as a JSON string exactly as encoding/json
// writes it, which is what cty's jsonencode uses: <, > and & escaped as
// \u003c, \u003e and \u0026, control characters as \b, \f, \n, \r, \t
// or \u00XX, U+2028 and U+2029 escaped, invalid UTF-8 replaced by \ufffd,
// and every other byte kept (no NFC). FuzzAppendJSONString holds it to
// json.Marshal. It appends to buf without allocating when buf has room.
func appendJSONString[T string | []byte](buf []byte, s T) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '\\', '"':
				buf = append(buf, '\\', c)
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		// A short conversion, which stays on the stack (as in encoding/json).
		r, size := utf8.DecodeRuneInString(string(s[i:min(len(s), i+utf8.UTFMax)]))
		switch {
		case r == utf8.RuneError && size == 1:
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

const hexDigits = "0123456789abcdef"

// jsonSafe lists the ASCII bytes a JSON string keeps as they are
// (encoding/json's htmlSafeSet).
var jsonSafe = func() (set [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		set[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return set
}()

// isJSONNumber reports whether s is a number in JSON's grammar.
func isJSONNumber(s string) bool {
	i := 0
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

type exactKind uint8

const (
	exLiteral  exactKind = iota
	exImage              // row, old, new
	exColumn             // row.x, row["x"]
	exTemplate           // "a${...}b"
	exCase               // lower(x), upper(x)
	exJSON               // jsonencode(x)
	exObject             // { k = x, ... }, inside jsonencode
	exTuple              // [x, ...], inside jsonencode
)

// exactExpr is a compiled expression of the exactly evaluated shapes.
type exactExpr struct {
	kind exactKind
	lit  cty.Value
	// litStr is the literal as a string and litJSON as jsonencode writes
	// it, computed once; nil when HCL decides (a NULL, or no such form).
	litStr  *string
	litJSON []byte
	root    string
	column  string
	fn      func(string) string
	upper   bool         // exCase: upper() rather than lower()
	args    []*exactExpr // template parts, the argument, object values, tuple elements
	keys    []string     // object keys, sorted as jsonencode sorts them
	// keysJSON holds the keys as jsonencode writes them, each with its colon.
	keysJSON [][]byte
}

// literal compiles a literal value: its string and JSON forms are the
// same for every row.
func literal(v cty.Value) *exactExpr {
	x := &exactExpr{kind: exLiteral, lit: v}
	if v.IsKnown() && !v.IsNull() {
		if s, err := convert.Convert(v, cty.String); err == nil && !s.IsNull() {
			str := s.AsString()
			x.litStr = &str
		}
	}
	if v.IsWhollyKnown() {
		if b, err := ctyjson.Marshal(v, v.Type()); err == nil {
			x.litJSON = b
		}
	}
	return x
}

// compileExact returns nil when expr is not of a shape evaluated exactly.
func compileExact(expr hcl.Expression) *exactExpr {
	switch e := expr.(type) {
	case *hclsyntax.ParenthesesExpr:
		return compileExact(e.Expression)
	case *hclsyntax.LiteralValueExpr:
		return literal(e.Val)
	case *hclsyntax.TemplateWrapExpr:
		return compileExact(e.Wrapped)
	case *hclsyntax.TemplateExpr:
		x := &exactExpr{kind: exTemplate}
		for _, p := range e.Parts {
			c := compileExact(p)
			if c == nil {
				return nil
			}
			x.args = append(x.args, c)
		}
		return x
	case *hclsyntax.ScopeTraversalExpr:
		root := e.Traversal.RootName()
		if root != "row" && root != "old" && root != "new" {
			return nil
		}
		switch len(e.Traversal) {
		case 1:
			return &exactExpr{kind: exImage, root: root}
		case 2:
			switch step := e.Traversal[1].(type) {
			case hcl.TraverseAttr:
				return &exactExpr{kind: exColumn, root: root, column: step.Name}
			case hcl.TraverseIndex:
				if k := step.Key; k.IsKnown() && !k.IsNull() && k.Type() == cty.String {
					return &exactExpr{kind: exColumn, root: root, column: k.AsString()}
				}
			}
		}
	case *hclsyntax.FunctionCallExpr:
		if len(e.Args) != 1 || e.ExpandFinal {
			return nil
		}
		arg := compileExact(e.Args[0])
		if arg == nil {
			return nil
		}
		switch e.Name {
		case "lower":
			return &exactExpr{kind: exCase, fn: strings.ToLower, args: []*exactExpr{arg}}
		case "upper":
			return &exactExpr{kind: exCase, fn: strings.ToUpper, upper: true, args: []*exactExpr{arg}}
		case "jsonencode":
			return &exactExpr{kind: exJSON, args: []*exactExpr{arg}}
		}
	case *hclsyntax.ObjectConsExpr:
		x := &exactExpr{kind: exObject}
		values := map[string]*exactExpr{}
		for _, item := range e.Items {
			if len(item.KeyExpr.Variables()) > 0 {
				return nil
			}
			k, diags := item.KeyExpr.Value(nil)
			if diags.HasErrors() || !k.IsKnown() || k.IsNull() || k.Type() != cty.String {
				return nil
			}
			v := compileExact(item.ValueExpr)
			if v == nil || values[k.AsString()] != nil {
				return nil
			}
			values[k.AsString()] = v
			x.keys = append(x.keys, k.AsString())
		}
		sort.Strings(x.keys)
		for _, k := range x.keys {
			x.args = append(x.args, values[k])
			x.keysJSON = append(x.keysJSON, append(appendJSONString(nil, k), ':'))
		}
		return x
	case *hclsyntax.TupleConsExpr:
		x := &exactExpr{kind: exTuple}
		for _, el := range e.Exprs {
			c := compileExact(el)
			if c == nil {
				return nil
			}
			x.args = append(x.args, c)
		}
		return x
	}
	return nil
}

// lookup finds a column's value: fastNull for NULL, fastUnknown when it was
// not sent, fastFallback when HCL reports an error (a missing image or
// column).
func (x *exactExpr) lookup(imgs imageSet) (*rowImage, int, fastResult) {
	img := imgs.get(x.root)
	if img == nil {
		return nil, 0, fastFallback
	}
	i, ok := img.b.index[x.column]
	if !ok {
		return nil, 0, fastFallback
	}
	switch img.vals[i].Kind {
	case wal.Null:
		return img, i, fastNull
	case wal.NotSent:
		return img, i, fastUnknown
	}
	return img, i, fastOK
}

// truth evaluates a `when` of a compiled shape (a literal or a column) as
// the general path does: NULL is false, a value not sent is undecided
// (fastUnknown, with true: act on the row). Anything but a bool is left to
// HCL (fastFallback), which converts it or reports the error.
func (x *exactExpr) truth(imgs imageSet) (bool, fastResult) {
	switch x.kind {
	case exLiteral:
		switch {
		case !x.lit.IsWhollyKnown():
		case x.lit.IsNull():
			return false, fastOK
		case x.lit.Type() == cty.Bool:
			return x.lit.True(), fastOK
		}
	case exColumn:
		img, i, res := x.lookup(imgs)
		switch res {
		case fastNull:
			return false, fastOK
		case fastUnknown:
			return true, fastUnknown
		case fastOK:
			if img.b.class[i] == classBool {
				switch img.vals[i].Text {
				case "t", "true":
					return true, fastOK
				case "f", "false":
					return false, fastOK
				}
			}
		}
	}
	return false, fastFallback
}

// str evaluates x where a string is wanted (a test's helper: the mapper
// appends to its own buffers with appendStr).
func (x *exactExpr) str(imgs imageSet, d *decoder) (string, fastResult) {
	b, res := x.appendStr(nil, imgs, d)
	return string(b), res
}

// appendStr evaluates x where a string is wanted and appends the string to
// buf. A NULL part makes the whole template NULL (a key is then skipped),
// and wins over an unknown part, as in the HCL path. Whatever the outcome,
// buf keeps its bytes; only fastOK appends.
func (x *exactExpr) appendStr(buf []byte, imgs imageSet, d *decoder) ([]byte, fastResult) {
	switch x.kind {
	case exLiteral:
		if x.litStr == nil {
			return buf, fastFallback
		}
		return append(buf, *x.litStr...), fastOK
	case exColumn:
		img, i, res := x.lookup(imgs)
		if res != fastOK {
			return buf, res
		}
		return d.appendText(buf, img.b.class[i], img.vals[i].Text)
	case exTemplate:
		start := len(buf)
		null, unknown := false, false
		for _, p := range x.args {
			var res fastResult
			switch buf, res = p.appendStr(buf, imgs, d); res {
			case fastOK:
			case fastNull:
				null = true
			case fastUnknown:
				unknown = true
			default:
				return buf[:start], fastFallback
			}
		}
		switch {
		case null:
			return buf[:start], fastNull
		case unknown:
			return buf[:start], fastUnknown
		}
		return buf, fastOK
	case exCase:
		start := len(buf)
		buf, res := x.args[0].appendStr(buf, imgs, d)
		if res != fastOK {
			return buf[:start], res
		}
		if !changeASCIICase(buf[start:], x.upper) {
			// Not ASCII: strings.ToLower or ToUpper, as before.
			s := x.fn(string(buf[start:]))
			buf = append(buf[:start], s...)
		}
		return buf, fastOK
	case exJSON:
		start := len(buf)
		buf, res := x.args[0].json(buf, imgs, d)
		if res != fastOK {
			return buf[:start], res
		}
		return buf, fastOK
	}
	return buf, fastFallback
}

// changeASCIICase lowers (or uppers) b in place, as strings.ToLower (or
// ToUpper) would, when b is all ASCII; it reports false, and leaves b as it
// is, otherwise.
func changeASCIICase(b []byte, upper bool) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	for i, c := range b {
		switch {
		case upper && 'a' <= c && c <= 'z':
			b[i] = c - ('a' - 'A')
		case !upper && 'A' <= c && c <= 'Z':
			b[i] = c + ('a' - 'A')
		}
	}
	return true
}

// json appends x as jsonencode renders it. An unknown value anywhere makes
// the result unknown, unless HCL would fail on another part (fastFallback).
// Whatever the outcome, buf keeps its bytes; only fastOK appends.
func (x *exactExpr) json(buf []byte, imgs imageSet, d *decoder) ([]byte, fastResult) {
	start := len(buf)
	switch x.kind {
	case exLiteral:
		if x.litJSON == nil {
			return buf, fastFallback
		}
		return append(buf, x.litJSON...), fastOK
	case exImage:
		img := imgs.get(x.root)
		if img == nil {
			return append(buf, "null"...), fastOK
		}
		return img.json(buf, d)
	case exColumn:
		img, i, res := x.lookup(imgs)
		switch res {
		case fastNull:
			return append(buf, "null"...), fastOK
		case fastOK:
			return d.appendJSON(buf, img.b.rel.Columns[i].TypeOID, img.b.class[i], img.vals[i].Text)
		}
		return buf, res
	case exTemplate, exCase, exJSON:
		// The string goes after buf, its JSON form after that, which then
		// moves down over the string: no scratch buffer to share between
		// nested calls.
		buf, res := x.appendStr(buf, imgs, d)
		switch res {
		case fastOK:
			mid := len(buf)
			buf = appendJSONString(buf, buf[start:mid])
			n := copy(buf[start:], buf[mid:])
			return buf[:start+n], fastOK
		case fastNull:
			return buf[:start], fastFallback // HCL: a NULL in a template or function is an error
		}
		return buf[:start], res
	case exObject, exTuple:
		open, closing := byte('['), byte(']')
		if x.kind == exObject {
			open, closing = '{', '}'
		}
		buf = append(buf, open)
		unknown := false
		for i, el := range x.args {
			if i > 0 {
				buf = append(buf, ',')
			}
			if x.kind == exObject {
				buf = append(buf, x.keysJSON[i]...)
			}
			var res fastResult
			switch buf, res = el.json(buf, imgs, d); res {
			case fastUnknown:
				unknown = true
			case fastOK:
			default:
				return buf[:start], res
			}
		}
		if unknown {
			return buf[:start], fastUnknown
		}
		return append(buf, closing), fastOK
	}
	return buf, fastFallback
}

// json renders a whole image as jsonencode renders an object: attributes
// sorted by name.
func (img *rowImage) json(buf []byte, d *decoder) ([]byte, fastResult) {
	start := len(buf)
	buf = append(buf, '{')
	unknown := false
	for n, i := range img.b.sorted {
		if n > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, img.b.nameJSON[i]...)
		switch v := img.vals[i]; v.Kind {
		case wal.Null:
			buf = append(buf, "null"...)
		case wal.NotSent:
			unknown = true
		default:
			var res fastResult
			if buf, res = d.appendJSON(buf, img.b.rel.Columns[i].TypeOID, img.b.class[i], v.Text); res != fastOK {
				return buf[:start], res
			}
		}
	}
	if unknown {
		return buf[:start], fastUnknown
	}
	return append(buf, '}'), fastOK
}
