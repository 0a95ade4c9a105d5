package writebehind

import (
	"encoding/json"
	"errors"
)

// scanObject splits a JSON object into its members, values as written. It
// finds the members json.Unmarshal into a map[string]json.RawMessage would,
// in one pass and without reflection: the worker parses every entry, on a
// machine whose CPU PostgreSQL needs. It checks the object's structure
// (braces, quotes, colons, commas) but not each value's syntax: a value
// that is not JSON (`{"a":tru}`) is refused by PostgreSQL's jsonb input
// instead, and that entry becomes a dead letter there. A later member
// replaces an earlier one of the same name, as with json.Unmarshal.
func scanObject(data []byte) (map[string]json.RawMessage, error) {
	s := scanner{data: data}
	out, ok := s.object()
	if !ok {
		// Not the shape of an object: encoding/json says what is wrong,
		// and where.
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, err
		}
		if m == nil {
			return nil, errors.New("it is null")
		}
		return m, nil
	}
	return out, nil
}

type scanner struct {
	data []byte
	i    int
}

func (s *scanner) space() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// is reports whether the next byte after spaces is c, and consumes it.
func (s *scanner) is(c byte) bool {
	s.space()
	if s.i < len(s.data) && s.data[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) object() (map[string]json.RawMessage, bool) {
	if !s.is('{') {
		return nil, false
	}
	out := make(map[string]json.RawMessage, 8)
	if s.is('}') {
		s.space()
		return out, s.i == len(s.data)
	}
	for {
		s.space()
		start := s.i
		if !s.str() {
			return nil, false
		}
		key, ok := s.key(start)
		if !ok || !s.is(':') {
			return nil, false
		}
		s.space()
		vstart := s.i
		if !s.value() {
			return nil, false
		}
		out[key] = json.RawMessage(s.data[vstart:s.i])
		if s.is(',') {
			continue
		}
		if !s.is('}') {
			return nil, false
		}
		s.space()
		return out, s.i == len(s.data)
	}
}

// key returns the string scanned from start as Go text: its bytes when
// plain, else as encoding/json decodes it (escapes, bytes it replaces).
func (s *scanner) key(start int) (string, bool) {
	raw := s.data[start:s.i]
	for _, c := range raw[1 : len(raw)-1] {
		if c == '\\' || c >= 0x80 || c < 0x20 {
			var k string
			return k, json.Unmarshal(raw, &k) == nil
		}
	}
	return string(raw[1 : len(raw)-1]), true
}

// str scans a string at s.i.
func (s *scanner) str() bool {
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return false
	}
	for s.i++; s.i < len(s.data); s.i++ {
		switch s.data[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return true
		}
	}
	return false
}

// value scans one value at s.i: a string, an object or array (balanced,
// strings skipped), or a literal up to the next delimiter.
func (s *scanner) value() bool {
	if s.i >= len(s.data) {
		return false
	}
	switch s.data[s.i] {
	case '"':
		return s.str()
	case '{', '[':
		depth := 0
		for s.i < len(s.data) {
			switch s.data[s.i] {
			case '"':
				if !s.str() {
					return false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return true
				}
			}
			s.i++
		}
		return false
	}
	start := s.i
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r', '"', '{', '[', ':':
			return s.i > start
		}
		s.i++
	}
	return false
}
