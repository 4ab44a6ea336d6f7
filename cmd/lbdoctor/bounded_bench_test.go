package main

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// BenchmarkDropsFlood runs `lbdoctor drops` (events, and --summary) for a
// 5 s window while LBDOCTOR_BENCH_FLOWS (10,000) distinct flows are dropped
// in its namespace — half known to conntrack, half not — and reports the
// process's wall time after its window opened, how far past the window it
// ran, its CPU time (user+sys, from the kernel's rusage of the child; in
// all, and after its tracer loaded), the CPU per drop over an idle run of
// the same window (both counted after the tracer loaded; B's conntrack
// table flushed before each run) — in all, and user and system apart (the
// kernel's tick-sampled split, read at the tracer's loading from
// /proc/PID/stat) — and the drops it attributed and did not. LBDOCTOR_BENCH_BIN measures another lbdoctor
// binary (an older one: its attribution is counted from the flows it shows).
// Each iteration makes LBDOCTOR_BENCH_RUNS (3) pairs of an idle and a flood
// run, in turn, and reports the medians: one run's startup CPU (BTF,
// kallsyms) varies by more than the flood costs on a shared machine.
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
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	for _, mode := range []string{"events", "summary"} {
		b.Run(mode, func(b *testing.B) {
			args := []string{"drops", "--netns", p.B.Name, "--host", p.AddrA.String(), "--duration", window.String(), "-o", "json"}
			if mode == "summary" {
				args = append(args, "--summary")
			}
			// run returns the process and the CPU it used after its tracer
			// loaded: startup (BTF, kallsyms) is the same in both runs but
			// varies by more than the flood costs.
			// It also returns the user and system CPU from then on: the
			// split of the kernel's tick sampling (USER_HZ: 10 ms steps).
			run := func(flood bool) (lp *proc, cpu, user, sys time.Duration) {
				p.ForgetFlows(b)
				lp = startLbdoctorBin(b, bin, "", args...)
				lp.waitStart(b)
				before := processCPU(b, lp.cmd.Process.Pid)
				user0, sys0 := processTimes(b, lp.cmd.Process.Pid)
				if flood {
					p.Flood(b, ports, window-time.Second)
				}
				lp.wait(b, 30*time.Minute)
				return lp, lp.cpu() - before, lp.cmd.ProcessState.UserTime() - user0, lp.cmd.ProcessState.SystemTime() - sys0
			}
			for i := 0; i < b.N; i++ {
				var idles, cpus, idleWins, wins, walls, pasts, users, idleUsers, syss, idleSyss []time.Duration
				var lp *proc
				var s report.DropsSummary
				for range runs {
					idle, idleWin, idleUser, idleSys := run(false)
					idles, idleWins = append(idles, idle.cpu()), append(idleWins, idleWin)
					idleUsers, idleSyss = append(idleUsers, idleUser), append(idleSyss, idleSys)
					var win, user, sys time.Duration
					lp, win, user, sys = run(true)
					wins = append(wins, win)
					users, syss = append(users, user), append(syss, sys)
					s = lp.summary(b, mode == "summary")
					wall := lp.ended.Sub(<-lp.startedAt)
					walls = append(walls, wall)
					pasts = append(pasts, wall-window-time.Duration(s.AttachMs*float64(time.Millisecond)))
					cpus = append(cpus, lp.cpu())
				}
				with, without := lp.flowsShown(mode == "summary")
				idle, cpu, wall, past := median(idles), median(cpus), median(walls), median(pasts)
				idleWin, win := median(idleWins), median(wins)
				b.ReportMetric(wall.Seconds(), "wall-s")
				b.ReportMetric(float64(past.Milliseconds()), "past-window-ms")
				b.ReportMetric(float64(cpu.Milliseconds()), "cpu-ms")
				b.ReportMetric(float64(idle.Milliseconds()), "idle-cpu-ms")
				b.ReportMetric(float64(win.Milliseconds()), "window-cpu-ms")
				b.ReportMetric(float64(idleWin.Milliseconds()), "idle-window-cpu-ms")
				b.ReportMetric(float64((win-idleWin).Microseconds())/float64(flows), "cpu-µs/drop")
				// User space and kernel apart, from the tracer's loading on.
				b.ReportMetric(float64((median(users)-median(idleUsers)).Microseconds())/float64(flows), "user-µs/drop")
				b.ReportMetric(float64((median(syss)-median(idleSyss)).Microseconds())/float64(flows), "sys-µs/drop")
				b.ReportMetric(float64(s.Counters.Matched), "matched")
				b.ReportMetric(float64(with), "attributed")
				b.ReportMetric(float64(without), "not-attributed")
				b.Logf("%s: %d flows, medians of %d runs: wall %s after the tracer loaded, CPU %s (idle runs %s), after the tracer loaded %s (idle runs %s), after it user CPU %s (idle runs %s), system CPU %s (idle runs %s), past the window %s; last run: attribution %+v, shown with a flow %d, without %d",
					mode, flows, runs, wall.Round(time.Millisecond), cpus, idles, wins, idleWins, users, idleUsers, syss, idleSyss, pasts, s.Attribution, with, without)
			}
		})
	}
}

// processCPU is the CPU time process pid has used so far, all its threads
// (its CPU-time clock, MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)).
func processCPU(t testing.TB, pid int) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|2), &ts); err != nil {
		t.Fatalf("CPU clock of process %d: %v", pid, err)
	}
	return time.Duration(ts.Nano())
}

// processTimes is the user and system CPU time process pid has used so
// far (/proc/PID/stat, in USER_HZ ticks).
func processTimes(t testing.TB, pid int) (user, sys time.Duration) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("CPU times of process %d: %v", pid, err)
	}
	// The fields after the command's name, which is in parentheses and may
	// hold anything: utime and stime are the 12th and 13th of them.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		t.Fatalf("CPU times of process %d: short /proc stat %q", pid, b)
	}
	tick := func(s string) time.Duration {
		n, _ := strconv.ParseInt(s, 10, 64)
		return time.Duration(n) * time.Second / 100 // USER_HZ is 100 on Linux
	}
	return tick(f[11]), tick(f[12])
}

// median is the middle of ds (the upper one of an even count).
func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}
