package mapping

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// PostgreSQL arrays in text form, decoded without a PostgreSQL driver so
// that mapping depends on no database client: the element type of every
// built-in array type (PostgreSQL's catalog), and a parser of the array
// output format. They replace what pgx's pgtype did for the mapper before;
// TestArrayTypesMatchPgtype and FuzzParseTextArray hold them to it.

// arrayType is the element type of an array type and the delimiter between
// its elements.
type arrayType struct {
	elem      uint32
	delimiter byte
}

// arrayTypes maps the OID of every built-in array type whose elements the
// mapper decodes to its element type. Arrays of other types (enums, domains,
// composite and extension types) reach templates as their text form.
var arrayTypes = map[uint32]arrayType{
	143:  {142, ','},  // _xml
	199:  {114, ','},  // _json
	271:  {5069, ','}, // _xid8
	629:  {628, ','},  // _line
	651:  {650, ','},  // _cidr
	719:  {718, ','},  // _circle
	1000: {16, ','},   // _bool
	1001: {17, ','},   // _bytea
	1002: {18, ','},   // _char
	1003: {19, ','},   // _name
	1005: {21, ','},   // _int2
	1007: {23, ','},   // _int4
	1009: {25, ','},   // _text
	1010: {27, ','},   // _tid
	1011: {28, ','},   // _xid
	1012: {29, ','},   // _cid
	1014: {1042, ','}, // _bpchar
	1015: {1043, ','}, // _varchar
	1016: {20, ','},   // _int8
	1017: {600, ','},  // _point
	1018: {601, ','},  // _lseg
	1019: {602, ','},  // _path
	1020: {603, ';'},  // _box
	1021: {700, ','},  // _float4
	1022: {701, ','},  // _float8
	1027: {604, ','},  // _polygon
	1028: {26, ','},   // _oid
	1034: {1033, ','}, // _aclitem
	1040: {829, ','},  // _macaddr
	1041: {869, ','},  // _inet
	1115: {1114, ','}, // _timestamp
	1182: {1082, ','}, // _date
	1183: {1083, ','}, // _time
	1185: {1184, ','}, // _timestamptz
	1187: {1186, ','}, // _interval
	1231: {1700, ','}, // _numeric
	1561: {1560, ','}, // _bit
	1563: {1562, ','}, // _varbit
	2287: {2249, ','}, // _record
	2951: {2950, ','}, // _uuid
	3643: {3614, ','}, // _tsvector
	3807: {3802, ','}, // _jsonb
	3905: {3904, ','}, // _int4range
	3907: {3906, ','}, // _numrange
	3909: {3908, ','}, // _tsrange
	3911: {3910, ','}, // _tstzrange
	3913: {3912, ','}, // _daterange
	3927: {3926, ','}, // _int8range
	4073: {4072, ','}, // _jsonpath
	6442: {6437, ','}, // _oid8
}

// arrayDimension is one dimension of an array: its length and the index of
// its first element.
type arrayDimension struct {
	length     int32
	lowerBound int32
}

// textArray is a parsed array: its elements in row-major order (nil for
// NULL) and its dimensions (none for an empty array).
type textArray struct {
	elements []*string
	dims     []arrayDimension
}

// parseArray parses the text form of an array of type oid. It reports false
// for a type that is not a known array type and for text that is not a valid
// array, which then reach templates as text.
func parseArray(oid uint32, text string) (arrayType, textArray, bool) {
	t, ok := arrayTypes[oid]
	if !ok {
		return arrayType{}, textArray{}, false
	}
	arr, err := parseTextArray(text, t.delimiter)
	if err != nil {
		return arrayType{}, textArray{}, false
	}
	return t, arr, true
}

// parseTextArray parses PostgreSQL's array output: optional explicit bounds
// ("[0:1]={a,b}"), nested braces for more dimensions, elements separated by
// delimiter, double-quoted elements with backslash escapes, and NULL. Every
// sub-array of one level must have the same length, as PostgreSQL requires.
func parseTextArray(src string, delimiter byte) (textArray, error) {
	p := arrayParser{src: src, delimiter: delimiter}
	p.skipSpace()
	var bounds []arrayDimension
	for p.more() && p.peek() == '[' {
		p.pos++
		lower, err := p.integer()
		if err != nil {
			return textArray{}, err
		}
		if err := p.expect(':'); err != nil {
			return textArray{}, err
		}
		upper, err := p.integer()
		if err != nil {
			return textArray{}, err
		}
		if err := p.expect(']'); err != nil {
			return textArray{}, err
		}
		bounds = append(bounds, arrayDimension{lowerBound: lower, length: upper - lower + 1})
		if !p.more() || p.peek() != '[' {
			if err := p.expect('='); err != nil {
				return textArray{}, err
			}
		}
	}
	var arr textArray
	if err := p.list(0, &arr); err != nil {
		return textArray{}, err
	}
	p.skipSpace()
	if p.more() {
		return textArray{}, fmt.Errorf("array: unexpected %q after the closing brace", p.src[p.pos:])
	}
	if len(arr.elements) == 0 {
		return textArray{}, nil // "{}": no dimensions, whatever bounds it states
	}
	if bounds == nil {
		for _, n := range p.lengths {
			arr.dims = append(arr.dims, arrayDimension{lowerBound: 1, length: n})
		}
		return arr, nil
	}
	if len(bounds) != len(p.lengths) {
		return textArray{}, fmt.Errorf("array: %d bounds for %d dimensions", len(bounds), len(p.lengths))
	}
	for i, b := range bounds {
		if b.length != p.lengths[i] {
			return textArray{}, fmt.Errorf("array: dimension %d holds %d elements, its bounds say %d", i+1, p.lengths[i], b.length)
		}
	}
	arr.dims = bounds
	return arr, nil
}

// arrayParser reads one array's text. lengths are the lengths of the
// sub-arrays at each depth, set by the first one seen there.
type arrayParser struct {
	src       string
	pos       int
	delimiter byte
	lengths   []int32
	// leafDepth is the depth whose items are elements (0 until known).
	leafDepth int
}

func (p *arrayParser) more() bool { return p.pos < len(p.src) }
func (p *arrayParser) peek() byte { return p.src[p.pos] }

func (p *arrayParser) skipSpace() {
	for p.more() && unicode.IsSpace(rune(p.peek())) {
		p.pos++
	}
}

func (p *arrayParser) expect(c byte) error {
	if !p.more() || p.peek() != c {
		return fmt.Errorf("array: expected %q at offset %d of %q", c, p.pos, p.src)
	}
	p.pos++
	return nil
}

// integer reads a bound: an optional minus and digits.
func (p *arrayParser) integer() (int32, error) {
	start := p.pos
	if p.more() && p.peek() == '-' {
		p.pos++
	}
	for p.more() && '0' <= p.peek() && p.peek() <= '9' {
		p.pos++
	}
	n, err := strconv.ParseInt(p.src[start:p.pos], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("array: bad bound at offset %d of %q", start, p.src)
	}
	return int32(n), nil
}

// list reads a brace-enclosed list at depth, appending its elements.
func (p *arrayParser) list(depth int, arr *textArray) error {
	if err := p.expect('{'); err != nil {
		return err
	}
	if depth == 0 && p.more() && p.peek() == '}' {
		p.pos++
		return nil // the empty array
	}
	var n int32
	for {
		if !p.more() {
			return fmt.Errorf("array: %q ends inside a list", p.src)
		}
		nested := p.peek() == '{'
		switch {
		case p.leafDepth == 0 && depth == len(p.lengths):
			// The first item at a new depth says whether it holds lists.
			p.lengths = append(p.lengths, 0)
			if !nested {
				p.leafDepth = depth + 1
			}
		case nested != (depth+1 < p.leafDepth || p.leafDepth == 0):
			return fmt.Errorf("array: sub-arrays and elements mixed at offset %d of %q", p.pos, p.src)
		}
		if nested {
			if err := p.list(depth+1, arr); err != nil {
				return err
			}
		} else {
			v, isNull, err := p.element()
			if err != nil {
				return err
			}
			if isNull {
				arr.elements = append(arr.elements, nil)
			} else {
				arr.elements = append(arr.elements, &v)
			}
		}
		n++
		if !p.more() {
			return fmt.Errorf("array: %q ends inside a list", p.src)
		}
		if c := p.peek(); c == '}' {
			p.pos++
			break
		} else if c != p.delimiter {
			return fmt.Errorf("array: expected %q or '}' at offset %d of %q", p.delimiter, p.pos, p.src)
		}
		p.pos++
	}
	if p.lengths[depth] == 0 {
		p.lengths[depth] = n
	} else if p.lengths[depth] != n {
		return fmt.Errorf("array: sub-arrays of different lengths (%d and %d) in %q", p.lengths[depth], n, p.src)
	}
	return nil
}

// element reads one element: quoted (backslash escapes the next byte), or
// bare up to the delimiter or the closing brace, where a bare NULL is NULL.
func (p *arrayParser) element() (string, bool, error) {
	if p.peek() != '"' {
		start := p.pos
		for p.more() && p.peek() != p.delimiter && p.peek() != '}' {
			switch p.peek() {
			case '{', '"', '\\':
				return "", false, fmt.Errorf("array: %q inside a bare element at offset %d of %q", p.peek(), p.pos, p.src)
			}
			p.pos++
		}
		v := p.src[start:p.pos]
		if v == "" {
			return "", false, fmt.Errorf("array: empty element at offset %d of %q", start, p.src)
		}
		return v, v == "NULL", nil
	}
	p.pos++
	var b strings.Builder
	for p.more() {
		c := p.peek()
		p.pos++
		switch c {
		case '"':
			return b.String(), false, nil
		case '\\':
			if !p.more() {
				return "", false, fmt.Errorf("array: %q ends after a backslash", p.src)
			}
			c = p.peek()
			p.pos++
		}
		b.WriteByte(c)
	}
	return "", false, fmt.Errorf("array: %q ends inside a quoted element", p.src)
}
