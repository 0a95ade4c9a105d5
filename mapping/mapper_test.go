package mapping

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// testRules is the repository's rules.hcl, written for the demo schema the
// relations below describe: read, not pasted, so that the documented example
// is the one the tests run.
var testRules = readExampleRules()

func readExampleRules() string {
	src, err := os.ReadFile("../rules.hcl")
	if err != nil {
		panic(fmt.Sprintf("mapping tests: the rules come from the repository's rules.hcl: %v", err))
	}
	return string(src)
}

const (
	oidText = 25
)

func rel(id uint32, name string, identity byte, cols ...wal.Column) *wal.Relation {
	return &wal.Relation{ID: id, Namespace: "public", Name: name, ReplicaIdentity: identity, Columns: cols}
}

var (
	users = rel(1, "users", wal.IdentityFull,
		wal.Column{Name: "id", TypeOID: oidInt8, Key: true},
		wal.Column{Name: "email", TypeOID: oidText, Key: true},
		wal.Column{Name: "org_id", TypeOID: oidInt4, Key: true},
		wal.Column{Name: "name", TypeOID: oidText, Key: true})
	usersDefault = rel(1, "users", wal.IdentityDefault,
		wal.Column{Name: "id", TypeOID: oidInt8, Key: true},
		wal.Column{Name: "email", TypeOID: oidText},
		wal.Column{Name: "org_id", TypeOID: oidInt4},
		wal.Column{Name: "name", TypeOID: oidText})
	orders = rel(2, "orders", wal.IdentityDefault,
		wal.Column{Name: "id", TypeOID: oidInt8, Key: true},
		wal.Column{Name: "customer_id", TypeOID: oidInt8})
	products = rel(3, "products", wal.IdentityDefault,
		wal.Column{Name: "id", TypeOID: oidInt8, Key: true},
		wal.Column{Name: "name", TypeOID: oidText},
		wal.Column{Name: "price", TypeOID: oidNumeric},
		wal.Column{Name: "published", TypeOID: oidBool},
		wal.Column{Name: "description", TypeOID: oidText})
	other = rel(4, "audit", wal.IdentityDefault, wal.Column{Name: "id", TypeOID: oidInt8, Key: true})
)

// tup builds a tuple: "\x00" means NULL, "\x01" means not sent.
func tup(vals ...string) wal.Tuple {
	t := make(wal.Tuple, len(vals))
	for i, v := range vals {
		switch v {
		case "\x00":
			t[i] = wal.Value{Kind: wal.Null}
		case "\x01":
			t[i] = wal.Value{Kind: wal.NotSent}
		default:
			t[i] = wal.Value{Kind: wal.Text, Text: v}
		}
	}
	return t
}

const (
	null    = "\x00"
	notSent = "\x01"
)

func newMapper(t *testing.T, src string, keyCap int) *Mapper {
	t.Helper()
	cfg, diags := config.Parse([]byte(src), "rules.hcl")
	if diags.HasErrors() {
		t.Fatalf("rules: %s", diags.Error())
	}
	m, err := New(cfg.Rules, Options{KeyCap: keyCap})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// describe renders ops compactly for comparison.
func describe(ops []Op) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		switch op.Kind {
		case OpFlush:
			out[i] = fmt.Sprintf("flush %s %s keys=%v tags=%v versions=%v", op.Rule, op.Reason, op.Keyspace.Keys, op.Keyspace.Tags, op.Keyspace.Versions)
		case OpSet:
			out[i] = fmt.Sprintf("set %s %s", op.Key, op.Value)
		default:
			out[i] = op.Kind.String() + " " + op.Key
		}
	}
	return out
}

func TestMap(t *testing.T) {
	tests := []struct {
		name    string
		changes []wal.Change
		want    []string
	}{
		{
			name:    "insert invalidates the new row's keys and tags",
			changes: []wal.Change{{Relation: users, Kind: wal.Insert, New: tup("1", "A@x.io", "7", "Ann")}},
			want:    []string{"delete user:1", "delete user:email:a@x.io", "delete_tag org:7"},
		},
		{
			name: "update moving email and org invalidates old and new keys",
			changes: []wal.Change{{Relation: users, Kind: wal.Update, OldKind: wal.OldFull,
				Old: tup("1", "a@x.io", "7", "Ann"), New: tup("1", "b@x.io", "8", "Ann")}},
			want: []string{"delete user:1", "delete user:email:a@x.io", "delete_tag org:7", "delete user:email:b@x.io", "delete_tag org:8"},
		},
		{
			name: "update without old tuple: identity columns equal the new row's",
			changes: []wal.Change{{Relation: products, Kind: wal.Update, OldKind: wal.OldNone,
				New: tup("5", "Cap", "3.10", "t", "red")}},
			want: []string{`set product:5 {"description":"red","id":5,"name":"Cap","price":"3.10","published":true}`},
		},
		{
			name: "update without old tuple whose keys read a non-identity column flushes",
			changes: []wal.Change{{Relation: orders, Kind: wal.Update, OldKind: wal.OldNone,
				New: tup("5", "42")}},
			want: []string{"flush order_lists not_sent keys=[] tags=[] versions=[orders:customer:*]"},
		},
		{
			name: "update under DEFAULT whose keys read a column the old row lacks flushes",
			changes: []wal.Change{{Relation: usersDefault, Kind: wal.Update, OldKind: wal.OldNone,
				New: tup("1", "b@x.io", "8", "Ann")}},
			want: []string{"flush user not_sent keys=[user:* user:email:*] tags=[org:*] versions=[]"},
		},
		{
			name: "key-only old tuple: non-key slots are not sent, not NULL",
			changes: []wal.Change{{Relation: orders, Kind: wal.Update, OldKind: wal.OldKey,
				Old: tup("4", notSent), New: tup("5", "42")}},
			want: []string{"flush order_lists not_sent keys=[] tags=[] versions=[orders:customer:*]"},
		},
		{
			name:    "delete invalidates the old row",
			changes: []wal.Change{{Relation: users, Kind: wal.Delete, OldKind: wal.OldFull, Old: tup("2", "c@x.io", "9", "Cy")}},
			want:    []string{"delete user:2", "delete user:email:c@x.io", "delete_tag org:9"},
		},
		{
			name: "truncate flushes the whole key space and later changes add nothing",
			changes: []wal.Change{
				{Relation: users, Kind: wal.Insert, New: tup("1", "a@x.io", "7", "Ann")},
				{Relation: users, Kind: wal.Truncate},
				{Relation: users, Kind: wal.Insert, New: tup("3", "d@x.io", "7", "Di")},
			},
			want: []string{"flush user truncate keys=[user:* user:email:*] tags=[org:*] versions=[]"},
		},
		{
			name:    "NULL key is skipped",
			changes: []wal.Change{{Relation: users, Kind: wal.Insert, New: tup("1", null, null, "Ann")}},
			want:    []string{"delete user:1"},
		},
		{
			name: "repeated updates of one row dedupe",
			changes: []wal.Change{
				{Relation: orders, Kind: wal.Insert, New: tup("1", "42")},
				{Relation: orders, Kind: wal.Insert, New: tup("2", "42")},
				{Relation: orders, Kind: wal.Delete, OldKind: wal.OldFull, Old: tup("2", "42")},
			},
			want: []string{"bump_version orders:customer:42"},
		},
		{
			name:    "tables without rules map to nothing",
			changes: []wal.Change{{Relation: other, Kind: wal.Insert, New: tup("1")}},
			want:    []string{},
		},
		{
			name:    "refresh writes the committed row as JSON",
			changes: []wal.Change{{Relation: products, Kind: wal.Insert, New: tup("7", "Pen", "42.50", "t", "blue")}},
			want:    []string{`set product:7 {"description":"blue","id":7,"name":"Pen","price":"42.50","published":true}`},
		},
		{
			name:    "refresh with when false deletes the key",
			changes: []wal.Change{{Relation: products, Kind: wal.Update, New: tup("7", "Pen", "42.50", "f", "blue")}},
			want:    []string{"unset product:7"},
		},
		{
			name:    "refresh delete removes the key",
			changes: []wal.Change{{Relation: products, Kind: wal.Delete, OldKind: wal.OldKey, Old: tup("7", notSent, notSent, notSent, notSent)}},
			want:    []string{"unset product:7"},
		},
		{
			name:    "refresh with an unchanged TOAST column and no old row deletes instead of guessing",
			changes: []wal.Change{{Relation: products, Kind: wal.Update, New: tup("7", "Pen", "1.00", "t", notSent)}},
			want:    []string{"unset product:7"},
		},
		{
			name: "refresh takes an unchanged TOAST value from the full old row",
			changes: []wal.Change{{Relation: rel(3, "products", wal.IdentityFull, products.Columns...), Kind: wal.Update, OldKind: wal.OldFull,
				Old: tup("7", "Pen", "1.00", "t", "long text"), New: tup("7", "Pen", "2.00", "t", notSent)}},
			want: []string{`set product:7 {"description":"long text","id":7,"name":"Pen","price":"2.00","published":true}`},
		},
		{
			name: "last write-through of a key in a transaction wins",
			changes: []wal.Change{
				{Relation: products, Kind: wal.Insert, New: tup("7", "Pen", "1.00", "t", "a")},
				{Relation: products, Kind: wal.Update, New: tup("7", "Pen", "2.00", "t", "a")},
				{Relation: products, Kind: wal.Delete, OldKind: wal.OldKey, Old: tup("8", notSent, notSent, notSent, notSent)},
			},
			want: []string{`set product:7 {"description":"a","id":7,"name":"Pen","price":"2.00","published":true}`, "unset product:8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMapper(t, testRules, 0)
			b, err := m.Map(wal.Txn{XID: 9, CommitLSN: 100, EndLSN: 120, Changes: tt.changes})
			if err != nil {
				t.Fatal(err)
			}
			got := describe(b.Ops)
			if !slices.Equal(got, tt.want) {
				t.Errorf("ops:\n got %q\nwant %q", got, tt.want)
			}
			if b.EndLSN != 120 || b.XID != 9 {
				t.Errorf("batch EndLSN %v XID %d", b.EndLSN, b.XID)
			}
			for _, op := range b.Ops {
				if (op.Kind == OpSet || op.Kind == OpUnset) && op.LSN != 100 {
					t.Errorf("%s %s carries LSN %v, want the commit LSN 100", op.Kind, op.Key, op.LSN)
				}
				if op.Kind == OpSet && (op.TTL != time.Hour || op.Jitter != 5*time.Minute) {
					t.Errorf("set TTL %v jitter %v", op.TTL, op.Jitter)
				}
			}
		})
	}
}

func TestKeyCapFlushesAndBoundsMemory(t *testing.T) {
	m := newMapper(t, testRules, 100)
	if err := m.Begin(wal.Begin{XID: 1, FinalLSN: 10}); err != nil {
		t.Fatal(err)
	}
	for i := range 30_000 {
		id := fmt.Sprint(i)
		if err := m.Change(wal.Change{Relation: users, Kind: wal.Insert, New: tup(id, id+"@x", "1", "n")}); err != nil {
			t.Fatal(err)
		}
		if err := m.Change(wal.Change{Relation: orders, Kind: wal.Insert, New: tup(id, "3")}); err != nil {
			t.Fatal(err)
		}
		if n := len(m.txn.ops); n > 2*100+2 {
			t.Fatalf("after %d rows the transaction holds %d ops; the cap is 100 per rule", i, n)
		}
	}
	b, err := m.Commit(wal.Commit{XID: 1, CommitLSN: 10, EndLSN: 20})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"bump_version orders:customer:3", "flush user key_cap keys=[user:* user:email:*] tags=[org:*] versions=[]"}
	if got := describe(b.Ops); !slices.Equal(got, want) {
		t.Errorf("ops:\n got %q\nwant %q", got, want)
	}
	if s := m.Stats(); s.Flushes[ReasonKeyCap] != 1 || s.Changes != 60_000 {
		t.Errorf("stats %+v", s)
	}
}

// TestOpsIndexAfterFlushAndAcrossTransactions: the index that deduplicates
// a transaction's operations still finds an operation after another rule's
// flush compacted them, and starts empty in the next transaction, whose
// bookkeeping reuses the last one's.
func TestOpsIndexAfterFlushAndAcrossTransactions(t *testing.T) {
	m := newMapper(t, testRules, 2)
	b, err := m.Map(wal.Txn{XID: 1, CommitLSN: 10, EndLSN: 11, Changes: []wal.Change{
		{Relation: products, Kind: wal.Insert, New: tup("7", "Pen", "1.00", "t", "x")},
		{Relation: users, Kind: wal.Insert, New: tup("1", "a@x", "1", "n")}, // three keys: past the cap of 2
		{Relation: products, Kind: wal.Update, New: tup("7", "Pen", "1.00", "f", "x")},
		{Relation: products, Kind: wal.Insert, New: tup("8", "Cap", "2.00", "t", "y")},
		{Relation: products, Kind: wal.Update, New: tup("8", "Cap", "3.00", "t", "y")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"unset product:7", "flush user key_cap keys=[user:* user:email:*] tags=[org:*] versions=[]",
		`set product:8 {"description":"y","id":8,"name":"Cap","price":"3.00","published":true}`}
	if got := describe(b.Ops); !slices.Equal(got, want) {
		t.Errorf("first transaction:\n got %q\nwant %q", got, want)
	}
	b, err = m.Map(wal.Txn{XID: 2, CommitLSN: 20, EndLSN: 21, Changes: []wal.Change{
		{Relation: products, Kind: wal.Insert, New: tup("8", "Cap", "4.00", "t", "y")},
		{Relation: users, Kind: wal.Insert, New: tup("1", "a@x", null, "n")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want = []string{`set product:8 {"description":"y","id":8,"name":"Cap","price":"4.00","published":true}`, "delete user:1", "delete user:email:a@x"}
	if got := describe(b.Ops); !slices.Equal(got, want) {
		t.Errorf("second transaction:\n got %q\nwant %q", got, want)
	}
}

func TestProtocolOrder(t *testing.T) {
	m := newMapper(t, testRules, 0)
	if err := m.Change(wal.Change{Relation: users, Kind: wal.Insert, New: tup("1", "a", "1", "n")}); err == nil {
		t.Error("change outside a transaction: want an error")
	}
	if _, err := m.Commit(wal.Commit{XID: 1}); err == nil {
		t.Error("commit outside a transaction: want an error")
	}
	if err := m.Begin(wal.Begin{XID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := m.Begin(wal.Begin{XID: 2}); err == nil {
		t.Error("nested begin: want an error")
	}
	if err := m.Change(wal.Change{Relation: users, Kind: wal.Insert, New: tup("1")}); err == nil {
		t.Error("tuple with the wrong column count: want an error")
	}
}

func TestValuesAreTyped(t *testing.T) {
	src := `
rule "typed" {
  table = "public.t"
  refresh {
    key   = "t:${row.id}"
    value = jsonencode(row)
    ttl   = "1m"
  }
}`
	cols := []wal.Column{
		{Name: "id", TypeOID: oidInt8, Key: true},
		{Name: "f", TypeOID: oidFloat8},
		{Name: "n", TypeOID: oidNumeric},
		{Name: "b", TypeOID: oidBool},
		{Name: "j", TypeOID: oidJSONB},
		{Name: "ts", TypeOID: oidTimestampTZ},
		{Name: "tsn", TypeOID: oidTimestamp},
		{Name: "arr", TypeOID: 1007},  // int4[]
		{Name: "tags", TypeOID: 1009}, // text[]
		{Name: "e", TypeOID: 99999},   // an enum: text
		{Name: "z", TypeOID: oidText}, // NULL
		{Name: "inf", TypeOID: oidFloat8},
	}
	m := newMapper(t, src, 0)
	b, err := m.Map(wal.Txn{XID: 1, CommitLSN: 1, EndLSN: 2, Changes: []wal.Change{{
		Relation: rel(9, "t", wal.IdentityDefault, cols...), Kind: wal.Insert,
		New: tup("12", "1.5", "42.50", "f", `{"a":[1,"x"],"b":null}`, "2024-03-01 10:20:30.5+00",
			"2024-03-01 10:20:30", "{1,NULL,3}", `{"a b",c}`, "happy", null, "Infinity"),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Ops) != 1 || b.Ops[0].Key != "t:12" {
		t.Fatalf("ops %q", describe(b.Ops))
	}
	var got map[string]any
	if err := json.Unmarshal(b.Ops[0].Value, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": 12.0, "f": 1.5, "n": "42.50", "b": false,
		"j":  map[string]any{"a": []any{1.0, "x"}, "b": nil},
		"ts": "2024-03-01T10:20:30.5Z", "tsn": "2024-03-01T10:20:30Z",
		"arr": []any{1.0, nil, 3.0}, "tags": []any{"a b", "c"}, "e": "happy", "z": nil, "inf": "Infinity",
	}
	for k, w := range want {
		if g := fmt.Sprint(got[k]); g != fmt.Sprint(w) {
			t.Errorf("%s = %s, want %s", k, g, fmt.Sprint(w))
		}
	}
	if !strings.Contains(string(b.Ops[0].Value), `"id":12,`) {
		t.Errorf("integers must print without a decimal point: %s", b.Ops[0].Value)
	}
}

// Logical messages on cachesync's prefixes flush the named root's rules: a
// partition truncated (the trigger's message) or the partition tree changed
// (the monitor's message). Other prefixes and other tables change nothing.
func TestMessageFlushes(t *testing.T) {
	tests := []struct {
		name string
		msg  wal.Message
		want []string
	}{
		{"partition truncated", wal.Message{Prefix: wal.TruncateMessagePrefix, Content: []byte("public.users")},
			[]string{"flush user truncate keys=[user:* user:email:*] tags=[org:*] versions=[]"}},
		{"partition tree changed", wal.Message{Prefix: wal.PartitionsMessagePrefix, Content: []byte("public.users")},
			[]string{"flush user partitions_changed keys=[user:* user:email:*] tags=[org:*] versions=[]"}},
		{"a table without rules", wal.Message{Prefix: wal.PartitionsMessagePrefix, Content: []byte("public.other")}, []string{}},
		{"another prefix", wal.Message{Prefix: "cachesync.heartbeat", Content: []byte("public.users")}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMapper(t, testRules, 0)
			if err := m.Begin(wal.Begin{XID: 1, FinalLSN: 10}); err != nil {
				t.Fatal(err)
			}
			if err := m.Message(tt.msg); err != nil {
				t.Fatal(err)
			}
			b, err := m.Commit(wal.Commit{XID: 1, CommitLSN: 10, EndLSN: 20})
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(b.Ops); !slices.Equal(got, tt.want) {
				t.Errorf("ops:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// A transaction's refresh values are bounded in bytes: a value that would go
// past TxnValueBytes deletes its key instead (never skipped), a later value
// of the same key replaces the earlier one's share, and the bound holds after
// every change.
func TestTxnValueBytesDeletesInsteadOfHolding(t *testing.T) {
	cfg, diags := config.Parse([]byte(testRules), "rules.hcl")
	if diags.HasErrors() {
		t.Fatalf("rules: %s", diags.Error())
	}
	const limit = 2500
	m, err := New(cfg.Rules, Options{TxnValueBytes: limit})
	if err != nil {
		t.Fatal(err)
	}
	wide, narrow := strings.Repeat("w", 1000), "n"
	product := func(id, desc string) wal.Change {
		return wal.Change{Relation: products, Kind: wal.Insert, New: tup(id, "p", "1.5", "t", desc)}
	}
	if err := m.Begin(wal.Begin{XID: 1, FinalLSN: 10}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []wal.Change{
		product("1", wide),   // fits
		product("2", wide),   // fits
		product("3", wide),   // past the bound: deleted instead
		product("1", narrow), // replaces 1's wide value: room again
		product("4", wide),   // fits in that room
		product("5", narrow), // fits
		product("6", wide),   // past the bound again
	} {
		if err := m.Change(c); err != nil {
			t.Fatal(err)
		}
		held := 0
		for _, op := range m.txn.ops {
			held += len(op.Value)
		}
		if int64(held) != m.txn.valueBytes || held > limit {
			t.Fatalf("after %s: values hold %d bytes, accounted %d, bound %d", c.New[0].Text, held, m.txn.valueBytes, limit)
		}
	}
	b, err := m.Commit(wal.Commit{XID: 1, CommitLSN: 10, EndLSN: 20})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, op := range b.Ops {
		got = append(got, op.Kind.String()+" "+op.Key)
		if op.Kind == OpUnset && op.LSN != 10 {
			t.Errorf("unset %s at LSN %s, want the commit's 0/A", op.Key, op.LSN)
		}
	}
	want := []string{"set product:1", "set product:2", "unset product:3", "set product:4", "set product:5", "unset product:6"}
	if !slices.Equal(got, want) {
		t.Errorf("ops:\n got %q\nwant %q", got, want)
	}
	if s := m.Stats(); s.TooLarge != 2 {
		t.Errorf("TooLarge = %d, want 2", s.TooLarge)
	}
	// The next transaction starts with the whole bound.
	if err := m.Begin(wal.Begin{XID: 2, FinalLSN: 30}); err != nil {
		t.Fatal(err)
	}
	if err := m.Change(product("7", wide)); err != nil {
		t.Fatal(err)
	}
	if b, err := m.Commit(wal.Commit{XID: 2, CommitLSN: 30, EndLSN: 40}); err != nil || len(b.Ops) != 1 || b.Ops[0].Kind != OpSet {
		t.Errorf("next transaction: %v %q", err, describe(b.Ops))
	}
}

func TestBatchSize(t *testing.T) {
	tests := []struct {
		name string
		b    Batch
		want int64
	}{
		{"empty (a barrier)", Batch{EndLSN: 1}, 96},
		{"a delete", Batch{Ops: []Op{{Kind: OpDelete, Key: "user:1"}}}, 96 + 128 + 6},
		{"a set and a flush", Batch{Ops: []Op{{Kind: OpSet, Key: "k", Value: make([]byte, 1<<20)}, {Kind: OpFlush, Keyspace: &Keyspace{}}}}, 96 + 2*128 + 1 + 1<<20},
	}
	for _, tt := range tests {
		if got := tt.b.Size(); got != tt.want {
			t.Errorf("%s: Size() = %d, want %d", tt.name, got, tt.want)
		}
	}
}

// Every failed evaluation reaches OnEvalError with the failing template's
// range and what the mapper does instead.
func TestOnEvalErrorCarriesRangeAndEffect(t *testing.T) {
	for _, tc := range []struct {
		name, rule, template, effect string
		line, col                    int
	}{
		{"when", `rule "u" {
  table = "public.users"
  when  = "yes"
  invalidate { keys = ["user:${row.id}"] }
}`, "when", effectWhenIsTrue, 3, 11},
		{"refresh when", `rule "u" {
  table = "public.users"
  when  = row.email
  refresh {
    key   = "user:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}`, "when", effectDeleteKey, 3, 11},
		{"key", `rule "u" {
  table = "public.users"
  invalidate { keys = ["user:${row.id * "x"}"] }
}`, "key", effectFlush, 3, 41},
		{"key not a string", `rule "u" {
  table = "public.users"
  keyspace = ["user:*"]
  invalidate { keys = [row] }
}`, "key", effectFlush, 4, 24},
		{"value", `rule "u" {
  table = "public.users"
  refresh {
    key   = "user:${row.id}"
    value = row
    ttl   = "1h"
  }
}`, "value", effectDeleteKey, 5, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := config.Parse([]byte(tc.rule), "rules.hcl")
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			var got []EvalError
			m, err := New(cfg.Rules, Options{OnEvalError: func(e EvalError) { got = append(got, e) }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Map(wal.Txn{XID: 1, Changes: []wal.Change{{Relation: users, Kind: wal.Insert, New: tup("1", "a@x.io", "7", "Ann")}}}); err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("want one evaluation error, got %+v", got)
			}
			e := got[0]
			s := e.Diags[0].Subject
			if e.Rule != "u" || e.Template != tc.template || e.Effect != tc.effect || s == nil || s.Start.Line != tc.line || s.Start.Column != tc.col {
				t.Errorf("got %s %s %q at %v (%s); want %s %q at %d:%d", e.Rule, e.Template, e.Effect, s, e.Diags.Error(), tc.template, tc.effect, tc.line, tc.col)
			}
		})
	}
}
