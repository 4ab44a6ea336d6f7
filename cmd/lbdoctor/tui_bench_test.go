package main

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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

// BenchmarkTUIFlood floods the namespace `lbdoctor tui` watches with
// LBDOCTOR_BENCH_RATE (50,000) drops a second of 1,024 flows (UDP to the
// watched VIP, which nft DNATs to a port nothing listens on) for LBDOCTOR_BENCH_SECONDS (30), with the
// TUI in a real terminal (tmux, 80×24), and reports: how long a key took
// to show on the screen (? opens the help, ? closes it; once a second;
// median and worst, polled every 5 ms through tmux, which adds its own
// few ms), how often the screen was painted (the renderer's home-cursor
// sequences in the pane's output, less the key presses'), the process's
// peak RSS and CPU, and what the tracer counted (the Drops pane's last
// window). Beside it, on the same flood, `lbdoctor drops --summary` with
// the same filter: CPU, peak RSS, matched, lost, missed.
//
//	sudo go test -run '^$' -bench TUIFlood -benchtime 1x ./cmd/lbdoctor/
func BenchmarkTUIFlood(b *testing.B) {
	testkit.RequireRoot(b)
	requireTmux(b)
	rate, seconds := 50000, 30
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	flood := time.Duration(seconds) * time.Second
	p := testkit.NewDropPair(b)
	// A VIP B DNATs to an address of its own where nothing listens: each
	// datagram is a NO_SOCKET drop of a load-balanced flow, after
	// conntrack confirmed it (the tracer attributes them). The flows are
	// in conntrack before the TUI starts: it learns the backend there.
	vip := netip.AddrPortFrom(p.AddrB, testkit.DNATPorts)
	floodAt(b, p, vip, 2048, 1024, time.Second)
	for i := 0; i < b.N; i++ {
		// The TUI.
		x := startTUI(b, 80, 24, "--netns", p.B.Name, "--vip", vip.String())
		out := filepath.Join(x.dir, "pane-output")
		x.tmux("pipe-pane", "-t", "tui", "-o", "cat > "+out)
		pid := x.pid()
		if _, ok := x.waitFor("verdict ", 15*time.Second); !ok {
			b.Fatalf("no window in 15s:\n%s", x.screen(false))
		}
		x.keys("2") // the Drops pane: its counts change with every frame
		paints := func() int {
			data, _ := os.ReadFile(out)
			return bytes.Count(data, []byte("\x1b[H"))
		}
		var sent int
		var wg sync.WaitGroup
		wg.Add(1)
		cpu0, paints0, start := processCPU(b, pid), paints(), time.Now()
		go func() { defer wg.Done(); sent = floodAt(b, p, vip, rate, 1024, flood) }()
		var lat []time.Duration
		keys := 0
		for time.Since(start) < flood-2*time.Second {
			time.Sleep(time.Second)
			x.keys("?")
			d, ok := x.waitFor("this help (esc closes it)", 2*time.Second)
			lat = append(lat, d)
			x.keys("?")
			d2, ok2 := x.waitFor("[2 Drops]", 2*time.Second)
			lat = append(lat, d2)
			keys += 2
			if !ok || !ok2 {
				b.Errorf("a key was not answered within 2s under the flood:\n%s", x.screen(false))
			}
		}
		wg.Wait()
		elapsed := time.Since(start)
		cpu, painted := processCPU(b, pid)-cpu0, paints()-paints0
		rss := peakRSS(b, pid)
		screen := x.screen(false)
		b.Logf("the Drops pane after the flood:\n%s", screen)
		x.keys("q")
		if code, ok := x.exitCode(2 * time.Second); !ok || code != 0 {
			b.Errorf("q after the flood: ended %v, exit %d; want exit 0", ok, code)
		}
		slices.Sort(lat)
		b.ReportMetric(float64(sent)/elapsed.Seconds(), "sent/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "tui-key-p50-ms")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "tui-key-max-ms")
		b.ReportMetric(float64(painted-keys)/elapsed.Seconds(), "tui-paints/s")
		b.ReportMetric(float64(rss)/(1<<20), "tui-peak-rss-MB")
		b.ReportMetric(cpu.Seconds()/elapsed.Seconds()*100, "tui-cpu-%")
		matched := regexp.MustCompile(`last window: (\d+) matched in ([0-9.]+)s · lost (\d+) · missed (\d+)`).FindStringSubmatch(strings.ReplaceAll(screen, "\n", " "))
		if matched == nil {
			b.Errorf("the Drops pane shows no last window's counts:\n%s", screen)
		} else {
			n, _ := strconv.ParseFloat(matched[1], 64)
			w, _ := strconv.ParseFloat(matched[2], 64)
			b.ReportMetric(n/w, "tui-matched/s")
			b.Logf("TUI: %d keys answered, median %s, worst %s; %d paints in %s (%d of them keys); last window %s matched in %ss, lost %s, missed %s",
				keys, lat[len(lat)/2], lat[len(lat)-1], painted, elapsed.Round(time.Millisecond), keys, matched[1], matched[2], matched[3], matched[4])
		}

		// `lbdoctor drops --summary` on the same flood.
		lp := startLbdoctor(b, "", "drops", "--netns", p.B.Name, "--vip", vip.String(), "--summary", "--duration", flood.String(), "-o", "json")
		lp.waitStart(b)
		dcpu0 := processCPU(b, lp.cmd.Process.Pid) // its startup (BTF, kallsyms) apart, as the TUI's
		sent = floodAt(b, p, vip, rate, 1024, flood)
		lp.wait(b, flood+30*time.Second)
		s := lp.summary(b, true)
		ru := lp.cmd.ProcessState.SysUsage().(*syscall.Rusage)
		b.ReportMetric(float64(ru.Maxrss)/1024, "drops-summary-peak-rss-MB")
		b.ReportMetric((lp.cpu()-dcpu0).Seconds()/flood.Seconds()*100, "drops-summary-cpu-%")
		b.ReportMetric(float64(s.Counters.Matched)/s.Window.Seconds(), "drops-summary-matched/s")
		b.Logf("drops --summary: sent %d, matched %d in %s, lost %d, missed %d, CPU after the tracer loaded %s, peak RSS %d kB",
			sent, s.Counters.Matched, s.Window, s.Counters.Lost(), s.Counters.Missed, lp.cpu()-dcpu0, ru.Maxrss)
	}
}
