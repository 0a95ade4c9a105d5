package writebehind

import (
	"encoding/json"
	"errors"
)

// scanObject splits a JSON object into its members, values as written. It
// does what json.Unmarshal into a map[string]json.RawMessage does, without
// reflection: the worker parses every entry, on a machine whose CPU
// PostgreSQL needs. A later member replaces an earlier one of the same
// name, as with json.Unmarshal.
func scanObject(data []byte) (map[string]json.RawMessage, error) {
	if !json.Valid(data) {
		var v any
		return nil, json.Unmarshal(data, &v) // for its error, which says where
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return nil, errors.New("it is not an object")
	}
	out := make(map[string]json.RawMessage, 8)
	i = skipSpace(data, i+1)
	if data[i] == '}' {
		return out, nil
	}
	for {
		// data is valid JSON: here is a string key, then ':', a value,
		// then ',' or '}'.
		end := skipString(data, i)
		key := string(data[i+1 : end-1])
		for j := i + 1; j < end-1; j++ {
			if data[j] == '\\' || data[j] >= 0x80 {
				// Escapes, or bytes encoding/json may replace: its way.
				if err := json.Unmarshal(data[i:end], &key); err != nil {
					return nil, err
				}
				break
			}
		}
		i = skipSpace(data, end)
		i = skipSpace(data, i+1) // ':'
		vend := skipValue(data, i)
		out[key] = json.RawMessage(data[i:vend])
		i = skipSpace(data, vend)
		if data[i] == '}' {
			return out, nil
		}
		i = skipSpace(data, i+1) // ','
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at data[i].
func skipString(data []byte, i int) int {
	for i++; data[i] != '"'; i++ {
		if data[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipValue returns the index after the value starting at data[i].
func skipValue(data []byte, i int) int {
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch data[i] {
			case '"':
				i = skipString(data, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(data) && data[i] != ',' && data[i] != '}' && data[i] != ']' && data[i] != ' ' && data[i] != '\t' && data[i] != '\n' && data[i] != '\r' {
		i++
	}
	return i
}
