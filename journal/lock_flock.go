//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package journal

import (
	"errors"
	"syscall"
)

// tryLock takes an exclusive, non-blocking flock on fd. flock locks belong to
// the open file, so two Opens in one process exclude each other too, and the
// kernel drops the lock when the process dies: no stale lock after a crash.
func tryLock(fd uintptr) (held bool, err error) {
	err = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	return false, err
}
