package main

import (
	"os"
	"runtime"
	"syscall"
)

// stopSelf stops the process with SIGSTOP sent to the calling thread: it
// stops on leaving the system call, before running another line of its
// caller. Sent to the process, the signal may be taken by another thread
// while this one runs on for a while.
func stopSelf() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGSTOP)
}
