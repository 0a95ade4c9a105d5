// Package config parses rules.hcl into typed, validated rules.
//
// A rules file has an optional postgres block, an optional redis block and
// one or more rule and write_behind blocks (see rules.hcl at the repository
// root and docs/rules.md). Parsing follows the habits of Nomad's jobspec2: the file is
// parsed with hclsyntax under its real name, syntax errors stop the parse
// before anything is evaluated, bodies are decoded against an hcl.BodySchema,
// and every problem found is returned as an hcl.Diagnostic whose Subject gives
// the file, line and column. All diagnostics are collected, not only the
// first; the returned *Config is nil whenever the diagnostics hold an error.
//
// Only the postgres and redis blocks are evaluated at parse time, with an
// EvalContext that has no variables and the functions of Functions plus
// env(name). Rule templates (keys, tags, namespaces, the refresh key and
// value, and when) stay hcl.Expressions: the mapping package evaluates them
// per row image with the variables row, old and new and the functions of
// Functions. Here they are only checked statically: they may read only row,
// old and new, may call only the functions of Functions, and every key, tag
// and namespace template must start with literal text (its Prefix) unless
// the rule declares a keyspace, so that a TRUNCATE can always flush the
// rule's keys.
//
// Diagnostics and the CLI: use a Parser when the diagnostics are to be
// printed. The CLI does
//
//	p := config.NewParser()
//	cfg, diags := p.Load(path)
//	fmt.Fprint(os.Stderr, p.FormatDiagnostics(diags)) // also when cfg is nil
//
// because the parser keeps the sources it read (Parser.Files) and
// FormatDiagnostics quotes the offending line under each diagnostic. The
// package-level Load and Parse are shorthands for a throwaway Parser; their
// diagnostics still carry file:line:col and print without source lines
// through FormatDiagnostics(diags, nil).
package config

import (
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Defaults for the postgres block.
const (
	DefaultSlot        = "cachesync"
	DefaultPublication = "cachesync"
)

// Config is a parsed and validated rules file.
type Config struct {
	// Filename is the name the file was parsed under.
	Filename string
	Postgres Postgres
	Redis    Redis
	// Rules are in file order; names are unique.
	Rules []*Rule
	// WriteBehinds are the write_behind blocks in file order; names and
	// streams are unique.
	WriteBehinds []*WriteBehind
	// SensitiveColumns are the column names the top-level
	// sensitive_columns lists: a refresh value that copies one of them (or
	// a whole row, which may hold one) into Redis is warned about.
	SensitiveColumns []string
}

// Postgres is the postgres block. Command-line flags override it.
type Postgres struct {
	// URL may be "": the command line's --database-url (DATABASE_URL)
	// then applies.
	URL string
	// Slot is the logical replication slot name (default DefaultSlot).
	Slot string
	// Publication is the publication name (default DefaultPublication).
	Publication string
	// Range is the block header's range; zero when the block is absent.
	Range hcl.Range
}

// Redis is the redis block. Command-line flags override it.
type Redis struct {
	// Mode is how Redis is deployed: standalone (the default), cluster or
	// sentinel.
	Mode RedisMode
	// URL (standalone) may be "": the command line's value (REDIS_URL)
	// then applies.
	URL string
	// Addresses are the cluster's seed nodes (cluster) or the sentinels
	// (sentinel), as host:port.
	Addresses []string
	// MasterName is the name the sentinels monitor the primary under.
	MasterName string
	// Username and Password authenticate to the Redis nodes (cluster and
	// sentinel; a standalone URL carries its own).
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the sentinels.
	SentinelUsername, SentinelPassword string
	// DB is the database number (sentinel; a standalone URL carries its own).
	DB int
	// TLS turns TLS on for cluster and sentinel connections (a standalone
	// URL says rediss://). CAFile, CertFile and KeyFile are PEM files; the
	// command line's --redis-ca-file and friends override them.
	TLS                       bool
	CAFile, CertFile, KeyFile string
	// OnReset says how to heal a cache that lost applied effects (restarted
	// without persistence, restored from a backup, failed over).
	OnReset ResetPolicy
	// Range is the block header's range; zero when the block is absent.
	Range hcl.Range
}

// RedisMode is the value of redis { mode }.
type RedisMode string

// Redis deployment modes.
const (
	RedisStandalone RedisMode = "standalone"
	RedisCluster    RedisMode = "cluster"
	RedisSentinel   RedisMode = "sentinel"
)

// ResetPolicy is the value of redis { on_redis_reset }.
type ResetPolicy string

// Reset policies.
const (
	// ResetReplay re-applies the journal from the cache's last applied
	// position, and flushes when the journal does not reach back that far.
	ResetReplay ResetPolicy = "replay"
	// ResetFlush drops every rule's key space.
	ResetFlush ResetPolicy = "flush"
)

// Rule maps the row changes of one table to Redis effects.
type Rule struct {
	Name  string
	Table TableName
	// When filters rows; nil when absent (every row).
	When hcl.Expression
	// Keyspace holds the Redis glob patterns the rule declares its keys to
	// live in (`keyspace = ["user:*"]`), as written; nil when absent.
	Keyspace []string
	// Action tells which one of Invalidate, BumpVersion and Refresh is set.
	Action      ActionKind
	Invalidate  *Invalidate
	BumpVersion *BumpVersion
	Refresh     *Refresh
	// DeclRange is the range of the `rule "name"` header.
	DeclRange hcl.Range
	// TableRange is the range of the table attribute's value, where
	// diagnostics about the table point.
	TableRange hcl.Range
	// Fingerprint identifies what the rule does to the cache: its table,
	// when, keyspace, action, and key, tag, namespace and value templates,
	// as written but without comments and layout. Two rules with the same
	// fingerprint invalidate the same keys the same way; a TTL, jitter or
	// backfill change keeps it. The daemon flushes the key space of a rule whose
	// fingerprint the cache has not seen applied.
	Fingerprint string
}

// TableName is a schema-qualified table name. Both parts are as PostgreSQL
// stores them (unquoted names folded to lower case by the user, quoted ones
// verbatim), so String matches the schema.table of a replication relation.
type TableName struct{ Schema, Name string }

// String returns "schema.name".
func (t TableName) String() string { return t.Schema + "." + t.Name }

// ActionKind is the effect a rule has on Redis.
type ActionKind int

// Rule actions; a parsed rule has exactly one.
const (
	// ActionInvalidate deletes keys and tagged keys (delete-on-write).
	ActionInvalidate ActionKind = iota + 1
	// ActionBumpVersion increments version counters of namespaces.
	ActionBumpVersion
	// ActionRefresh writes the committed row to a key (write-through).
	ActionRefresh
)

// String returns the action's block name.
func (k ActionKind) String() string {
	switch k {
	case ActionInvalidate:
		return "invalidate"
	case ActionBumpVersion:
		return "bump_version"
	case ActionRefresh:
		return "refresh"
	}
	return "none"
}

// Invalidate is an invalidate block: delete Keys; delete every key in the
// sets of Tags, then the sets. At least one of the two is non-empty.
type Invalidate struct {
	Keys, Tags []*Template
	// Range is the block header's range.
	Range hcl.Range
}

// BumpVersion is a bump_version block; Namespaces is non-empty.
type BumpVersion struct {
	Namespaces []*Template
	// Range is the block header's range.
	Range hcl.Range
}

// Refresh is a refresh block: write Value to Key with TTL ± Jitter.
type Refresh struct {
	Key   *Template
	Value hcl.Expression
	// TTL is > 0.
	TTL time.Duration
	// Jitter is >= 0 and < TTL.
	Jitter time.Duration
	// Backfill makes the daemon load the table's rows into the rule's keys
	// whenever its key space was flushed or never filled (`backfill =
	// true`). It is not part of the fingerprint: turning it on or off
	// changes what fills the keys, not what a key holds, so it flushes
	// nothing.
	Backfill bool
	// BackfillRange is the range of the backfill attribute's value, where
	// diagnostics about the backfill point (the block's header when absent).
	BackfillRange hcl.Range
	// Range is the block header's range.
	Range hcl.Range
}

// Template is one key, tag or namespace template, e.g. "user:${row.id}".
type Template struct {
	Expr hcl.Expression
	// Prefix is the literal text the template starts with ("user:"); "" when
	// it starts with an interpolation or is not a string template.
	Prefix string
	// Literal means the whole template is literal text (no interpolation):
	// Prefix is then the whole key.
	Literal bool
	Range   hcl.Range
}

// ColumnRef is one column read by an expression.
type ColumnRef struct {
	// Image is "row", "old" or "new".
	Image string
	// Column is "" when the whole image is read (e.g. jsonencode(row)):
	// every column then.
	Column string
	Range  hcl.Range
}

// Templates returns every key, tag and namespace template of the rule,
// including a refresh block's key, in file order.
func (r *Rule) Templates() []*Template {
	var out []*Template
	if r.Invalidate != nil {
		out = append(out, r.Invalidate.Keys...)
		out = append(out, r.Invalidate.Tags...)
	}
	if r.BumpVersion != nil {
		out = append(out, r.BumpVersion.Namespaces...)
	}
	if r.Refresh != nil && r.Refresh.Key != nil {
		out = append(out, r.Refresh.Key)
	}
	return out
}

// KeyColumns returns the columns read by the rule's key, tag and namespace
// templates: what an old tuple must carry for the old row's keys to be
// found. Every reference is returned, in source order, with its range;
// a column read twice appears twice.
func (r *Rule) KeyColumns() []ColumnRef {
	var out []ColumnRef
	for _, t := range r.Templates() {
		out = append(out, columnRefs(t.Expr)...)
	}
	return out
}

// WhenColumns returns the columns read by the rule's when expression.
func (r *Rule) WhenColumns() []ColumnRef { return columnRefs(r.When) }

// ValueColumns returns the columns read by a refresh rule's value.
func (r *Rule) ValueColumns() []ColumnRef {
	if r.Refresh == nil {
		return nil
	}
	return columnRefs(r.Refresh.Value)
}

// Parser parses rules files and keeps their sources so that diagnostics can
// quote them. A Parser is not safe for concurrent use.
type Parser struct {
	// LookupEnv resolves env(name) in the postgres and redis blocks;
	// nil means os.LookupEnv.
	LookupEnv func(name string) (string, bool)

	files map[string]*hcl.File
}

// NewParser returns a Parser that reads the process environment.
func NewParser() *Parser {
	return &Parser{files: map[string]*hcl.File{}}
}

// Files returns the files parsed so far by name, for FormatDiagnostics.
// A file that failed to parse is included with its bytes.
func (p *Parser) Files() map[string]*hcl.File {
	if p.files == nil {
		p.files = map[string]*hcl.File{}
	}
	return p.files
}

// Load reads and parses a rules file. The returned *Config is nil when the
// diagnostics hold an error.
func (p *Parser) Load(filename string) (*Config, hcl.Diagnostics) {
	src, err := os.ReadFile(filename)
	if err != nil {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("cannot read rules file %s", filename),
			Detail:   fmt.Sprintf("%v; pass the path of a rules.hcl with --config (CACHESYNC_CONFIG)", err),
		}}
	}
	return p.Parse(src, filename)
}

// Parse parses a rules file from src; filename names it in diagnostics.
// The returned *Config is nil when the diagnostics hold an error.
func (p *Parser) Parse(src []byte, filename string) (*Config, hcl.Diagnostics) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if file == nil {
		file = &hcl.File{Bytes: src}
	}
	p.Files()[filename] = file
	if diags.HasErrors() {
		sortDiagnostics(diags)
		// Nothing is evaluated in a file that does not parse: later errors
		// would mostly be echoes of the syntax error.
		return nil, diags
	}
	cfg, more := p.decode(file.Body, filename)
	diags = append(diags, more...)
	sortDiagnostics(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	return cfg, diags
}

// FormatDiagnostics renders diags with the sources this parser read.
func (p *Parser) FormatDiagnostics(diags hcl.Diagnostics) string {
	return FormatDiagnostics(diags, p.Files())
}

// Load reads and parses a rules file with a new Parser. The returned *Config
// is nil when the diagnostics hold an error. Use a Parser to keep the source
// for FormatDiagnostics.
func Load(filename string) (*Config, hcl.Diagnostics) {
	return NewParser().Load(filename)
}

// Parse parses a rules file from src with a new Parser; filename names it in
// diagnostics. The returned *Config is nil when the diagnostics hold an error.
func Parse(src []byte, filename string) (*Config, hcl.Diagnostics) {
	return NewParser().Parse(src, filename)
}

func (p *Parser) lookupEnv(name string) (string, bool) {
	if p.LookupEnv != nil {
		return p.LookupEnv(name)
	}
	return os.LookupEnv(name)
}

// sortDiagnostics orders diagnostics by position, so that they read top to
// bottom like the file; those without a subject come first.
func sortDiagnostics(diags hcl.Diagnostics) {
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i].Subject, diags[j].Subject
		switch {
		case a == nil || b == nil:
			return a == nil && b != nil
		case a.Filename != b.Filename:
			return a.Filename < b.Filename
		}
		return a.Start.Byte < b.Start.Byte
	})
}

// rangeString renders a range's start as file:line:col.
func rangeString(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}
