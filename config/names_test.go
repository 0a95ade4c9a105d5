package config_test

import (
	"strings"
	"testing"

	"github.com/cachesync/cachesync/config"
)

func TestValidateName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kind, name string
		want       string // the error, "" when the name is valid
	}{
		{"slot", "cachesync", ""},
		{"slot", "slot_0", ""},
		{"publication", "a", ""},
		{"publication", "_", ""},
		{"slot", "0", ""},
		{"slot", strings.Repeat("s", 63), ""},
		{"slot", "", `invalid slot name "": use 1 to 63 lower-case letters, digits and underscores, for example "cachesync"`},
		{"slot", strings.Repeat("s", 64), `invalid slot name "` + strings.Repeat("s", 64) + `": use 1 to 63 lower-case letters, digits and underscores, for example "` + strings.Repeat("s", 63) + `"`},
		{"slot", "My-Slot", `invalid slot name "My-Slot": use 1 to 63 lower-case letters, digits and underscores, for example "my_slot"`},
		{"publication", "Cache Sync", `invalid publication name "Cache Sync": use 1 to 63 lower-case letters, digits and underscores, for example "cache_sync"`},
		{"publication", "a$b", `invalid publication name "a$b": use 1 to 63 lower-case letters, digits and underscores, for example "a_b"`},
		{"slot", "x; DROP TABLE users", `invalid slot name "x; DROP TABLE users": use 1 to 63 lower-case letters, digits and underscores, for example "x__drop_table_users"`},
		{"slot", "café", `invalid slot name "café": use 1 to 63 lower-case letters, digits and underscores, for example "caf_"`},
		{"publication", "---", `invalid publication name "---": use 1 to 63 lower-case letters, digits and underscores, for example "cachesync"`},
	} {
		err := config.ValidateName(tc.kind, tc.name)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("ValidateName(%q, %q) = %q, want %q", tc.kind, tc.name, got, tc.want)
		}
	}
}

// TestPlainIdent: the names that read the same unquoted, as PostgreSQL
// folds and parses them.
func TestPlainIdent(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"users": true, "_t": true, "order_2026": true, "a$b": true,
		"": false, "Users": false, "2fa": false, "$a": false, "my-table": false, "café": false, "a b": false,
	} {
		if got := config.PlainIdent(name); got != want {
			t.Errorf("PlainIdent(%q) = %v, want %v", name, got, want)
		}
	}
}
