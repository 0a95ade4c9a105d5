package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/wal"
)

// Encoders for pgoutput protocol 1 messages, as the server writes them.

type enc []byte

func (e enc) u8(v byte) enc      { return append(e, v) }
func (e enc) u16(v uint16) enc   { return binary.BigEndian.AppendUint16(e, v) }
func (e enc) u32(v uint32) enc   { return binary.BigEndian.AppendUint32(e, v) }
func (e enc) u64(v uint64) enc   { return binary.BigEndian.AppendUint64(e, v) }
func (e enc) str(s string) enc   { return append(append(e, s...), 0) }
func (e enc) bytes(b []byte) enc { return append(e, b...) }

type col struct {
	name string
	oid  uint32
	key  bool
}

func relationMsg(id uint32, ns, name string, identity byte, cols ...col) []byte {
	e := enc{'R'}.u32(id).str(ns).str(name).u8(identity).u16(uint16(len(cols)))
	for _, c := range cols {
		flags := byte(0)
		if c.key {
			flags = 1
		}
		e = e.u8(flags).str(c.name).u32(c.oid).u32(0xFFFFFFFF)
	}
	return e
}

func beginMsg(finalLSN uint64, xid uint32) []byte {
	return enc{'B'}.u64(finalLSN).u64(0).u32(xid)
}

func commitMsg(commitLSN, endLSN uint64) []byte {
	return enc{'C'}.u8(0).u64(commitLSN).u64(endLSN).u64(0)
}

// tupleData encodes values: "\x00" NULL, "\x01" unchanged TOAST, else text.
func tupleData(vals ...string) enc {
	e := enc{}.u16(uint16(len(vals)))
	for _, v := range vals {
		switch v {
		case "\x00":
			e = e.u8('n')
		case "\x01":
			e = e.u8('u')
		default:
			e = e.u8('t').u32(uint32(len(v))).bytes([]byte(v))
		}
	}
	return e
}

func insertMsg(rel uint32, vals ...string) []byte {
	return enc{'I'}.u32(rel).u8('N').bytes(tupleData(vals...))
}

func updateMsg(rel uint32, oldType byte, old []string, vals ...string) []byte {
	e := enc{'U'}.u32(rel)
	if oldType != 0 {
		e = e.u8(oldType).bytes(tupleData(old...))
	}
	return e.u8('N').bytes(tupleData(vals...))
}

func deleteMsg(rel uint32, oldType byte, old ...string) []byte {
	return enc{'D'}.u32(rel).u8(oldType).bytes(tupleData(old...))
}

func truncateMsg(rels ...uint32) []byte {
	e := enc{'T'}.u32(uint32(len(rels))).u8(0)
	for _, r := range rels {
		e = e.u32(r)
	}
	return e
}

func messageMsg(transactional bool, prefix, content string) []byte {
	flag := byte(0)
	if transactional {
		flag = 1
	}
	return enc{'M'}.u8(flag).u64(1).str(prefix).u32(uint32(len(content))).bytes([]byte(content))
}

func decodeAll(t *testing.T, d *Decoder, msgs ...[]byte) ([]Event, error) {
	t.Helper()
	var out []Event
	for _, m := range msgs {
		if err := d.Decode(m, func(ev Event) error { out = append(out, ev); return nil }); err != nil {
			return out, err
		}
	}
	return out, nil
}

func TestDecodeTransaction(t *testing.T) {
	d := NewDecoder("cachesync")
	users := relationMsg(16384, "public", "users", 'd', col{"id", 20, true}, col{"email", 25, false}, col{"bio", 25, false})
	events, err := decodeAll(t, d,
		users,
		beginMsg(0x200, 7),
		insertMsg(16384, "1", "a@x", "\x00"),
		updateMsg(16384, 'K', []string{"1", "\x00", "\x00"}, "2", "b@x", "\x01"),
		updateMsg(16384, 0, nil, "2", "c@x", "bio"),
		deleteMsg(16384, 'K', "2", "\x00", "\x00"),
		messageMsg(true, "cachesync.test", "hello"),
		messageMsg(true, "someone.else", "ignored"),
		messageMsg(false, "cachesync.nontx", "ignored"),
		truncateMsg(16384),
		commitMsg(0x200, 0x228),
	)
	if err != nil {
		t.Fatal(err)
	}
	kinds := make([]EventKind, len(events))
	for i, ev := range events {
		kinds[i] = ev.Kind
	}
	want := []EventKind{EventBegin, EventChange, EventChange, EventChange, EventChange, EventMessage, EventChange, EventCommit}
	if !slices.Equal(kinds, want) {
		t.Fatalf("event kinds %v, want %v", kinds, want)
	}
	ins := events[1].Change
	if ins.Kind != wal.Insert || ins.New[0] != (wal.Value{Kind: wal.Text, Text: "1"}) || ins.New[2].Kind != wal.Null {
		t.Errorf("insert %+v", ins)
	}
	upd := events[2].Change
	if upd.OldKind != wal.OldKey || upd.Old[0].Text != "1" {
		t.Errorf("update old %+v", upd)
	}
	if upd.Old[1].Kind != wal.NotSent {
		t.Errorf("a non-key slot of a key-only old tuple must be NotSent, got %v", upd.Old[1].Kind)
	}
	if upd.New[2].Kind != wal.NotSent {
		t.Errorf("an unchanged TOAST value must be NotSent, got %v", upd.New[2].Kind)
	}
	if events[3].Change.OldKind != wal.OldNone || events[3].Change.Old != nil {
		t.Errorf("update without old tuple: %+v", events[3].Change)
	}
	if del := events[4].Change; del.Kind != wal.Delete || del.Old[0].Text != "2" {
		t.Errorf("delete %+v", del)
	}
	if m := events[5].Message; m.Prefix != "cachesync.test" || string(m.Content) != "hello" {
		t.Errorf("message %+v", m)
	}
	if tr := events[6].Change; tr.Kind != wal.Truncate || tr.Relation.Name != "users" {
		t.Errorf("truncate %+v", tr)
	}
	if c := events[7].Commit; c.XID != 7 || c.CommitLSN != 0x200 || c.EndLSN != 0x228 {
		t.Errorf("commit %+v", c)
	}
	if d.InTransaction() {
		t.Error("decoder still in a transaction after commit")
	}
}

func TestDecodeRelationReplaced(t *testing.T) {
	d := NewDecoder("")
	events, err := decodeAll(t, d,
		relationMsg(1, "public", "t", 'd', col{"id", 20, true}),
		relationMsg(1, "public", "t", 'f', col{"id", 20, true}, col{"extra", 25, true}),
		beginMsg(1, 1), insertMsg(1, "1", "x"), commitMsg(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	rel := events[1].Change.Relation
	if len(rel.Columns) != 2 || rel.ReplicaIdentity != 'f' {
		t.Errorf("relation not replaced: %+v", rel)
	}
}

func TestDecodeProtocolViolations(t *testing.T) {
	rel := relationMsg(1, "public", "t", 'd', col{"id", 20, true})
	tests := []struct {
		name string
		msgs [][]byte
	}{
		{"change outside a transaction", [][]byte{rel, insertMsg(1, "1")}},
		{"nested begin", [][]byte{rel, beginMsg(1, 1), beginMsg(2, 2)}},
		{"commit outside a transaction", [][]byte{commitMsg(1, 2)}},
		{"unknown relation", [][]byte{beginMsg(1, 1), insertMsg(99, "1")}},
		{"wrong column count", [][]byte{rel, beginMsg(1, 1), insertMsg(1, "1", "2")}},
		{"unknown message type", [][]byte{{'Z', 0, 0}}},
		{"truncated message", [][]byte{rel, beginMsg(1, 1), insertMsg(1, "1")[:9]}},
		{"empty message", [][]byte{{}}},
		{"stream start (protocol 2) is not expected", [][]byte{{'S', 0, 0, 0, 1, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeAll(t, NewDecoder(""), tt.msgs...)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("want ErrProtocol, got %v", err)
			}
		})
	}
}

// FuzzDecode feeds arbitrary bytes after a valid relation and begin: decoding
// must never panic, and whatever it emits must be consistent with the relation.
func FuzzDecode(f *testing.F) {
	seeds := [][]byte{
		insertMsg(1, "1", "x"), insertMsg(1, "1", "\x00"), insertMsg(1, "\x01", "x"),
		updateMsg(1, 'K', []string{"1", "\x00"}, "2", "y"), updateMsg(1, 'O', []string{"1", "x"}, "1", "\x01"),
		deleteMsg(1, 'K', "1", "\x00"), truncateMsg(1), messageMsg(true, "cachesync.x", "c"),
		commitMsg(1, 2), relationMsg(1, "public", "t", 'f', col{"id", 20, true}),
		beginMsg(1, 1), {'Y', 1, 2, 3},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder("cachesync")
		if _, err := decodeAll(t, d, relationMsg(1, "public", "t", 'd', col{"id", 20, true}, col{"v", 25, false}), beginMsg(1, 1)); err != nil {
			t.Fatal(err)
		}
		var changes []wal.Change
		var texts [][]string // each change's values, copied when emitted
		_ = d.Decode(data, func(ev Event) error {
			if ev.Kind == EventChange && ev.Change.Kind != wal.Truncate {
				for _, tup := range []wal.Tuple{ev.Change.Old, ev.Change.New} {
					if tup != nil && len(tup) != len(ev.Change.Relation.Columns) {
						t.Fatalf("tuple of %d values for a relation of %d columns", len(tup), len(ev.Change.Relation.Columns))
					}
				}
				changes, texts = append(changes, ev.Change), append(texts, tupleTexts(ev.Change))
			}
			return nil
		})
		// data is the connection's read buffer, reused for the next
		// message: what was emitted must not refer to it.
		for i := range data {
			data[i] ^= 0xFF
		}
		for i, c := range changes {
			if got := tupleTexts(c); !slices.Equal(got, texts[i]) {
				t.Fatalf("values changed with the input buffer: %q, then %q", texts[i], got)
			}
		}
	})
}

// tupleTexts copies the texts of a change's old and new values.
func tupleTexts(c wal.Change) []string {
	var out []string
	for _, v := range append(slices.Clip(c.Old), c.New...) {
		out = append(out, strings.Clone(v.Text))
	}
	return out
}

// TestDecodeValuesOwnTheirText: the values of small messages share one copy
// of the message, larger ones get a copy each; either way they outlive the
// read buffer, and the old and new tuples of an update do not overlap.
func TestDecodeValuesOwnTheirText(t *testing.T) {
	wide := strings.Repeat("w", sharedTextMax)
	for _, tt := range []struct {
		name     string
		old, new []string
	}{
		{"small", []string{"1", "a@x", ""}, []string{"2", "b@x", `\x00ff`}},
		{"large", []string{"1", wide, `\x00`}, []string{"2", "", wide + "!"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDecoder("")
			rel := relationMsg(1, "public", "t", 'f', col{"id", 20, true}, col{"email", 25, true}, col{"bio", 25, true})
			msgs := [][]byte{rel, beginMsg(1, 1), insertMsg(1, tt.new...), updateMsg(1, 'O', tt.old, tt.new...), deleteMsg(1, 'O', tt.old...)}
			events, err := decodeAll(t, d, msgs...)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				clear(m)
			}
			ins, upd, del := events[1].Change, events[2].Change, events[3].Change
			upd.Old = append(upd.Old, wal.Value{Kind: wal.Text, Text: "appended"}) // must not write over upd.New
			for _, c := range []struct {
				name string
				tup  wal.Tuple
				want []string
			}{{"insert", ins.New, tt.new}, {"update old", upd.Old[:3], tt.old}, {"update new", upd.New, tt.new}, {"delete", del.Old, tt.old}} {
				for i, v := range c.tup {
					if v.Kind != wal.Text || v.Text != c.want[i] {
						t.Errorf("%s value %d: %v %q, want text %q", c.name, i, v.Kind, v.Text, c.want[i])
					}
				}
			}
		})
	}
}

func TestEventSize(t *testing.T) {
	text := func(s string) wal.Value { return wal.Value{Kind: wal.Text, Text: s} }
	wide := string(make([]byte, 1<<20))
	tests := []struct {
		name string
		ev   Event
		want int64
	}{
		{"begin", Event{Kind: EventBegin}, 128},
		{"barrier", Event{Kind: EventBarrier, Barrier: 5}, 128},
		{"message", Event{Kind: EventMessage, Message: wal.Message{Prefix: "cachesync.x", Content: []byte("abc")}}, 128 + 11 + 3},
		{"insert of a wide row", Event{Kind: EventChange, Change: wal.Change{Kind: wal.Insert, New: wal.Tuple{text("1"), text(wide), {Kind: wal.Null}}}}, 128 + 3*24 + 1 + 1<<20},
		{"update with the old row", Event{Kind: EventChange, Change: wal.Change{Kind: wal.Update, Old: wal.Tuple{text("1"), text(wide)}, New: wal.Tuple{text("1"), {Kind: wal.NotSent}}}}, 128 + 4*24 + 2 + 1<<20},
	}
	for _, tt := range tests {
		if got := tt.ev.Size(); got != tt.want {
			t.Errorf("%s: Size() = %d, want %d", tt.name, got, tt.want)
		}
	}
}

// benchDecode decodes msgs over and over after rel and a begin, as the
// stream does: each emitted event is handed on, nothing retained.
func benchDecode(b *testing.B, rel []byte, msgs ...[]byte) {
	d := NewDecoder("cachesync")
	if err := d.Decode(rel, func(Event) error { return nil }); err != nil {
		b.Fatal(err)
	}
	begin, commit := beginMsg(1, 1), commitMsg(1, 2)
	var sink Event
	emit := func(ev Event) error { sink = ev; return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(begin, emit); err != nil {
			b.Fatal(err)
		}
		for _, m := range msgs {
			if err := d.Decode(m, emit); err != nil {
				b.Fatal(err)
			}
		}
		if err := d.Decode(commit, emit); err != nil {
			b.Fatal(err)
		}
	}
	_ = sink
}

// The 1-row workload of cachesync-bench: a single-row transaction inserting
// into a table of three columns (REPLICA IDENTITY FULL).
func BenchmarkDecodeInsert1Row(b *testing.B) {
	rel := relationMsg(1, "public", "w", 'f', col{"id", 23, true}, col{"email", 25, true}, col{"org_id", 23, true})
	benchDecode(b, rel, insertMsg(1, "12345", "User12345@Example.com", "45"))
}

// An update carrying the full old row, as under REPLICA IDENTITY FULL.
func BenchmarkDecodeUpdateFull(b *testing.B) {
	rel := relationMsg(1, "public", "w", 'f', col{"id", 23, true}, col{"email", 25, true}, col{"org_id", 23, true})
	benchDecode(b, rel, updateMsg(1, 'O', []string{"12345", "User12345@Example.com", "45"}, "12345", "user12345@example.com", "46"))
}

// A wide row: 20 columns, some NULL, one value of 2 KiB.
func BenchmarkDecodeInsertWide(b *testing.B) {
	cols := make([]col, 20)
	vals := make([]string, 20)
	for i := range cols {
		cols[i] = col{name: fmt.Sprintf("c%d", i), oid: 25}
		vals[i] = fmt.Sprintf("value %d", i)
	}
	vals[3], vals[7] = "\x00", strings.Repeat("x", 2048)
	benchDecode(b, relationMsg(1, "public", "w", 'd', cols...), insertMsg(1, vals...))
}
