package config

// Suggest returns the candidate closest to name when it is close enough to
// be a typo ("did you mean"), or "".
func Suggest(name string, candidates []string) string { return suggest(name, candidates) }

// ParseTableName parses "table" (in schema public) or "schema.table" as
// the table attribute of a rule does: unquoted parts as PostgreSQL stores
// them, double-quoted ones verbatim.
func ParseTableName(s string) (TableName, error) { return parseTableName(s) }
