package config

// ParseTableName parses "table" (in schema public) or "schema.table" as
// the table attribute of a rule does: unquoted parts as PostgreSQL stores
// them, double-quoted ones verbatim.
func ParseTableName(s string) (TableName, error) { return parseTableName(s) }
