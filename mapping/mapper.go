// Package mapping turns committed row changes into Redis operations according
// to the compiled rules of rules.hcl. It is pure: no network, no clock, no
// randomness, and no Redis or PostgreSQL client among its dependencies, even
// transitively (TestMappingAndConfigArePure). The daemon feeds it one
// transaction at a time (Begin, Change…, Commit) so that a huge transaction
// never has to be held in memory: per rule, at most KeyCap distinct
// operations are kept, above which the rule's whole key space is flushed
// instead. The refresh values one transaction holds until its commit are
// bounded in bytes too (Options.TxnValueBytes): a value past the bound
// becomes an OpUnset of its key, a delete instead of a write. A transaction
// that touches no rule still yields a batch, empty, so that its end LSN is
// confirmed in order. Logical messages on the daemon's prefix flush the
// rules of the table they name (Message): the truncate of one partition,
// and a partition tree that changed.
//
// Template semantics (docs/rules.md, Templates): key, tag and namespace templates are
// evaluated once per row image (INSERT: new; DELETE: old; UPDATE: old and new,
// deduplicated) with row bound to that image and old/new bound to the two
// images (null where absent). A value that was not sent (unchanged TOAST, or a
// non-identity column of the old row) is unknown: a key that depends on it
// cannot be computed, so the rule's key space is flushed; a refresh whose
// value depends on it deletes the key instead of guessing. A NULL key skips
// that key. For invalidate and bump_version rules, `when` is evaluated per
// image too, and an image whose `when` cannot be decided is acted on (an extra
// invalidation is harmless, a missed one is not). For refresh rules, `when` is
// evaluated against the new row: true writes the row, false deletes the key.
//
// Keys and refresh values are the committed text byte for byte: the common
// expression shapes are evaluated from PostgreSQL's text without cty, whose
// strings are NFC and whose floats print in plain decimal (exact.go). They
// are appended to reused buffers straight from the decoded tuple, and so is
// a `when` on a bool column or a literal; the cty objects of a change's
// images are built only when an expression needs the general evaluator
// (Mapper.objects), so that the common rules build none.
package mapping

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/wal"
)

// reuseOps is the bookkeeping of a transaction's operations (per op, its
// rule and its index key) that the next transaction reuses; more is
// dropped.
const reuseOps = 4096

// DefaultKeyCap bounds the distinct operations one rule may accumulate in one
// transaction before its key space is flushed instead.
const DefaultKeyCap = 10000

// Flush reasons, as reported in Op.Reason and in Stats.
const (
	ReasonTruncate   = "truncate"
	ReasonKeyCap     = "key_cap"
	ReasonNotSent    = "not_sent"
	ReasonEvalError  = "eval_error"
	ReasonSlot       = "slot_created"
	ReasonSlotLost   = "slot_lost"
	ReasonCacheReset = "cache_reset"
	ReasonTableAdd   = "table_added"
	ReasonRules      = "rules_changed"
	ReasonPartitions = "partitions_changed"
)

// Options tune a Mapper.
type Options struct {
	// KeyCap is the per-rule, per-transaction operation cap (DefaultKeyCap if 0).
	KeyCap int
	// TxnValueBytes bounds the refresh values one transaction holds until
	// its commit (0: no bound). A value that would go past it is not kept:
	// its key is deleted instead (OpUnset), which is at least as strong as
	// writing it. Wide rows then cost cache misses, not unbounded memory.
	TxnValueBytes int64
	// Logger receives warnings (evaluation errors, replica identity mismatches).
	Logger zerolog.Logger
	// OnEvalError, when set, is called with every failed template
	// evaluation, before the log line's rate limit (replication's preflight
	// collects those of its trial rows).
	OnEvalError func(EvalError)
}

// EvalError is one failed evaluation of a rule's `when`, key or value.
type EvalError struct {
	Rule string
	// Template is "when", "key" or "value".
	Template string
	// Expr is the expression that failed.
	Expr hcl.Expression
	// Diags say why; each has a Subject in the rules file.
	Diags hcl.Diagnostics
	// Effect is what the mapper does instead, for messages ("flush the
	// rule's whole key space").
	Effect string
}

// What the mapper does instead of a failed evaluation (EvalError.Effect).
const (
	effectFlush      = "flush the rule's whole key space (reason eval_error)"
	effectDeleteKey  = "delete the key instead of writing the row"
	effectWhenIsTrue = "ignore the condition and act on the row as if when were true"
)

// Stats counts what the mapper decided; the daemon exports them as metrics.
type Stats struct {
	Transactions  uint64
	Changes       uint64
	NullKeys      uint64            // keys skipped because a template gave NULL
	Incomplete    uint64            // refreshes turned into deletes: value not sent
	TooLarge      uint64            // refreshes turned into deletes: past TxnValueBytes
	Flushes       map[string]uint64 // by reason
	EvalErrors    uint64
	UnmappedTable uint64 // changes of tables no rule reads
}

// Mapper maps transactions to batches. It is not safe for concurrent use.
type Mapper struct {
	rules   []*rule
	byTable map[string][]*rule
	keyCap  int
	// valueCap is Options.TxnValueBytes.
	valueCap int64
	log      zerolog.Logger
	onEval   func(EvalError)
	funcs    map[string]function.Function
	dec      *decoder

	bindings map[uint32]*binding
	exact    map[*config.Template]*exactExpr
	txn      txnState
	stats    Stats
	// cur is the change being mapped, with its images.
	cur change
	// keyBuf, oldKeyBuf and valBuf are reused to build keys and refresh
	// values, which are copied out once, at their final size; indexBuf to
	// look keys up in the transaction's index.
	keyBuf, oldKeyBuf, valBuf, indexBuf []byte

	evalLogged map[string]*logGate
}

type rule struct {
	idx      int
	cfg      *config.Rule
	keyspace Keyspace
	// columns read anywhere by the rule; all is set when a whole image is read.
	columns map[string]bool
	all     bool
	// value is the refresh value compiled for exact evaluation, or nil.
	value *exactExpr
	// when is the condition compiled for exact evaluation (a literal or a
	// column), or nil.
	when *exactExpr
}

// change is the change being mapped. Its row images are kept as
// PostgreSQL sent them (old, new), which is all the exactly evaluated
// shapes read; the cty objects the general evaluator needs are built from
// them on first use only (objects), once per change.
type change struct {
	c        wal.Change
	b        *binding
	old, new *rowImage
	// oldImg and newImg back old and new; their vals reuse a buffer.
	oldImg, newImg rowImage
	oldVals        []wal.Value
	newVals        []wal.Value
	// built says oldObj and newObj are built; ctx holds the evaluation
	// contexts by side, built on first use too.
	built          bool
	oldObj, newObj cty.Value
	ctx            [2]*hcl.EvalContext
}

// release drops the change's references (its tuples' text, its objects),
// keeping the buffers, so that a mapper at rest pins no WAL data.
func (cur *change) release() {
	clear(cur.oldVals)
	clear(cur.newVals)
	*cur = change{oldVals: cur.oldVals[:0], newVals: cur.newVals[:0]}
}

// side names the image a template is evaluated against (bound to row).
type side uint8

const (
	sideOld side = iota
	sideNew
)

// binding caches what a relation's changes need: which columns to decode.
// It is rebuilt when a new Relation message replaces the relation.
type binding struct {
	rel    *wal.Relation
	rules  []*rule
	decode []bool // per relation column
	// For exact evaluation: column index by name, each column's value
	// class, and the column indexes sorted by name (jsonencode's order).
	index  map[string]int
	class  []valueClass
	sorted []int
	// nameJSON holds each column's name as jsonencode writes it, with its
	// colon.
	nameJSON [][]byte
}

type txnState struct {
	open   bool
	begin  wal.Begin
	ops    []Op
	opRule []int
	// opIndex holds each op's key in index: its rule, its kind (OpUnset
	// counts as OpSet) and its Key, which is the tail of that string, so
	// that a new key costs one allocation and a repeated one none.
	opIndex   []string
	index     map[string]int
	ruleCount []int
	flushed   []bool
	// valueBytes is what the values of ops hold.
	valueBytes int64
}

// New compiles rules. It fails only on rules the config package should have
// refused (no action).
func New(rules []*config.Rule, opts Options) (*Mapper, error) {
	m := &Mapper{
		byTable:  map[string][]*rule{},
		keyCap:   opts.KeyCap,
		valueCap: opts.TxnValueBytes,
		log:      opts.Logger,
		onEval:   opts.OnEvalError,
		funcs:    config.Functions(),
		dec:      newDecoder(),
		bindings: map[uint32]*binding{},
		exact:    map[*config.Template]*exactExpr{},
		stats:    Stats{Flushes: map[string]uint64{}},
	}
	if m.keyCap <= 0 {
		m.keyCap = DefaultKeyCap
	}
	for i, rc := range rules {
		r := &rule{idx: i, cfg: rc, columns: map[string]bool{}}
		ks, err := ruleKeyspace(rc)
		if err != nil {
			return nil, err
		}
		r.keyspace = ks
		for _, t := range rc.Templates() {
			if x := compileExact(t.Expr); x != nil {
				m.exact[t] = x
			}
		}
		if rc.Refresh != nil && rc.Refresh.Value != nil {
			r.value = compileExact(rc.Refresh.Value)
		}
		if rc.When != nil {
			if x := compileExact(rc.When); x != nil && (x.kind == exLiteral || x.kind == exColumn) {
				r.when = x
			}
		}
		refs := append(append(rc.KeyColumns(), rc.WhenColumns()...), rc.ValueColumns()...)
		for _, ref := range refs {
			if ref.Column == "" {
				r.all = true
			} else {
				r.columns[ref.Column] = true
			}
		}
		m.rules = append(m.rules, r)
		t := rc.Table.String()
		m.byTable[t] = append(m.byTable[t], r)
	}
	m.txn.ruleCount = make([]int, len(m.rules))
	m.txn.flushed = make([]bool, len(m.rules))
	m.txn.index = map[string]int{}
	return m, nil
}

// Tables returns the tables the rules read, each once.
func (m *Mapper) Tables() []config.TableName {
	out := make([]config.TableName, 0, len(m.byTable))
	for _, r := range m.rules {
		if !slices.Contains(out, r.cfg.Table) {
			out = append(out, r.cfg.Table)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Stats returns a copy of the mapper's counters.
func (m *Mapper) Stats() Stats {
	s := m.stats
	s.Flushes = make(map[string]uint64, len(m.stats.Flushes))
	for k, v := range m.stats.Flushes {
		s.Flushes[k] = v
	}
	return s
}

// FlushAll returns operations that flush every rule's key space, for slot
// creation and similar events where every cached entry is suspect.
func (m *Mapper) FlushAll(reason string) []Op {
	return m.FlushTables(nil, reason)
}

// FlushTables returns flush operations for the rules of the given tables
// ("schema.table"); nil means every rule.
func (m *Mapper) FlushTables(tables []string, reason string) []Op {
	return m.flushWhere(reason, func(r *rule) bool {
		return tables == nil || contains(tables, r.cfg.Table.String())
	})
}

// FlushRules returns flush operations for the named rules.
func (m *Mapper) FlushRules(names []string, reason string) []Op {
	return m.flushWhere(reason, func(r *rule) bool { return contains(names, r.cfg.Name) })
}

func (m *Mapper) flushWhere(reason string, pick func(*rule) bool) []Op {
	var ops []Op
	for _, r := range m.rules {
		if pick(r) {
			ks := r.keyspace
			ops = append(ops, Op{Kind: OpFlush, Keyspace: &ks, Rule: r.cfg.Name, Reason: reason})
		}
	}
	return ops
}

// Begin opens a transaction. A Begin while one is open is a protocol error.
func (m *Mapper) Begin(b wal.Begin) error {
	if m.txn.open {
		return fmt.Errorf("begin of xid %d while xid %d is open", b.XID, m.txn.begin.XID)
	}
	m.txn.open = true
	m.txn.begin = b
	return nil
}

// Abandon drops the open transaction, if any (the stream reconnected).
func (m *Mapper) Abandon() {
	m.resetTxn()
	clear(m.bindings)
}

func (m *Mapper) resetTxn() {
	m.txn.open = false
	m.txn.ops = nil // the batch's now
	// The bookkeeping is reused by the next transaction, unless it grew
	// large.
	clear(m.txn.opIndex)
	m.txn.opRule, m.txn.opIndex = m.txn.opRule[:0], m.txn.opIndex[:0]
	if cap(m.txn.opRule) > reuseOps {
		m.txn.opRule, m.txn.opIndex = nil, nil
	}
	m.txn.valueBytes = 0
	clear(m.txn.index)
	clear(m.txn.ruleCount)
	clear(m.txn.flushed)
}

// Commit closes the open transaction and returns its operations.
func (m *Mapper) Commit(c wal.Commit) (Batch, error) {
	if !m.txn.open {
		return Batch{}, fmt.Errorf("commit of xid %d outside a transaction", c.XID)
	}
	b := Batch{XID: m.txn.begin.XID, CommitLSN: c.CommitLSN, EndLSN: c.EndLSN, CommitTime: c.CommitTime, Ops: m.txn.ops}
	m.stats.Transactions++
	m.resetTxn()
	return b, nil
}

// Map maps a whole in-memory transaction.
func (m *Mapper) Map(t wal.Txn) (Batch, error) {
	if err := m.Begin(wal.Begin{XID: t.XID, FinalLSN: t.CommitLSN, CommitTime: t.CommitTime}); err != nil {
		return Batch{}, err
	}
	for _, c := range t.Changes {
		if err := m.Change(c); err != nil {
			m.resetTxn()
			return Batch{}, err
		}
	}
	for _, msg := range t.Messages {
		if err := m.Message(msg); err != nil {
			m.resetTxn()
			return Batch{}, err
		}
	}
	return m.Commit(wal.Commit{XID: t.XID, CommitLSN: t.CommitLSN, EndLSN: t.EndLSN, CommitTime: t.CommitTime})
}

// Message handles a transactional logical decoding message. Messages on other
// prefixes belong to other consumers and are ignored.
func (m *Mapper) Message(msg wal.Message) error {
	if !m.txn.open {
		return fmt.Errorf("logical message %q outside a transaction", msg.Prefix)
	}
	var reason string
	switch msg.Prefix {
	case wal.TruncateMessagePrefix:
		// A partition of a rule table was truncated (see the triggers that
		// replication installs): the root's rules flush.
		reason = ReasonTruncate
	case wal.PartitionsMessagePrefix:
		// A partition was attached, detached, dropped or created: rows
		// came or went with no row event. The root's rules flush.
		reason = ReasonPartitions
	default:
		return nil
	}
	for _, r := range m.byTable[string(msg.Content)] {
		m.flush(r, reason)
	}
	return nil
}

// Change maps one row change of the open transaction.
func (m *Mapper) Change(c wal.Change) error {
	if !m.txn.open {
		return fmt.Errorf("%s on %s outside a transaction", c.Kind, c.Relation.QualifiedName())
	}
	m.stats.Changes++
	b := m.bind(c.Relation)
	if len(b.rules) == 0 {
		m.stats.UnmappedTable++
		return nil
	}
	if c.Kind == wal.Truncate {
		for _, r := range b.rules {
			m.flush(r, ReasonTruncate)
		}
		return nil
	}
	if err := checkTuples(c); err != nil {
		return err
	}
	m.setChange(c, b)
	for _, r := range b.rules {
		if m.txn.flushed[r.idx] {
			continue
		}
		switch r.cfg.Action {
		case config.ActionRefresh:
			m.refresh(r, c.Kind)
		default:
			m.invalidate(r, c.Kind)
		}
	}
	m.cur.release()
	return nil
}

func checkTuples(c wal.Change) error {
	n := len(c.Relation.Columns)
	if c.New != nil && len(c.New) != n {
		return fmt.Errorf("%s on %s: new tuple has %d columns, relation has %d", c.Kind, c.Relation.QualifiedName(), len(c.New), n)
	}
	if c.Old != nil && len(c.Old) != n {
		return fmt.Errorf("%s on %s: old tuple has %d columns, relation has %d", c.Kind, c.Relation.QualifiedName(), len(c.Old), n)
	}
	switch c.Kind {
	case wal.Insert, wal.Update:
		if c.New == nil {
			return fmt.Errorf("%s on %s without a new tuple", c.Kind, c.Relation.QualifiedName())
		}
	case wal.Delete:
		if c.Old == nil {
			return fmt.Errorf("delete on %s without an old tuple: the table's replica identity is NOTHING", c.Relation.QualifiedName())
		}
	}
	return nil
}

func (m *Mapper) bind(rel *wal.Relation) *binding {
	if b, ok := m.bindings[rel.ID]; ok && b.rel == rel {
		return b
	}
	b := &binding{rel: rel, rules: m.byTable[rel.QualifiedName()], decode: make([]bool, len(rel.Columns)),
		index: make(map[string]int, len(rel.Columns)), class: make([]valueClass, len(rel.Columns)), sorted: make([]int, len(rel.Columns)),
		nameJSON: make([][]byte, len(rel.Columns))}
	for i, col := range rel.Columns {
		b.index[col.Name] = i
		b.nameJSON[i] = append(appendJSONString(nil, col.Name), ':')
		b.class[i] = m.dec.class(col.TypeOID)
		b.sorted[i] = i
	}
	sort.Slice(b.sorted, func(x, y int) bool { return rel.Columns[b.sorted[x]].Name < rel.Columns[b.sorted[y]].Name })
	for _, r := range b.rules {
		for i, col := range rel.Columns {
			if r.all || r.columns[col.Name] {
				b.decode[i] = true
			}
		}
		m.checkIdentity(r, rel)
	}
	m.bindings[rel.ID] = b
	return b
}

// checkIdentity warns when the relation's replica identity cannot carry the
// columns the rule's key templates read from the old row. Such changes still
// map safely (unknown values flush the key space) but cost more.
func (m *Mapper) checkIdentity(r *rule, rel *wal.Relation) {
	if rel.ReplicaIdentity == wal.IdentityFull {
		return
	}
	keyCols := map[string]bool{}
	for _, c := range rel.Columns {
		if c.Key {
			keyCols[c.Name] = true
		}
	}
	for _, ref := range r.cfg.KeyColumns() {
		if ref.Column == "" || !keyCols[ref.Column] {
			m.log.Warn().Str("rule", r.cfg.Name).Str("table", rel.QualifiedName()).
				Str("replica_identity", string(rel.ReplicaIdentity)).Str("column", ref.Column).
				Msg("replica identity does not carry a column the rule's keys read; updates and deletes will flush the rule's key space. Fix: ALTER TABLE " + rel.QualifiedName() + " REPLICA IDENTITY FULL")
			return
		}
	}
}

// objects returns the old and new row objects of the current change, for
// the general evaluator, building them on the first call. Missing images
// are null objects; values that were not sent are unknown.
func (m *Mapper) objects() (oldObj, newObj cty.Value) {
	cur := &m.cur
	if !cur.built {
		cur.oldObj, cur.newObj = m.images(cur.c, cur.b)
		cur.built = true
	}
	return cur.oldObj, cur.newObj
}

// evalCtx returns the evaluation context of the current change with row
// bound to the image of side s.
func (m *Mapper) evalCtx(s side) *hcl.EvalContext {
	if ctx := m.cur.ctx[s]; ctx != nil {
		return ctx
	}
	oldObj, newObj := m.objects()
	row := newObj
	if s == sideOld {
		row = oldObj
	}
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{"row": row, "old": oldObj, "new": newObj},
		Functions: m.funcs,
	}
	m.cur.ctx[s] = ctx
	return ctx
}

// imgs returns the images of the current change with row bound to the
// image of side s.
func (m *Mapper) imgs(s side) imageSet {
	row := m.cur.new
	if s == sideOld {
		row = m.cur.old
	}
	return imageSet{row: row, old: m.cur.old, new: m.cur.new}
}

// images builds the old and new row objects of a change. Missing images are
// null objects; values that were not sent are unknown.
func (m *Mapper) images(c wal.Change, b *binding) (oldObj, newObj cty.Value) {
	rel := c.Relation
	null := cty.NullVal(cty.DynamicPseudoType)
	oldObj, newObj = null, null
	var oldVals map[string]cty.Value
	if c.Kind == wal.Update || c.Kind == wal.Delete {
		oldVals = make(map[string]cty.Value)
		for i, col := range rel.Columns {
			if !b.decode[i] {
				continue
			}
			switch {
			case c.OldKind == wal.OldNone:
				// No old tuple: the identity did not change, so identity
				// columns equal the new row's; the rest is unknown.
				if col.Key && c.New != nil {
					oldVals[col.Name] = m.value(col, c.New[i])
				} else {
					oldVals[col.Name] = cty.DynamicVal
				}
			case c.OldKind == wal.OldKey && !col.Key:
				oldVals[col.Name] = cty.DynamicVal
			default:
				oldVals[col.Name] = m.value(col, c.Old[i])
			}
		}
		oldObj = cty.ObjectVal(oldVals)
	}
	if c.Kind == wal.Insert || c.Kind == wal.Update {
		newVals := make(map[string]cty.Value)
		for i, col := range rel.Columns {
			if !b.decode[i] {
				continue
			}
			v := m.value(col, c.New[i])
			if !v.IsKnown() && oldVals != nil {
				// Unchanged TOAST: equal to the old value when that is known.
				v = oldVals[col.Name]
			}
			newVals[col.Name] = v
		}
		newObj = cty.ObjectVal(newVals)
	}
	return oldObj, newObj
}

// setChange makes c the current change: its old and new images as
// PostgreSQL sent them, for exact evaluation, by the rules images follows
// (nil where an image is absent, NotSent where a value is unknown), and no
// cty object yet.
func (m *Mapper) setChange(c wal.Change, b *binding) {
	cur := &m.cur
	cur.c, cur.b = c, b
	cols := c.Relation.Columns
	if c.Kind == wal.Update || c.Kind == wal.Delete {
		vals := c.Old
		if c.OldKind != wal.OldFull || vals == nil {
			vals = slices.Grow(cur.oldVals[:0], len(cols))[:len(cols)]
			for i, col := range cols {
				switch {
				case c.OldKind == wal.OldNone:
					if col.Key && c.New != nil {
						vals[i] = c.New[i]
					} else {
						vals[i] = wal.Value{}
					}
				case c.OldKind == wal.OldKey && !col.Key:
					vals[i] = wal.Value{}
				default:
					vals[i] = c.Old[i]
				}
			}
			cur.oldVals = vals
		}
		cur.oldImg = rowImage{b: b, vals: vals}
		cur.old = &cur.oldImg
	}
	if c.Kind == wal.Insert || c.Kind == wal.Update {
		vals, copied := c.New, false
		for i, v := range c.New {
			if v.Kind == wal.NotSent && cur.old != nil && cur.old.vals[i].Kind != wal.NotSent {
				// Unchanged TOAST: equal to the old value when that is known.
				if !copied {
					vals, copied = append(cur.newVals[:0], c.New...), true
					cur.newVals = vals
				}
				vals[i] = cur.old.vals[i]
			}
		}
		cur.newImg = rowImage{b: b, vals: vals}
		cur.new = &cur.newImg
	}
}

func (m *Mapper) value(col wal.Column, v wal.Value) cty.Value {
	switch v.Kind {
	case wal.Null:
		return cty.NullVal(cty.DynamicPseudoType)
	case wal.Text:
		return m.dec.decode(col.TypeOID, v.Text)
	}
	return cty.DynamicVal
}

// rowSides lists the images a change's keys are computed from.
func rowSides(kind wal.Kind) []side {
	switch kind {
	case wal.Insert:
		return []side{sideNew}
	case wal.Delete:
		return []side{sideOld}
	}
	return []side{sideOld, sideNew}
}

// evalWhen reports whether a `when` condition holds; an undecidable
// condition (unknown or failing) counts as true, so that nothing is missed.
func (m *Mapper) evalWhen(r *rule, s side) (ok, decided bool) {
	if r.cfg.When == nil {
		return true, true
	}
	if r.when != nil {
		if ok, res := r.when.truth(m.imgs(s)); res != fastFallback {
			return ok, res != fastUnknown
		}
	}
	effect := effectWhenIsTrue
	if r.cfg.Action == config.ActionRefresh {
		effect = effectDeleteKey
	}
	v, diags := r.cfg.When.Value(m.evalCtx(s))
	if diags.HasErrors() {
		m.evalError(r, "when", r.cfg.When, diags, effect)
		return true, false
	}
	if !v.IsWhollyKnown() {
		return true, false
	}
	if v.IsNull() {
		return false, true
	}
	v, err := convert.Convert(v, cty.Bool)
	if err != nil {
		m.evalError(r, "when", r.cfg.When, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "when must be a bool", Detail: err.Error(), Subject: r.cfg.When.Range().Ptr()}}, effect)
		return true, false
	}
	return v.True(), true
}

func (m *Mapper) invalidate(r *rule, kind wal.Kind) {
	for _, s := range rowSides(kind) {
		if ok, _ := m.evalWhen(r, s); !ok {
			continue
		}
		if r.cfg.Invalidate != nil {
			for _, t := range r.cfg.Invalidate.Keys {
				if !m.emitTemplate(r, t, s, OpDelete) {
					return
				}
			}
			for _, t := range r.cfg.Invalidate.Tags {
				if !m.emitTemplate(r, t, s, OpDeleteTag) {
					return
				}
			}
		}
		if r.cfg.BumpVersion != nil {
			for _, t := range r.cfg.BumpVersion.Namespaces {
				if !m.emitTemplate(r, t, s, OpBumpVersion) {
					return
				}
			}
		}
	}
}

// emitTemplate evaluates a key template and records the operation. It
// returns false when the rule's key space was flushed instead.
func (m *Mapper) emitTemplate(r *rule, t *config.Template, s side, kind OpKind) bool {
	key, ok := m.evalKey(r, t, s, m.keyBuf[:0])
	m.keyBuf = key
	if !ok {
		return false
	}
	if len(key) == 0 {
		return true
	}
	return m.addKey(r, Op{Kind: kind, Rule: r.cfg.Name}, key)
}

// evalKey evaluates a key template and appends the key to buf. ok=false
// means the rule was flushed; an empty key with ok=true means NULL (skip).
// The common shapes are evaluated exactly (exact.go), the rest by HCL.
func (m *Mapper) evalKey(r *rule, t *config.Template, at side, buf []byte) ([]byte, bool) {
	if x := m.exact[t]; x != nil {
		key, res := x.appendStr(buf, m.imgs(at), m.dec)
		switch res {
		case fastOK:
			if len(key) == len(buf) {
				m.stats.NullKeys++
			}
			return key, true
		case fastNull:
			m.stats.NullKeys++
			return buf, true
		case fastUnknown:
			m.flush(r, ReasonNotSent)
			return buf, false
		}
	}
	ctx := m.evalCtx(at)
	v, diags := t.Expr.Value(ctx)
	if diags.HasErrors() && readsNull(t.Expr, ctx) {
		// "user:${lower(row.email)}" with a NULL email: no such key.
		m.stats.NullKeys++
		return buf, true
	}
	if diags.HasErrors() {
		m.evalError(r, "key", t.Expr, diags, effectFlush)
		m.flush(r, ReasonEvalError)
		return buf, false
	}
	if !v.IsWhollyKnown() {
		m.flush(r, ReasonNotSent)
		return buf, false
	}
	if v.IsNull() {
		m.stats.NullKeys++
		return buf, true
	}
	s, err := convert.Convert(v, cty.String)
	if err != nil || s.IsNull() {
		m.evalError(r, "key", t.Expr, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "key template must give a string", Detail: "it gave " + v.Type().FriendlyName(), Subject: t.Range.Ptr()}}, effectFlush)
		m.flush(r, ReasonEvalError)
		return buf, false
	}
	if s.AsString() == "" {
		m.stats.NullKeys++
	}
	return append(buf, s.AsString()...), true
}

// readsNull reports whether the expression reads a NULL value, which makes
// functions and string interpolation fail.
func readsNull(expr hcl.Expression, ctx *hcl.EvalContext) bool {
	for _, tr := range expr.Variables() {
		v, diags := tr.TraverseAbs(ctx)
		if !diags.HasErrors() && v.IsKnown() && v.IsNull() {
			return true
		}
	}
	return false
}

func (m *Mapper) refresh(r *rule, kind wal.Kind) {
	rf := r.cfg.Refresh
	lsn := m.txn.begin.FinalLSN
	unset := Op{Kind: OpUnset, LSN: lsn, Rule: r.cfg.Name}
	var oldKey []byte
	if kind == wal.Update || kind == wal.Delete {
		k, ok := m.evalKey(r, rf.Key, sideOld, m.oldKeyBuf[:0])
		m.oldKeyBuf = k
		if !ok {
			return
		}
		oldKey = k
	}
	if kind == wal.Delete {
		if len(oldKey) > 0 {
			m.addKey(r, unset, oldKey)
		}
		return
	}
	newKey, ok := m.evalKey(r, rf.Key, sideNew, m.keyBuf[:0])
	m.keyBuf = newKey
	if !ok {
		return
	}
	if len(oldKey) > 0 && !bytes.Equal(oldKey, newKey) {
		if !m.addKey(r, unset, oldKey) {
			return
		}
	}
	if len(newKey) == 0 {
		return
	}
	if when, decided := m.evalWhen(r, sideNew); !when || !decided {
		m.addKey(r, unset, newKey)
		return
	}
	if x := r.value; x != nil {
		// The committed bytes, not HCL's NFC strings and plain-decimal floats.
		var res fastResult
		m.valBuf, res = x.appendStr(m.valBuf[:0], m.imgs(sideNew), m.dec)
		switch {
		case res == fastOK:
			m.addKey(r, Op{Kind: OpSet, Value: bytes.Clone(m.valBuf), TTL: rf.TTL, Jitter: rf.Jitter, LSN: lsn, Rule: r.cfg.Name}, newKey)
			return
		case res == fastUnknown:
			m.stats.Incomplete++
			m.addKey(r, unset, newKey)
			return
		case res == fastNull && x.kind == exColumn:
			m.addKey(r, unset, newKey)
			return
		}
	}
	v, diags := rf.Value.Value(m.evalCtx(sideNew))
	if diags.HasErrors() {
		m.evalError(r, "value", rf.Value, diags, effectDeleteKey)
		m.addKey(r, unset, newKey)
		return
	}
	if !v.IsWhollyKnown() {
		// A TOASTed column was not sent and is not known from the old row:
		// never guess, drop the key instead.
		m.stats.Incomplete++
		m.addKey(r, unset, newKey)
		return
	}
	if v.IsNull() {
		m.addKey(r, unset, newKey)
		return
	}
	s, err := convert.Convert(v, cty.String)
	if err != nil {
		m.evalError(r, "value", rf.Value, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "value must be a string: wrap it in jsonencode()", Detail: err.Error(), Subject: rf.Value.Range().Ptr()}}, effectDeleteKey)
		m.addKey(r, unset, newKey)
		return
	}
	m.addKey(r, Op{Kind: OpSet, Value: []byte(s.AsString()), TTL: rf.TTL, Jitter: rf.Jitter, LSN: lsn, Rule: r.cfg.Name}, newKey)
}

// evalError counts a failed evaluation and logs it: once per rule and
// template per evalLogEvery, with how many were not logged, so that a rule
// failing on every row does not log every row (the metric counts them all).
// effect says what the caller does instead.
func (m *Mapper) evalError(r *rule, what string, expr hcl.Expression, diags hcl.Diagnostics, effect string) {
	m.stats.EvalErrors++
	if m.onEval != nil {
		m.onEval(EvalError{Rule: r.cfg.Name, Template: what, Expr: expr, Diags: diags, Effect: effect})
	}
	g := m.logGate(r.cfg.Name + "\x00" + what)
	if !g.pass(time.Now()) {
		return
	}
	m.log.Warn().Str("rule", r.cfg.Name).Str("template", what).Str("error", diags.Error()).Int("not_logged_since", g.suppressed).
		Msg("template evaluation failed; acting conservatively")
	g.suppressed = 0
}

// logGate returns the gate of the log lines named k.
func (m *Mapper) logGate(k string) *logGate {
	if m.evalLogged == nil {
		m.evalLogged = map[string]*logGate{}
	}
	g := m.evalLogged[k]
	if g == nil {
		g = &logGate{}
		m.evalLogged[k] = g
	}
	return g
}

// tooLarge counts a refresh value that does not fit in the transaction's
// value budget and logs it, at most once per rule per evalLogEvery.
func (m *Mapper) tooLarge(r *rule, op Op) {
	m.stats.TooLarge++
	if g := m.logGate(r.cfg.Name + "\x00value_bytes"); g.pass(time.Now()) {
		m.log.Warn().Str("rule", r.cfg.Name).Str("key", op.Key).Int("value_bytes", len(op.Value)).
			Int64("txn_value_bytes", m.valueCap).Int("not_logged_since", g.suppressed).
			Msg("refresh values of this transaction exceed the memory bound (--max-queued-bytes / 4): deleting the key instead of writing it; raise --max-queued-bytes to cache such rows")
		g.suppressed = 0
	}
}

// evalLogEvery spaces the log lines of one rule's failing template.
const evalLogEvery = time.Minute

type logGate struct {
	last       time.Time
	suppressed int
}

// pass reports whether a line may be logged at now (and then counts it as
// logged); otherwise it counts one more suppressed line.
func (g *logGate) pass(now time.Time) bool {
	if !g.last.IsZero() && now.Sub(g.last) < evalLogEvery {
		g.suppressed++
		return false
	}
	g.last = now
	return true
}

// addKey records an operation, deduplicated per rule and key. Set and Unset of
// one key replace each other: the last change of the transaction wins. It
// returns false when the operation pushed the rule over the key cap and the
// rule's key space is flushed instead.
//
// key is the operation's key (op.Key is set from it): looking it up costs
// no allocation, and only a new key is copied, once.
func (m *Mapper) addKey(r *rule, op Op, key []byte) bool {
	t := &m.txn
	kind := op.Kind
	if kind == OpUnset {
		kind = OpSet
	}
	ik := binary.AppendUvarint(m.indexBuf[:0], uint64(r.idx))
	ik = append(ik, byte(kind))
	header := len(ik)
	ik = append(ik, key...)
	m.indexBuf = ik
	i, ok := t.index[string(ik)]
	var index string
	if ok {
		op.Key = t.ops[i].Key
	} else {
		index = string(ik)
		op.Key = index[header:]
	}
	if op.Kind == OpSet && m.valueCap > 0 {
		held := t.valueBytes
		if ok {
			held -= int64(len(t.ops[i].Value))
		}
		if held+int64(len(op.Value)) > m.valueCap {
			m.tooLarge(r, op)
			op = Op{Kind: OpUnset, Key: op.Key, LSN: op.LSN, Rule: op.Rule}
		}
	}
	if ok {
		t.valueBytes += int64(len(op.Value) - len(t.ops[i].Value))
		t.ops[i] = op
		return true
	}
	if t.ruleCount[r.idx] >= m.keyCap {
		m.flush(r, ReasonKeyCap)
		return false
	}
	t.ruleCount[r.idx]++
	t.index[index] = len(t.ops)
	t.ops = append(t.ops, op)
	t.valueBytes += int64(len(op.Value))
	t.opRule = append(t.opRule, r.idx)
	t.opIndex = append(t.opIndex, index)
	return true
}

// flush replaces every operation of the rule in the open transaction with one
// flush of its key space; later changes of the transaction add nothing for it.
func (m *Mapper) flush(r *rule, reason string) {
	t := &m.txn
	if t.flushed[r.idx] {
		return
	}
	t.flushed[r.idx] = true
	m.stats.Flushes[reason]++
	kept := t.ops[:0]
	keptRule := t.opRule[:0]
	keptIndex := t.opIndex[:0]
	for i, op := range t.ops {
		if t.opRule[i] == r.idx {
			continue
		}
		kept = append(kept, op)
		keptRule = append(keptRule, t.opRule[i])
		keptIndex = append(keptIndex, t.opIndex[i])
	}
	clear(t.opIndex[len(keptIndex):])
	t.ops, t.opRule, t.opIndex = kept, keptRule, keptIndex
	clear(t.index)
	t.valueBytes = 0
	for i, op := range t.ops {
		t.valueBytes += int64(len(op.Value))
		if t.opIndex[i] != "" {
			t.index[t.opIndex[i]] = i
		}
	}
	ks := r.keyspace
	t.ops = append(t.ops, Op{Kind: OpFlush, Keyspace: &ks, Rule: r.cfg.Name, Reason: reason})
	t.opRule = append(t.opRule, r.idx)
	t.opIndex = append(t.opIndex, "") // a flush is not looked up
	t.ruleCount[r.idx] = 0
}

// ruleKeyspace derives the Redis patterns a rule's templates can produce.
func ruleKeyspace(rc *config.Rule) (Keyspace, error) {
	var ks Keyspace
	declared := rc.Keyspace
	pattern := func(t *config.Template) []string {
		switch {
		case t.Literal:
			return []string{keyspace.EscapeGlob(t.Prefix)}
		case t.Prefix != "":
			return []string{keyspace.EscapeGlob(t.Prefix) + "*"}
		}
		return declared
	}
	ks.Keys = append(ks.Keys, declared...)
	switch rc.Action {
	case config.ActionInvalidate:
		for _, t := range rc.Invalidate.Keys {
			ks.Keys = appendUnique(ks.Keys, pattern(t)...)
		}
		for _, t := range rc.Invalidate.Tags {
			ks.Tags = appendUnique(ks.Tags, pattern(t)...)
		}
	case config.ActionBumpVersion:
		for _, t := range rc.BumpVersion.Namespaces {
			ks.Versions = appendUnique(ks.Versions, pattern(t)...)
		}
	case config.ActionRefresh:
		ks.Keys = appendUnique(ks.Keys, pattern(rc.Refresh.Key)...)
	default:
		return ks, fmt.Errorf("rule %q: no invalidate, bump_version or refresh block", rc.Name)
	}
	if len(ks.Keys)+len(ks.Tags)+len(ks.Versions) == 0 {
		return ks, fmt.Errorf("rule %q has no key space: declare keyspace = [\"prefix:*\"]", rc.Name)
	}
	return ks, nil
}

func appendUnique(list []string, items ...string) []string {
	for _, s := range items {
		if !contains(list, s) {
			list = append(list, s)
		}
	}
	return list
}
