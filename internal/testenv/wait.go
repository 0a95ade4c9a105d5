package testenv

import (
	"testing"
	"time"
)

// Eventually calls cond every pollInterval (20ms) until it reports true, and fails
// the test if it has not after timeout. cond returns, besides whether it
// holds, why not ("3 keys left, want 0"): the failure message names what
// was awaited, the timeout and the last reason, so a timed-out wait says
// how far it got. cond runs on the test's goroutine and may itself call
// t.Fatal (for example when the process being watched exited).
//
// Tests wait for an effect with Eventually, never with time.Sleep.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, reason string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, reason := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if reason == "" {
				t.Fatalf("%s: not true after %s", what, timeout)
			}
			t.Fatalf("%s: not true after %s: %s", what, timeout, reason)
		}
		time.Sleep(pollInterval)
	}
}
