package e2e

// Issue 17: the test-only effect-drop injection (writer/faultinject.go) and
// the continuous checker of `cachesync run --verify-rate` that must find what
// it dropped.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
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
