package daemon

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/replication"
)

// scriptedSnapshots answers each snapshot query with the snapshot the test
// sends, once the test has seen the query go out.
type scriptedSnapshots struct {
	asked   chan struct{}
	answers chan string
}

func newScriptedSnapshots() *scriptedSnapshots {
	return &scriptedSnapshots{asked: make(chan struct{}), answers: make(chan string)}
}

func (s *scriptedSnapshots) Snapshot(ctx context.Context) (replication.Snapshot, error) {
	select {
	case s.asked <- struct{}{}:
	case <-ctx.Done():
		return replication.Snapshot{}, ctx.Err()
	}
	select {
	case a := <-s.answers:
		return replication.ParseSnapshot(a)
	case <-ctx.Done():
		return replication.Snapshot{}, ctx.Err()
	}
}

// expect waits (with a deadline) for the gate to send its next query.
func (s *scriptedSnapshots) expect(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s.asked:
	case <-time.After(10 * time.Second):
		t.Fatalf("no snapshot query for %s", what)
	}
}

func (s *scriptedSnapshots) answer(t *testing.T, snap string) {
	t.Helper()
	select {
	case s.answers <- snap:
	case <-time.After(10 * time.Second):
		t.Fatalf("the gate does not take the answer %q", snap)
	}
}

func startGate(t *testing.T, snaps snapshotReader) *visibilityGate {
	t.Helper()
	g := newVisibilityGate(snaps, zerolog.Nop(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gate: %v", err)
		}
	})
	return g
}

func (g *visibilityGate) answers() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.answer.gen
}

func withEffects(xid uint32) mapping.Batch {
	return mapping.Batch{XID: xid, Ops: []mapping.Op{{Kind: mapping.OpDelete, Key: "k"}}}
}

// TestVisibilityGateNeverAppliesOnAnAnswerFromBeforeTheCommit: a snapshot
// query sent before a commit was received may answer that its transaction
// is finished (here, everything below 100 is), but it proves nothing about
// that commit; the group waits for the next query, sent after the commit.
func TestVisibilityGateNeverAppliesOnAnAnswerFromBeforeTheCommit(t *testing.T) {
	snaps := newScriptedSnapshots()
	g := startGate(t, snaps)
	g.note() // xid 7's commit: a query goes out
	snaps.expect(t, "the first commit")
	need := g.note() // xid 8's commit arrives while that query is out
	snaps.answer(t, "100:100:")
	deadline := time.Now().Add(10 * time.Second)
	for g.answers() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first answer was never recorded")
		}
		time.Sleep(time.Millisecond) // polling the gate's state, not waiting for an effect
	}
	blocked := make(chan struct{}, 1)
	g.blocked = func() {
		select {
		case blocked <- struct{}{}:
		default:
		}
	}
	type result struct {
		gen uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		gen, err := g.waitAnswer(context.Background(), []mapping.Batch{withEffects(8)}, need)
		done <- result{gen, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("the group passed on answer %d (%v), sent before its commit was received", r.gen, r.err)
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the wait neither passed nor waited for an answer")
	}
	snaps.expect(t, "the commit noted while the first query was out")
	snaps.answer(t, "100:100:")
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.gen != 2 {
		t.Fatalf("the group passed on answer %d; want answer 2", r.gen)
	}
}

// TestVisibilityGateOneAnswerServesEveryCommitItCovers: commits noted
// before a query went out pass on its answer together, with no query of
// their own; a commit still running waits for a later answer that shows
// it finished.
func TestVisibilityGateOneAnswerServesEveryCommitItCovers(t *testing.T) {
	snaps := newScriptedSnapshots()
	g := startGate(t, snaps)
	g.note()
	snaps.expect(t, "the first commit")
	var need uint64
	for range 3 {
		need = g.note()
	}
	snaps.answer(t, "10:10:") // the first commit's answer: xids below 10 finished
	snaps.expect(t, "the three commits noted meanwhile")
	snaps.answer(t, "12:14:12") // 10, 11 and 13 finished, 12 still running
	ctx := context.Background()
	for _, xid := range []uint32{10, 11, 13} {
		gen, err := g.waitAnswer(ctx, []mapping.Batch{withEffects(xid)}, need)
		if err != nil || gen != 2 {
			t.Fatalf("xid %d: passed on answer %d (%v), want 2", xid, gen, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- g.wait(ctx, []mapping.Batch{withEffects(12)}, need) }()
	snaps.expect(t, "the running transaction's retry")
	snaps.answer(t, "12:14:12")
	snaps.expect(t, "the running transaction's second retry")
	select {
	case err := <-done:
		t.Fatalf("xid 12 passed while running: %v", err)
	default:
	}
	snaps.answer(t, "14:14:")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestVisibilityGateFailsWithTheQuery: a failed snapshot query ends run with
// its error; the session ends.
func TestVisibilityGateFailsWithTheQuery(t *testing.T) {
	boom := errors.New("connection lost")
	g := newVisibilityGate(failingSnapshots{boom}, zerolog.Nop(), nil)
	g.note()
	if err := g.run(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("run: %v, want %v", err, boom)
	}
}

type failingSnapshots struct{ err error }

func (f failingSnapshots) Snapshot(context.Context) (replication.Snapshot, error) {
	return replication.Snapshot{}, f.err
}

// TestClearedRunTakesWhatTheLatestAnswerCovers: a group is the run of
// waiting batches, from the first, whose commits the latest answer covers;
// the batches noted after its query went out wait for the next group
// instead of holding this one for another round trip.
func TestClearedRunTakesWhatTheLatestAnswerCovers(t *testing.T) {
	snaps := newScriptedSnapshots()
	g := startGate(t, snaps)
	s := &session{gate: g}
	ctx := context.Background()
	g.note()
	snaps.expect(t, "the first commit")
	g.note()
	g.note() // commits 2 and 3 arrive while the query for 1 is out
	snaps.answer(t, "10:10:")
	pend := []queued{{seen: 1}, {seen: 0}, {seen: 2}, {seen: 3}}
	if n, err := s.clearedRun(ctx, pend); err != nil || n != 2 {
		t.Fatalf("cleared %d (%v), want 2: commit 1 and the barrier after it", n, err)
	}
	done := make(chan int, 1)
	go func() {
		n, err := s.clearedRun(ctx, pend[2:])
		if err != nil {
			t.Error(err)
		}
		done <- n
	}()
	snaps.expect(t, "commits 2 and 3")
	snaps.answer(t, "10:10:")
	if n := <-done; n != 2 {
		t.Fatalf("cleared %d, want both commits the second answer covers", n)
	}
}
