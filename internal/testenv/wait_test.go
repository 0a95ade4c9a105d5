package testenv_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the calling goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// eventually runs testenv.Eventually on its own goroutine, so that the
// recorder's Fatalf can end it, and returns the failure message ("" when the
// condition held).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) string {
	f := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testenv.Eventually(f, timeout, what, cond)
	}()
	<-done
	return f.msg
}

func TestEventually(t *testing.T) {
	t.Parallel()
	t.Run("returns once the condition holds", func(t *testing.T) {
		calls := 0
		msg := eventually(t, time.Minute, "third call", func() (bool, string) {
			calls++
			return calls == 3, "not yet"
		})
		if msg != "" || calls != 3 {
			t.Errorf("after %d calls: %q, want success on the third", calls, msg)
		}
	})
	t.Run("fails with what and the last reason", func(t *testing.T) {
		calls := 0
		msg := eventually(t, 0, "user:1 gone", func() (bool, string) {
			calls++
			return false, fmt.Sprintf("EXISTS user:1 = 1 (check %d)", calls)
		})
		if want := fmt.Sprintf("user:1 gone: not true after 0s: EXISTS user:1 = 1 (check %d)", calls); msg != want {
			t.Errorf("message %q, want %q", msg, want)
		}
	})
	t.Run("fails without a reason", func(t *testing.T) {
		msg := eventually(t, 0, "the writer stops", func() (bool, string) { return false, "" })
		if want := "the writer stops: not true after 0s"; msg != want {
			t.Errorf("message %q, want %q", msg, want)
		}
	})
	t.Run("a condition holding at once ends the wait", func(t *testing.T) {
		if msg := eventually(t, 0, "true", func() (bool, string) { return true, "" }); msg != "" {
			t.Errorf("failed: %s", msg)
		}
	})
}
