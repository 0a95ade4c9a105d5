package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is what cachesync --version prints after "cachesync version":
// the module version and the VCS revision the Go toolchain stamped into
// the binary.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (built without module support)"
	}
	return describeBuild(info)
}

// describeBuild is "v1.2.0 (revision 6d5aadb…, committed
// 2026-12-03T18:55:01Z, go1.26.8)", with "modified" after the revision
// for a build from a work tree with uncommitted changes. A build without
// a module version (go build outside a tagged checkout before Go 1.24, go
// run) is "devel"; one without VCS information (-buildvcs=false, a source
// tarball) says so instead of a revision.
func describeBuild(info *debug.BuildInfo) string {
	v := info.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	setting := map[string]string{}
	for _, s := range info.Settings {
		setting[s.Key] = s.Value
	}
	var details []string
	switch rev := setting["vcs.revision"]; {
	case rev == "":
		details = append(details, "no VCS revision")
	case setting["vcs.modified"] == "true":
		details = append(details, "revision "+rev, "modified")
	default:
		details = append(details, "revision "+rev)
	}
	if t := setting["vcs.time"]; t != "" {
		details = append(details, "committed "+t)
	}
	details = append(details, info.GoVersion)
	return fmt.Sprintf("%s (%s)", v, strings.Join(details, ", "))
}
