//go:build !faultinject

package writer

import "github.com/cachesync/cachesync/mapping"

// dropEffects is the no-op of a production build: effects are dropped only in
// a binary built with `-tags faultinject` (faultinject.go), which no flag or
// environment variable of this build can reach.
func dropEffects(ops []*mapping.Op) []*mapping.Op { return ops }
