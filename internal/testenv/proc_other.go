//go:build !linux

package testenv

import "syscall"

// setParentDeathSignal does nothing: only Linux has a parent-death signal. Elsewhere
// Main (at the end of the run, or on SIGINT/SIGTERM) and each test's cleanup stop the
// servers, but a test binary killed with SIGKILL leaves them running.
func setParentDeathSignal(*syscall.SysProcAttr, syscall.Signal) {}
