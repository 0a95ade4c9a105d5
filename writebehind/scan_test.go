package writebehind

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzScanObject: whenever json.Unmarshal reads an input as an object,
// scanObject finds the same members; when json.Unmarshal refuses it,
// scanObject refuses it too unless only a value's syntax is wrong (which
// PostgreSQL's jsonb input refuses later); it never panics.
func FuzzScanObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}], "d\"e":"x\\y" } `, `{"a":null,"a":2}`, `[1]`, `"s"`, `{"a":1,}`,
		`{"\u00e9t\/é":{"x":[[]]}}`, `{"a":-1.5e3,"b":true,"c":false}`, `nul`, `{"a":"\ud800"}`, `{"a":1 "b":2}`,
		`{"a":1}x`, `{"a"}`, `{"a":}`, `{"a":[}`, `{"a":"\"}`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gotErr := scanObject(data)
		var want map[string]json.RawMessage
		wantErr := json.Unmarshal(data, &want)
		switch {
		case wantErr == nil && want != nil:
			if gotErr != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: scanObject %q, %v; json.Unmarshal %q", data, got, gotErr, want)
			}
		case gotErr == nil:
			// Accepted with a value json refuses: the object's structure
			// must still be right, so the value is one member's.
			for k, v := range got {
				if json.Valid(v) {
					continue
				}
				var probe map[string]json.RawMessage
				if json.Unmarshal([]byte(`{"k":`+string(v)+`}`), &probe) == nil {
					t.Fatalf("%q: member %q = %q is valid alone, yet the whole was refused: %v", data, k, v, wantErr)
				}
			}
			if wantErr == nil { // want == nil: null
				t.Fatalf("%q: scanObject accepted null", data)
			}
		}
	})
}

// TestScanObjectRefusesStructure: structural errors are refused with
// encoding/json's message; a bad value is left to PostgreSQL.
func TestScanObjectRefusesStructure(t *testing.T) {
	for _, bad := range []string{`{"a":1 "b":2}`, `{"a":1,}`, `{"a"}`, `[1]`, `null`, `{"a":1}x`, `{"a":[}`, ``} {
		if m, err := scanObject([]byte(bad)); err == nil {
			t.Errorf("%q: accepted as %q", bad, m)
		}
	}
	m, err := scanObject([]byte(`{"a":tru}`))
	if err != nil || string(m["a"]) != "tru" {
		t.Errorf(`{"a":tru}: %q, %v; want the raw value for PostgreSQL to refuse`, m, err)
	}
}
