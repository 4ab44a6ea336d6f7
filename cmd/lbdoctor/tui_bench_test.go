package main

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// floodAt sends UDP from p.A to dst at rate datagrams a second for d, from
// sources source ports in turn (one flow each: varied flows), paced every
// millisecond. It returns how many were sent.
func floodAt(t testing.TB, p *testkit.DropPair, dst netip.AddrPort, rate, sources int, d time.Duration) int {
	t.Helper()
	sent := 0
	err := p.A.Do(func() error {
		var cs []*net.UDPConn
		for range sources {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.AddrA.AsSlice()})
			if err != nil {
				return err
			}
			defer c.Close()
			cs = append(cs, c)
		}
		start := time.Now()
		for el := time.Duration(0); el < d; el = time.Since(start) {
			for due := int(el.Seconds() * float64(rate)); sent < due; sent++ {
				cs[sent%len(cs)].WriteToUDPAddrPort([]byte("x"), dst)
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("flood from %s: %v", p.A, err)
	}
	return sent
}

// peakRSS is process pid's peak resident set (VmHWM).
func peakRSS(t testing.TB, pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmHWM in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// ptyTUI is `lbdoctor tui` on a pseudo-terminal this test holds the
// master of: a key is written to it and the screen's bytes are read as
// they come, so a key's answer is timed without polling.
type ptyTUI struct {
	cmd    *exec.Cmd
	master *os.File
	mu     sync.Mutex
	out    bytes.Buffer
	more   chan struct{} // a read added bytes
	done   chan struct{}
	code   int
}

func startPTY(t testing.TB, w, h int, args ...string) *ptyTUI {
	t.Helper()
	return startPTYBinary(t, testkit.LbdoctorBinary(t), w, h, args...)
}

// startPTYBinary is startPTY of the lbdoctor binary bin.
func startPTYBinary(t testing.TB, bin string, w, h int, args ...string) *ptyTUI {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(h), Col: uint16(w)}); err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	x := &ptyTUI{cmd: exec.Command(bin, append([]string{"tui"}, args...)...), master: master, more: make(chan struct{}, 1), done: make(chan struct{})}
	x.cmd.Stdin, x.cmd.Stdout, x.cmd.Stderr = slave, slave, slave
	x.cmd.Env = append(os.Environ(), "TERM=xterm", "NO_COLOR=1")
	x.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := x.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := master.Read(buf)
			x.mu.Lock()
			x.out.Write(buf[:n])
			x.mu.Unlock()
			select {
			case x.more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		x.cmd.Wait()
		x.code = x.cmd.ProcessState.ExitCode()
		close(x.done)
	}()
	t.Cleanup(func() { x.cmd.Process.Kill(); <-x.done; master.Close() })
	return x
}

// mark is where the output is now: what comes after it is new.
func (x *ptyTUI) mark() int { x.mu.Lock(); defer x.mu.Unlock(); return x.out.Len() }

// waitFor waits until the output after from holds want; it says when.
func (x *ptyTUI) waitFor(from int, want string, within time.Duration) (time.Time, bool) {
	deadline := time.After(within)
	for {
		x.mu.Lock()
		ok := bytes.Contains(x.out.Bytes()[from:], []byte(want))
		x.mu.Unlock()
		if ok {
			return time.Now(), true
		}
		select {
		case <-x.more:
		case <-deadline:
			return time.Now(), false
		}
	}
}

// press opens the help with ? and closes it with ? again, and says how
// long each took to show.
func (x *ptyTUI) press(t testing.TB) []time.Duration {
	var out []time.Duration
	for _, want := range []string{"this help (esc closes it)", "[2 Drops]"} {
		from := x.mark()
		t0 := time.Now()
		x.master.WriteString("?")
		at, ok := x.waitFor(from, want, 2*time.Second)
		out = append(out, at.Sub(t0))
		if !ok {
			t.Errorf("? was not answered within 2s")
		}
	}
	return out
}

// count is how many times sep was written after from.
func (x *ptyTUI) count(from int, sep string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return bytes.Count(x.out.Bytes()[from:], []byte(sep))
}

// BenchmarkTUIFlood floods the namespace `lbdoctor tui` watches with
// LBDOCTOR_BENCH_RATE (50,000) drops a second of 1,024 flows (UDP to the
// watched VIP, which nft DNATs to a port nothing listens on) for
// LBDOCTOR_BENCH_SECONDS (30), with the TUI on a pseudo-terminal (80×24,
// the Drops pane: its counts change with every frame), and reports: how
// long a key took to be answered on the screen (? opens the help, ?
// closes it, once a second: from the write of the key to the read of the
// screen that shows it; median and worst), how often the screen was
// painted (the renderer's home-cursor sequence, less the keys' paints),
// the process's peak RSS and CPU, and what the tracer counted (the Drops
// pane's last window). Beside it, on the same flood at the same time,
// `lbdoctor drops --summary` with the same filter: CPU (from its tracer's
// loading), peak RSS, matched of what was sent, lost, missed.
//
//	sudo go test -run '^$' -bench TUIFlood -benchtime 1x ./cmd/lbdoctor/
func BenchmarkTUIFlood(b *testing.B) {
	testkit.RequireRoot(b)
	rate, seconds := testkit.EnvInt("LBDOCTOR_BENCH_RATE", 50000), testkit.EnvInt("LBDOCTOR_BENCH_SECONDS", 30)
	flood := time.Duration(seconds) * time.Second
	p := testkit.NewDropPair(b)
	// A VIP B DNATs to an address of its own where nothing listens: each
	// datagram is a NO_SOCKET drop of a load-balanced flow, after
	// conntrack confirmed it (the tracer attributes them). The flows are
	// in conntrack before the TUI starts: it learns the backend there.
	vip := netip.AddrPortFrom(p.AddrB, testkit.DNATPorts)
	floodAt(b, p, vip, 2048, 1024, time.Second)
	// LBDOCTOR_BENCH_BASE names another lbdoctor binary (an older build)
	// whose TUI runs beside this one's on the same flood: its metrics are
	// reported as base-tui-*, side by side under the same noise.
	bins := [][2]string{{"tui", testkit.LbdoctorBinary(b)}}
	if base := os.Getenv("LBDOCTOR_BENCH_BASE"); base != "" {
		bins = append(bins, [2]string{"base-tui", base})
	}
	type run struct {
		name      string
		x         *ptyTUI
		idle, lat []time.Duration
		cpu0      time.Duration
		wait0     time.Duration
		from0     int
		keys      int
	}
	for i := 0; i < b.N; i++ {
		var runs []*run
		for _, bin := range bins {
			r := &run{name: bin[0], x: startPTYBinary(b, bin[1], 80, 24, "--netns", p.B.Name, "--vip", vip.String())}
			runs = append(runs, r)
			if _, ok := r.x.waitFor(0, "verdict ", 15*time.Second); !ok {
				b.Fatalf("%s: no window in 15s:\n%q", r.name, r.x.out.String())
			}
			from := r.x.mark()
			r.x.master.WriteString("2")
			if _, ok := r.x.waitFor(from, "[2 Drops]", 2*time.Second); !ok {
				b.Fatalf("%s: 2 did not open the Drops pane", r.name)
			}
		}
		for range 5 { // the same keys before the flood, beside
			time.Sleep(300 * time.Millisecond)
			for _, r := range runs {
				r.idle = append(r.idle, r.x.press(b)...)
			}
		}
		// `lbdoctor drops --summary` with the same filter, on the same
		// flood at the same time: side by side, under the same noise.
		lp := startLbdoctor(b, "", "drops", "--netns", p.B.Name, "--vip", vip.String(), "--summary", "--duration", (flood + 2*time.Second).String(), "-o", "json")
		dstart := lp.waitStart(b)
		dcpu0 := processCPU(b, lp.cmd.Process.Pid) // its startup (BTF, kallsyms) apart
		var sent int
		var wg sync.WaitGroup
		wg.Add(1)
		for _, r := range runs {
			r.cpu0, r.from0, r.wait0 = processCPU(b, r.x.cmd.Process.Pid), r.x.mark(), runQueueWait(r.x.cmd.Process.Pid)
		}
		start := time.Now()
		go func() { defer wg.Done(); sent = floodAt(b, p, vip, rate, 1024, flood) }()
		for time.Since(start) < flood-2*time.Second {
			time.Sleep(time.Second)
			for _, r := range runs {
				r.lat = append(r.lat, r.x.press(b)...)
				r.keys += 2
			}
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.ReportMetric(float64(sent)/elapsed.Seconds(), "sent/s")
		for _, r := range runs {
			x, pid, lat, idle, keys := r.x, r.x.cmd.Process.Pid, r.lat, r.idle, r.keys
			b.Logf("%s: keys under the flood, in order: %v", r.name, lat)
			cpu, painted := processCPU(b, pid)-r.cpu0, x.count(r.from0, "\x1b[H")
			waited := runQueueWait(pid) - r.wait0
			rss := peakRSS(b, pid)
			x.mu.Lock()
			tail := x.out.String()[max(0, x.out.Len()-8000):]
			x.mu.Unlock()
			x.master.WriteString("q")
			select {
			case <-x.done:
				if x.code != 0 {
					b.Errorf("%s: q after the flood: exit %d, want 0", r.name, x.code)
				}
			case <-time.After(2 * time.Second):
				b.Errorf("%s: q after the flood: still running after 2s", r.name)
			}
			slices.Sort(lat)
			slices.Sort(idle)
			slow := 0
			for _, l := range lat {
				if l > 100*time.Millisecond {
					slow++
				}
			}
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, r.name+"-key-p50-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, r.name+"-key-max-ms")
			b.ReportMetric(float64(slow), r.name+"-keys-over-100ms")
			b.ReportMetric(float64(idle[len(idle)/2].Microseconds())/1000, r.name+"-key-idle-p50-ms")
			b.ReportMetric(float64(painted-keys)/elapsed.Seconds(), r.name+"-paints/s")
			b.ReportMetric(float64(rss)/(1<<20), r.name+"-peak-rss-MB")
			b.ReportMetric(cpu.Seconds()/elapsed.Seconds()*100, r.name+"-cpu-%")
			b.ReportMetric(float64(waited.Milliseconds())/elapsed.Seconds(), r.name+"-runqueue-wait-ms/s")
			ms := regexp.MustCompile(`last window: (\d+) matched in ([0-9.]+)s · lost (\d+) · missed (\d+)`).FindAllStringSubmatch(tail, -1)
			if ms == nil {
				b.Errorf("%s: the Drops pane showed no last window's counts", r.name)
				continue
			}
			m := ms[len(ms)-1]
			n, _ := strconv.ParseFloat(m[1], 64)
			w, _ := strconv.ParseFloat(m[2], 64)
			b.ReportMetric(n/w, r.name+"-matched/s")
			b.Logf("%s: %d keys answered, median %s, worst %s, %d over 100 ms (before the flood: median %s, worst %s); %d paints in %s (%d of them keys); its last window: %s matched in %ss, lost %s, missed %s",
				r.name, keys, lat[len(lat)/2], lat[len(lat)-1], slow, idle[len(idle)/2], idle[len(idle)-1], painted, elapsed.Round(time.Millisecond), keys, m[1], m[2], m[3], m[4])
		}

		lp.wait(b, flood+30*time.Second)
		s := lp.summary(b, true)
		ru := lp.cmd.ProcessState.SysUsage().(*syscall.Rusage)
		b.ReportMetric(float64(ru.Maxrss)/1024, "drops-summary-peak-rss-MB")
		b.ReportMetric((lp.cpu()-dcpu0).Seconds()/lp.ended.Sub(dstart).Seconds()*100, "drops-summary-cpu-%")
		b.ReportMetric(float64(s.Counters.Matched)/float64(sent)*100, "drops-summary-matched-%-of-sent")
		b.Logf("drops --summary at the same time: sent %d, matched %d in %s, lost %d, missed %d, CPU after the tracer loaded %s, peak RSS %d kB",
			sent, s.Counters.Matched, s.Window, s.Counters.Lost(), s.Counters.Missed, lp.cpu()-dcpu0, ru.Maxrss)
	}
}

// runQueueWait is how long the threads of process pid have waited for a
// CPU while runnable (/proc/PID/task/*/schedstat, second field): a key
// that waits on a loaded machine waits there, not in the TUI. Threads
// that ended are not counted.
func runQueueWait(pid int) time.Duration {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, _ := os.ReadDir(dir)
	var sum time.Duration
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/schedstat")
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) >= 2 {
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}
