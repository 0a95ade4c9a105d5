package writebehind

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

var errNull = errors.New("null")

// FuzzScanObject: scanObject agrees with json.Unmarshal into a map of raw
// messages on every input: the same members, or an error for both.
func FuzzScanObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}], "d\"e":"x\\y" } `, `{"a":null,"a":2}`, `[1]`, `"s"`, `{"a":1,}`,
		`{"\u00e9t\/é":{"x":[[]]}}`, `{"a":-1.5e3,"b":true,"c":false}`, `nul`, `{"a":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gotErr := scanObject(data)
		var want map[string]json.RawMessage
		wantErr := json.Unmarshal(data, &want)
		if wantErr == nil && want == nil {
			wantErr = errNull // "null" is not an object
		}
		if (gotErr != nil) != (wantErr != nil) {
			t.Fatalf("%q: scanObject error %v, json.Unmarshal error %v", data, gotErr, wantErr)
		}
		if gotErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: scanObject %q, json.Unmarshal %q", data, got, want)
		}
	})
}
