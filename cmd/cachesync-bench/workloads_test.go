package main

import (
	"slices"
	"testing"
)

func TestSelectWorkloads(t *testing.T) {
	names := func(ws []workload) []string {
		var n []string
		for _, w := range ws {
			n = append(n, w.Name)
		}
		return n
	}
	all := names(workloads(true, true))
	if got := names(selectWorkloads(workloads(true, true), "")); !slices.Equal(got, all) {
		t.Errorf("no -workloads: %q, want every workload %q", got, all)
	}
	if got, want := names(selectWorkloads(workloads(true, true), "1-row")), []string{"invalidate, 1-row tx"}; !slices.Equal(got, want) {
		t.Errorf("-workloads 1-row: %q, want %q", got, want)
	}
	if got := selectWorkloads(workloads(false, false), "^nothing$"); len(got) != 0 {
		t.Errorf("-workloads ^nothing$: %q, want none", names(got))
	}
}
