package main

import (
	"runtime/debug"
	"testing"
)

func TestDescribeBuild(t *testing.T) {
	const rev = "6d5aadb9c0de4d2c8f1e0a3b5c7d9e1f2a4b6c8d"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: "2026-12-03T18:55:01Z"},
			{Key: "vcs.modified", Value: modified},
		}
	}
	for _, tc := range []struct {
		name     string
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"tagged", "v1.2.0", vcs("false"), "v1.2.0 (revision " + rev + ", committed 2026-12-03T18:55:01Z, go1.26.8)"},
		{"modified", "v0.0.0-20261203185501-6d5aadb9c0de+dirty", vcs("true"),
			"v0.0.0-20261203185501-6d5aadb9c0de+dirty (revision " + rev + ", modified, committed 2026-12-03T18:55:01Z, go1.26.8)"},
		{"devel with VCS", "(devel)", vcs("false"), "devel (revision " + rev + ", committed 2026-12-03T18:55:01Z, go1.26.8)"},
		{"no VCS", "(devel)", nil, "devel (no VCS revision, go1.26.8)"},
		{"no version", "", nil, "devel (no VCS revision, go1.26.8)"},
	} {
		info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/cachesync/cachesync", Version: tc.version}, Settings: tc.settings}
		if got := describeBuild(info); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
