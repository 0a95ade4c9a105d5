//go:build faultinject

package writer

// Test-only effect-drop injection (issue 17): a binary built with
// `-tags faultinject` drops every Nth refresh set/unset and key delete, N from
// CACHESYNC_DROP_EFFECTS, and still confirms its WAL position, so that a
// verifier has stale keys to find. Each dropped key is appended to the file
// named by CACHESYNC_DROP_EFFECTS_LOG, one per line, before Apply returns.
// A build without the tag has none of this (faultinject_off.go).

import (
	"fmt"
	"os"
	"strconv"
	"sync"

	"github.com/cachesync/cachesync/mapping"
)

var injector = newDropper()

type dropper struct {
	every uint64 // 0: drop nothing
	mu    sync.Mutex
	seen  uint64 // eligible effects so far
	log   *os.File
}

func newDropper() *dropper {
	d := &dropper{}
	s := os.Getenv("CACHESYNC_DROP_EFFECTS")
	if s == "" {
		return d
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		fmt.Fprintf(os.Stderr, "cachesync (faultinject build): CACHESYNC_DROP_EFFECTS=%q: want a positive integer N (drop one effect in N), or unset it\n", s)
		os.Exit(2)
	}
	d.every = n
	if path := os.Getenv("CACHESYNC_DROP_EFFECTS_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cachesync (faultinject build): CACHESYNC_DROP_EFFECTS_LOG: %v: name a writable file\n", err)
			os.Exit(2)
		}
		d.log = f
	}
	fmt.Fprintf(os.Stderr, "cachesync (faultinject build): dropping one in %d refresh sets/unsets and key deletes\n", n)
	return d
}

// dropEffects returns ops without the effects chosen to be dropped: every
// Nth OpSet, OpUnset or OpDelete counted over the process's life.
func dropEffects(ops []*mapping.Op) []*mapping.Op {
	d := injector
	if d.every == 0 {
		return ops
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	kept := ops[:0:0]
	for _, op := range ops {
		switch op.Kind {
		case mapping.OpSet, mapping.OpUnset, mapping.OpDelete:
			if d.seen++; d.seen%d.every == 0 {
				if d.log != nil {
					// One write per key, unbuffered: on disk before the
					// position is confirmed.
					if _, err := d.log.WriteString(op.Key + "\n"); err != nil {
						fmt.Fprintf(os.Stderr, "cachesync (faultinject build): CACHESYNC_DROP_EFFECTS_LOG: %v\n", err)
						os.Exit(1)
					}
				}
				continue
			}
		}
		kept = append(kept, op)
	}
	return kept
}
