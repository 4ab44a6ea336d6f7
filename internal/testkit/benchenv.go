package testkit

import (
	"os"
	"strconv"
)

// EnvInt is the positive whole number in the environment variable name (a
// benchmark's knob, e.g. LBDOCTOR_BENCH_RATE), else def.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
