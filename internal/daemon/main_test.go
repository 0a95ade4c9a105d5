package daemon

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a test leaves a goroutine behind: every
// goroutine of the daemon has an owner that waits for it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
