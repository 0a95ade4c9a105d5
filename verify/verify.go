// Package verify checks a sample of the cache against PostgreSQL (cachesync
// verify): a cached value is consistent within the window W if it equals
// what the database held at some moment in the last W.
//
// Refresh rules are checked both ways. Rows to keys: a sample of the table's
// rows (see sampleSQL) is mapped as INSERTs by the stream's own mapper; a
// row whose effect is OpSet must have its key absent (a miss, which a cache
// may have: counted Absent, consistent) or holding exactly the value, and a
// row the rule's when filters out (OpUnset) must have no key (else
// Orphaned). Keys to rows: up to Sample keys of the rule's key space are
// found by SCAN; a key template that is a literal prefix followed by one
// row.<column> is inverted to read the row (gone or filtered out: Orphaned;
// present: its value is compared). Keys of other templates are
// Unverifiable.
//
// Invalidate rules' keys are filled by the application: their values cannot
// be recomputed, but cacheaside writes a fill stamp beside each
// (keyspace.StampKey: Unix ms before the load began). A key is stale when
// its stamp is older than its row's last change
// (pg_xact_commit_timestamp(xmin), which needs track_commit_timestamp = on)
// by more than W, and orphaned when its row is gone. A key without a stamp,
// or whose row's change time is unknown, is Unverifiable. bump_version
// rules are not verified: version counters are not values.
//
// Re-check: a key found stale or orphaned is only a candidate. After one
// wait of W for all candidates, each is judged again, key and row re-read.
// It counts as stale (or orphaned) only if it is still wrong AND its row is
// the same row version as at the first look (same xmin, or still gone): the
// row then stood still for at least W, so no change in flight explains it.
// If it is now right it counts as consistent; if it is still wrong but the
// row changed in between, the new change may still be in flight, and the
// key counts as Unverifiable (never as consistent).
package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/keyspace/redisops"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
	"github.com/cachesync/cachesync/wal"
)

// Defaults of Options.
const (
	DefaultSample = 1000
	DefaultWindow = 5 * time.Second
)

// CommitTimestampHint is how to turn on the commit times invalidate rules
// are checked with.
const CommitTimestampHint = "ALTER SYSTEM SET track_commit_timestamp = on; then restart PostgreSQL"

// Options tell Run what to check.
type Options struct {
	// Rules are the rules to check.
	Rules []*config.Rule
	// Sample bounds the rows and the keys sampled per rule and direction
	// (default DefaultSample).
	Sample int
	// Window is W (default DefaultWindow; negative: 0).
	Window time.Duration
	// Mapper are the mapper's options: the daemon's (daemon.MapperOptions).
	Mapper mapping.Options
	// Wait waits d before the re-check (default: a timer honouring ctx).
	Wait func(ctx context.Context, d time.Duration) error
}

// Report is a run's outcome.
type Report struct {
	Window time.Duration `json:"-"`
	// WindowSeconds is Window in seconds, for JSON.
	WindowSeconds float64      `json:"window_seconds"`
	Rules         []RuleReport `json:"rules"`
	// Findings are the stale and orphaned keys, oldest first (unknown
	// ages last), then by rule and key.
	Findings []Finding `json:"findings"`
	// CommitTimestamps is false when track_commit_timestamp is off.
	CommitTimestamps bool `json:"commit_timestamps"`
}

// Bad reports whether anything stale or orphaned was found.
func (r *Report) Bad() bool { return len(r.Findings) > 0 }

// RuleReport is one rule's outcome.
type RuleReport struct {
	Rule   string `json:"rule"`
	Action string `json:"action"`
	Counts
	// NotVerified says why the rule was not checked ("" when it was).
	NotVerified string `json:"not_verified,omitempty"`
	// OldestStale is the age of the oldest stale or orphaned key whose
	// row's last change is known (now − that change); 0 when none.
	OldestStale        time.Duration `json:"-"`
	OldestStaleSeconds float64       `json:"oldest_stale_seconds,omitempty"`
	// Ratio is Consistent / (Checked − Unverifiable); nil when nothing
	// was verified.
	Ratio *float64 `json:"consistency_ratio,omitempty"`
	// Nines is −log10(1 − Ratio); with nothing stale, NinesAtLeast is
	// set and Nines is log10(verified) (Counts.Nines). Nil when nothing
	// was verified.
	Nines        *float64 `json:"nines,omitempty"`
	NinesAtLeast bool     `json:"nines_at_least,omitempty"`
	// Notes say why keys were unverifiable, with counts.
	Notes map[string]int `json:"unverifiable_reasons,omitempty"`
}

// Finding is a key found stale or orphaned.
type Finding struct {
	Rule   string `json:"rule"`
	Key    string `json:"key"`
	Result Result `json:"result"`
	Reason string `json:"reason"`
	// Age is now − the row's last change; negative when unknown.
	Age        time.Duration `json:"-"`
	AgeSeconds *float64      `json:"age_seconds,omitempty"`
}

// Run checks opts.Rules: conn is a PostgreSQL connection (its output
// settings are pinned to pgoutput's), rdb the cache.
func Run(ctx context.Context, conn *pgx.Conn, rdb redis.UniversalClient, opts Options) (*Report, error) {
	if opts.Sample <= 0 {
		opts.Sample = DefaultSample
	}
	opts.Window = max(opts.Window, 0)
	if opts.Wait == nil {
		opts.Wait = wait
	}
	if err := replication.PinOutputSettings(ctx, conn); err != nil {
		return nil, err
	}
	v := &verifier{conn: conn, rdb: rdb, opts: opts}
	var track string
	if err := conn.QueryRow(ctx, "SHOW track_commit_timestamp").Scan(&track); err != nil {
		return nil, fmt.Errorf("read track_commit_timestamp: %w", err)
	}
	v.commitTS = track == "on"
	rep := &Report{Window: opts.Window, WindowSeconds: opts.Window.Seconds(), CommitTimestamps: v.commitTS,
		Rules: []RuleReport{}, Findings: []Finding{}}
	var rules []*ruleCheck
	for _, r := range opts.Rules {
		rc, err := v.checkRule(ctx, r)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", r.Name, err)
		}
		rules = append(rules, rc)
	}
	var candidates int
	for _, rc := range rules {
		candidates += len(rc.candidates)
	}
	if candidates > 0 {
		if err := opts.Wait(ctx, opts.Window); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	for _, rc := range rules {
		for _, c := range rc.candidates {
			again, err := rc.judge(ctx, c.key, c.lookup)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", rc.rule.Name, err)
			}
			final := again
			switch {
			case again.result == Consistent || again.result == Absent || again.result == Unverifiable:
			case again.version != c.first.version:
				final = verdict{result: Unverifiable, reason: "still wrong after the window, but its row changed meanwhile"}
			}
			rc.count(final)
			if final.result == Stale || final.result == Orphaned {
				f := Finding{Rule: rc.rule.Name, Key: c.key, Result: final.result, Reason: final.reason, Age: -1}
				if final.changed > 0 {
					f.Age = now.Sub(time.UnixMilli(final.changed))
					s := f.Age.Seconds()
					f.AgeSeconds = &s
					rc.rep.OldestStale = max(rc.rep.OldestStale, f.Age)
				}
				rep.Findings = append(rep.Findings, f)
			}
		}
		rc.rep.OldestStaleSeconds = rc.rep.OldestStale.Seconds()
		if n, atLeast, ok := rc.rep.Counts.Nines(); ok {
			ratio := rc.rep.Counts.Ratio()
			rc.rep.Ratio, rc.rep.Nines, rc.rep.NinesAtLeast = &ratio, &n, atLeast
		}
		rep.Rules = append(rep.Rules, rc.rep)
	}
	sort.SliceStable(rep.Findings, func(i, j int) bool {
		a, b := rep.Findings[i], rep.Findings[j]
		if a.Age != b.Age {
			return a.Age > b.Age
		}
		return a.Rule < b.Rule || a.Rule == b.Rule && a.Key < b.Key
	})
	return rep, nil
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

type verifier struct {
	conn     *pgx.Conn
	rdb      redis.UniversalClient
	opts     Options
	commitTS bool
}

// ruleCheck is one rule's check in progress.
type ruleCheck struct {
	v      *verifier
	rule   *config.Rule
	mapper *mapping.Mapper
	rel    *replication.CatalogRelation
	// templates are the rule's key templates, longest prefix first, and
	// inverses their inverses (ok false: not invertible); patterns its key
	// space's SCAN patterns.
	templates  []*config.Template
	inverses   []Inverse
	invertible []bool
	patterns   []string
	// seen are the keys judged already.
	seen       map[string]bool
	candidates []candidate
	rep        RuleReport
}

// candidate is a key found wrong, to judge again after the window.
type candidate struct {
	key    string
	lookup lookup
	first  verdict
}

// lookup finds a row: columns (indexes) equal to values (text).
type lookup struct {
	cols   []int
	values []string
}

// verdict is one look at a key and its row.
type verdict struct {
	result Result
	reason string
	// version is the row's xmin ("" when gone); changed its last change
	// (Unix ms, 0 when unknown).
	version string
	changed int64
}

func (v *verifier) checkRule(ctx context.Context, r *config.Rule) (*ruleCheck, error) {
	rc := &ruleCheck{v: v, rule: r, seen: map[string]bool{}, rep: RuleReport{Rule: r.Name, Action: action(r)}}
	var templates []*config.Template
	switch r.Action {
	case config.ActionRefresh:
		templates = []*config.Template{r.Refresh.Key}
	case config.ActionInvalidate:
		templates = r.Invalidate.Keys
		if !v.commitTS {
			rc.rep.NotVerified = "track_commit_timestamp is off: the rows' last change times are unknown, so application-filled keys cannot be dated (" + CommitTimestampHint + ")"
		}
	default:
		rc.rep.NotVerified = "version counters are not values"
		return rc, nil
	}
	var err error
	if rc.mapper, err = mapping.New([]*config.Rule{r}, v.opts.Mapper); err != nil {
		return nil, err
	}
	for _, op := range rc.mapper.FlushRules([]string{r.Name}, "") {
		rc.patterns = append(rc.patterns, op.Keyspace.Keys...)
	}
	rc.templates = slices.Clone(templates)
	sort.SliceStable(rc.templates, func(i, j int) bool { return len(rc.templates[i].Prefix) > len(rc.templates[j].Prefix) })
	for _, t := range rc.templates {
		inv, ok := Invert(t)
		rc.inverses, rc.invertible = append(rc.inverses, inv), append(rc.invertible, ok)
	}
	if rc.rel, err = replication.ReadRelation(ctx, v.conn, r.Table); err != nil {
		return nil, err
	}
	if r.Action == config.ActionRefresh {
		if err := rc.rowsToKeys(ctx); err != nil {
			return nil, err
		}
	}
	return rc, rc.keysToRows(ctx)
}

func action(r *config.Rule) string {
	switch r.Action {
	case config.ActionRefresh:
		return "refresh"
	case config.ActionInvalidate:
		return "invalidate"
	}
	return "bump_version"
}

// count records a final verdict.
func (rc *ruleCheck) count(v verdict) {
	rc.rep.Add(v.result)
	if v.result == Unverifiable {
		if rc.rep.Notes == nil {
			rc.rep.Notes = map[string]int{}
		}
		rc.rep.Notes[v.reason]++
	}
}

// look judges key once and keeps it for the re-check when it is wrong.
func (rc *ruleCheck) look(ctx context.Context, key string, lk lookup) error {
	if rc.seen[key] {
		return nil
	}
	rc.seen[key] = true
	v, err := rc.judge(ctx, key, lk)
	if err != nil {
		return err
	}
	if v.result == Stale || v.result == Orphaned {
		rc.candidates = append(rc.candidates, candidate{key: key, lookup: lk, first: v})
		return nil
	}
	rc.count(v)
	return nil
}

// sampleSQL samples up to n rows of a table of about est rows. Small tables
// (est ≤ 100 n) are read whole and sorted by random() (an exact uniform
// sample; the sort keeps only n rows). Larger ones are first thinned with
// TABLESAMPLE SYSTEM to about 4 n rows' worth of pages, so that a one-shot
// check of a large table reads a few pages, not all: rows of one page come
// together, which is acceptable because staleness does not depend on where
// a row is stored. When the pages drawn hold fewer than n/2 rows,
// rowsToKeys samples the whole table instead.
func sampleSQL(from string, est int64, n int) string {
	if est > int64(n)*100 {
		pct := min(100, 400*float64(n)/float64(est))
		from += fmt.Sprintf(" TABLESAMPLE SYSTEM (%g)", pct)
	}
	return from + fmt.Sprintf(" ORDER BY random() LIMIT %d", n)
}

func (rc *ruleCheck) columns() string {
	cols := make([]string, len(rc.rel.Columns))
	for i, c := range rc.rel.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	return strings.Join(cols, ", ")
}

func (rc *ruleCheck) table() string {
	return pgx.Identifier{rc.rel.Namespace, rc.rel.Name}.Sanitize()
}

// rowsToKeys samples rows and looks at the keys they map to.
func (rc *ruleCheck) rowsToKeys(ctx context.Context) error {
	if len(rc.rel.PrimaryKey) == 0 {
		return fmt.Errorf("table %s has no primary key: verify reads rows back by it", rc.rel.QualifiedName())
	}
	var est float64
	if err := rc.v.conn.QueryRow(ctx, "SELECT reltuples FROM pg_class WHERE oid = $1", rc.rel.ID).Scan(&est); err != nil {
		return fmt.Errorf("estimate the rows of %s: %w", rc.rel.QualifiedName(), err)
	}
	n := rc.v.opts.Sample
	from := "SELECT " + rc.columns() + " FROM " + rc.table()
	rows, err := rc.readRows(ctx, sampleSQL(from, int64(est), n), nil)
	if err == nil && int64(est) > int64(n)*100 && len(rows) < n/2 {
		// The pages TABLESAMPLE drew held too few rows (a stale
		// estimate, sparse pages): sample the whole table.
		rows, err = rc.readRows(ctx, sampleSQL(from, 0, n), nil)
	}
	if err != nil {
		return fmt.Errorf("sample %s: %w", rc.rel.QualifiedName(), err)
	}
	for _, r := range rows {
		op, err := rc.mapRow(r)
		if errors.Is(err, errNoValue) {
			rc.count(verdict{result: Unverifiable, reason: "its row maps to no key and value (cachesync explain --pk shows why)"})
			continue
		}
		if err != nil {
			return err
		}
		lk := lookup{cols: rc.rel.PrimaryKey}
		for _, i := range rc.rel.PrimaryKey {
			lk.values = append(lk.values, r.tuple[i].Text)
		}
		if err := rc.look(ctx, op.Key, lk); err != nil {
			return err
		}
	}
	return nil
}

// keysToRows scans the rule's key space for up to Sample keys and looks at
// each.
func (rc *ruleCheck) keysToRows(ctx context.Context) error {
	keys, err := rc.scan(ctx)
	if err != nil {
		return err
	}
	for _, key := range keys {
		if rc.seen[key] {
			continue
		}
		lk, ok := rc.invert(key)
		if !ok {
			rc.seen[key] = true
			rc.count(verdict{result: Unverifiable, reason: "its key template cannot be read back into a row (only \"prefix${row.column}\" can)"})
			continue
		}
		if err := rc.look(ctx, key, lk); err != nil {
			return err
		}
	}
	return nil
}

// invert reads key back into a row's lookup, through the template with the
// longest prefix key starts with (user:email:x is not a user:${row.id}).
func (rc *ruleCheck) invert(key string) (lookup, bool) {
	for n, t := range rc.templates {
		if !strings.HasPrefix(key, t.Prefix) {
			continue
		}
		if !rc.invertible[n] {
			return lookup{}, false
		}
		inv := rc.inverses[n]
		val, _ := inv.Value(key)
		for i, c := range rc.rel.Columns {
			if c.Name == inv.Column {
				return lookup{cols: []int{i}, values: []string{val}}, true
			}
		}
		return lookup{}, false
	}
	return lookup{}, false
}

var errEnough = errors.New("enough keys")

// internalPrefix starts the names of cachesync's bookkeeping keys
// (keyspace.GuardKey, FenceKey, StampKey...).
const internalPrefix = "cachesync:"

// scan returns up to Sample keys of the rule's key space (SCAN order, which
// follows Redis's hash table: unrelated to when keys were written).
func (rc *ruleCheck) scan(ctx context.Context) ([]string, error) {
	var mu sync.Mutex
	var keys []string
	seen := map[string]bool{}
	n := rc.v.opts.Sample
	for _, pattern := range rc.patterns {
		err := redisops.OnMasters(ctx, rc.v.rdb, func(ctx context.Context, node redis.Cmdable) error {
			var cursor uint64
			for {
				page, next, err := node.Scan(ctx, cursor, pattern, 100).Result()
				if err != nil {
					return fmt.Errorf("SCAN %s: %w", pattern, err)
				}
				mu.Lock()
				for _, k := range page {
					if len(keys) >= n {
						break
					}
					// cachesync's own keys (guards, fences, stamps) are
					// no rule's, whatever pattern matched them.
					if !seen[k] && !strings.HasPrefix(k, internalPrefix) {
						seen[k] = true
						keys = append(keys, k)
					}
				}
				full := len(keys) >= n
				mu.Unlock()
				if full {
					return errEnough
				}
				if next == 0 {
					return nil
				}
				cursor = next
			}
		})
		if errors.Is(err, errEnough) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// row is a table row as pgoutput would send it, with its xmin and last
// change (Unix ms, 0 when unknown).
type row struct {
	tuple   wal.Tuple
	version string
	changed int64
}

// readRows runs sql (which selects the table's columns) with its xmin and
// commit time appended.
func (rc *ruleCheck) readRows(ctx context.Context, sql string, params []string) ([]row, error) {
	ts := "NULL::text"
	if rc.v.commitTS {
		ts = "(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint::text"
	}
	sql = strings.Replace(sql, "SELECT "+rc.columns(), "SELECT "+rc.columns()+", xmin::text, "+ts, 1)
	raw := make([][]byte, len(params))
	for i, p := range params {
		raw[i] = []byte(p)
	}
	rr := rc.v.conn.PgConn().ExecParams(ctx, sql, raw, nil, nil, nil)
	var out []row
	n := len(rc.rel.Columns)
	for rr.NextRow() {
		vals := rr.Values()
		r := row{tuple: make(wal.Tuple, n), version: string(vals[n])}
		for i := 0; i < n; i++ {
			if vals[i] == nil {
				r.tuple[i] = wal.Value{Kind: wal.Null}
			} else {
				r.tuple[i] = wal.Value{Kind: wal.Text, Text: string(vals[i])}
			}
		}
		if vals[n+1] != nil {
			r.changed, _ = strconv.ParseInt(string(vals[n+1]), 10, 64)
		}
		out = append(out, r)
	}
	_, err := rr.Close()
	return out, err
}

// mapRow maps a row as an INSERT through the stream's mapper.
func (rc *ruleCheck) mapRow(r row) (mapping.Op, error) {
	b, err := rc.mapper.Map(wal.Txn{Changes: []wal.Change{{Relation: &rc.rel.Relation, Kind: wal.Insert, New: r.tuple}}})
	if err != nil {
		return mapping.Op{}, err
	}
	for _, op := range b.Ops {
		if op.Kind == mapping.OpSet || op.Kind == mapping.OpUnset {
			return op, nil
		}
	}
	return mapping.Op{}, errNoValue
}

// errNoValue: the row maps to no key and value (its key or value does not
// evaluate; cachesync explain shows why).
var errNoValue = errors.New("the row maps to no key and value")

// find reads the row lk names: nil when there is none; unverifiable when
// the key's text is no value of the column, or names several rows.
func (rc *ruleCheck) find(ctx context.Context, lk lookup) (*row, *verdict, error) {
	conds := make([]string, len(lk.cols))
	for n, i := range lk.cols {
		conds[n] = fmt.Sprintf("%s = $%d::%s", pgx.Identifier{rc.rel.Columns[i].Name}.Sanitize(), n+1, rc.rel.TypeNames[i])
	}
	sql := "SELECT " + rc.columns() + " FROM " + rc.table() + " WHERE " + strings.Join(conds, " AND ") + " LIMIT 2"
	rows, err := rc.readRows(ctx, sql, lk.values)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22"):
		return nil, &verdict{result: Unverifiable, reason: "the key's text is no value of its column"}, nil
	case err != nil:
		return nil, nil, fmt.Errorf("read a row of %s: %w", rc.rel.QualifiedName(), err)
	case len(rows) > 1:
		return nil, &verdict{result: Unverifiable, reason: "the key's column matches several rows"}, nil
	case len(rows) == 0:
		return nil, nil, nil
	}
	return &rows[0], nil, nil
}

// judge looks at key and its row once.
func (rc *ruleCheck) judge(ctx context.Context, key string, lk lookup) (verdict, error) {
	r, unv, err := rc.find(ctx, lk)
	if err != nil || unv != nil {
		return deref(unv), err
	}
	if rc.rule.Action == config.ActionInvalidate {
		return rc.judgeFilled(ctx, key, r)
	}
	val, err := rc.v.rdb.Get(ctx, key).Bytes()
	present := err == nil
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
		return verdict{result: Unverifiable, reason: "the key is not a string"}, nil
	case err != nil:
		return verdict{}, fmt.Errorf("GET %s: %w", key, err)
	}
	if r == nil {
		if present {
			return verdict{result: Orphaned, reason: "its row is gone"}, nil
		}
		return verdict{result: Absent}, nil
	}
	v := verdict{version: r.version, changed: r.changed}
	op, err := rc.mapRow(*r)
	switch {
	case errors.Is(err, errNoValue):
		v.result, v.reason = Unverifiable, "its row maps to no key and value (cachesync explain --pk shows why)"
	case err != nil:
		return v, err
	case op.Key != key:
		v.result, v.reason = Unverifiable, "its row maps to another key"
	case op.Kind == mapping.OpUnset && present:
		v.result, v.reason = Orphaned, "its row is filtered out by the rule's when"
	case op.Kind == mapping.OpUnset:
		v.result = Consistent
	case !present:
		v.result = Absent
	case string(val) != string(op.Value):
		v.result, v.reason = Stale, "the value differs from the row's"
	default:
		v.result = Consistent
	}
	return v, nil
}

func deref(v *verdict) verdict {
	if v == nil {
		return verdict{}
	}
	return *v
}

// judgeFilled judges an application-filled key (invalidate rule) by its
// fill stamp.
func (rc *ruleCheck) judgeFilled(ctx context.Context, key string, r *row) (verdict, error) {
	pipe := rc.v.rdb.Pipeline()
	exists := pipe.Exists(ctx, key)
	stamp := pipe.Get(ctx, keyspace.StampKey(key))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		// A cluster pipeline across slots fails: fall back to one by one.
		exists, stamp = rc.v.rdb.Exists(ctx, key), rc.v.rdb.Get(ctx, keyspace.StampKey(key))
	}
	if err := exists.Err(); err != nil {
		return verdict{}, fmt.Errorf("EXISTS %s: %w", key, err)
	}
	if exists.Val() == 0 {
		return verdict{result: Absent}, nil
	}
	if r == nil {
		return verdict{result: Orphaned, reason: "its row is gone but the key was not deleted"}, nil
	}
	v := verdict{version: r.version, changed: r.changed}
	s, err := stamp.Result()
	switch {
	case !rc.v.commitTS:
		v.result, v.reason = Unverifiable, "track_commit_timestamp is off ("+CommitTimestampHint+")"
	case r.changed == 0:
		v.result, v.reason = Unverifiable, "its row's last change time is unknown (committed before track_commit_timestamp was on)"
	case errors.Is(err, redis.Nil):
		v.result, v.reason = Unverifiable, "no fill stamp (not filled through cacheaside)"
	case err != nil:
		return v, fmt.Errorf("GET %s: %w", keyspace.StampKey(key), err)
	default:
		ms, perr := strconv.ParseInt(s, 10, 64)
		switch {
		case perr != nil:
			v.result, v.reason = Unverifiable, "its fill stamp is not Unix milliseconds"
		case ms < r.changed-rc.v.opts.Window.Milliseconds():
			v.result, v.reason = Stale, "filled before its row's last change"
		default:
			v.result = Consistent
		}
	}
	return v, nil
}
