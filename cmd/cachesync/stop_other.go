//go:build !linux

package main

import (
	"os"
	"syscall"
)

// stopSelf stops the process with SIGSTOP (the calling thread may run on
// for a moment before it takes effect).
func stopSelf() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
}
