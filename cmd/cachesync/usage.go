package main

import "fmt"

// usageError is a mistake in how a command was called (an unknown
// argument, flags that contradict each other): exit status 2.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}
