package e2e

// Issue 17: the test-only effect-drop injection (writer/faultinject.go) and
// the continuous checker of `cachesync run --verify-rate` that must find what
// it dropped.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
)

// droppedKeys reads the injection's log: one dropped key per line.
func droppedKeys(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the drop log: %v", err)
	}
	return strings.Fields(string(raw))
}

// insertProducts inserts published products 1..n, one transaction each.
func (e *env) insertEachProduct(n int) {
	for i := 1; i <= n; i++ {
		e.exec(`INSERT INTO products VALUES ($1, 'p', 1.00, true, 'd')`, i)
	}
}

func TestFaultInjectionDropsEveryNthEffect(t *testing.T) {
	bin := faultBinary(t)
	e := setup(t, schema, rules)
	dropLog := filepath.Join(t.TempDir(), "dropped")
	d := e.startBinary(bin, "CACHESYNC_DROP_EFFECTS=2", "CACHESYNC_DROP_EFFECTS_LOG="+dropLog)
	e.waitStreaming(d)

	const n = 20
	e.insertEachProduct(n)
	// Dropped effects are confirmed all the same: that is what makes them stale.
	e.caughtUp(d, 60*time.Second)
	dropped := droppedKeys(t, dropLog)
	if len(dropped) != n/2 {
		t.Fatalf("dropped %d of %d refreshes, want one in 2: %v", len(dropped), n, dropped)
	}
	for i := 1; i <= n; i++ {
		key := fmt.Sprintf("product:%d", i)
		if slices.Contains(dropped, key) {
			if e.exists(key) {
				t.Errorf("%s is listed as dropped but was written", key)
			}
		} else {
			e.waitValue(key, productJSON(i, "p", "1.00", true, "d"))
		}
	}
}

func TestDefaultBuildCannotDropEffects(t *testing.T) {
	// The production binary does not even contain the switch's name.
	raw, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("CACHESYNC_DROP_EFFECTS")) {
		t.Fatal("the default build contains CACHESYNC_DROP_EFFECTS: the effect-drop injection must exist only with -tags faultinject")
	}
	e := setup(t, schema, rules)
	dropLog := filepath.Join(t.TempDir(), "dropped")
	d := e.start("CACHESYNC_DROP_EFFECTS=2", "CACHESYNC_DROP_EFFECTS_LOG="+dropLog)
	e.waitStreaming(d)
	const n = 10
	e.insertEachProduct(n)
	e.caughtUp(d, 60*time.Second)
	for i := 1; i <= n; i++ {
		e.waitValue(fmt.Sprintf("product:%d", i), productJSON(i, "p", "1.00", true, "d"))
	}
	if _, err := os.Stat(dropLog); !os.IsNotExist(err) {
		t.Errorf("the default build wrote a drop log (%v)", err)
	}
}

// verifyWindow is the checker's window in these tests: short, so that a
// re-check (two windows) fits the test's time.
const verifyWindow = time.Second

// The checker tests' world: verifyRows users and products, and 4 clients of
// verifyStatements updates each.
const (
	verifyRows       = 1000
	verifyStatements = 400
)

// startVerifying starts bin with the continuous checker on every effect, on
// a world of verifyRows users, each cached by the application with a fill stamp
// older than the workload, and verifyRows products cachesync writes.
func (e *env) startVerifying(bin string, extraEnv ...string) *daemon {
	e.t.Helper()
	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', g % 5, 'n' || g FROM generate_series(1, $1) g`, verifyRows)
	d := e.launch(bin, []string{"--verify-rate", "1", "--verify-window", verifyWindow.String()}, extraEnv)
	e.waitStreaming(d)
	e.exec(`INSERT INTO products SELECT g, 'p' || g, 1.00, true, 'd' FROM generate_series(1, $1) g`, verifyRows)
	e.quiesce(d)
	stamp := fmt.Sprint(time.Now().Add(-time.Second).UnixMilli())
	pipe := e.rdb.Pipeline()
	for id, name := range e.userNames() {
		key := fmt.Sprintf("user:%d", id)
		pipe.Set(e.ctx, key, name, 0)
		pipe.Set(e.ctx, keyspace.StampKey(key), stamp, 0)
	}
	if _, err := pipe.Exec(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	return d
}

// concurrentUpdates runs 4 clients of verifyStatements single-statement transactions each,
// updating random users (invalidate rule) and products (refresh rule).
func (e *env) concurrentUpdates() {
	e.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(e.ctx, e.dbURL)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			r := rand.New(rand.NewPCG(uint64(c), 17))
			for i := range verifyStatements {
				sql := `UPDATE products SET price = price + 1 WHERE id = $1`
				if i%2 == 1 {
					sql = `UPDATE users SET name = name || 'x' WHERE id = $1`
				}
				if _, err := conn.Exec(e.ctx, sql, 1+r.IntN(verifyRows)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		e.t.Fatal(err)
	}
}

// staleReported returns the keys the checker logged as stale.
func (d *daemon) staleReported() map[string]bool {
	keys := map[string]bool{}
	for _, line := range strings.Split(d.log.String(), "\n") {
		if !strings.Contains(line, "consistency check: stale key") {
			continue
		}
		var l struct{ Key string }
		if json.Unmarshal([]byte(line), &l) == nil {
			keys[l.Key] = true
		}
	}
	return keys
}

func TestContinuousCheckerFindsDroppedEffects(t *testing.T) {
	bin := faultBinary(t)
	e := setup(t, schema, rules)
	dropLog := filepath.Join(t.TempDir(), "dropped")
	d := e.startVerifying(bin, "CACHESYNC_DROP_EFFECTS=20", "CACHESYNC_DROP_EFFECTS_LOG="+dropLog)
	e.concurrentUpdates()
	e.quiesce(d)

	mismatches, checked := e.cacheMismatches()
	var wrong []string
	for _, m := range mismatches {
		wrong = append(wrong, m[:strings.Index(m, ": ")])
	}
	// Every product is published: a refresh key missing is wrong too.
	for id := 1; id <= verifyRows; id++ {
		if key := fmt.Sprintf("product:%d", id); !e.exists(key) {
			wrong = append(wrong, key)
		}
	}
	if len(wrong) == 0 {
		t.Fatalf("no stale key among %d after dropping one effect in 20: the injection did nothing", checked)
	}
	// Every key still wrong is reported within two windows (plus a round).
	var found int
	testenv.Eventually(t, 10*verifyWindow+5*time.Second, "the checker reports the stale keys", func() (bool, string) {
		reported := d.staleReported()
		found = 0
		var missed []string
		for _, k := range wrong {
			if reported[k] {
				found++
			} else {
				missed = append(missed, k)
			}
		}
		return float64(found) >= 0.99*float64(len(wrong)), fmt.Sprintf("%d of %d found; missed %v", found, len(wrong), missed)
	})
	// Nothing reported that was not dropped.
	dropped := droppedKeys(t, dropLog)
	for k := range d.staleReported() {
		if !slices.Contains(dropped, k) {
			t.Errorf("%s reported stale, but its effect was not dropped", k)
		}
	}
	if got := d.scrape().value("cachesync_consistency_checks_total", "result", "stale"); got == 0 {
		t.Error("cachesync_consistency_checks_total{result=\"stale\"} stayed 0")
	}
	t.Logf("detected %d of %d stale keys (%d effects dropped, %d keys compared)", found, len(wrong), len(dropped), checked)
}

func TestContinuousCheckerNoFalsePositives(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.startVerifying(binary)
	e.concurrentUpdates()
	e.quiesce(d)
	e.checkCache()
	testenv.Eventually(t, 10*verifyWindow+5*time.Second, "every sample checked", func() (bool, string) {
		s := d.scrape()
		pending := s.value("cachesync_consistency_samples_pending")
		consistent := s.value("cachesync_consistency_checks_total", "rule", "product", "result", "consistent")
		return pending == 0 && consistent > 0, fmt.Sprintf("pending %v, product consistent %v", pending, consistent)
	})
	s := d.scrape()
	for _, rule := range []string{"user", "product"} {
		if stale := s.value("cachesync_consistency_checks_total", "rule", rule, "result", "stale"); stale != 0 {
			t.Errorf("rule %s: %v checks stale without any fault: %v", rule, stale, d.staleReported())
		}
		if n := s.value("cachesync_consistency_nines", "rule", rule); n != 9 {
			t.Errorf("rule %s: nines %v, want 9 (nothing stale)", rule, n)
		}
	}
	t.Logf("consistent: user %v, product %v; unverifiable: user %v",
		s.value("cachesync_consistency_checks_total", "rule", "user", "result", "consistent"),
		s.value("cachesync_consistency_checks_total", "rule", "product", "result", "consistent"),
		s.value("cachesync_consistency_checks_total", "rule", "user", "result", "unverifiable"))
}

// TestVerifyFlagsUsageErrors: a --verify-rate that is not a fraction, or a
// --verify-window that is not positive, is a usage error saying what to give.
func TestVerifyFlagsUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--verify-rate", "2"}, "--verify-rate 2: want a fraction of the applied effects between 0 (off) and 1 (all), like 0.01"},
		{[]string{"run", "--verify-rate", "-0.5"}, "--verify-rate -0.5: want a fraction"},
		{[]string{"run", "--verify-window", "0s"}, "--verify-window 0s: want a positive duration, like 5s"},
	} {
		out, errOut, code := runCachesync(t, nil, tc.args...)
		if code != 2 || out != "" || strings.Count(errOut, tc.want) != 1 {
			t.Errorf("cachesync %s: exit %d, want 2 and %q\nstdout: %s\nstderr: %s", strings.Join(tc.args, " "), code, tc.want, out, errOut)
		}
	}
}
