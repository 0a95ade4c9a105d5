package config

import (
	"fmt"
	"strings"
)

// maxIdentLen is PostgreSQL's NAMEDATALEN-1: longer names are truncated by
// the server and would never match.
const maxIdentLen = 63

// nameRule says, for messages, what ValidateName accepts.
const nameRule = "1 to 63 lower-case letters, digits and underscores"

// ValidateName checks a replication slot or publication name; kind ("slot",
// "publication") names it in the error. Both names are pasted into
// replication commands and SQL, so only names that need no quoting and fit
// PostgreSQL's 63-byte limit are accepted: 1 to 63 of a-z, 0-9 and _.
// The error suggests a valid name.
func ValidateName(kind, name string) error {
	if validName(name) {
		return nil
	}
	fallback := DefaultSlot
	if kind == "publication" {
		fallback = DefaultPublication
	}
	return fmt.Errorf("invalid %s name %q: use %s, for example %q", kind, name, nameRule, suggestIdent(name, fallback))
}

func validName(name string) bool {
	if name == "" || len(name) > maxIdentLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return false
		}
	}
	return true
}

// nameByte reports whether c may appear in a slot or publication name.
func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_'
}

// suggestIdent lower-cases s and replaces what PostgreSQL would need quoted,
// giving a name ValidateName accepts, or fallback when nothing of s is left.
func suggestIdent(s, fallback string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r < 0x80 && nameByte(byte(r)) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > maxIdentLen {
		out = out[:maxIdentLen]
	}
	if strings.Trim(out, "_") == "" {
		return fallback
	}
	return out
}
