package mapping

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// Type OIDs with a typed representation in templates. Every other type,
// including enums and domains the server announces with Type messages, is
// passed to templates as its text form.
const (
	oidBool        = 16
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidTimestamp   = 1114
	oidTimestampTZ = 1184
	oidNumeric     = 1700
	oidJSONB       = 3802
)

// decoder turns PostgreSQL text values into cty values as docs/rules.md
// specifies (Typed values).
// It relies on the replication session's pinned output settings (TimeZone=UTC,
// DateStyle=ISO), so the text forms it parses are stable.
type decoder struct{}

func newDecoder() *decoder { return &decoder{} }

// decode converts one non-NULL text value of the given type.
func (d *decoder) decode(oid uint32, text string) cty.Value {
	switch oid {
	case oidBool:
		switch text {
		case "t", "true":
			return cty.True
		case "f", "false":
			return cty.False
		}
	case oidInt2, oidInt4, oidInt8, oidOID:
		// Built from an int64, the number keeps a 64-bit mantissa: printing
		// it into a key is cheap (ParseNumberVal's 512-bit floats made key
		// formatting dominate the mapper's profile).
		if n, err := strconv.ParseInt(text, 10, 64); err == nil {
			return cty.NumberIntVal(n)
		}
	case oidFloat4, oidFloat8:
		// NaN and ±Infinity have no cty number: they stay text.
		if f, err := strconv.ParseFloat(text, 64); err == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
			return cty.NumberFloatVal(f)
		}
	case oidJSON, oidJSONB:
		if v, ok := decodeJSON(text); ok {
			return v
		}
	case oidTimestampTZ, oidTimestamp:
		if v, ok := decodeTimestamp(text); ok {
			return v
		}
	case oidNumeric:
		// Exactly as PostgreSQL prints it: 42.50 stays 42.50.
	default:
		if v, ok := d.decodeArray(oid, text); ok {
			return v
		}
	}
	return cty.StringVal(text)
}

func decodeJSON(text string) (cty.Value, bool) {
	src := []byte(text)
	ty, err := ctyjson.ImpliedType(src)
	if err != nil {
		return cty.NilVal, false
	}
	v, err := ctyjson.Unmarshal(src, ty)
	if err != nil {
		return cty.NilVal, false
	}
	return v, true
}

// timestampLayouts match DateStyle=ISO output with and without a zone offset
// (TimeZone=UTC makes the offset +00).
var timestampLayouts = [...]string{
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
}

func decodeTimestamp(text string) (cty.Value, bool) {
	// infinity, -infinity and BC dates keep their text form.
	if strings.HasSuffix(text, " BC") || strings.HasSuffix(text, "infinity") {
		return cty.NilVal, false
	}
	for _, layout := range timestampLayouts {
		if t, err := time.Parse(layout, text); err == nil {
			return cty.StringVal(t.UTC().Format(time.RFC3339Nano)), true
		}
	}
	return cty.NilVal, false
}

// decodeArray decodes array types into lists of their element type's values;
// multi-dimensional arrays become nested lists.
func (d *decoder) decodeArray(oid uint32, text string) (cty.Value, bool) {
	t, arr, ok := parseArray(oid, text)
	if !ok {
		return cty.NilVal, false
	}
	elems := make([]cty.Value, len(arr.elements))
	for i, e := range arr.elements {
		if e == nil {
			elems[i] = cty.NullVal(cty.DynamicPseudoType)
			continue
		}
		elems[i] = d.decode(t.elem, *e)
	}
	if len(arr.dims) == 0 {
		return cty.EmptyTupleVal, true
	}
	v, _ := nest(elems, arr.dims)
	return v, true
}

// nest folds a flat element slice into nested tuples following dims.
func nest(elems []cty.Value, dims []arrayDimension) (cty.Value, []cty.Value) {
	n := int(dims[0].length)
	out := make([]cty.Value, 0, n)
	for i := 0; i < n; i++ {
		var v cty.Value
		if len(dims) == 1 {
			v, elems = elems[0], elems[1:]
		} else {
			v, elems = nest(elems, dims[1:])
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return cty.EmptyTupleVal, elems
	}
	return cty.TupleVal(out), elems
}
