package config

import (
	"fmt"
	"github.com/zclconf/go-cty/cty/gocty"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
)

var (
	rootSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "sensitive_columns"}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "postgres"},
			{Type: "redis"},
			{Type: "rule", LabelNames: []string{"name"}},
			{Type: "write_behind", LabelNames: []string{"name"}},
		},
	}
	postgresSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "url"}, {Name: "slot"}, {Name: "publication"}},
	}
	redisSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "mode"}, {Name: "url"}, {Name: "addresses"}, {Name: "master_name"},
			{Name: "username"}, {Name: "password"}, {Name: "sentinel_username"}, {Name: "sentinel_password"},
			{Name: "db"}, {Name: "tls"}, {Name: "ca_file"}, {Name: "cert_file"}, {Name: "key_file"},
			{Name: "on_redis_reset"},
		},
	}
	// Required attributes are checked by hand so that the message names the
	// rule and shows what to write.
	ruleSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "table"}, {Name: "when"}, {Name: "keyspace"}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "invalidate"},
			{Type: "bump_version"},
			{Type: "refresh"},
		},
	}
	invalidateSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "keys"}, {Name: "tags"}},
	}
	bumpVersionSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "namespaces"}},
	}
	refreshSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "key"}, {Name: "value"}, {Name: "ttl"}, {Name: "jitter"}, {Name: "backfill"}},
	}
)

var (
	ruleNameRe = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	// unquotedIdentRe is a PostgreSQL identifier as it is stored when written
	// unquoted: folded to lower case.
	unquotedIdentRe = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)
)

// PlainIdent reports whether name, a PostgreSQL identifier as stored, reads
// the same written without quotes: lower-case letters, digits, underscores
// and dollar signs, not starting with a digit or dollar. It is the one
// definition used both to parse rules.hcl table names and to print SQL.
func PlainIdent(name string) bool { return unquotedIdentRe.MatchString(name) }

// blockWhat names a block in messages: `postgres block`, `rule "user"`.
func blockWhat(b *hcl.Block) string {
	if (b.Type == "rule" || b.Type == "write_behind") && len(b.Labels) > 0 {
		return fmt.Sprintf("%s %q", b.Type, b.Labels[0])
	}
	return b.Type + " block"
}

func (p *Parser) decode(body hcl.Body, filename string) (*Config, hcl.Diagnostics) {
	cfg := &Config{
		Filename: filename,
		Postgres: Postgres{Slot: DefaultSlot, Publication: DefaultPublication},
	}
	content, diags := body.Content(rootSchema)
	diags = withHint(diags, "", rootSchema)

	var pgBlock, redisBlock *hcl.Block
	ruleBlocks := map[string]*hcl.Block{}
	wbBlocks := map[string]*hcl.Block{}
	sawBlock := false
	for _, b := range content.Blocks {
		switch b.Type {
		case "postgres":
			if pgBlock != nil {
				diags = append(diags, duplicateBlock(b, pgBlock, "merge their arguments into the first one"))
				continue
			}
			pgBlock = b
			diags = append(diags, p.decodePostgres(b, &cfg.Postgres)...)
		case "redis":
			if redisBlock != nil {
				diags = append(diags, duplicateBlock(b, redisBlock, "merge their arguments into the first one"))
				continue
			}
			redisBlock = b
			diags = append(diags, p.decodeRedis(b, &cfg.Redis)...)
		case "rule":
			sawBlock = true
			rule, ruleDiags := decodeRule(b)
			diags = append(diags, ruleDiags...)
			if d := duplicateLabel(ruleBlocks, b); d != nil {
				diags = append(diags, d)
				continue
			}
			if rule != nil {
				rule.Fingerprint = fingerprint(rule, p.Files()[filename].Bytes)
				cfg.Rules = append(cfg.Rules, rule)
			}
		case "write_behind":
			sawBlock = true
			wb, wbDiags := decodeWriteBehind(b)
			diags = append(diags, wbDiags...)
			if d := duplicateLabel(wbBlocks, b); d != nil {
				diags = append(diags, d)
				continue
			}
			if wb != nil {
				cfg.WriteBehinds = append(cfg.WriteBehinds, wb)
			}
		}
	}
	diags = append(diags, uniqueStreams(cfg.WriteBehinds)...)
	if attr, ok := content.Attributes["sensitive_columns"]; ok {
		cols, ds := decodeSensitiveColumns(attr)
		diags = append(diags, ds...)
		cfg.SensitiveColumns = cols
	}
	if !sawBlock {
		start := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "no rule blocks: add at least one rule (or write_behind block)",
			Detail:   `for example: rule "user" { table = "public.users" ... invalidate { keys = ["user:${row.id}"] } }`,
			Subject:  &start,
		})
	}
	diags = append(diags, antiPatterns(cfg)...)
	return cfg, diags
}

// decodeSensitiveColumns reads the top-level sensitive_columns: a list of
// column names.
func decodeSensitiveColumns(attr *hcl.Attribute) ([]string, hcl.Diagnostics) {
	v, diags := attr.Expr.Value(nil)
	if diags.HasErrors() {
		return nil, diags
	}
	cols, ok := stringList(v)
	if ok {
		for _, c := range cols {
			ok = ok && c != ""
		}
	}
	if !ok {
		return nil, append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "sensitive_columns must be a list of column names",
			Detail:   `write sensitive_columns = ["email", "phone"]: the columns no refresh value should copy into Redis`,
			Subject:  attr.Expr.Range().Ptr(),
		})
	}
	return cols, diags
}

// duplicateLabel reports a block whose label an earlier block of its type
// in seen has, at the label; it returns nil for the first, and remembers it.
func duplicateLabel(seen map[string]*hcl.Block, b *hcl.Block) *hcl.Diagnostic {
	first, ok := seen[b.Labels[0]]
	if !ok {
		seen[b.Labels[0]] = b
		return nil
	}
	d := duplicateBlock(b, first, b.Type+" names must be unique: rename one of them")
	d.Subject = b.LabelRanges[0].Ptr()
	return d
}

// duplicateBlock reports the second of two blocks that may appear only once.
func duplicateBlock(second, first *hcl.Block, fix string) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("duplicate %s", blockWhat(second)),
		Detail:   fmt.Sprintf("the first %s is at %s; %s", blockWhat(first), rangeString(first.DefRange), fix),
		Subject:  second.DefRange.Ptr(),
		Context:  hcl.RangeBetween(second.DefRange, first.DefRange).Ptr(),
	}
}

// settingsEvalContext is the context of the postgres and redis blocks: no
// variables, the template functions plus env.
func (p *Parser) settingsEvalContext() *hcl.EvalContext {
	funcs := Functions()
	funcs["env"] = envFunc(p.lookupEnv)
	return &hcl.EvalContext{Functions: funcs}
}

func (p *Parser) decodePostgres(b *hcl.Block, pg *Postgres) hcl.Diagnostics {
	pg.Range = b.DefRange
	content, diags := b.Body.Content(postgresSchema)
	diags = withHint(diags, "the postgres block", postgresSchema)
	ctx := p.settingsEvalContext()
	if attr, ok := content.Attributes["url"]; ok {
		s, ds := settingString(attr, ctx, "postgres")
		diags = append(diags, ds...)
		pg.URL = s
	}
	if attr, ok := content.Attributes["slot"]; ok {
		s, ds := settingString(attr, ctx, "postgres")
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			pg.Slot = s
			if !validName(s) {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("postgres: invalid slot name %q", s),
					Detail:   fmt.Sprintf("replication slot names are "+nameRule+"; for example slot = %q", suggestIdent(s, DefaultSlot)),
					Subject:  attr.Expr.Range().Ptr(),
				})
			}
		}
	}
	if attr, ok := content.Attributes["publication"]; ok {
		s, ds := settingString(attr, ctx, "postgres")
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			pg.Publication = s
			if !validName(s) {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("postgres: invalid publication name %q", s),
					Detail:   fmt.Sprintf("use "+nameRule+", which need no quoting in SQL; for example publication = %q", suggestIdent(s, DefaultPublication)),
					Subject:  attr.Expr.Range().Ptr(),
				})
			}
		}
	}
	return diags
}

func (p *Parser) decodeRedis(b *hcl.Block, r *Redis) hcl.Diagnostics {
	r.Range = b.DefRange
	content, diags := b.Body.Content(redisSchema)
	diags = withHint(diags, "the redis block", redisSchema)
	if attr, ok := content.Attributes["url"]; ok {
		s, ds := settingString(attr, p.settingsEvalContext(), "redis")
		diags = append(diags, ds...)
		r.URL = s
		if !ds.HasErrors() && s != "" {
			if d := checkRedisURL(s, attr.Expr.Range()); d != nil {
				diags = append(diags, d)
			}
		}
	}
	diags = append(diags, p.decodeRedisTopology(content, r)...)
	r.OnReset = ResetReplay
	if attr, ok := content.Attributes["on_redis_reset"]; ok {
		s, ds := settingString(attr, p.settingsEvalContext(), "redis")
		diags = append(diags, ds...)
		switch ResetPolicy(s) {
		case ResetReplay, ResetFlush:
			r.OnReset = ResetPolicy(s)
		default:
			if !ds.HasErrors() {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("redis: on_redis_reset %q is not a policy", s),
					Detail:   `write on_redis_reset = "replay" (re-apply the journal since the cache's last applied position, flushing when the journal does not reach back) or "flush" (drop every rule's key space)`,
					Subject:  attr.Expr.Range().Ptr(),
				})
			}
		}
	}
	return diags
}

// decodeRedisTopology reads the mode and what it needs: the addresses of a
// cluster or of the sentinels, the master name, credentials and TLS.
func (p *Parser) decodeRedisTopology(content *hcl.BodyContent, r *Redis) hcl.Diagnostics {
	var diags hcl.Diagnostics
	ctx := p.settingsEvalContext()
	str := func(name string, dst *string) *hcl.Attribute {
		attr, ok := content.Attributes[name]
		if !ok {
			return nil
		}
		s, ds := settingString(attr, ctx, "redis")
		diags = append(diags, ds...)
		*dst = s
		return attr
	}
	var mode string
	modeAttr := str("mode", &mode)
	r.Mode = RedisStandalone
	switch RedisMode(mode) {
	case "", RedisStandalone:
	case RedisCluster, RedisSentinel:
		r.Mode = RedisMode(mode)
	default:
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("redis: mode %q is not a Redis deployment", mode),
			Detail:   `write mode = "standalone" (one server, or a replica set behind one address: url), "cluster" (Redis Cluster: addresses of seed nodes) or "sentinel" (addresses of the sentinels and master_name)`,
			Subject:  modeAttr.Expr.Range().Ptr(),
		})
		return diags
	}
	str("master_name", &r.MasterName)
	str("username", &r.Username)
	str("password", &r.Password)
	str("sentinel_username", &r.SentinelUsername)
	str("sentinel_password", &r.SentinelPassword)
	str("ca_file", &r.CAFile)
	str("cert_file", &r.CertFile)
	str("key_file", &r.KeyFile)
	addrAttr, hasAddrs := content.Attributes["addresses"]
	if hasAddrs {
		v, ds := addrAttr.Expr.Value(ctx)
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			addrs, ok := stringList(v)
			if !ok {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "redis: addresses must be a list of host:port strings",
					Detail:   `write addresses = ["10.0.0.1:6379", "10.0.0.2:6379"]`,
					Subject:  addrAttr.Expr.Range().Ptr(),
				})
			}
			for _, a := range addrs {
				if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
					diags = append(diags, &hcl.Diagnostic{
						Severity: hcl.DiagError,
						Summary:  fmt.Sprintf("redis: address %q is not host:port", a),
						Detail:   `write each address as "host:port", e.g. "10.0.0.1:6379"`,
						Subject:  addrAttr.Expr.Range().Ptr(),
					})
				}
			}
			r.Addresses = addrs
		}
	}
	if attr, ok := content.Attributes["db"]; ok {
		v, ds := attr.Expr.Value(ctx)
		diags = append(diags, ds...)
		var n int64
		if !ds.HasErrors() {
			if v.IsNull() || v.Type() != cty.Number || gocty.FromCtyValue(v, &n) != nil || n < 0 {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "redis: db must be a database number", Detail: "write db = 0", Subject: attr.Expr.Range().Ptr()})
			}
			r.DB = int(n)
		}
	}
	if attr, ok := content.Attributes["tls"]; ok {
		v, ds := attr.Expr.Value(ctx)
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			if v.IsNull() || v.Type() != cty.Bool {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "redis: tls must be true or false", Detail: "write tls = true", Subject: attr.Expr.Range().Ptr()})
			} else {
				r.TLS = v.True()
			}
		}
	}
	if diags.HasErrors() {
		return diags
	}
	// What each mode needs, and what it does not take.
	need := func(cond bool, attr *hcl.Attribute, summary, detail string) {
		if cond {
			return
		}
		if attr == nil {
			attr = modeAttr // a mode was given: it is what needs the missing attribute
		}
		rng := attr.Expr.Range()
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: rng.Ptr()})
	}
	_, hasURL := content.Attributes["url"]
	switch r.Mode {
	case RedisStandalone:
		need(!hasAddrs, addrAttr, "redis: addresses are for cluster and sentinel modes",
			`a standalone server is given by url = "redis://host:6379/0"; for Redis Cluster write mode = "cluster", for Sentinel mode = "sentinel"`)
		need(r.MasterName == "", content.Attributes["master_name"], "redis: master_name is for sentinel mode", `write mode = "sentinel" and the sentinels' addresses, or remove master_name`)
	case RedisCluster, RedisSentinel:
		need(!hasURL, content.Attributes["url"], fmt.Sprintf("redis: url is for a standalone server, not mode %q", r.Mode),
			`give the nodes as addresses = ["host:port", ...] (credentials in username and password, TLS with tls = true)`)
		need(len(r.Addresses) > 0, addrAttr, fmt.Sprintf("redis: mode %q needs addresses", r.Mode),
			map[RedisMode]string{RedisCluster: `write addresses = ["10.0.0.1:6379", ...]: any nodes of the cluster, the rest is discovered`,
				RedisSentinel: `write addresses = ["10.0.0.1:26379", ...]: the sentinels`}[r.Mode])
		if r.Mode == RedisSentinel {
			need(r.MasterName != "", nil, `redis: mode "sentinel" needs master_name`, `write master_name = "mymaster", the name in the sentinels' "sentinel monitor" line`)
		} else {
			need(r.MasterName == "", content.Attributes["master_name"], "redis: master_name is for sentinel mode", `remove master_name: a cluster has no single master`)
			need(r.DB == 0, content.Attributes["db"], "redis: a cluster has only database 0", "remove db")
		}
	}
	return diags
}

// stringList converts a list or tuple of strings.
func stringList(v cty.Value) ([]string, bool) {
	if v.IsNull() || !v.IsKnown() || !(v.Type().IsListType() || v.Type().IsTupleType()) {
		return nil, false
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() || e.Type() != cty.String {
			return nil, false
		}
		out = append(out, e.AsString())
	}
	return out, true
}

// checkRedisURL accepts the schemes go-redis understands. The message never
// echoes the URL: it may hold a password.
func checkRedisURL(s string, rng hcl.Range) *hcl.Diagnostic {
	u, err := url.Parse(s)
	if err == nil {
		switch u.Scheme {
		case "redis", "rediss", "unix":
			return nil
		}
	}
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "redis: url is not a Redis URL",
		Detail:   `write url = "redis://host:6379/0", "rediss://…" for TLS or "unix:///path/to/redis.sock"`,
		Subject:  rng.Ptr(),
	}
}

// settingString evaluates a postgres or redis argument to a string; null is "".
func settingString(attr *hcl.Attribute, ctx *hcl.EvalContext, block string) (string, hcl.Diagnostics) {
	v, diags := attr.Expr.Value(ctx)
	if diags.HasErrors() {
		return "", diags
	}
	if v.IsNull() {
		return "", diags
	}
	s, err := convert.Convert(v, cty.String)
	if err != nil || !s.IsKnown() || s.IsNull() {
		return "", append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("%s: %s must be a string", block, attr.Name),
			Detail:   fmt.Sprintf("got %s; write %s = \"...\" or %s = env(\"NAME\")", v.Type().FriendlyName(), attr.Name, attr.Name),
			Subject:  attr.Expr.Range().Ptr(),
		})
	}
	return s.AsString(), diags
}

// staticString evaluates a rule argument that must be a constant string.
func staticString(attr *hcl.Attribute, rule, example string) (string, bool, hcl.Diagnostics) {
	v, diags := attr.Expr.Value(nil)
	if diags.HasErrors() {
		return "", false, prefixRule(diags, rule)
	}
	if !v.IsNull() && v.Type() == cty.String {
		return v.AsString(), true, diags
	}
	return "", false, append(diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("rule %q: %s must be a string", rule, attr.Name),
		Detail:   fmt.Sprintf("write %s = %s", attr.Name, example),
		Subject:  attr.Expr.Range().Ptr(),
	})
}

func decodeRule(b *hcl.Block) (*Rule, hcl.Diagnostics) {
	name := b.Labels[0]
	r := &Rule{Name: name, DeclRange: b.DefRange}
	content, diags := b.Body.Content(ruleSchema)
	diags = withHint(backfillOutsideRefresh(prefixRule(diags, name), name), "a rule block", ruleSchema)

	if !ruleNameRe.MatchString(name) {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: invalid rule name", name),
			Detail:   "rule names are made of letters, digits, '_', '.' and '-' (they label metrics and logs); for example rule \"user_by_email\"",
			Subject:  b.LabelRanges[0].Ptr(),
		})
	}

	if attr, ok := content.Attributes["table"]; ok {
		s, ok, ds := staticString(attr, name, `"public.users"`)
		diags = append(diags, ds...)
		r.TableRange = attr.Expr.Range()
		if ok {
			t, err := parseTableName(s)
			if err != nil {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("rule %q: invalid table %q", name, s),
					Detail:   err.Error(),
					Subject:  attr.Expr.Range().Ptr(),
				})
			}
			r.Table = t
		}
	} else {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: missing table", name),
			Detail:   `add table = "schema.table", for example table = "public.users"`,
			Subject:  b.DefRange.Ptr(),
		})
	}

	if attr, ok := content.Attributes["keyspace"]; ok {
		ks, ds := decodeKeyspace(attr, name)
		diags = append(diags, ds...)
		r.Keyspace = ks
	}
	tc := &templateChecker{rule: name, keyspace: content.Attributes["keyspace"] != nil}

	if attr, ok := content.Attributes["when"]; ok {
		r.When = attr.Expr
		diags = append(diags, tc.checkExpr(attr.Expr)...)
	}

	var action *hcl.Block
	for _, blk := range content.Blocks {
		if action != nil {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: more than one action block", name),
				Detail: fmt.Sprintf("a rule has exactly one of invalidate, bump_version and refresh, and this one already has %s at %s; split it into two rules",
					action.Type, rangeString(action.DefRange)),
				Subject: blk.DefRange.Ptr(),
			})
			continue
		}
		action = blk
		var ds hcl.Diagnostics
		switch blk.Type {
		case "invalidate":
			r.Action = ActionInvalidate
			r.Invalidate, ds = tc.decodeInvalidate(blk)
		case "bump_version":
			r.Action = ActionBumpVersion
			r.BumpVersion, ds = tc.decodeBumpVersion(blk)
		case "refresh":
			r.Action = ActionRefresh
			r.Refresh, ds = tc.decodeRefresh(blk)
		}
		diags = append(diags, ds...)
	}
	if r.When != nil && (r.Action == ActionInvalidate || r.Action == ActionBumpVersion) {
		diags = append(diags, whenReadsOnlyNew(r.When, name, r.Action)...)
	}
	if action == nil {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: no action block", name),
			Detail:   "add one invalidate { keys = [...] }, bump_version { namespaces = [...] } or refresh { key = ..., value = ..., ttl = ... } block",
			Subject:  b.DefRange.Ptr(),
		})
	}
	if diags.HasErrors() {
		return nil, diags
	}
	return r, diags
}

func decodeKeyspace(attr *hcl.Attribute, rule string) ([]string, hcl.Diagnostics) {
	const example = `keyspace = ["user:*"]`
	v, diags := attr.Expr.Value(nil)
	if diags.HasErrors() {
		return nil, prefixRule(diags, rule)
	}
	bad := func(detail string) hcl.Diagnostics {
		return append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: keyspace must be a list of Redis key patterns", rule),
			Detail:   detail,
			Subject:  attr.Expr.Range().Ptr(),
		})
	}
	ty := v.Type()
	if v.IsNull() || !(ty.IsTupleType() || ty.IsListType()) {
		return nil, bad("write " + example)
	}
	if v.LengthInt() == 0 {
		return nil, bad("the list is empty; write " + example + " or remove keyspace")
	}
	var out []string
	for i, it := 0, v.ElementIterator(); it.Next(); i++ {
		_, ev := it.Element()
		if ev.IsNull() || ev.Type() != cty.String || ev.AsString() == "" {
			return nil, bad(fmt.Sprintf("element %d is not a non-empty string; write %s", i, example))
		}
		out = append(out, ev.AsString())
	}
	for _, pat := range out {
		if strings.IndexAny(pat, `*?[\`) == 0 {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagWarning,
				Summary:  fmt.Sprintf("rule %q: keyspace pattern %q has no literal prefix", rule, pat),
				Detail:   "a TRUNCATE of the table flushes every key matching it, including keys of other rules and applications; start the pattern with literal text like \"user:\"",
				Subject:  attr.Expr.Range().Ptr(),
			})
		}
	}
	return out, diags
}

func (tc *templateChecker) decodeInvalidate(b *hcl.Block) (*Invalidate, hcl.Diagnostics) {
	inv := &Invalidate{Range: b.DefRange}
	content, diags := b.Body.Content(invalidateSchema)
	diags = withHint(backfillOutsideRefresh(prefixRule(diags, tc.rule), tc.rule), "an invalidate block", invalidateSchema)
	if attr, ok := content.Attributes["keys"]; ok {
		ts, ds := tc.templateList(attr, `keys = ["user:${row.id}"]`)
		inv.Keys = ts
		diags = append(diags, ds...)
	}
	if attr, ok := content.Attributes["tags"]; ok {
		ts, ds := tc.templateList(attr, `tags = ["org:${row.org_id}"]`)
		inv.Tags = ts
		diags = append(diags, ds...)
	}
	if !diags.HasErrors() && len(inv.Keys)+len(inv.Tags) == 0 {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: invalidate has no keys and no tags", tc.rule),
			Detail:   `add keys = ["user:${row.id}"], tags = ["org:${row.org_id}"] or both`,
			Subject:  b.DefRange.Ptr(),
		})
	}
	return inv, diags
}

func (tc *templateChecker) decodeBumpVersion(b *hcl.Block) (*BumpVersion, hcl.Diagnostics) {
	bv := &BumpVersion{Range: b.DefRange}
	content, diags := b.Body.Content(bumpVersionSchema)
	diags = withHint(backfillOutsideRefresh(prefixRule(diags, tc.rule), tc.rule), "a bump_version block", bumpVersionSchema)
	const example = `namespaces = ["orders:customer:${row.customer_id}"]`
	if attr, ok := content.Attributes["namespaces"]; ok {
		ts, ds := tc.templateList(attr, example)
		bv.Namespaces = ts
		diags = append(diags, ds...)
		if !ds.HasErrors() && len(ts) == 0 {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: namespaces is empty", tc.rule),
				Detail:   "write " + example,
				Subject:  attr.Expr.Range().Ptr(),
			})
		}
	} else {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: bump_version has no namespaces", tc.rule),
			Detail:   "add " + example,
			Subject:  b.DefRange.Ptr(),
		})
	}
	return bv, diags
}

func (tc *templateChecker) decodeRefresh(b *hcl.Block) (*Refresh, hcl.Diagnostics) {
	rf := &Refresh{Range: b.DefRange, BackfillRange: b.DefRange}
	content, diags := b.Body.Content(refreshSchema)
	diags = withHint(prefixRule(diags, tc.rule), "a refresh block", refreshSchema)
	missing := func(arg, example string) {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: refresh has no %s", tc.rule, arg),
			Detail:   "add " + example,
			Subject:  b.DefRange.Ptr(),
		})
	}

	if attr, ok := content.Attributes["key"]; ok {
		if _, isList := attr.Expr.(*hclsyntax.TupleConsExpr); isList {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: refresh key must be a single template, not a list", tc.rule),
				Detail:   `write key = "product:${row.id}"; to write several keys, add one refresh rule per key`,
				Subject:  attr.Expr.Range().Ptr(),
			})
		} else {
			t, ds := tc.template(attr.Expr, "key")
			rf.Key = t
			diags = append(diags, ds...)
		}
	} else {
		missing("key", `key = "product:${row.id}"`)
	}

	if attr, ok := content.Attributes["value"]; ok {
		rf.Value = attr.Expr
		diags = append(diags, tc.checkExpr(attr.Expr)...)
	} else {
		missing("value", "value = jsonencode(row)")
	}

	ttlOK := false
	if attr, ok := content.Attributes["ttl"]; ok {
		d, ds := tc.duration(attr, `"1h"`)
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			if d <= 0 {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("rule %q: ttl must be greater than zero", tc.rule),
					Detail:   `cached values need an expiry; write ttl = "1h"`,
					Subject:  attr.Expr.Range().Ptr(),
				})
			} else {
				rf.TTL, ttlOK = d, true
			}
		}
	} else {
		// Not a warning: without an expiry, the keys of rows nobody reads
		// any more stay in Redis for good.
		missing("ttl", `ttl = "1h": without an expiry, every key the rule ever wrote stays in Redis and the cache only grows`)
	}

	if attr, ok := content.Attributes["jitter"]; ok {
		d, ds := tc.duration(attr, `"5m"`)
		diags = append(diags, ds...)
		switch {
		case ds.HasErrors():
		case d < 0:
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: jitter must not be negative", tc.rule),
				Detail:   `the TTL is ttl ± up to jitter; write jitter = "5m" or remove it`,
				Subject:  attr.Expr.Range().Ptr(),
			})
		case ttlOK && d >= rf.TTL:
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("rule %q: jitter %s must be less than ttl %s", tc.rule, d, rf.TTL),
				Detail:   fmt.Sprintf("the TTL is ttl ± up to jitter and must stay positive; use a jitter below %s, typically a tenth of the ttl", rf.TTL),
				Subject:  attr.Expr.Range().Ptr(),
			})
		default:
			rf.Jitter = d
		}
	}

	if attr, ok := content.Attributes["backfill"]; ok {
		rf.BackfillRange = attr.Expr.Range()
		v, ds := attr.Expr.Value(nil)
		diags = append(diags, prefixRule(ds, tc.rule)...)
		if !ds.HasErrors() {
			if v.IsNull() || v.Type() != cty.Bool {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("rule %q: backfill must be true or false", tc.rule),
					Detail:   "write backfill = true to load the table's rows into Redis whenever the rule's keys were flushed or never filled",
					Subject:  attr.Expr.Range().Ptr(),
				})
			} else {
				rf.Backfill = v.True()
			}
		}
	}
	return rf, diags
}

// backfillOutsideRefresh rewrites HCL's "Unsupported argument" for a
// backfill attribute outside a refresh block: only a refresh rule writes
// values a backfill can load.
func backfillOutsideRefresh(diags hcl.Diagnostics, rule string) hcl.Diagnostics {
	for _, d := range diags {
		if strings.HasSuffix(d.Summary, "Unsupported argument") && strings.Contains(d.Detail, `"backfill"`) {
			d.Summary = fmt.Sprintf("rule %q: backfill is only allowed inside a refresh block", rule)
			d.Detail = "only a refresh rule writes values a backfill can load; invalidate and bump_version rules have nothing to backfill"
			d.Extra = Hint(`write it in the refresh block: refresh { key = ..., value = ..., ttl = ..., backfill = true }`)
		}
	}
	return diags
}

// duration parses a constant Go duration string.
func (tc *templateChecker) duration(attr *hcl.Attribute, example string) (time.Duration, hcl.Diagnostics) {
	s, ok, diags := staticString(attr, tc.rule, example)
	if !ok {
		return 0, diags
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("rule %q: %s %q is not a duration", tc.rule, attr.Name, s),
			Detail:   `use a Go duration like "1h" or "90s" (units: ms, s, m, h)`,
			Subject:  attr.Expr.Range().Ptr(),
		})
	}
	return d, diags
}

// parseTableName parses "table" or "schema.table". A part is an unquoted
// identifier, taken as PostgreSQL stores it (lower case), or a double-quoted
// one for names with capitals or other characters.
func parseTableName(s string) (TableName, error) {
	parts, err := splitQualified(s)
	if err != nil {
		return TableName{}, err
	}
	switch len(parts) {
	case 1:
		return TableName{Schema: "public", Name: parts[0]}, nil
	case 2:
		return TableName{Schema: parts[0], Name: parts[1]}, nil
	}
	return TableName{}, fmt.Errorf(`write "table" or "schema.table", like "public.users"`)
}

func splitQualified(s string) ([]string, error) {
	var parts []string
	for len(s) > 0 || len(parts) == 0 {
		var part string
		if strings.HasPrefix(s, `"`) {
			// Quoted identifier: "" stands for one double quote.
			var b strings.Builder
			i := 1
			for {
				j := strings.IndexByte(s[i:], '"')
				if j < 0 {
					return nil, fmt.Errorf(`unterminated quoted name; write "public.users", or public."Users" for a name created with capitals`)
				}
				b.WriteString(s[i : i+j])
				i += j + 1
				if strings.HasPrefix(s[i:], `"`) {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			part, s = b.String(), s[i:]
			if part == "" {
				return nil, fmt.Errorf(`empty quoted name; write "public.users"`)
			}
		} else {
			j := strings.IndexByte(s, '.')
			if j < 0 {
				j = len(s)
			}
			part, s = s[:j], s[j:]
			if !unquotedIdentRe.MatchString(part) {
				hint := `write "table" or "schema.table" with lower-case letters, digits and underscores, like "public.users"`
				if part != "" && unquotedIdentRe.MatchString(strings.ToLower(part)) {
					hint = fmt.Sprintf(`PostgreSQL folds unquoted names to lower case: write %q, or quote a name created with capitals: "\"%s\""`, strings.ToLower(part), part)
				}
				return nil, fmt.Errorf("%s", hint)
			}
		}
		if len(part) > maxIdentLen {
			return nil, fmt.Errorf("%q is longer than PostgreSQL's 63-byte limit for names", part)
		}
		parts = append(parts, part)
		if s == "" {
			break
		}
		if s[0] != '.' || len(s) == 1 {
			return nil, fmt.Errorf(`write "table" or "schema.table", like "public.users"`)
		}
		s = s[1:]
	}
	return parts, nil
}

// prefixRule makes HCL's own diagnostics name the rule they are about.
func prefixRule(diags hcl.Diagnostics, rule string) hcl.Diagnostics {
	return prefixDiags(diags, fmt.Sprintf("rule %q: ", rule))
}

// prefixDiags starts every diagnostic's summary with prefix, once.
func prefixDiags(diags hcl.Diagnostics, prefix string) hcl.Diagnostics {
	for _, d := range diags {
		if !strings.HasPrefix(d.Summary, prefix) {
			d.Summary = prefix + d.Summary
		}
	}
	return diags
}

// withHint adds to HCL's "Unsupported argument/block type" diagnostics a
// hint listing what the block accepts.
func withHint(diags hcl.Diagnostics, where string, schema *hcl.BodySchema) hcl.Diagnostics {
	for _, d := range diags {
		if d.Extra != nil {
			continue
		}
		switch {
		case strings.HasSuffix(d.Summary, "Unsupported argument"), strings.HasSuffix(d.Summary, "Unsupported block type"):
			d.Extra = Hint(acceptedNames(where, schema))
		}
	}
	return diags
}

func acceptedNames(where string, schema *hcl.BodySchema) string {
	var attrs, blocks []string
	for _, a := range schema.Attributes {
		attrs = append(attrs, a.Name)
	}
	for _, b := range schema.Blocks {
		blocks = append(blocks, b.Type)
	}
	if where == "" {
		where = "the top level"
	}
	var parts []string
	if len(attrs) > 0 {
		parts = append(parts, "arguments "+strings.Join(attrs, ", "))
	}
	if len(blocks) > 0 {
		parts = append(parts, "blocks "+strings.Join(blocks, ", "))
	}
	if len(parts) == 0 {
		return where + " accepts nothing"
	}
	return where + " accepts " + strings.Join(parts, "; ")
}

// envFunc returns env(name): the variable's value, "" when unset.
func envFunc(lookup func(string) (string, bool)) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the value of an environment variable, or \"\" when it is unset.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			v, _ := lookup(args[0].AsString())
			return cty.StringVal(v), nil
		},
	})
}

// whenReadsOnlyNew warns about the `when` of an invalidate or bump_version
// rule that reads new and neither row nor old. Such a `when` is evaluated
// for both images of an UPDATE but gives the same answer for both, the new
// row's: an UPDATE that moves a row out of the filter acts on neither image,
// and the old row's keys stay cached. `row` is each image in turn.
func whenReadsOnlyNew(when hcl.Expression, rule string, action ActionKind) hcl.Diagnostics {
	var first *hcl.Range
	for _, tr := range when.Variables() {
		switch tr.RootName() {
		case "row", "old":
			return nil
		case "new":
			if first == nil {
				first = tr.SourceRange().Ptr()
			}
		}
	}
	if first == nil {
		return nil
	}
	return hcl.Diagnostics{{
		Severity: hcl.DiagWarning,
		Summary:  fmt.Sprintf("rule %q: when reads only new", rule),
		Detail: fmt.Sprintf("%s rules evaluate when once per row image, but new is the same for both images of an UPDATE: an UPDATE that moves a row out of the filter acts on neither image, and the keys of the old row stay cached",
			action),
		Subject: first,
		Extra:   Hint("write row.<column> instead of new.<column>: row is each image in turn, so the old image is judged by the old row"),
	}}
}
