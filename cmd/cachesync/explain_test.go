package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/cachesync/cachesync/wal"
)

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "", time.Hour: "1h", 5 * time.Minute: "5m", 90 * time.Second: "1m30s", 30 * time.Second: "30s",
		time.Hour + 30*time.Minute: "1h30m", 25 * time.Hour: "25h", 1500 * time.Millisecond: "1.5s", time.Hour + time.Second: "1h0m1s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
		if d != 0 {
			if back, err := time.ParseDuration(formatDuration(d)); err != nil || back != d {
				t.Errorf("%q does not parse back to %v: %v, %v", formatDuration(d), d, back, err)
			}
		}
	}
}

// TestInferred: without a database, a JSON value gets the type and text
// PostgreSQL would most likely send for it.
func TestInferred(t *testing.T) {
	for _, tc := range []struct {
		json string
		oid  uint32
		val  wal.Value
	}{
		{`null`, 0, wal.Value{Kind: wal.Null}},
		{`true`, oidBool, wal.Value{Kind: wal.Text, Text: "t"}},
		{`false`, oidBool, wal.Value{Kind: wal.Text, Text: "f"}},
		{`42`, oidInt8, wal.Value{Kind: wal.Text, Text: "42"}},
		{`-9223372036854775808`, oidInt8, wal.Value{Kind: wal.Text, Text: "-9223372036854775808"}},
		{`9223372036854775808`, oidNumeric, wal.Value{Kind: wal.Text, Text: "9223372036854775808"}},
		{`9.50`, oidNumeric, wal.Value{Kind: wal.Text, Text: "9.50"}},
		{`1e3`, oidNumeric, wal.Value{Kind: wal.Text, Text: "1e3"}},
		{`"A@x.io"`, oidText, wal.Value{Kind: wal.Text, Text: "A@x.io"}},
		{`"e\u0301"`, oidText, wal.Value{Kind: wal.Text, Text: "e\u0301"}},
		{`{"a": [1, 2]}`, oidJSON, wal.Value{Kind: wal.Text, Text: `{"a": [1, 2]}`}},
		{`[1,"x"]`, oidJSON, wal.Value{Kind: wal.Text, Text: `[1,"x"]`}},
	} {
		oid, val := inferred(json.RawMessage(tc.json))
		if oid != tc.oid || val != tc.val {
			t.Errorf("inferred(%s) = %d %+v, want %d %+v", tc.json, oid, val, tc.oid, tc.val)
		}
	}
}

// TestIdentityOld: the old tuple is what pgoutput sends under the table's
// replica identity.
func TestIdentityOld(t *testing.T) {
	text := func(s string) wal.Value { return wal.Value{Kind: wal.Text, Text: s} }
	notSent := wal.Value{Kind: wal.NotSent}
	rel := func(ident byte) *wal.Relation {
		return &wal.Relation{Namespace: "public", Name: "users", ReplicaIdentity: ident,
			Columns: []wal.Column{{Name: "id", Key: true}, {Name: "email", Key: ident == wal.IdentityFull}}}
	}
	old := wal.Tuple{text("1"), text("a@x.io")}
	for _, tc := range []struct {
		name    string
		ident   byte
		kind    wal.Kind
		new     wal.Tuple
		oldKind wal.OldKind
		sent    wal.Tuple
	}{
		{"full update", wal.IdentityFull, wal.Update, wal.Tuple{text("1"), text("b@x.io")}, wal.OldFull, old},
		{"full delete", wal.IdentityFull, wal.Delete, nil, wal.OldFull, old},
		{"default delete", wal.IdentityDefault, wal.Delete, nil, wal.OldKey, wal.Tuple{text("1"), notSent}},
		{"default update keeping the key", wal.IdentityDefault, wal.Update, wal.Tuple{text("1"), text("b@x.io")}, wal.OldNone, nil},
		{"default update of the key", wal.IdentityDefault, wal.Update, wal.Tuple{text("2"), text("a@x.io")}, wal.OldKey, wal.Tuple{text("1"), notSent}},
		{"nothing", wal.IdentityNothing, wal.Delete, nil, wal.OldNone, nil},
	} {
		kind, sent, _ := identityOld(rel(tc.ident), tc.kind, old, tc.new)
		if kind != tc.oldKind || len(sent) != len(tc.sent) {
			t.Errorf("%s: %v %v, want %v %v", tc.name, kind, sent, tc.oldKind, tc.sent)
			continue
		}
		for i := range sent {
			if sent[i] != tc.sent[i] {
				t.Errorf("%s: column %d sent as %+v, want %+v", tc.name, i, sent[i], tc.sent[i])
			}
		}
	}
}
