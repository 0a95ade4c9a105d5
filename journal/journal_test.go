package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/wal"
)

var t0 = time.Date(2026, 8, 1, 12, 0, 0, 123456000, time.UTC)

// clock is a settable Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *clock { return &clock{now: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// syncBuffer collects log output from any goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

func open(t testing.TB, opts Options) *Journal {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Now == nil {
		// The entries' commit times are around t0: keep the default age
		// retention from removing them.
		opts.Now = newClock(t0.Add(time.Hour)).Now
	}
	if reflect.ValueOf(opts.Logger).IsZero() {
		opts.Logger = testLogger(t)
	}
	j, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func appendOK(t testing.TB, j *Journal, batches ...mapping.Batch) {
	t.Helper()
	if err := j.Append(context.Background(), batches); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

// del is a batch of delete operations ending at end, committed end seconds
// after t0.
func del(end wal.LSN, keys ...string) mapping.Batch {
	b := mapping.Batch{XID: uint32(end), CommitLSN: end - 1, EndLSN: end, CommitTime: t0.Add(time.Duration(end) * time.Second)}
	for _, k := range keys {
		b.Ops = append(b.Ops, mapping.Op{Kind: mapping.OpDelete, Key: k, Rule: "user"})
	}
	return b
}

func collect(t testing.TB, replay func(fn func(mapping.Batch) error) error) []mapping.Batch {
	t.Helper()
	var got []mapping.Batch
	if err := replay(func(b mapping.Batch) error {
		got = append(got, b)
		return nil
	}); err != nil {
		t.Fatalf("replay: %v", err)
	}
	return got
}

func replayFrom(t testing.TB, j *Journal, from wal.LSN) []mapping.Batch {
	t.Helper()
	return collect(t, func(fn func(mapping.Batch) error) error {
		return j.Replay(context.Background(), from, time.Time{}, fn)
	})
}

func ends(bs []mapping.Batch) []wal.LSN {
	out := make([]wal.LSN, len(bs))
	for i, b := range bs {
		out[i] = b.EndLSN
	}
	return out
}

// sameBatches compares batches, times by instant.
func sameBatches(t testing.TB, got, want []mapping.Batch) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d batches %v, want %d %v", len(got), ends(got), len(want), ends(want))
	}
	for i := range want {
		if !sameBatch(got[i], want[i]) {
			t.Fatalf("batch %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func sameBatch(a, b mapping.Batch) bool {
	if !a.CommitTime.Equal(b.CommitTime) {
		return false
	}
	a.CommitTime, b.CommitTime = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

// allKinds has every op kind with every field set, and the edge cases of
// values that the encoding must keep apart.
func allKinds() []mapping.Op {
	ks := &mapping.Keyspace{Keys: []string{"user:*", "user:email:*"}, Tags: []string{"org:*"}, Versions: []string{"orders:customer:*"}}
	var ops []mapping.Op
	for _, kind := range []mapping.OpKind{mapping.OpDelete, mapping.OpDeleteTag, mapping.OpBumpVersion, mapping.OpSet, mapping.OpUnset, mapping.OpFlush, 0, 255} {
		ops = append(ops, mapping.Op{
			Kind:     kind,
			Key:      "key:" + kind.String() + ":\x00ünïcode",
			Value:    []byte(`{"id":1,"name":"x"}` + "\x00\xff"),
			TTL:      time.Hour + 3*time.Nanosecond,
			Jitter:   -5 * time.Minute, // negative durations survive too
			LSN:      wal.LSN(0x16_B374D848),
			Keyspace: ks,
			Rule:     "rule_" + kind.String(),
			Reason:   "reason_" + kind.String(),
		})
	}
	return append(ops,
		mapping.Op{Kind: mapping.OpSet, Key: "empty-value", Value: []byte{}, Rule: "product"}, // empty, not nil
		mapping.Op{Kind: mapping.OpDelete}, // all zero
		mapping.Op{Kind: mapping.OpFlush, Rule: "r", Reason: "truncate", Keyspace: &mapping.Keyspace{}},
		mapping.Op{Kind: mapping.OpSet, Key: "big", Value: bytes.Repeat([]byte("v"), 200_000), LSN: ^wal.LSN(0), TTL: 1<<63 - 1},
	)
}

func TestRoundTrip(t *testing.T) {
	ops := allKinds()
	tests := []struct {
		name  string
		batch mapping.Batch
	}{
		{"every kind and field", mapping.Batch{XID: 4_000_000_000, CommitLSN: 0x1_0000_0010, EndLSN: 0x1_0000_0040, CommitTime: t0, Ops: ops}},
		{"one op per kind", mapping.Batch{XID: 7, CommitLSN: 0x1_0000_0050, EndLSN: 0x1_0000_0060, CommitTime: t0.Add(time.Second), Ops: ops[:1]}},
		{"no ops (position only)", mapping.Batch{XID: 8, CommitLSN: 0x1_0000_0070, EndLSN: 0x1_0000_0080, CommitTime: t0.Add(2 * time.Second)}},
		{"barrier: no XID, no time", mapping.Batch{EndLSN: 0x1_0000_0090}},
		{"pre-epoch time", mapping.Batch{EndLSN: 0x1_0000_00a0, CommitTime: time.Date(1900, 1, 2, 3, 4, 5, 6, time.UTC), Ops: ops[3:4]}},
	}
	var all []mapping.Batch
	for _, tt := range tests {
		all = append(all, tt.batch)
	}
	dir := t.TempDir()
	j := open(t, Options{Dir: dir})
	if err := j.SetCompleteFrom(1); err != nil {
		t.Fatal(err)
	}
	appendOK(t, j, all[:2]...)
	appendOK(t, j, all[2:]...)

	check := func(t *testing.T, got []mapping.Batch) {
		t.Helper()
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) { sameBatches(t, got[i:i+1], all[i:i+1]) })
		}
		if len(got) != len(all) {
			t.Fatalf("got %d batches, want %d", len(got), len(all))
		}
	}
	t.Run("open journal", func(t *testing.T) { check(t, replayFrom(t, j, 1)) })
	t.Run("directory", func(t *testing.T) {
		check(t, collect(t, func(fn func(mapping.Batch) error) error {
			return ReplayDir(context.Background(), dir, 1, time.Time{}, fn)
		}))
	})
	j.Close()
	t.Run("reopened", func(t *testing.T) { check(t, replayFrom(t, open(t, Options{Dir: dir}), 1)) })
}

// Appends larger than the write chunk, rolling in the middle of a call.
func TestLargeAppend(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, SegmentBytes: 3 << 20})
	j.SetCompleteFrom(1)
	var group []mapping.Batch
	for i := range 8 {
		b := del(wal.LSN(10*(i+1)), "k")
		b.Ops[0].Kind, b.Ops[0].Value = mapping.OpSet, bytes.Repeat([]byte{byte(i)}, 1<<20)
		group = append(group, b)
	}
	appendOK(t, j, group...)
	if r := j.Range(); r.Segments != 3 || r.Entries != 8 {
		t.Fatalf("Range = %+v, want 8 entries over 3 segments", r)
	}
	sameBatches(t, replayFrom(t, j, 1), group)
	j.Close()
	sameBatches(t, replayFrom(t, open(t, Options{Dir: dir}), 1), group)
}

// A replayed batch belongs to the caller: it must not alias the journal's
// read buffer.
func TestReplayedBatchesDoNotAlias(t *testing.T) {
	j := open(t, Options{})
	j.SetCompleteFrom(1)
	b1, b2 := del(10, "a"), del(20, "b")
	b1.Ops[0].Value, b2.Ops[0].Value = []byte("one"), []byte("two")
	appendOK(t, j, b1, b2)
	got := replayFrom(t, j, 1)
	if string(got[0].Ops[0].Value) != "one" || got[0].Ops[0].Key != "a" {
		t.Fatalf("first batch changed by reading the second: %+v", got[0].Ops[0])
	}
}

func TestRange(t *testing.T) {
	clk := newClock(t0.Add(time.Hour))
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, Now: clk.Now})
	if r := j.Range(); r.Entries != 0 || r.OldestLSN != 0 || r.NewestLSN != 0 || !r.OldestTime.IsZero() || r.CompleteFrom != 0 {
		t.Fatalf("empty journal: Range = %+v, want zero positions", r)
	}
	if err := j.SetCompleteFrom(5); err != nil {
		t.Fatal(err)
	}
	appendOK(t, j, del(10, "a"), del(20, "b", "c"))
	appendOK(t, j, mapping.Batch{EndLSN: 30}) // a barrier: journaled at the clock's time
	r := j.Range()
	want := Range{OldestLSN: 10, NewestLSN: 30, OldestTime: t0.Add(10 * time.Second), NewestTime: clk.Now(), Entries: 3,
		Segments: 1, CompleteFrom: 5, CompleteSince: clk.Now()}
	want.Bytes = r.Bytes
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("Range:\n got %+v\nwant %+v", r, want)
	}
	size, _ := os.Stat(filepath.Join(dir, segmentName(1)))
	if r.Bytes != size.Size() {
		t.Fatalf("Range.Bytes = %d, segment file has %d", r.Bytes, size.Size())
	}
	insp, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(insp, r) {
		t.Fatalf("Inspect:\n got %+v\nwant %+v", insp, r)
	}
	if got := j.LastLSN(); got != 30 {
		t.Fatalf("LastLSN = %s, want 0/1E", got)
	}
}

func TestReplaySelection(t *testing.T) {
	j := open(t, Options{Now: newClock(t0).Now})
	if err := j.SetCompleteFrom(5); err != nil {
		t.Fatal(err)
	}
	appendOK(t, j, del(10, "a"), del(20, "b"), del(30, "c"))
	appendOK(t, j, del(40, "d"))
	tests := []struct {
		name  string
		from  wal.LSN
		since time.Time
		want  []wal.LSN
	}{
		{"from the start", 5, time.Time{}, []wal.LSN{10, 20, 30, 40}},
		{"from an entry's end (inclusive)", 20, time.Time{}, []wal.LSN{20, 30, 40}},
		{"from between entries", 21, time.Time{}, []wal.LSN{30, 40}},
		{"from the newest", 40, time.Time{}, []wal.LSN{40}},
		{"since the first commit", 0, t0.Add(10 * time.Second), []wal.LSN{10, 20, 30, 40}},
		{"since a commit time (inclusive)", 0, t0.Add(30 * time.Second), []wal.LSN{30, 40}},
		{"since between commits", 0, t0.Add(30*time.Second + 1), []wal.LSN{40}},
		{"since the future", 0, t0.Add(time.Hour), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := collect(t, func(fn func(mapping.Batch) error) error {
				return j.Replay(context.Background(), tt.from, tt.since, fn)
			})
			if !reflect.DeepEqual(ends(got), append([]wal.LSN{}, tt.want...)) {
				t.Fatalf("got %v, want %v", ends(got), tt.want)
			}
		})
	}
	// Past the newest entry: a position the journal never saw, refused
	// rather than "replayed" as nothing, by the daemon's journal and by
	// the read-only replay of the directory alike.
	for name, replay := range map[string]func(from wal.LSN, fn func(mapping.Batch) error) error{
		"Replay": func(from wal.LSN, fn func(mapping.Batch) error) error {
			return j.Replay(context.Background(), from, time.Time{}, fn)
		},
		"ReplayDir": func(from wal.LSN, fn func(mapping.Batch) error) error {
			return ReplayDir(context.Background(), j.dir, from, time.Time{}, fn)
		},
	} {
		n := 0
		err := replay(41, func(mapping.Batch) error { n++; return nil })
		if !errors.Is(err, ErrPastNewest) || !errors.Is(err, ErrNotCovered) || n != 0 {
			t.Errorf("%s from after the newest entry: %v after %d batches, want ErrPastNewest (an ErrNotCovered) and none", name, err, n)
		} else if !strings.Contains(err.Error(), "newest entry ends at LSN "+wal.LSN(40).String()) {
			t.Errorf("%s from after the newest entry: %q does not name the newest entry", name, err)
		}
		if got := collect(t, func(fn func(mapping.Batch) error) error { return replay(40, fn) }); !reflect.DeepEqual(ends(got), []wal.LSN{40}) {
			t.Errorf("%s from the newest entry: got %v, want [40]", name, ends(got))
		}
	}
	if err := j.Replay(context.Background(), 10, t0, func(mapping.Batch) error { return nil }); err == nil {
		t.Fatal("Replay with both from and since: want an error")
	}
	stop := errors.New("stop")
	n := 0
	err := j.Replay(context.Background(), 5, time.Time{}, func(mapping.Batch) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("fn error: got %v after %d calls, want it wrapped after 1", err, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := j.Replay(ctx, 5, time.Time{}, func(mapping.Batch) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Replay: %v", err)
	}
	if err := j.Append(ctx, []mapping.Batch{del(50)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Append: %v", err)
	}
}

func TestSegmentRolls(t *testing.T) {
	dir := t.TempDir()
	// Every segment past its first entry is full: one entry per segment,
	// also within one Append.
	j := open(t, Options{Dir: dir, SegmentBytes: 1, MaxAge: -1, MaxBytes: -1})
	j.SetCompleteFrom(1)
	var want []mapping.Batch
	lsn := wal.LSN(10)
	for call := range 5 {
		var group []mapping.Batch
		for range call + 1 {
			group = append(group, del(lsn, fmt.Sprint("k", lsn)))
			lsn += 10
		}
		appendOK(t, j, group...)
		want = append(want, group...)
	}
	files, _ := listSegments(dir)
	if len(files) != len(want) {
		t.Fatalf("%d segments for %d entries, want one each", len(files), len(want))
	}
	sameBatches(t, replayFrom(t, j, 1), want)
	sameBatches(t, replayFrom(t, j, 75), want[7:])
	if r := j.Range(); r.Entries != int64(len(want)) || r.OldestLSN != 10 || r.NewestLSN != lsn-10 || r.Segments != len(want) {
		t.Fatalf("Range = %+v", r)
	}
	insp, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Entries is estimated for segments Inspect does not read.
	if n := int64(len(want)); insp.OldestLSN != 10 || insp.NewestLSN != lsn-10 || insp.Entries < n*8/10 || insp.Entries > n*12/10 {
		t.Fatalf("Inspect = %+v", insp)
	}
	j.Close()

	// Bigger segments: several entries each, order kept across reopen.
	j = open(t, Options{Dir: dir, SegmentBytes: 200, MaxAge: -1, MaxBytes: -1})
	for range 20 {
		b := del(lsn, "x", "y", "z")
		appendOK(t, j, b)
		want = append(want, b)
		lsn += 10
	}
	j.Close()
	j = open(t, Options{Dir: dir, SegmentBytes: 200, MaxAge: -1, MaxBytes: -1})
	sameBatches(t, replayFrom(t, j, 1), want)
	sameBatches(t, collect(t, func(fn func(mapping.Batch) error) error {
		return ReplayDir(context.Background(), dir, 1, time.Time{}, fn)
	}), want)
}

// buildJournal writes a journal whose newest segment ends with one record
// appended by its own call; lastOff is where that record starts in the
// newest segment, size that segment's size.
func buildJournal(t *testing.T, dir string, segmentBytes int64) (first []mapping.Batch, last mapping.Batch, lastOff, size int64) {
	t.Helper()
	j := open(t, Options{Dir: dir, SegmentBytes: segmentBytes})
	j.SetCompleteFrom(1)
	first = []mapping.Batch{del(10, "a"), del(20, "b", "c"), {EndLSN: 25}}
	appendOK(t, j, first...)
	if err := j.SaveState(State{SystemID: "7", Timeline: 1, Slot: "cachesync"}); err != nil {
		t.Fatal(err)
	}
	before := *j.segs[len(j.segs)-1]
	last = del(30, "d")
	last.Ops[0].Value = []byte("value")
	appendOK(t, j, last)
	after := *j.segs[len(j.segs)-1]
	lastOff = before.size
	if after.seq != before.seq {
		lastOff = segmentHeaderSize
	}
	j.Close()
	return first, last, lastOff, after.size
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	des, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		data, err := os.ReadFile(filepath.Join(src, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, de.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestCrashRecovery(t *testing.T) {
	for _, layout := range []struct {
		name         string
		segmentBytes int64
	}{{"one segment", 0}, {"last record alone in the newest segment", 1}} {
		t.Run(layout.name, func(t *testing.T) {
			golden := t.TempDir()
			first, last, lastOff, size := buildJournal(t, golden, layout.segmentBytes)
			files, _ := listSegments(golden)
			segName := filepath.Base(files[len(files)-1].path)

			type damage struct {
				apply    func(data []byte) []byte
				keepLast bool // the last record is intact
			}
			damages := map[string]damage{}
			for cut := lastOff; cut < size; cut++ {
				damages[fmt.Sprintf("cut at %d", cut)] = damage{apply: func(data []byte) []byte { return data[:cut] }}
			}
			for off := lastOff; off < size; off++ {
				damages[fmt.Sprintf("flip byte %d", off)] = damage{apply: func(data []byte) []byte { data[off] ^= 0x5a; return data }}
			}
			damages["garbage appended"] = damage{apply: func(data []byte) []byte { return append(data, 1, 2, 3) }, keepLast: true}
			damages["zeros appended"] = damage{apply: func(data []byte) []byte { return append(data, make([]byte, 4096)...) }, keepLast: true}

			for name, d := range damages {
				t.Run(name, func(t *testing.T) {
					dir := copyDir(t, golden)
					path := filepath.Join(dir, segName)
					data, _ := os.ReadFile(path)
					torn := d.apply(data)
					os.WriteFile(path, torn, 0o600)

					want := append([]mapping.Batch{}, first...)
					cut, newest := int64(len(torn))-lastOff, wal.LSN(25)
					if d.keepLast {
						want, cut, newest = append(want, last), int64(len(torn))-size, 30
					}
					var logs syncBuffer
					j := open(t, Options{Dir: dir, SegmentBytes: layout.segmentBytes, Logger: zerolog.New(&logs)})
					sameBatches(t, replayFrom(t, j, 1), want)
					if cut > 0 && !strings.Contains(logs.String(), fmt.Sprintf(`"bytes":%d`, cut)) {
						t.Fatalf("cutting %d bytes was not logged with the size: %s", cut, logs.String())
					}
					if got := j.LastLSN(); got != newest {
						t.Fatalf("LastLSN after recovery = %s, want %s", got, newest)
					}
					// The next append after recovery lands and survives a reopen.
					again := del(40, "e")
					appendOK(t, j, again)
					want = append(want, again)
					sameBatches(t, replayFrom(t, j, 1), want)
					j.Close()
					j = open(t, Options{Dir: dir, SegmentBytes: layout.segmentBytes})
					sameBatches(t, replayFrom(t, j, 1), want)
					if st, ok := j.State(); !ok || st.Slot != "cachesync" {
						t.Fatalf("State after recovery = %+v, %v", st, ok)
					}
				})
			}
		})
	}
}

// Inspect and ReplayDir, reading a crashed journal nobody reopened, ignore
// the torn tail and change nothing.
func TestReadOnlyReadersIgnoreTornTail(t *testing.T) {
	dir := t.TempDir()
	first, _, _, size := buildJournal(t, dir, 0)
	path := filepath.Join(dir, segmentName(1))
	os.Truncate(path, size-3)

	r, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.NewestLSN != 25 || r.Entries != 3 {
		t.Fatalf("Inspect = %+v, want newest 0/19 and 3 entries", r)
	}
	got := collect(t, func(fn func(mapping.Batch) error) error {
		return ReplayDir(context.Background(), dir, 1, time.Time{}, fn)
	})
	sameBatches(t, got, first)
	if info, _ := os.Stat(path); info.Size() != size-3 {
		t.Fatalf("a reader changed the segment: %d bytes, want %d", info.Size(), size-3)
	}
}

func TestTornSegmentHeader(t *testing.T) {
	for _, keep := range []int{0, 1, segmentHeaderSize - 1, segmentHeaderSize} {
		t.Run(fmt.Sprint(keep, " bytes"), func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, Options{Dir: dir, SegmentBytes: 1})
			j.SetCompleteFrom(1)
			appendOK(t, j, del(10, "a"))
			appendOK(t, j, del(20, "b")) // rolls to segment 2
			j.Close()
			// A crash while creating segment 3: its header is torn or unsynced.
			data := appendSegmentHeader(nil, 3)[:keep]
			if keep == segmentHeaderSize {
				data = make([]byte, keep) // size extended, data never written
			}
			os.WriteFile(filepath.Join(dir, segmentName(3)), data, 0o600)
			j = open(t, Options{Dir: dir, SegmentBytes: 1})
			appendOK(t, j, del(30, "c"))
			if got := ends(replayFrom(t, j, 1)); !reflect.DeepEqual(got, []wal.LSN{10, 20, 30}) {
				t.Fatalf("got %v", got)
			}
		})
	}
}

func TestDamageInOlderSegment(t *testing.T) {
	golden := t.TempDir()
	j := open(t, Options{Dir: golden, SegmentBytes: 1})
	j.SetCompleteFrom(1)
	appendOK(t, j, del(10, "a"), del(20, "b"), del(30, "c")) // segments 1, 2, 3
	j.Close()

	for _, tt := range []struct {
		name   string
		seq    uint64
		offset int64
	}{
		{"record in the oldest segment", 1, segmentHeaderSize + 12},
		{"record in a middle segment", 2, segmentHeaderSize + 3},
		{"header of an older segment", 1, 9},
		{"header of the newest segment", 3, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := copyDir(t, golden)
			path := filepath.Join(dir, segmentName(tt.seq))
			data, _ := os.ReadFile(path)
			data[tt.offset] ^= 0x01
			os.WriteFile(path, data, 0o600)
			recordOff := int64(segmentHeaderSize)
			if tt.offset < segmentHeaderSize {
				recordOff = 0
			}
			check := func(what string, err error) {
				t.Helper()
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Path != path || ce.Offset != recordOff {
					t.Fatalf("%s: got %v, want a CorruptError for %s at %d", what, err, path, recordOff)
				}
				msg := err.Error()
				for _, s := range []string{segmentName(tt.seq), fmt.Sprintf("offset %d", recordOff), "restore"} {
					if !strings.Contains(msg, s) {
						t.Fatalf("%s: message lacks %q: %s", what, s, msg)
					}
				}
			}
			_, err := Open(Options{Dir: dir})
			check("Open", err)
			check("ReplayDir", ReplayDir(context.Background(), dir, 1, time.Time{}, func(mapping.Batch) error { return nil }))
			if !strings.Contains(err.Error(), "move") {
				t.Fatalf("Open's message does not say what to move: %v", err)
			}
			if tt.seq == 1 {
				// Follow the advice: move the damaged segment away. The
				// journal now covers only what follows.
				os.Rename(path, path+".damaged")
				// Readers judge coverage as Open will, before any Open.
				if err := ReplayDir(context.Background(), dir, 19, time.Time{}, func(mapping.Batch) error { return nil }); !errors.Is(err, ErrNotCovered) {
					t.Fatalf("ReplayDir before the removed segment: %v, want ErrNotCovered", err)
				}
				if r, err := Inspect(dir); err != nil || r.CompleteFrom != 20 || r.OldestLSN != 20 {
					t.Fatalf("Inspect after the removal: %+v, %v", r, err)
				}
				j := open(t, Options{Dir: dir})
				if got := ends(replayFrom(t, j, 20)); !reflect.DeepEqual(got, []wal.LSN{20, 30}) {
					t.Fatalf("after moving the damaged segment: replay got %v", got)
				}
				if err := j.Replay(context.Background(), 19, time.Time{}, func(mapping.Batch) error { return nil }); !errors.Is(err, ErrNotCovered) {
					t.Fatalf("replay before the removed segment: %v, want ErrNotCovered", err)
				}
			}
		})
	}
}

func TestMissingMiddleSegment(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, SegmentBytes: 1})
	j.SetCompleteFrom(1)
	appendOK(t, j, del(10, "a"), del(20, "b"), del(30, "c"))
	j.Close()
	os.Remove(filepath.Join(dir, segmentName(2)))
	_, err := Open(Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), segmentName(2)+" is missing") {
		t.Fatalf("Open with a hole: %v", err)
	}
	if err := ReplayDir(context.Background(), dir, 1, time.Time{}, func(mapping.Batch) error { return nil }); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("ReplayDir with a hole: %v", err)
	}
}

func TestRetentionByAge(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, SegmentBytes: 1, MaxAge: 90 * time.Minute, Now: clk.Now})
	if err := j.SetCompleteFrom(5); err != nil {
		t.Fatal(err)
	}
	// One entry per segment, an hour apart, appended as they commit.
	for i, end := range []wal.LSN{10, 20, 30, 40} {
		at := t0.Add(time.Duration(i) * time.Hour)
		clk.Set(at)
		b := del(end, "k")
		b.CommitTime = at
		appendOK(t, j, b)
	}
	// At t0+3h the entries of t0 and t0+1h are older than 90 minutes.
	r := j.Range()
	if r.OldestLSN != 30 || r.Entries != 2 || r.CompleteFrom != 20 || !r.CompleteSince.Equal(t0.Add(time.Hour)) {
		t.Fatalf("Range after retention = %+v, want oldest 0/1E, complete from 0/14 since t0+1h", r)
	}
	if files, _ := listSegments(dir); len(files) != 2 || files[0].seq != 3 {
		t.Fatalf("segments left: %+v", files)
	}
	coverage(t, j, dir, 20, t0.Add(time.Hour))

	// Negative MaxAge keeps everything, whatever the clock says.
	j.Close()
	clk.Set(t0.Add(1000 * time.Hour))
	j = open(t, Options{Dir: dir, SegmentBytes: 1, MaxAge: -1, Now: clk.Now})
	appendOK(t, j, del(50, "k"))
	if r := j.Range(); r.OldestLSN != 30 {
		t.Fatalf("MaxAge < 0 removed entries: %+v", r)
	}
	// The default (24h) does remove them, at Open already.
	j.Close()
	j = open(t, Options{Dir: dir, SegmentBytes: 1, Now: clk.Now})
	if r := j.Range(); r.OldestLSN != 50 || r.CompleteFrom != 40 {
		t.Fatalf("default MaxAge at Open: %+v", r)
	}
}

// coverage checks the boundary: covered exactly at (from, since), refused
// just before, through the open journal and the directory.
func coverage(t *testing.T, j *Journal, dir string, from wal.LSN, since time.Time) {
	t.Helper()
	nop := func(mapping.Batch) error { return nil }
	ctx := context.Background()
	for _, tt := range []struct {
		name    string
		from    wal.LSN
		since   time.Time
		covered bool
	}{
		{"at the complete-from LSN", from, time.Time{}, true},
		// Past it is covered while an entry ends there or later; past
		// every entry it is a position the journal never saw.
		{"past it", from + 1, time.Time{}, j.Range().NewestLSN > from},
		{"one before it", from - 1, time.Time{}, false},
		{"from 0", 0, time.Time{}, false},
		{"at the complete-since time", 0, since, true},
		{"one nanosecond before it", 0, since.Add(-1), false},
	} {
		for _, replay := range []struct {
			name string
			run  func() error
		}{
			{"Journal.Replay", func() error { return j.Replay(ctx, tt.from, tt.since, nop) }},
			{"ReplayDir", func() error { return ReplayDir(ctx, dir, tt.from, tt.since, nop) }},
		} {
			err := replay.run()
			switch {
			case tt.covered && err != nil:
				t.Errorf("%s %s: %v, want covered", replay.name, tt.name, err)
			case !tt.covered && !errors.Is(err, ErrNotCovered):
				t.Errorf("%s %s: %v, want ErrNotCovered", replay.name, tt.name, err)
			case !tt.covered && !strings.Contains(err.Error(), "--flush"):
				t.Errorf("%s %s: the message does not suggest --flush: %v", replay.name, tt.name, err)
			}
		}
	}
}

func TestRetentionBySize(t *testing.T) {
	dir := t.TempDir()
	segSize := int64(segmentHeaderSize) + int64(len(mustRecord(t, del(10, "key-0000"))))
	j := open(t, Options{Dir: dir, SegmentBytes: 1, MaxBytes: 4 * segSize, MaxAge: -1})
	j.SetCompleteFrom(1)
	for i := range 10 {
		appendOK(t, j, del(wal.LSN(10*(i+1)), fmt.Sprintf("key-%04d", i)))
		if r := j.Range(); r.Bytes > 4*segSize {
			t.Fatalf("after %d appends the journal holds %d bytes, more than MaxBytes %d", i+1, r.Bytes, 4*segSize)
		}
	}
	r := j.Range()
	if r.Segments != 4 || r.OldestLSN != 70 || r.NewestLSN != 100 || r.CompleteFrom != 60 {
		t.Fatalf("Range = %+v, want the 4 newest segments (0/46..0/64), complete from 0/3C", r)
	}
	if got := ends(replayFrom(t, j, 60)); !reflect.DeepEqual(got, []wal.LSN{70, 80, 90, 100}) {
		t.Fatalf("replay from the boundary: %v", got)
	}
	coverage(t, j, dir, 60, r.CompleteSince)
}

func mustRecord(t *testing.T, b mapping.Batch) []byte {
	rec, err := appendRecord(nil, &b, t0, maxPayload)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestNotCovered(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, Now: clk.Now})
	nop := func(mapping.Batch) error { return nil }
	appendOK(t, j, del(10, "a"))

	// Nobody said where the journal starts: nothing is covered.
	err := j.Replay(context.Background(), 10, time.Time{}, nop)
	if !errors.Is(err, ErrNotCovered) || !strings.Contains(err.Error(), "0/A") {
		t.Fatalf("without SetCompleteFrom: %v, want ErrNotCovered naming the oldest entry", err)
	}

	// The daemon started streaming from the slot at 0/64 (100).
	clk.Set(t0.Add(time.Minute))
	if err := j.SetCompleteFrom(100); err != nil {
		t.Fatal(err)
	}
	err = j.Replay(context.Background(), 99, time.Time{}, nop)
	for _, s := range []string{"0/63", "0/64", "0/A", "--flush"} {
		if !strings.Contains(fmt.Sprint(err), s) {
			t.Fatalf("before SetCompleteFrom's point: message lacks %q: %v", s, err)
		}
	}
	coverage(t, j, dir, 100, t0.Add(time.Minute))

	// Moving it back changes nothing; 0/0 is refused.
	if err := j.SetCompleteFrom(50); err != nil {
		t.Fatal(err)
	}
	if r := j.Range(); r.CompleteFrom != 100 {
		t.Fatalf("SetCompleteFrom moved back to %s", r.CompleteFrom)
	}
	if err := j.SetCompleteFrom(0); err == nil {
		t.Fatal("SetCompleteFrom(0): want an error")
	}
	// It survives a reopen.
	j.Close()
	j = open(t, Options{Dir: dir, Now: clk.Now})
	if r := j.Range(); r.CompleteFrom != 100 || !r.CompleteSince.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after reopen: %+v", r)
	}
	if got := j.LastLSN(); got != 100 {
		t.Fatalf("LastLSN = %s, want the complete-from point 0/64 (above the newest entry)", got)
	}
}

func TestRedeliveryIsSkipped(t *testing.T) {
	j := open(t, Options{})
	j.SetCompleteFrom(1)
	appendOK(t, j, del(10, "a"), del(20, "b"), mapping.Batch{EndLSN: 20}, del(30, "c"))
	// After a restart the stream redelivers what was not confirmed.
	appendOK(t, j, del(20, "b"), del(30, "c"), mapping.Batch{EndLSN: 30}, del(40, "d"))
	// A barrier, then a transaction ending at the same position: both kept.
	appendOK(t, j, mapping.Batch{EndLSN: 50}, del(50, "e"), del(50, "e"))
	got := replayFrom(t, j, 1)
	if want := []wal.LSN{10, 20, 30, 40, 50, 50}; !reflect.DeepEqual(ends(got), want) {
		t.Fatalf("got %v, want %v", ends(got), want)
	}
	if len(got[4].Ops) != 0 || len(got[5].Ops) != 1 {
		t.Fatalf("at 0/32: got %+v then %+v, want the barrier then the transaction", got[4], got[5])
	}
	// A call of only redeliveries writes nothing.
	before := j.Range()
	appendOK(t, j, del(40, "d"))
	if after := j.Range(); after != before {
		t.Fatalf("a redelivery changed the journal: %+v -> %+v", before, after)
	}
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir})
	j.SetCompleteFrom(1)

	_, err := Open(Options{Dir: dir})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	for _, s := range []string{dir, fmt.Sprintf("process %d", os.Getpid()), "another cachesync", "--data-dir"} {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("lock message lacks %q: %v", s, err)
		}
	}

	// Inspect and ReplayDir work while it is open, and see what is appended.
	for i := range 3 {
		appendOK(t, j, del(wal.LSN(10*(i+1)), "k"))
		r, err := Inspect(dir)
		if err != nil {
			t.Fatal(err)
		}
		if want := j.Range(); r != want {
			t.Fatalf("Inspect = %+v, Range = %+v", r, want)
		}
		got := collect(t, func(fn func(mapping.Batch) error) error {
			return ReplayDir(context.Background(), dir, 1, time.Time{}, fn)
		})
		if len(got) != i+1 {
			t.Fatalf("ReplayDir saw %d entries, want %d", len(got), i+1)
		}
	}

	j.Close()
	j2 := open(t, Options{Dir: dir})
	if r := j2.Range(); r.Entries != 3 {
		t.Fatalf("after Close and Open: %+v", r)
	}
	if err := j.Append(context.Background(), []mapping.Batch{del(40)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
}

func TestState(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir})
	if _, ok := j.State(); ok {
		t.Fatal("new journal has a State")
	}
	want := State{SystemID: "7412345678901234567", Timeline: 3, Slot: "cachesync"}
	if err := j.SaveState(want); err != nil {
		t.Fatal(err)
	}
	if got, ok := j.State(); !ok || got != want {
		t.Fatalf("State = %+v, %v", got, ok)
	}
	j.Close()
	j = open(t, Options{Dir: dir})
	if got, ok := j.State(); !ok || got != want {
		t.Fatalf("State after reopen = %+v, %v", got, ok)
	}
	if got, ok, err := ReadState(dir); err != nil || !ok || got != want {
		t.Fatalf("ReadState = %+v, %v, %v", got, ok, err)
	}
	// Atomic replacement leaves no temporary file behind.
	if _, err := os.Stat(filepath.Join(dir, stateFile+tmpSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary state file left: %v", err)
	}
}

func TestReset(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, SegmentBytes: 1})
	j.SetCompleteFrom(1)
	appendOK(t, j, del(1000, "a"), del(2000, "b"))
	// A new PostgreSQL system: its LSNs start low again.
	if err := j.Reset(50); err != nil {
		t.Fatal(err)
	}
	appendOK(t, j, del(60, "c"))
	if got := ends(replayFrom(t, j, 50)); !reflect.DeepEqual(got, []wal.LSN{60}) {
		t.Fatalf("after Reset: %v", got)
	}
	j.Close()
	j = open(t, Options{Dir: dir, SegmentBytes: 1})
	if r := j.Range(); r.Entries != 1 || r.CompleteFrom != 50 || r.OldestLSN != 60 {
		t.Fatalf("after Reset and reopen: %+v", r)
	}
}

// After a failed write the journal refuses to append until reopened, and the
// reopen recovers.
func TestWriteFailureSticks(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir})
	j.SetCompleteFrom(1)
	appendOK(t, j, del(10, "a"))
	j.f.Close() // the next write fails, as on EIO
	if err := j.Append(context.Background(), []mapping.Batch{del(20, "b")}); err == nil {
		t.Fatal("Append on a failing file succeeded")
	}
	err := j.Append(context.Background(), []mapping.Batch{del(30, "c")})
	if err == nil || !strings.Contains(err.Error(), "open it again") {
		t.Fatalf("Append after a failure: %v, want a refusal that says to reopen", err)
	}
	j.Close()
	j = open(t, Options{Dir: dir})
	appendOK(t, j, del(30, "c"))
	if got := ends(replayFrom(t, j, 1)); !reflect.DeepEqual(got, []wal.LSN{10, 30}) {
		t.Fatalf("after reopen: %v", got)
	}
}

func TestMetadataMissing(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir})
	j.SetCompleteFrom(1)
	appendOK(t, j, del(10, "a"))
	j.Close()
	os.Remove(filepath.Join(dir, metaFile))
	j = open(t, Options{Dir: dir})
	if err := j.Replay(context.Background(), 1, time.Time{}, func(mapping.Batch) error { return nil }); !errors.Is(err, ErrNotCovered) {
		t.Fatalf("replay without metadata: %v, want ErrNotCovered", err)
	}
	if got := j.LastLSN(); got != 10 {
		t.Fatalf("LastLSN = %s", got)
	}
	// The damaged kind is refused with the way out.
	j.Close()
	os.WriteFile(filepath.Join(dir, metaFile), []byte("{"), 0o600)
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("Open with damaged metadata: %v", err)
	}
}

func TestNewerFormatRefused(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir})
	appendOK(t, j, del(10, "a"))
	j.Close()
	path := filepath.Join(dir, segmentName(1))
	data, _ := os.ReadFile(path)
	hdr := appendSegmentHeader(nil, 1)
	hdr[8] = formatVersion + 1
	binary.LittleEndian.PutUint32(hdr[20:], crc32.Checksum(hdr[:20], castagnoli))
	os.WriteFile(path, append(hdr, data[segmentHeaderSize:]...), 0o600)
	_, err := Open(Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "newer cachesync") {
		t.Fatalf("Open of a newer format: %v", err)
	}
	if info, _ := os.Stat(path); info.Size() != int64(len(data)) {
		t.Fatal("Open cut a segment of a newer format")
	}
	m := meta{Format: formatVersion + 1}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, metaFile), b, 0o600)
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "newer cachesync") {
		t.Fatalf("Open with newer metadata: %v", err)
	}
}

// Readers in other goroutines (as `cachesync status` and `replay` in other
// processes) while the daemon appends, rolls and removes segments.
func TestConcurrentReaders(t *testing.T) {
	dir := t.TempDir()
	j := open(t, Options{Dir: dir, SegmentBytes: 300, MaxBytes: 3000, MaxAge: -1})
	j.SetCompleteFrom(1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 300 {
			if err := j.Append(context.Background(), []mapping.Batch{del(wal.LSN(10*(i+1)), "a", "b")}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		r, err := Inspect(dir)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		if r.Entries > 0 && r.OldestLSN > r.NewestLSN {
			t.Fatalf("Inspect: %+v", r)
		}
		from := max(r.CompleteFrom, 1)
		var prev wal.LSN
		err = ReplayDir(context.Background(), dir, from, time.Time{}, func(b mapping.Batch) error {
			if b.EndLSN < from || b.EndLSN <= prev {
				return fmt.Errorf("replayed %s after %s (from %s)", b.EndLSN, prev, from)
			}
			prev = b.EndLSN
			return nil
		})
		if err != nil && !errors.Is(err, ErrNotCovered) {
			t.Fatalf("ReplayDir: %v", err)
		}
		prev = 0
		err = j.Replay(context.Background(), max(j.Range().CompleteFrom, 1), time.Time{}, func(b mapping.Batch) error {
			if b.EndLSN <= prev {
				return fmt.Errorf("replayed %s after %s", b.EndLSN, prev)
			}
			prev = b.EndLSN
			return nil
		})
		if err != nil && !errors.Is(err, ErrNotCovered) {
			t.Fatalf("Replay: %v", err)
		}
	}
	// Retention waits while a replay reads, so the last appends may have
	// left it undone: the next append, with no reader, catches up. A
	// segment may pass SegmentBytes by the entry that crosses it.
	if err := j.Append(context.Background(), []mapping.Batch{del(3010, "a")}); err != nil {
		t.Fatal(err)
	}
	if r := j.Range(); r.NewestLSN != 3010 || r.Bytes > 3000+400 {
		t.Fatalf("final Range: %+v", r)
	}
}

func TestOptionsRequired(t *testing.T) {
	if _, err := Open(Options{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Fatalf("Open without Dir: %v", err)
	}
	if _, err := Inspect(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Inspect of nothing: %v", err)
	}
}

// fuzzBatches are the entries the fuzz seeds were written from: the only
// ones any reader may ever return.
func fuzzBatches() []mapping.Batch {
	b1 := del(10, "user:1", "user:email:a@b")
	// Small seeds keep the fuzzer's minimization short.
	b2 := mapping.Batch{XID: 2, CommitLSN: 15, EndLSN: 20, CommitTime: t0, Ops: []mapping.Op{
		{Kind: mapping.OpSet, Key: "p:1", Value: []byte("v"), TTL: time.Hour, Jitter: time.Minute, LSN: 15, Rule: "p"},
		{Kind: mapping.OpFlush, Keyspace: &mapping.Keyspace{Keys: []string{"p:*"}, Tags: []string{"t"}}, Rule: "p", Reason: "truncate"},
	}}
	b3 := mapping.Batch{EndLSN: 25}
	b4 := del(30)
	b5 := del(40, "k")
	return []mapping.Batch{b1, b2, b3, b4, b5}
}

func FuzzOpen(f *testing.F) {
	known := fuzzBatches()
	seedDir := f.TempDir()
	j, err := Open(Options{Dir: seedDir, Now: newClock(t0).Now})
	if err != nil {
		f.Fatal(err)
	}
	j.Append(context.Background(), known[:3])
	j.Append(context.Background(), known[3:])
	j.Close()
	seg, err := os.ReadFile(filepath.Join(seedDir, segmentName(1)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seg)
	f.Add(seg[:len(seg)-1])
	f.Add(seg[:segmentHeaderSize])
	f.Add(seg[:segmentHeaderSize+9])
	f.Add([]byte{})
	flipped := bytes.Clone(seg)
	flipped[segmentHeaderSize+20] ^= 1
	f.Add(flipped)
	f.Add(append(bytes.Clone(seg), seg[segmentHeaderSize:]...)) // records repeated: positions go back

	m := meta{Format: formatVersion, FirstSegment: 1}
	m.setComplete(1, t0.Add(-time.Hour))
	metaJSON, _ := json.Marshal(m)
	extra := del(1000, "after-recovery")
	isKnown := func(b mapping.Batch) bool {
		for _, k := range append(known, extra) {
			if sameBatch(b, k) {
				return true
			}
		}
		return false
	}
	knownLSN := func(l wal.LSN) bool {
		for _, k := range known {
			if k.EndLSN == l {
				return true
			}
		}
		return l == 0
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, metaFile), metaJSON, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		check := func(b mapping.Batch) error {
			if !isKnown(b) {
				t.Fatalf("returned an entry nobody appended: %+v", b)
			}
			return nil
		}
		if r, err := Inspect(dir); err == nil && (!knownLSN(r.OldestLSN) || !knownLSN(r.NewestLSN)) {
			t.Fatalf("Inspect reports positions nobody appended: %+v", r)
		}
		_ = ReplayDir(context.Background(), dir, 1, time.Time{}, check)
		_ = ReplayDir(context.Background(), dir, 0, t0.Add(-time.Hour), check)

		j, err := Open(Options{Dir: dir, Logger: zerolog.Nop(), Now: newClock(t0).Now})
		if err != nil {
			return // refused, with a message: fine
		}
		defer j.Close()
		if err := j.Replay(context.Background(), 1, time.Time{}, check); err != nil && !(errors.Is(err, ErrPastNewest) && j.Range().Entries == 0) {
			t.Fatalf("Replay after a successful Open: %v", err)
		}
		if r := j.Range(); !knownLSN(r.OldestLSN) || !knownLSN(r.NewestLSN) {
			t.Fatalf("Range reports positions nobody appended: %+v", r)
		}
		// Appending after recovery works and the entry replays last.
		if err := j.Append(context.Background(), []mapping.Batch{extra}); err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
		var last mapping.Batch
		if err := j.Replay(context.Background(), 1, time.Time{}, func(b mapping.Batch) error { last = b; return check(b) }); err != nil {
			t.Fatalf("Replay after Append: %v", err)
		}
		if !sameBatch(last, extra) {
			t.Fatalf("last entry after Append is %+v", last)
		}
		j.Close()
		if _, err := Inspect(dir); err != nil {
			t.Fatalf("Inspect after recovery and Append: %v", err)
		}
	})
}

// BenchmarkAppend appends groups of 1,000 transactions of 10 deletes each,
// as the daemon does under load; one fsync per op (per group).
func BenchmarkAppend(b *testing.B) {
	j := open(b, Options{Dir: b.TempDir(), Logger: zerolog.Nop()})
	j.SetCompleteFrom(1)
	group := make([]mapping.Batch, 1000)
	for i := range group {
		ops := make([]mapping.Op, 10)
		for k := range ops {
			ops[k] = mapping.Op{Kind: mapping.OpDelete, Key: fmt.Sprintf("user:%d:profile:%d", i, k), Rule: "user"}
		}
		group[i] = mapping.Batch{XID: uint32(i), CommitTime: t0, Ops: ops}
	}
	lsn := wal.LSN(1 << 32)
	next := func() {
		for i := range group {
			lsn += 100
			group[i].CommitLSN, group[i].EndLSN = lsn-50, lsn
		}
	}
	next()
	appendOK(b, j, group...) // warm: the buffer grows once
	b.SetBytes(j.Range().Bytes - segmentHeaderSize)
	b.ReportAllocs()
	ctx := context.Background()
	for b.Loop() {
		next()
		if err := j.Append(ctx, group); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(group)), "ns/batch")
}

// FuzzDecodeEntry feeds arbitrary payloads to the entry decoder, past the
// checksum that keeps them from FuzzOpen: it must never panic, its checking
// and its decoding modes must agree, and what it accepts must encode back to
// the same entry.
func FuzzDecodeEntry(f *testing.F) {
	for _, b := range fuzzBatches() {
		rec, err := appendRecord(nil, &b, t0, maxPayload)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rec[frameHeaderSize:])
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, e, err := decodeEntry(payload, true)
		_, e2, err2 := decodeEntry(payload, false)
		if (err == nil) != (err2 == nil) || e != e2 {
			t.Fatalf("decoding says %v (%+v), checking says %v (%+v)", err, e, err2, e2)
		}
		if err != nil {
			return
		}
		rec, err := appendRecord(nil, &b, e.Time, maxPayload)
		if err != nil {
			t.Fatal(err)
		}
		again, e3, err := decodeEntry(rec[frameHeaderSize:], true)
		if err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		if !sameBatch(again, b) || e3 != e {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", b, again)
		}
	})
}

// A batch whose record exceeds the record limit must not stop the journal
// for good (a restart would redeliver it and fail again): Oversized
// replaces its operations by flushes of the rules they belong to, which
// replay at least as strongly, and the journal goes on.
func TestOversizedRecord(t *testing.T) {
	keyspaces := map[string]mapping.Keyspace{
		"docs":  {Keys: []string{"doc:*"}},
		"users": {Keys: []string{"user:*"}, Tags: []string{"org:*"}},
	}
	wide := del(20, "doc:1")
	wide.Ops[0].Kind, wide.Ops[0].Value, wide.Ops[0].Rule = mapping.OpSet, bytes.Repeat([]byte{'x'}, 64<<10), "docs"
	wide.Ops = append(wide.Ops,
		mapping.Op{Kind: mapping.OpDelete, Key: "user:1", Rule: "users"},
		mapping.Op{Kind: mapping.OpSet, Key: "doc:2", Value: bytes.Repeat([]byte{'y'}, 64<<10), Rule: "docs"})

	t.Run("without Oversized", func(t *testing.T) {
		j := open(t, Options{MaxRecordBytes: 32 << 10})
		j.SetCompleteFrom(1)
		err := j.Append(context.Background(), []mapping.Batch{del(10, "user:0"), wide})
		if !errors.Is(err, ErrRecordTooLarge) {
			t.Fatalf("Append = %v, want ErrRecordTooLarge", err)
		}
		appendOK(t, j, del(10, "user:0")) // nothing of the failed call was written; still usable
		sameBatches(t, replayFrom(t, j, 1), []mapping.Batch{del(10, "user:0")})
	})

	t.Run("with Oversized", func(t *testing.T) {
		var replaced []wal.LSN
		j := open(t, Options{MaxRecordBytes: 32 << 10, Oversized: func(b *mapping.Batch) (mapping.Batch, error) {
			replaced = append(replaced, b.EndLSN)
			return CoveringFlushes(b, keyspaces, "journal_record_too_large")
		}})
		j.SetCompleteFrom(1)
		appendOK(t, j, del(10, "user:0"), wide, del(30, "user:3"))
		if !slices.Equal(replaced, []wal.LSN{20}) {
			t.Errorf("Oversized called for %v, want [20]", replaced)
		}
		covered := wide
		docs, users := keyspaces["docs"], keyspaces["users"]
		covered.Ops = []mapping.Op{
			{Kind: mapping.OpFlush, Keyspace: &docs, Rule: "docs", Reason: "journal_record_too_large"},
			{Kind: mapping.OpFlush, Keyspace: &users, Rule: "users", Reason: "journal_record_too_large"},
		}
		sameBatches(t, replayFrom(t, j, 1), []mapping.Batch{del(10, "user:0"), covered, del(30, "user:3")})
	})

	t.Run("rule without a key space", func(t *testing.T) {
		if _, err := CoveringFlushes(&wide, map[string]mapping.Keyspace{"docs": {}}, "r"); err == nil || !strings.Contains(err.Error(), `"users"`) {
			t.Errorf("CoveringFlushes = %v, want an error naming rule users", err)
		}
	})
}
