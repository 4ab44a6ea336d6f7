package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// What a benchmark measures of a command it runs (wall time, CPU, peak
// RSS), on the host and in the guest alike.

// pollOwnPeak returns the peak RSS (VmHWM, bytes) of the command busybox
// (pid) runs and of each program that command runs in turn (by name: the
// largest of each), polled every pollEvery until done: rusage's peak is the
// largest of the command and of every child it ran (iptables-save, nft),
// and a high-water mark kept by the kernel for each process's own memory
// says which one it was.
func pollOwnPeak(pid int, done <-chan struct{}) (int64, map[string]int64) {
	var peak, child int64
	kids := map[string]int64{}
	hwm := func(pid int64) (string, int64) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return "", 0
		}
		var name string
		var v int64
		for _, l := range strings.Split(string(b), "\n") {
			if n, ok := strings.CutPrefix(l, "Name:"); ok {
				name = strings.TrimSpace(n)
			}
			if h, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				if kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(h), "kB")), 10, 64); err == nil {
					v = kb << 10
				}
			}
		}
		return name, v
	}
	var children func(pid int64) []int64
	children = func(pid int64) []int64 {
		// Every thread's children: lbdoctor starts its tools from the
		// thread it locked into the namespace, not from its main thread.
		var out []int64
		var b []byte
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, t := range tasks {
			c, _ := os.ReadFile(t)
			b = append(append(b, c...), ' ')
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.ParseInt(f, 10, 64); err == nil {
				out = append(out, c)
				out = append(out, children(c)...)
			}
		}
		return out
	}
	polls := 0
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		if child == 0 {
			if c := children(int64(pid)); len(c) > 0 {
				child = c[0]
			}
		}
		if child != 0 {
			if _, v := hwm(child); v > peak {
				peak = v
			}
			if polls%kidsEvery == 0 {
				for _, c := range children(child) {
					if n, v := hwm(c); n != "" && v > kids[n] {
						kids[n] = v
					}
				}
			}
			polls++
		}
		select {
		case <-done:
			return peak, kids
		case <-tick.C:
		}
	}
}

// pollEvery is how often pollOwnPeak reads the command's own VmHWM (one
// file), and kidsEvery how many of those polls walk its programs (a file
// for every thread of every process). The bench's own CPU is logged
// beside each run: 12–27 % of the guest's one CPU during a run (ipvsadm's
// too) with polls every 250 ms and at these intervals alike, about what
// every task but the program took with polls every 20 ms (28 %): the
// polls are not what it spends it on; what is, is left open.
// VmHWM is a high-water mark: a slower poll misses only the growth of the
// last interval, and a short-lived child's peak (each under 5 MB) is in
// rusage's.
const (
	pollEvery = 100 * time.Millisecond
	kidsEvery = 10
)

// showKids lists the peaks pollOwnPeak saw, largest first: "nft 12.3 MB, …".
func showKids(k map[string]int64) string {
	names := slices.SortedFunc(maps.Keys(k), func(a, b string) int { return cmp.Compare(k[b], k[a]) })
	var out []string
	for _, n := range names {
		out = append(out, fmt.Sprintf("%s %.1f MB", n, float64(k[n])/(1<<20)))
	}
	if len(out) == 0 {
		return "none seen"
	}
	return strings.Join(out, ", ")
}

// gcPeak matches a gctrace line's heap sizes: "… 45->47->20 MB, …".
var gcPeak = regexp.MustCompile(`(\d+)->(\d+)->(\d+) MB`)

// gcPeakHeap is the largest heap a gctrace (GODEBUG=gctrace=1) on stderr
// saw at a collection's start or end, in MB; 0 without one.
func gcPeakHeap(stderr string) float64 {
	peak := 0
	for _, m := range gcPeak.FindAllStringSubmatch(stderr, -1) {
		for _, v := range m[1:3] {
			if n, _ := strconv.Atoi(v); n > peak {
				peak = n
			}
		}
	}
	return float64(peak)
}

// selfCPU is this process's CPU time (user and system).
func selfCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTimes is the guest's one CPU's time by kind, from /proc/stat's
// "cpu" line.
type cpuTimes struct{ user, system, idle, irq, other time.Duration }

// readCPUTimes reads /proc/stat (USER_HZ ticks; 100 a second).
func readCPUTimes() cpuTimes {
	var t cpuTimes
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal …
	tick := func(i int) time.Duration {
		if i >= len(f) {
			return 0
		}
		v, _ := strconv.ParseInt(f[i], 10, 64)
		return time.Duration(v) * 10 * time.Millisecond
	}
	t.user, t.system, t.idle = tick(1)+tick(2), tick(3), tick(4)+tick(5)
	t.irq, t.other = tick(6)+tick(7), tick(8)
	return t
}

func (t cpuTimes) sub(u cpuTimes) cpuTimes {
	return cpuTimes{t.user - u.user, t.system - u.system, t.idle - u.idle, t.irq - u.irq, t.other - u.other}
}

// String says where the guest's CPU went: a program's wall time beyond
// its CPU is another program's, the kernel's (irq), idle (a wait), or
// lost to the host (the ticks a TCG guest misses while qemu waits for a
// host CPU are counted nowhere).
func (t cpuTimes) String() string {
	r := func(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
	return fmt.Sprintf("user %s, system %s, irq %s, idle %s, steal %s (sum %s)", r(t.user), r(t.system), r(t.irq), r(t.idle), r(t.other), r(t.user+t.system+t.irq+t.idle+t.other))
}

// measured is one command's run: wall time, peak RSS and CPU, exit code
// and output.
type measured struct {
	wall, cpu time.Duration
	self      time.Duration    // this test process's CPU over the run: the poller's cost
	guest     cpuTimes         // the guest's CPU over the run (/proc/stat), every program's
	maxRSS    int64            // bytes: the command's and its children's (rusage)
	ownRSS    int64            // bytes: the command's own memory (VmHWM), polled; 0 unknown
	kidRSS    map[string]int64 // bytes: the peak (VmHWM, polled) of each program the command ran, by name
	code      int
	out       []byte
	err       string
}

// measureCmd runs argv in ns (the test's own namespace for a zero Target)
// under `busybox time`: a child of this test process starts on its memory
// (vfork), and the kernel counts that in the child's peak RSS; busybox's
// own child starts on busybox's few MB. CPU is the rusage of the whole.
func measureCmd(b *testing.B, ns netns.Target, argv ...string) measured {
	b.Helper()
	var m measured
	var out, errb bytes.Buffer
	rss := filepath.Join(b.TempDir(), "maxrss")
	run := func() error {
		cmd := exec.Command("busybox", append([]string{"time", "-o", rss, "-f", "%M"}, argv...)...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		before := readCPUTimes()
		selfBefore := selfCPU()
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan struct{})
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			m.ownRSS, m.kidRSS = pollOwnPeak(cmd.Process.Pid, done)
		}()
		err := cmd.Wait()
		m.wall = time.Since(start)
		m.guest = readCPUTimes().sub(before)
		m.self = selfCPU() - selfBefore
		close(done)
		<-polled
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		m.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		m.code = cmd.ProcessState.ExitCode()
		return nil
	}
	var err error
	if ns.Spec == "" {
		err = run()
	} else {
		err = ns.Do(run) // forked from the locked thread: the child starts in ns
	}
	if err != nil {
		b.Fatalf("%v: %v", argv, err)
	}
	kb, err := os.ReadFile(rss)
	if err == nil {
		// The last line: before it, time may say how the command exited.
		lines := strings.Split(strings.TrimSpace(string(kb)), "\n")
		m.maxRSS, err = strconv.ParseInt(lines[len(lines)-1], 10, 64)
	}
	if err != nil {
		b.Fatalf("%v: peak RSS from busybox time: %v (%q)", argv, err, kb)
	}
	// busybox 1.35's %M converts ru_maxrss as if it counted pages
	// (ptok), but Linux gives KiB: it prints 4 × the peak on 4 KiB pages.
	// (That was the "child of 90–310 MB" of earlier runs: every program
	// lbdoctor runs, polled above, peaks under 5 MB.)
	m.maxRSS = m.maxRSS / int64(os.Getpagesize()/1024) << 10 // KiB
	m.out, m.err = out.Bytes(), errb.String()
	return m
}

// report gives b the run's metrics: wall time, and beyond window (the
// window the command was asked to watch), peak RSS (rusage, and its own
// polled), CPU, and the Go heap's peak when a gctrace was on.
func (m measured) report(b *testing.B, window time.Duration) {
	b.ReportMetric(m.wall.Seconds(), "wall-s")
	b.ReportMetric((m.wall - window).Seconds(), "beyond-window-s")
	b.ReportMetric(float64(m.maxRSS)/(1<<20), "peak-rss-MB")
	if m.ownRSS > 0 {
		b.ReportMetric(float64(m.ownRSS)/(1<<20), "own-peak-rss-MB")
	}
	b.ReportMetric(m.cpu.Seconds(), "cpu-s")
	if h := gcPeakHeap(m.err); h > 0 {
		b.ReportMetric(h, "gc-peak-heap-MB")
	}
}

// logProfile logs the line LBDOCTOR_TIMINGS (or LBDOCTOR_PROFILE) makes
// lbdoctor print on stderr: where its run's time went.
func (m measured) logProfile(b *testing.B, name string) {
	for _, l := range strings.Split(m.err, "\n") {
		if strings.HasPrefix(l, "lbdoctor: profile:") {
			b.Logf("%s: %s", name, l)
		}
	}
}
