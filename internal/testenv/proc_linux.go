package testenv

import "syscall"

// setParentDeathSignal asks the kernel to send sig to the child when the thread that
// started it exits (see spawner for why that thread lives as long as the process).
func setParentDeathSignal(attr *syscall.SysProcAttr, sig syscall.Signal) {
	attr.Pdeathsig = sig
}
