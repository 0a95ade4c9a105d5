package mapping

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode"
)

// PostgreSQL arrays in text form, decoded without a PostgreSQL driver so
// that mapping depends on no database client (issue 13): the element type of
// every array type, and a parser of the array text format. Both are exactly
// what pgx v5's pgtype did for the mapper before (its default type map and
// its text array parser, ported here under pgx's MIT licence), which
// TestArrayTypesMatchPgtype and FuzzParseTextArray check against pgtype.

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
// delimiter, double-quoted elements with backslash escapes, and NULL.
func parseTextArray(src string, delimiter byte) (textArray, error) {
	uta, err := parseUntypedTextArray(src, delimiter)
	if err != nil {
		return textArray{}, err
	}
	if n := cardinality(uta.dimensions); n != len(uta.elements) {
		return textArray{}, fmt.Errorf("array dimensions describe %d elements but %d were parsed", n, len(uta.elements))
	}
	arr := textArray{dims: uta.dimensions, elements: make([]*string, len(uta.elements))}
	for i, s := range uta.elements {
		if s != "NULL" || uta.quoted[i] {
			arr.elements[i] = &s
		}
	}
	return arr, nil
}

func cardinality(dimensions []arrayDimension) int {
	if len(dimensions) == 0 {
		return 0
	}
	elementCount := int(dimensions[0].length)
	for _, d := range dimensions[1:] {
		elementCount *= int(d.length)
	}
	if elementCount < 0 {
		return 0
	}
	return elementCount
}

type untypedTextArray struct {
	elements   []string
	quoted     []bool
	dimensions []arrayDimension
}

func parseUntypedTextArray(src string, delimiter byte) (*untypedTextArray, error) {
	dst := &untypedTextArray{}
	buf := bytes.NewBufferString(src)
	skipWhitespace(buf)

	r, _, err := buf.ReadRune()
	if err != nil {
		return nil, fmt.Errorf("invalid array: %w", err)
	}

	var explicitDimensions []arrayDimension

	// Explicit bounds: [lower:upper][lower:upper]=
	if r == '[' {
		_ = buf.UnreadRune()
		for {
			r, _, err = buf.ReadRune()
			if err != nil {
				return nil, fmt.Errorf("invalid array: %w", err)
			}
			if r == '=' {
				break
			} else if r != '[' {
				return nil, fmt.Errorf("invalid array, expected '[' or '=' got %v", r)
			}
			lower, err := arrayParseInteger(buf)
			if err != nil {
				return nil, fmt.Errorf("invalid array: %w", err)
			}
			r, _, err = buf.ReadRune()
			if err != nil {
				return nil, fmt.Errorf("invalid array: %w", err)
			}
			if r != ':' {
				return nil, fmt.Errorf("invalid array, expected ':' got %v", r)
			}
			upper, err := arrayParseInteger(buf)
			if err != nil {
				return nil, fmt.Errorf("invalid array: %w", err)
			}
			r, _, err = buf.ReadRune()
			if err != nil {
				return nil, fmt.Errorf("invalid array: %w", err)
			}
			if r != ']' {
				return nil, fmt.Errorf("invalid array, expected ']' got %v", r)
			}
			explicitDimensions = append(explicitDimensions, arrayDimension{lowerBound: lower, length: upper - lower + 1})
		}
		r, _, err = buf.ReadRune()
		if err != nil {
			return nil, fmt.Errorf("invalid array: %w", err)
		}
	}

	if r != '{' {
		return nil, fmt.Errorf("invalid array, expected '{' got %v", r)
	}

	implicitDimensions := []arrayDimension{{lowerBound: 1, length: 0}}

	// The opening braces at the start give the number of dimensions.
	for {
		r, _, err = buf.ReadRune()
		if err != nil {
			return nil, fmt.Errorf("invalid array: %w", err)
		}
		if r == '{' {
			implicitDimensions[len(implicitDimensions)-1].length = 1
			implicitDimensions = append(implicitDimensions, arrayDimension{lowerBound: 1})
		} else {
			_ = buf.UnreadRune()
			break
		}
	}
	currentDim := len(implicitDimensions) - 1
	counterDim := currentDim

	for {
		r, _, err = buf.ReadRune()
		if err != nil {
			return nil, fmt.Errorf("invalid array: %w", err)
		}
		switch r {
		case '{':
			if currentDim == counterDim {
				implicitDimensions[currentDim].length++
			}
			currentDim++
		case rune(delimiter):
		case '}':
			currentDim--
			if currentDim < counterDim {
				counterDim = currentDim
			}
		default:
			_ = buf.UnreadRune()
			value, quoted, err := arrayParseValue(buf, delimiter)
			if err != nil {
				return nil, fmt.Errorf("invalid array value: %w", err)
			}
			if currentDim == counterDim {
				implicitDimensions[currentDim].length++
			}
			dst.quoted = append(dst.quoted, quoted)
			dst.elements = append(dst.elements, value)
		}
		if currentDim < 0 {
			break
		}
	}

	skipWhitespace(buf)
	if buf.Len() > 0 {
		return nil, fmt.Errorf("unexpected trailing data: %v", buf.String())
	}

	switch {
	case len(dst.elements) == 0:
	case len(explicitDimensions) > 0:
		dst.dimensions = explicitDimensions
	default:
		dst.dimensions = implicitDimensions
	}
	return dst, nil
}

func skipWhitespace(buf *bytes.Buffer) {
	for {
		r, _, err := buf.ReadRune()
		if err != nil {
			return
		}
		if !unicode.IsSpace(r) {
			_ = buf.UnreadRune()
			return
		}
	}
}

func arrayParseValue(buf *bytes.Buffer, delimiter byte) (string, bool, error) {
	r, _, err := buf.ReadRune()
	if err != nil {
		return "", false, err
	}
	if r == '"' {
		return arrayParseQuotedValue(buf)
	}
	_ = buf.UnreadRune()

	s := &bytes.Buffer{}
	for {
		r, _, err := buf.ReadRune()
		if err != nil {
			return "", false, err
		}
		switch r {
		case rune(delimiter), '}':
			_ = buf.UnreadRune()
			return s.String(), false, nil
		}
		s.WriteRune(r)
	}
}

func arrayParseQuotedValue(buf *bytes.Buffer) (string, bool, error) {
	s := &bytes.Buffer{}
	for {
		r, _, err := buf.ReadRune()
		if err != nil {
			return "", false, err
		}
		switch r {
		case '\\':
			r, _, err = buf.ReadRune()
			if err != nil {
				return "", false, err
			}
		case '"':
			_, _, err = buf.ReadRune()
			if err != nil {
				return "", false, err
			}
			_ = buf.UnreadRune()
			return s.String(), true, nil
		}
		s.WriteRune(r)
	}
}

func arrayParseInteger(buf *bytes.Buffer) (int32, error) {
	s := &bytes.Buffer{}
	for {
		r, _, err := buf.ReadRune()
		if err != nil {
			return 0, err
		}
		if ('0' <= r && r <= '9') || r == '-' {
			s.WriteRune(r)
		} else {
			_ = buf.UnreadRune()
			n, err := strconv.ParseInt(s.String(), 10, 32)
			if err != nil {
				return 0, err
			}
			return int32(n), nil
		}
	}
}
