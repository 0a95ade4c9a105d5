package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string // a part of the error; "" for none
	}{
		{in: "0", want: 0},
		{in: "1073741824", want: 1 << 30},
		{in: "1GiB", want: 1 << 30},
		{in: "1gib", want: 1 << 30},
		{in: "1 GiB", want: 1 << 30},
		{in: " 256MiB ", want: 256 << 20},
		{in: "1GB", want: 1_000_000_000},
		{in: "1.5GB", want: 1_500_000_000},
		{in: "0.5KiB", want: 512},
		{in: "2kb", want: 2000},
		{in: "2KB", want: 2000},
		{in: "3TiB", want: 3 << 40},
		{in: "3TB", want: 3_000_000_000_000},
		{in: "100B", want: 100},
		{in: "9223372036854775807", want: 1<<63 - 1},
		{in: "", err: "want a number of bytes"},
		{in: "GiB", err: "want a number of bytes"},
		{in: "-1", err: "want a number of bytes"},
		{in: "1..5GB", err: "want a number of bytes"},
		{in: "1e9", err: `unknown unit "e9"`},
		{in: "1G", err: `unknown unit "G": want a number of bytes, optionally with a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)`},
		{in: "1GX", err: `unknown unit "GX"`},
		{in: "1.5", err: "1.5 is not a whole number of bytes"},
		{in: "0.1KiB", err: "not a whole number of bytes"},
		{in: "8EiB", err: `unknown unit "EiB"`},
		{in: "9223372036854775808", err: "too large"},
		{in: "8388608TiB", err: "too large"},
	} {
		got, err := parseSize(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("parseSize(%q): %v", tc.in, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("parseSize(%q) = %d, want %d", tc.in, got, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseSize(%q) = %d, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		0:             "0",
		1 << 30:       "1GiB",
		256 << 20:     "256MiB",
		1_000_000_000: "1GB",
		1500 << 10:    "1500KiB",
		1_500_000:     "1500KB",
		1023:          "1023B",
	} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
		if back, err := parseSize(formatSize(n)); err != nil || back != n {
			t.Errorf("parseSize(formatSize(%d)) = %d, %v", n, back, err)
		}
	}
}
