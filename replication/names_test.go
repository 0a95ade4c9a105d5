package replication

import (
	"context"
	"strings"
	"testing"
)

// A slot or publication name that would need quoting is refused before
// anything is sent: the connections here are nil, so any use would panic.
func TestSetupRefusesInvalidNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		what string
		call func() error
		want string
	}{
		{"CreateSlot", func() error { _, err := CreateSlot(ctx, nil, "My-Slot", false); return err },
			`invalid slot name "My-Slot": use 1 to 63 lower-case letters, digits and underscores, for example "my_slot"`},
		{"EnsurePublication", func() error { _, err := EnsurePublication(ctx, nil, "cache sync", nil); return err },
			`invalid publication name "cache sync": use 1 to 63`},
		{"DropPublication", func() error { _, err := DropPublication(ctx, nil, strings.Repeat("p", 64)); return err },
			`invalid publication name "` + strings.Repeat("p", 64) + `"`},
	} {
		if err := tc.call(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error starting %q", tc.what, err, tc.want)
		}
	}
}
