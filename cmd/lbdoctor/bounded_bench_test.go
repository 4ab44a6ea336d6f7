package main

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// BenchmarkDropsFlood runs `lbdoctor drops` (events, and --summary) for a
// 5 s window while LBDOCTOR_BENCH_FLOWS (10,000) distinct flows are dropped
// in its namespace — half known to conntrack, half not — and reports the
// process's wall time after its window opened, how far past the window it
// ran, its CPU time (user+sys, from the kernel's rusage of the child), the
// CPU per drop over an idle run of the same window, and the drops it
// attributed and did not. LBDOCTOR_BENCH_BIN measures another lbdoctor
// binary (an older one: its attribution is counted from the flows it shows).
//
//	sudo go test -run '^$' -bench DropsFlood -benchtime 1x ./cmd/lbdoctor/
func BenchmarkDropsFlood(b *testing.B) {
	testkit.RequireRoot(b)
	flows := 10000
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_FLOWS")); err == nil && v > 0 {
		flows = v
	}
	const window = 5 * time.Second
	p := testkit.NewDropPair(b)
	ports := append(testkit.Ports(20000, flows/2), testkit.Ports(testkit.DroppedPorts, flows-flows/2)...)
	bin := os.Getenv("LBDOCTOR_BENCH_BIN")
	for _, mode := range []string{"events", "summary"} {
		b.Run(mode, func(b *testing.B) {
			args := []string{"drops", "--netns", p.B.Name, "--host", p.AddrA.String(), "--duration", window.String(), "-o", "json"}
			if mode == "summary" {
				args = append(args, "--summary")
			}
			run := func(flood bool) *proc {
				lp := startLbdoctorBin(b, bin, "", args...)
				lp.waitStart(b)
				if flood {
					p.Flood(b, ports, window-time.Second)
				}
				lp.wait(b, 30*time.Minute)
				return lp
			}
			for i := 0; i < b.N; i++ {
				idle := run(false)
				lp := run(true)
				s := lp.summary(b, mode == "summary")
				with, without := lp.flowsShown(mode == "summary")
				wall := lp.ended.Sub(<-lp.startedAt)
				cpu := lp.cpu()
				b.ReportMetric(wall.Seconds(), "wall-s")
				b.ReportMetric(float64((wall - window - time.Duration(s.AttachMs*float64(time.Millisecond))).Milliseconds()), "past-window-ms")
				b.ReportMetric(float64(cpu.Milliseconds()), "cpu-ms")
				b.ReportMetric(float64(idle.cpu().Milliseconds()), "idle-cpu-ms")
				b.ReportMetric(float64((cpu-idle.cpu()).Microseconds())/float64(flows), "cpu-µs/drop")
				b.ReportMetric(float64(s.Counters.Matched), "matched")
				b.ReportMetric(float64(with), "attributed")
				b.ReportMetric(float64(without), "not-attributed")
				b.Logf("%s: %d flows, wall %s after the tracer loaded, CPU %s (idle run %s), attribution %+v, shown with a flow %d, without %d",
					mode, flows, wall.Round(time.Millisecond), cpu, idle.cpu(), s.Attribution, with, without)
			}
		})
	}
}
