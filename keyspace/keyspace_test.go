package keyspace_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestSlotKnownValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key  string
		want int
	}{
		// CRC-16/XMODEM check value of "123456789" is 0x31C3.
		{"123456789", 0x31C3 % keyspace.SlotCount},
		{"foo", 12182},
		{"bar", 5061},
		{"hello", 866},
		{"", 0},
		// Hash tags (Redis Cluster specification examples).
		{"{user1000}.following", slot(t, "user1000")},
		{"{user1000}.followers", slot(t, "user1000")},
		{"foo{}{bar}", slot(t, "foo{}{bar}")},         // empty first tag: whole key
		{"foo{{bar}}zap", slot(t, "{bar")},            // tag is "{bar"
		{"foo{bar}{zap}", slot(t, "bar")},             // first tag only
		{"}{bar", slot(t, "}{bar")},                   // no '}' after the first '{'
		{"a{b", slot(t, "a{b")},                       // unterminated
		{"{a}", slot(t, "a")},                         // tag is everything
		{"x{}", slot(t, "x{}")},                       // empty tag
		{"\xff{\x00}", slot(t, "\x00")},               // bytes, not runes
		{"product:{42}:name", slot(t, "42")},          // typical
		{"org:{acme}{x}", slot(t, "acme")},            // second braces ignored
		{"{{}}", slot(t, "{")},                        // first '{', first '}' after it
		{"{}}", slot(t, "{}}")},                       // empty tag
		{"a}b{c}d", slot(t, "c")},                     // '}' before the first '{' is plain
		{"user:1000", slot(t, "user:1000")},           // no braces
		{"\u00e9t\u00e9:{\u00e9}", slot(t, "\u00e9")}, // multi-byte tag
	}
	for _, tt := range tests {
		if got := keyspace.Slot(tt.key); got != tt.want {
			t.Errorf("Slot(%q) = %d, want %d", tt.key, got, tt.want)
		}
	}
}

// slot hashes s without looking for a hash tag: s must contain no '{'
// followed by a '}' with something between, which the cases above ensure.
func slot(t *testing.T, s string) int {
	t.Helper()
	if open := strings.IndexByte(s, '{'); open >= 0 {
		if closing := strings.IndexByte(s[open+1:], '}'); closing > 0 {
			t.Fatalf("test bug: %q has a hash tag", s)
		}
	}
	return keyspace.Slot(s)
}

func TestGuardKeySameSlot(t *testing.T) {
	t.Parallel()
	keys := []string{
		"", "a", "user:1", "product:{42}", "{42}:product", "{}", "{", "}", "}{", "{}{}", "a}b", "x{}y",
		"{{}}", "{}}", "}}{{", "a{b", "a{b}", "a{b}c}", "{a{b}c}", "{}abc", "abc{}", "a}{b}",
		"cachesync:lsn:{x}", "cachesync:lsn:{x}:y", "\x00{\x00}\x00", "é{é}é", "tag:{org}:1",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "ab{}:x}{"
	for range 20000 {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		keys = append(keys, string(b))
	}
	for _, companion := range []struct {
		name   string
		of     func(string) string
		prefix string
	}{
		{"GuardKey", keyspace.GuardKey, "cachesync:lsn:{"},
		{"FenceKey", keyspace.FenceKey, "cachesync:fence:{"},
		{"LockKey", keyspace.LockKey, "cachesync:lock:{"},
	} {
		seen := make(map[string]string, len(keys))
		for _, key := range keys {
			c := companion.of(key)
			if got, want := keyspace.Slot(c), keyspace.Slot(key); got != want {
				t.Fatalf("%s(%q) = %q in slot %d, key in slot %d", companion.name, key, c, got, want)
			}
			if !strings.HasPrefix(c, companion.prefix) {
				t.Fatalf("%s(%q) = %q: want the prefix %s", companion.name, key, c, companion.prefix)
			}
			if other, ok := seen[c]; ok && other != key {
				t.Fatalf("%s(%q) == %s(%q) == %q", companion.name, key, companion.name, other, c)
			}
			seen[c] = key
		}
	}
}

func TestGuardKeyForms(t *testing.T) {
	t.Parallel()
	tests := []struct{ key, want string }{
		{"user:1", "cachesync:lsn:{user:1}"},
		{"product:{42}:name", "cachesync:lsn:{42}:product:{42}:name"},
		{"a{b", "cachesync:lsn:{a{b}"},
		{"{}", "cachesync:lsn:{" + slotTagOf(t, "{}") + "}:{}"},
		{"a}b", "cachesync:lsn:{" + slotTagOf(t, "a}b") + "}:a}b"},
	}
	for _, tt := range tests {
		if got := keyspace.GuardKey(tt.key); got != tt.want {
			t.Errorf("GuardKey(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

// slotTagOf extracts the hash tag GuardKey chose for a key it cannot wrap.
func slotTagOf(t *testing.T, key string) string {
	t.Helper()
	guard := keyspace.GuardKey(key)
	rest, ok := strings.CutPrefix(guard, "cachesync:lsn:{")
	if !ok {
		t.Fatalf("GuardKey(%q) = %q", key, guard)
	}
	tag, _, ok := strings.Cut(rest, "}")
	if !ok || tag == "" || strings.ContainsAny(tag, "{}") || len(tag) > 4 {
		t.Fatalf("GuardKey(%q) = %q: want a short plain hash tag", key, guard)
	}
	return tag
}

func TestTagAndVersionKeys(t *testing.T) {
	t.Parallel()
	if got := keyspace.TagKey("org:7"); got != "tag:org:7" {
		t.Errorf("TagKey = %q", got)
	}
	if got := keyspace.VersionKey("orders:customer:5"); got != "version:orders:customer:5" {
		t.Errorf("VersionKey = %q", got)
	}
	tests := []struct {
		ns      string
		version int64
		key     string
		want    string
	}{
		{"orders:customer:5", 0, "page:1", "orders:customer:5:v0:page:1"},
		{"orders:customer:5", 12, "all", "orders:customer:5:v12:all"},
		{"n", math.MaxInt64, "", "n:v9223372036854775807:"},
	}
	for _, tt := range tests {
		if got := keyspace.VersionedKey(tt.ns, tt.version, tt.key); got != tt.want {
			t.Errorf("VersionedKey(%q, %d, %q) = %q, want %q", tt.ns, tt.version, tt.key, got, tt.want)
		}
	}
}

func TestEncodeLSN(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lsn  uint64
		want string
	}{
		{0, "0000000000000000"},
		{0x16B3748, "00000000016B3748"},
		{0x16_B374D848, "00000016B374D848"},
		{math.MaxUint64, "FFFFFFFFFFFFFFFF"},
	}
	for _, tt := range tests {
		if got := keyspace.EncodeLSN(tt.lsn); got != tt.want {
			t.Errorf("EncodeLSN(%#x) = %q, want %q", tt.lsn, got, tt.want)
		}
	}

	// Encoded LSNs sort as the LSNs do, including across the 32-bit halves
	// and above 2^53, where doubles lose precision.
	lsns := []uint64{0, 1, 9, 10, 15, 16, 0xFFFFFFFF, 1 << 32, 1<<32 + 1, 1 << 53, 1<<53 + 1, math.MaxUint64 - 1, math.MaxUint64}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		lsns = append(lsns, rng.Uint64()>>rng.IntN(64))
	}
	encoded := make([]string, len(lsns))
	for i, l := range lsns {
		encoded[i] = keyspace.EncodeLSN(l)
	}
	slices.Sort(lsns)
	slices.Sort(encoded)
	for i := range lsns {
		if encoded[i] != keyspace.EncodeLSN(lsns[i]) {
			t.Fatalf("order differs at %d: %q vs %#x", i, encoded[i], lsns[i])
		}
	}
}

func TestEscapeGlob(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"user:", "user:"},
		{"a*b", `a\*b`},
		{"a?b", `a\?b`},
		{"[x]", `\[x\]`},
		{`back\slash`, `back\\slash`},
		{`*?[]\`, `\*\?\[\]\\`},
		{"", ""},
		{"é*", `é\*`},
	}
	for _, tt := range tests {
		if got := keyspace.EscapeGlob(tt.in); got != tt.want {
			t.Errorf("EscapeGlob(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestEscapeGlobOnServer checks with a real SCAN MATCH that an escaped
// prefix matches exactly the keys that start with it.
func TestEscapeGlobOnServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	client := testenv.StartRedis(t).Client(t)
	prefixes := []string{"a*b:", "a?b:", "a[b]:", `a\b:`, "ab:", "axb:", "a[]b:", `a\*b:`, "a]b:", "a^b:"}
	for _, p := range prefixes {
		for i := range 3 {
			if err := client.Set(ctx, fmt.Sprintf("%s%d", p, i), "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range prefixes {
		keys, err := client.Keys(ctx, keyspace.EscapeGlob(p)+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		want := []string{p + "0", p + "1", p + "2"}
		if !slices.Equal(keys, want) {
			t.Errorf("MATCH %q: got %q, want %q", keyspace.EscapeGlob(p)+"*", keys, want)
		}
	}
}
