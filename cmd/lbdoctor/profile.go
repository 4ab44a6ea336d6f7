package main

import (
	"fmt"
	"io"
	"maps"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"time"

	"github.com/lbdoctor/lbdoctor/probes"
)

// profileEnv names a file that receives a CPU profile of the whole run
// (`go tool pprof`), and turns on a line on stderr saying where a check's
// time went: each probe of its last read, the window's reads and tracer,
// the checks. A debugging aid for slow LBs (the scale benchmark sets it),
// not a user interface.
const profileEnv = "LBDOCTOR_PROFILE"

// traceEnv names a file that receives an execution trace of the whole run
// (`go tool trace`; `-pprof=sched|syscall|net` say what each goroutine
// waited on): where a run's wall time went while it was off the CPU.
const traceEnv = "LBDOCTOR_TRACE"

// timingsEnv, set to anything, prints that line alone, without the cost
// of profiling (a signal 100 times a CPU second).
const timingsEnv = "LBDOCTOR_TIMINGS"

// startProfile starts the CPU profile LBDOCTOR_PROFILE and the execution
// trace LBDOCTOR_TRACE ask for and returns what stops them; a file that
// cannot be written is said on stderr and the command runs without it.
func startProfile(stderr io.Writer) func() {
	var stops []func()
	for _, p := range []struct {
		env   string
		start func(io.Writer) error
		stop  func()
	}{
		{profileEnv, pprof.StartCPUProfile, pprof.StopCPUProfile},
		{traceEnv, trace.Start, trace.Stop},
	} {
		path := os.Getenv(p.env)
		if path == "" {
			continue
		}
		f, err := os.Create(path)
		if err == nil {
			err = p.start(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "lbdoctor: %s: %v\n", p.env, err)
			if f != nil {
				f.Close()
			}
			continue
		}
		stops = append(stops, func() {
			p.stop()
			f.Close()
		})
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

// profileLine says where a check's time went, for LBDOCTOR_PROFILE or
// LBDOCTOR_TIMINGS: "" when neither is set.
func profileLine(s *probes.Snapshot, checked time.Duration) string {
	if os.Getenv(profileEnv) == "" && os.Getenv(timingsEnv) == "" || s == nil {
		return ""
	}
	parts := []string{took(s.Took)}
	if w := s.Window; w != nil {
		first := ""
		if len(w.FirstTook) > 0 {
			first = " (" + took(w.FirstTook) + ")"
		}
		tracer := ""
		if len(w.TracerTook) > 0 {
			tracer = " (" + took(w.TracerTook) + ")"
		}
		parts = append(parts, fmt.Sprintf("window: first read %s%s, tracer wait %s%s, last read %s",
			w.FirstRead.Round(time.Millisecond), first, w.TracerWait.Round(time.Millisecond), tracer, w.LastRead.Round(time.Millisecond)))
	}
	parts = append(parts, fmt.Sprintf("checks %s", checked.Round(time.Millisecond)))
	return "lbdoctor: profile: read " + strings.Join(parts, ", ")
}

// took is a read's time per probe, "conntrack 1.2s, ipvs 3s", by name.
func took(t map[string]time.Duration) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(t)) {
		parts = append(parts, fmt.Sprintf("%s %s", k, t[k].Round(time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}
