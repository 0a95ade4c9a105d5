package mapping

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"

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

// text renders a non-NULL value where HCL would convert it to a string
// (keys, string templates, a refresh value): PostgreSQL's text, except
// bool (true, false) and timestamps (RFC 3339 in UTC), which templates see
// typed. JSON and arrays have no string form: HCL decides (an error).
func (d *decoder) text(class valueClass, text string) (string, fastResult) {
	switch class {
	case classBool:
		switch text {
		case "t", "true":
			return "true", fastOK
		case "f", "false":
			return "false", fastOK
		}
	case classTimestamp:
		if v, ok := decodeTimestamp(text); ok {
			return v.AsString(), fastOK
		}
	case classJSON, classArray:
		return "", fastFallback
	}
	return text, fastOK
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

// appendJSONString writes s as a JSON string the way cty's jsonencode does
// (encoding/json, which escapes <, > and &), without changing its bytes
// otherwise.
func appendJSONString(buf []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(buf, b...)
}

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
	kind   exactKind
	lit    cty.Value
	root   string
	column string
	fn     func(string) string
	args   []*exactExpr // template parts, the argument, object values, tuple elements
	keys   []string     // object keys, sorted as jsonencode sorts them
}

// compileExact returns nil when expr is not of a shape evaluated exactly.
func compileExact(expr hcl.Expression) *exactExpr {
	switch e := expr.(type) {
	case *hclsyntax.ParenthesesExpr:
		return compileExact(e.Expression)
	case *hclsyntax.LiteralValueExpr:
		return &exactExpr{kind: exLiteral, lit: e.Val}
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
			return &exactExpr{kind: exCase, fn: strings.ToUpper, args: []*exactExpr{arg}}
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

// str evaluates x where a string is wanted. A NULL part makes the whole
// template NULL (a key is then skipped), and wins over an unknown part, as
// in the HCL path.
func (x *exactExpr) str(imgs imageSet, d *decoder) (string, fastResult) {
	switch x.kind {
	case exLiteral:
		if x.lit.IsNull() || !x.lit.IsKnown() {
			return "", fastFallback
		}
		s, err := convert.Convert(x.lit, cty.String)
		if err != nil {
			return "", fastFallback
		}
		return s.AsString(), fastOK
	case exColumn:
		img, i, res := x.lookup(imgs)
		if res != fastOK {
			return "", res
		}
		return d.text(img.b.class[i], img.vals[i].Text)
	case exTemplate:
		if len(x.args) == 1 && x.args[0].kind == exLiteral {
			return x.args[0].str(imgs, d)
		}
		var b strings.Builder
		null, unknown := false, false
		for _, p := range x.args {
			s, res := p.str(imgs, d)
			switch res {
			case fastOK:
				b.WriteString(s)
			case fastNull:
				null = true
			case fastUnknown:
				unknown = true
			default:
				return "", fastFallback
			}
		}
		switch {
		case null:
			return "", fastNull
		case unknown:
			return "", fastUnknown
		}
		return b.String(), fastOK
	case exCase:
		s, res := x.args[0].str(imgs, d)
		if res != fastOK {
			return "", res
		}
		return x.fn(s), fastOK
	case exJSON:
		b, res := x.args[0].json(nil, imgs, d)
		if res != fastOK {
			return "", res
		}
		return string(b), fastOK
	}
	return "", fastFallback
}

// json appends x as jsonencode renders it. An unknown value anywhere makes
// the result unknown, unless HCL would fail on another part (fastFallback).
func (x *exactExpr) json(buf []byte, imgs imageSet, d *decoder) ([]byte, fastResult) {
	switch x.kind {
	case exLiteral:
		if !x.lit.IsWhollyKnown() {
			return buf, fastFallback
		}
		b, err := ctyjson.Marshal(x.lit, x.lit.Type())
		if err != nil {
			return buf, fastFallback
		}
		return append(buf, b...), fastOK
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
		s, res := x.str(imgs, d)
		switch res {
		case fastOK:
			return appendJSONString(buf, s), fastOK
		case fastNull:
			return buf, fastFallback // HCL: a NULL in a template or function is an error
		}
		return buf, res
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
				buf = append(appendJSONString(buf, x.keys[i]), ':')
			}
			var res fastResult
			switch buf, res = el.json(buf, imgs, d); res {
			case fastUnknown:
				unknown = true
			case fastOK:
			default:
				return buf, res
			}
		}
		if unknown {
			return buf, fastUnknown
		}
		return append(buf, closing), fastOK
	}
	return buf, fastFallback
}

// json renders a whole image as jsonencode renders an object: attributes
// sorted by name.
func (img *rowImage) json(buf []byte, d *decoder) ([]byte, fastResult) {
	buf = append(buf, '{')
	unknown := false
	for n, i := range img.b.sorted {
		if n > 0 {
			buf = append(buf, ',')
		}
		col := img.b.rel.Columns[i]
		buf = append(appendJSONString(buf, col.Name), ':')
		switch v := img.vals[i]; v.Kind {
		case wal.Null:
			buf = append(buf, "null"...)
		case wal.NotSent:
			unknown = true
		default:
			var res fastResult
			if buf, res = d.appendJSON(buf, col.TypeOID, img.b.class[i], v.Text); res != fastOK {
				return buf, res
			}
		}
	}
	if unknown {
		return buf, fastUnknown
	}
	return append(buf, '}'), fastOK
}
