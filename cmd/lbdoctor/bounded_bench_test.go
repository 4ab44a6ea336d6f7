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
// /proc/PID/stat) — and the drops it attributed and did not.
// LBDOCTOR_BENCH_BIN measures other lbdoctor binaries, ':' between them
// ("" for this module's: LBDOCTOR_BENCH_BIN=/tmp/old: measures an older one
// beside this one); an older one's attribution is counted from the flows it
// shows. Each iteration makes LBDOCTOR_BENCH_RUNS (3) pairs of an idle and
// a flood run per binary, the binaries in turn, and reports the medians:
// one run's startup CPU (BTF, kallsyms) varies by more than the flood
// costs on a shared machine, and the machine's speed drifts between runs.
// With several binaries each metric's name ends with the binary's number
// (-1, -2, … in the order given).
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
	bins := strings.Split(os.Getenv("LBDOCTOR_BENCH_BIN"), ":")
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
			run := func(bin string, flood bool) (lp *proc, cpu, user, sys time.Duration) {
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
			// What the runs of one binary measured.
			type measured struct {
				idles, cpus, idleWins, wins, walls, pasts, users, idleUsers, syss, idleSyss []time.Duration
				lp                                                                          *proc
				s                                                                           report.DropsSummary
			}
			for i := 0; i < b.N; i++ {
				ms := make([]measured, len(bins))
				for r := range runs {
					for k := range bins {
						j := (k + r) % len(bins) // who goes first rotates
						m := &ms[j]
						idle, idleWin, idleUser, idleSys := run(bins[j], false)
						m.idles, m.idleWins = append(m.idles, idle.cpu()), append(m.idleWins, idleWin)
						m.idleUsers, m.idleSyss = append(m.idleUsers, idleUser), append(m.idleSyss, idleSys)
						var win, user, sys time.Duration
						m.lp, win, user, sys = run(bins[j], true)
						m.wins = append(m.wins, win)
						m.users, m.syss = append(m.users, user), append(m.syss, sys)
						m.s = m.lp.summary(b, mode == "summary")
						wall := m.lp.ended.Sub(<-m.lp.startedAt)
						m.walls = append(m.walls, wall)
						m.pasts = append(m.pasts, wall-window-time.Duration(m.s.AttachMs*float64(time.Millisecond)))
						m.cpus = append(m.cpus, m.lp.cpu())
					}
				}
				for j, m := range ms {
					suffix, name := "", bins[j]
					if len(bins) > 1 {
						suffix = "-" + strconv.Itoa(j+1)
					}
					if name == "" {
						name = "this module's lbdoctor"
					}
					with, without := m.lp.flowsShown(mode == "summary")
					idle, cpu, wall, past := median(m.idles), median(m.cpus), median(m.walls), median(m.pasts)
					idleWin, win := median(m.idleWins), median(m.wins)
					b.ReportMetric(wall.Seconds(), "wall-s"+suffix)
					b.ReportMetric(float64(past.Milliseconds()), "past-window-ms"+suffix)
					b.ReportMetric(float64(cpu.Milliseconds()), "cpu-ms"+suffix)
					b.ReportMetric(float64(idle.Milliseconds()), "idle-cpu-ms"+suffix)
					b.ReportMetric(float64(win.Milliseconds()), "window-cpu-ms"+suffix)
					b.ReportMetric(float64(idleWin.Milliseconds()), "idle-window-cpu-ms"+suffix)
					b.ReportMetric(float64((win-idleWin).Microseconds())/float64(flows), "cpu-µs/drop"+suffix)
					// User space and kernel apart, from the tracer's loading on.
					b.ReportMetric(float64((median(m.users)-median(m.idleUsers)).Microseconds())/float64(flows), "user-µs/drop"+suffix)
					b.ReportMetric(float64((median(m.syss)-median(m.idleSyss)).Microseconds())/float64(flows), "sys-µs/drop"+suffix)
					b.ReportMetric(float64(m.s.Counters.Matched), "matched"+suffix)
					b.ReportMetric(float64(with), "attributed"+suffix)
					b.ReportMetric(float64(without), "not-attributed"+suffix)
					b.Logf("%s, %s: %d flows, medians of %d runs: wall %s after the tracer loaded, CPU %s (idle runs %s), after the tracer loaded %s (idle runs %s), after it user CPU %s (idle runs %s), system CPU %s (idle runs %s), past the window %s; last run: attribution %+v, shown with a flow %d, without %d",
						name, mode, flows, runs, wall.Round(time.Millisecond), m.cpus, m.idles, m.wins, m.idleWins, m.users, m.idleUsers, m.syss, m.idleSyss, m.pasts, m.s.Attribution, with, without)
				}
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
