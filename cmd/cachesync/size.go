package main

import (
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

type sizeUnit struct {
	name  string
	bytes int64
}

// sizeUnits are the units a size flag accepts, case-insensitively: SI
// (powers of 1000, as Kubernetes' G; not PostgreSQL's GB, which is a GiB)
// and IEC (powers of 1024). Listed largest first, which is how sizes print.
var sizeUnits = []sizeUnit{
	{"TiB", 1 << 40}, {"TB", 1e12},
	{"GiB", 1 << 30}, {"GB", 1e9},
	{"MiB", 1 << 20}, {"MB", 1e6},
	{"KiB", 1 << 10}, {"KB", 1e3},
	{"B", 1},
}

var errSize = errors.New("want a number of bytes, optionally with a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 512MiB or 1.5GB")

// parseSize reads a byte count: a plain number of bytes (1073741824), or a
// number and a unit (1GiB, 1.5 GB, 512mib). The result is exact (no
// floating point), and must be a whole number of bytes that fits an int64.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	end := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if end < 0 {
		end = len(s)
	}
	number, unit := s[:end], strings.TrimSpace(s[end:])
	n, ok := new(big.Rat).SetString(number)
	if !ok {
		return 0, errSize
	}
	if unit != "" {
		i := slices.IndexFunc(sizeUnits, func(u sizeUnit) bool { return strings.EqualFold(u.name, unit) })
		if i < 0 {
			return 0, fmt.Errorf("unknown unit %q: %w", unit, errSize)
		}
		n.Mul(n, new(big.Rat).SetInt64(sizeUnits[i].bytes))
	}
	if !n.IsInt() {
		return 0, fmt.Errorf("%s is not a whole number of bytes", s)
	}
	if !n.Num().IsInt64() {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return n.Num().Int64(), nil
}

// formatSize prints n with the largest unit that divides it exactly (1GiB,
// 256MiB, 1500KB), or in bytes.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%u.bytes == 0 {
			return fmt.Sprintf("%d%s", n/u.bytes, u.name)
		}
	}
	return fmt.Sprint(n)
}

// byteSize is the value of a size flag.
type byteSize int64

func (s *byteSize) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

func (s *byteSize) String() string { return formatSize(int64(*s)) }

// sizeFlag is a flag of a number of bytes that takes units (see
// parseSize), also in its environment variable; help shows the default
// with a unit.
func sizeFlag(name string, value int64, env, usage string) cli.Flag {
	v := byteSize(value)
	return &cli.GenericFlag{Name: name, Value: &v, EnvVars: []string{env}, Usage: usage}
}

// size is the value of a sizeFlag; 0, like c.Int64, when the command has
// no such flag (setup shares the daemon's options with run).
func size(c *cli.Context, name string) int64 {
	if v, ok := c.Generic(name).(*byteSize); ok {
		return int64(*v)
	}
	return 0
}
