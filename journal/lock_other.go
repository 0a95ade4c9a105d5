//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package journal

import (
	"errors"
	"runtime"
)

func tryLock(uintptr) (held bool, err error) {
	return false, errors.New("the journal's file lock (flock) is not available on " + runtime.GOOS + ": run cachesync on Linux, macOS or a BSD")
}
