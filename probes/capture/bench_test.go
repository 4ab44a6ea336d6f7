package capture

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// helperEnv makes the test binary a capture process for the benchmark:
// "NETNS IFACE VIP PORT FILE". The engine then runs in its own process,
// as `lbdoctor capture` would, so its CPU time and RSS are its own.
const helperEnv = "LBDOCTOR_CAPTURE_HELPER"

// helperResult is what the capture process prints when it ends.
type helperResult struct {
	Written uint64 `json:"written"`
	Packets uint64 `json:"packets"`
	Drops   uint64 `json:"drops"`
}

// TestCaptureHelperProcess is the benchmark's capture process; as a test
// (helperEnv unset) it does nothing.
func TestCaptureHelperProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		return
	}
	f := strings.Fields(spec)
	ns, err := netns.Resolve(f[0])
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(f[3])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := Open(ns, Options{Interfaces: []string{f[1]}, Match: Match{Proto: 17, Addrs: []netip.Addr{netip.MustParseAddr(f[2])}, Ports: []uint16{uint16(port)}}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := CreateFile(f[4], c.Snaplen(), c.SocketInterfaces())
	if err != nil {
		t.Fatal(err)
	}
	if prof := os.Getenv("LBDOCTOR_CAPTURE_PROFILE"); prof != "" {
		pf, err := os.Create(prof)
		if err != nil {
			t.Fatal(err)
		}
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	fmt.Fprintln(os.Stderr, "ready")
	start := time.Now()
	var werr error
	c.Run(ctx, func(p Packet) bool {
		werr = w.WritePacket(p, p.Socket, "")
		return werr == nil
	})
	stats := c.Close()
	if err := w.Close(FileStatsOf(stats, start, time.Now())); err != nil || werr != nil {
		t.Fatal(err, werr)
	}
	json.NewEncoder(os.Stdout).Encode(helperResult{Written: w.Packets(), Packets: stats[0].Packets, Drops: stats[0].Drops})
}

// benchRun is one tool's run under one flood.
type benchRun struct {
	tool             string
	rate             int // asked for, packets/s (0: as fast as the sender goes)
	sent             uint64
	written, dropped uint64
	cpu, sys         time.Duration // user+system, system
	rss              int64         // KiB
	secs             float64
}

// BenchmarkCaptureFlood floods UDP over veth into an LB namespace, to the
// VIP's port (dropped there by an nft rule that counts what was sent), at
// rising rates, and captures the VIP's flow on the LB's interface with
// lbdoctor's engine (writing pcapng) and with `tcpdump -i IF -w FILE`
// (the same snaplen, each its default ring), one after the other at each
// rate, each in its own process on CPU 0 while the sender runs on the last.
// It prints packets written per second, the kernel's drops, CPU time per
// packet written and peak RSS, side by side; and reports the highest rate
// each wrote with no kernel drop. LBDOCTOR_BENCH_RATES (packets/s, 0 for
// unpaced) and LBDOCTOR_BENCH_SECONDS set the floods.
//
//	sudo go test -run '^$' -bench CaptureFlood -benchtime 1x ./probes/capture/
func BenchmarkCaptureFlood(b *testing.B) {
	testkit.RequireRoot(b)
	for _, tool := range []string{"tcpdump", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s: %v", tool, err)
		}
	}
	rates := []int{50000, 100000, 200000, 400000, 0}
	if s := os.Getenv("LBDOCTOR_BENCH_RATES"); s != "" {
		rates = nil
		for _, f := range strings.Split(s, ",") {
			r, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("LBDOCTOR_BENCH_RATES: %v", err)
			}
			rates = append(rates, r)
		}
	}
	secs := 2.0
	if s := os.Getenv("LBDOCTOR_BENCH_SECONDS"); s != "" {
		secs, _ = strconv.ParseFloat(s, 64)
	}
	p := newLBPair(b)
	benchNeighbour(b, p)
	testkit.Run(b, p.L, "nft", "add table ip f; add chain ip f in { type filter hook input priority -10; }; add rule ip f in udp dport 8085 counter drop")
	dir := b.TempDir()
	// Each tool's CPU time without a packet (start, open, the window, the
	// end): what its per-packet cost is counted over.
	// tcpdump as a user runs it (libpcap's 2 MiB buffer), and with a
	// buffer as large as lbdoctor's ring.
	all := []string{"lbdoctor", "tcpdump", fmt.Sprintf("tcpdump-B%d", DefaultRingBytes>>10)}
	idle, idleSys := map[string]time.Duration{}, map[string]time.Duration{}
	for _, tool := range all {
		r := benchOne(b, p, tool, -1, secs, filepath.Join(dir, tool+".pcapng"))
		idle[tool], idleSys[tool] = r.cpu, r.sys
		os.Remove(filepath.Join(dir, tool+".pcapng"))
	}
	rounds := 3
	if s := os.Getenv("LBDOCTOR_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	var runs []benchRun
	for round := 0; round < rounds; round++ {
		for i, rate := range rates {
			// The order turns from rate to rate and round to round.
			k := (i + round) % len(all)
			for _, tool := range append(append([]string{}, all[k:]...), all[:k]...) {
				r := benchOne(b, p, tool, rate, secs, filepath.Join(dir, tool+".pcapng"))
				runs = append(runs, r)
				os.Remove(filepath.Join(dir, tool+".pcapng"))
			}
		}
	}
	fmt.Printf("\nidle CPU (same window, no packet): %v; cpu/pkt is over it\n", idle)
	fmt.Printf("medians of %d rounds, %.1f s floods, snaplen %d; ring: lbdoctor %d MiB, tcpdump its default (2 MiB)\n", rounds, secs, DefaultSnaplen, DefaultRingBytes>>20)
	fmt.Printf("%-13s %8s %10s %12s %10s %11s %9s %9s %9s\n", "tool", "rate", "sent/s", "written/s", "drops", "drop ratio", "cpu/pkt", "(sys)", "RSS")
	type key struct {
		tool string
		rate int
	}
	med := map[key]map[string]float64{}
	for _, rate := range rates {
		for _, tool := range all {
			var sent, written, dropped, ratio, cpu, sys, rss []float64
			for _, r := range runs {
				if r.tool != tool || r.rate != rate {
					continue
				}
				sent = append(sent, float64(r.sent)/r.secs)
				written = append(written, float64(r.written)/r.secs)
				dropped = append(dropped, float64(r.dropped))
				ratio = append(ratio, float64(r.dropped)/float64(max(r.dropped+r.written, 1)))
				if r.written > 0 {
					cpu = append(cpu, float64(r.cpu-idle[tool])/float64(r.written))
					sys = append(sys, float64(r.sys-idleSys[tool])/float64(r.written))
				}
				rss = append(rss, float64(r.rss)/1024)
			}
			m := map[string]float64{"sent": testkit.Median(sent), "written": testkit.Median(written), "dropped": testkit.Median(dropped), "ratio": testkit.Median(ratio),
				"cpu": testkit.Median(cpu), "sys": testkit.Median(sys), "rss": testkit.Median(rss)}
			med[key{tool, rate}] = m
			ask := "max"
			if rate > 0 {
				ask = strconv.Itoa(rate)
			}
			fmt.Printf("%-13s %8s %10.0f %12.0f %10.0f %11.4f %7.0fns %7.0fns %6.1fMiB\n", tool, ask, m["sent"], m["written"], m["dropped"], m["ratio"], m["cpu"], m["sys"], m["rss"])
		}
	}
	best := map[string]float64{}
	for _, rate := range rates {
		for _, tool := range all {
			if m := med[key{tool, rate}]; m["dropped"] == 0 && m["written"] > best[tool] {
				best[tool] = m["written"]
			}
		}
	}
	for _, rate := range rates {
		if t := med[key{"tcpdump", rate}]; t["dropped"] > 0 {
			l, big := med[key{"lbdoctor", rate}], med[key{all[2], rate}]
			fmt.Printf("where tcpdump starts dropping (rate %d, 0 = max): tcpdump drops %.4f of what it saw, %s %.4f, lbdoctor %.4f\n", rate, t["ratio"], all[2], big["ratio"], l["ratio"])
			b.ReportMetric(l["ratio"], "lbdoctor-drop-ratio-where-tcpdump-drops")
			b.ReportMetric(t["ratio"], "tcpdump-drop-ratio-where-tcpdump-drops")
			break
		}
	}
	b.ReportMetric(best["lbdoctor"], "lbdoctor-pps-zero-drops")
	b.ReportMetric(best["tcpdump"], "tcpdump-pps-zero-drops")
	b.ReportMetric(best[all[2]], all[2]+"-pps-zero-drops")
	b.ReportMetric(med[key{"lbdoctor", rates[0]}]["cpu"], "lbdoctor-ns/pkt")
	b.ReportMetric(med[key{"tcpdump", rates[0]}]["cpu"], "tcpdump-ns/pkt")
}

// benchNeighbour makes the LB's MAC a static neighbour in C: the flood
// must not wait on ARP.
func benchNeighbour(b *testing.B, p *lbPair) {
	var mac net.HardwareAddr
	err := p.L.Do(func() error {
		l, err := netlink.LinkByName("l0")
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	err = p.C.Do(func() error {
		l, err := netlink.LinkByName("c0")
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: p.LAddr.AsSlice(), HardwareAddr: mac, State: netlink.NUD_PERMANENT})
	})
	if err != nil {
		b.Fatal(err)
	}
}

var tcpdumpStat = regexp.MustCompile(`(\d+) packets (captured|dropped by kernel)`)

// benchOne runs tool on CPU 0 under one flood and reads what it wrote,
// what the kernel dropped, its CPU time and peak RSS.
func benchOne(b *testing.B, p *lbPair, tool string, rate int, secs float64, file string) benchRun {
	var cmd *exec.Cmd
	ready := "ready"
	switch {
	case tool == "lbdoctor":
		cmd = exec.Command("taskset", "-c", "0", os.Args[0], "-test.run=^TestCaptureHelperProcess$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s l0 %s %d %s", helperEnv, p.L.Name, p.VIP.Addr(), vipPort, file))
	default:
		// tcpdump as a user runs it in the LB's namespace; tcpdump-BN
		// with -B N (KiB).
		args := []string{"-c", "0", "ip", "netns", "exec", p.L.Name, "tcpdump", "-i", "l0", "-nn", "-s", strconv.Itoa(DefaultSnaplen), "-w", file}
		if kib, ok := strings.CutPrefix(tool, "tcpdump-B"); ok {
			args = append(args, "-B", kib)
		}
		cmd = exec.Command("taskset", append(args, fmt.Sprintf("udp and host %s and port %d", p.VIP.Addr(), vipPort))...)
		ready = "listening on"
	}
	stderr, _ := cmd.StderrPipe()
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	errText := make(chan string, 1)
	isReady := make(chan struct{})
	go func() {
		var all strings.Builder
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), ready) {
				once = true
				close(isReady)
			}
		}
		io.Copy(io.Discard, stderr)
		errText <- all.String()
	}()
	select {
	case <-isReady:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		b.Fatalf("%s did not start: %s", tool, <-errText)
	}
	time.Sleep(100 * time.Millisecond)
	before := testkit.NftPackets(b, p.L, "ip", "f", "in")
	if rate >= 0 {
		floodAt(b, p, rate, time.Duration(secs*float64(time.Second)))
	} else {
		time.Sleep(time.Duration(secs * float64(time.Second)))
	}
	// The reader catches up; tcpdump's last block is handed over after its
	// 1 s timeout (unread at SIGINT, it would be lost and not counted).
	time.Sleep(1200 * time.Millisecond)
	sent := testkit.NftPackets(b, p.L, "ip", "f", "in") - before
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	stderrText := <-errText
	if err != nil {
		b.Fatalf("%s: %v\n%s", tool, err, stderrText)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	r := benchRun{tool: tool, rate: rate, sent: sent, secs: secs,
		cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), sys: time.Duration(ru.Stime.Nano()), rss: ru.Maxrss}
	switch tool {
	case "lbdoctor":
		var res helperResult
		out := stdout.String()
		if i := strings.Index(out, "{"); i >= 0 {
			out = out[i:]
		}
		if err := json.NewDecoder(strings.NewReader(out)).Decode(&res); err != nil {
			b.Fatalf("lbdoctor capture process: %v\n%s\n%s", err, stdout.String(), stderrText)
		}
		r.written, r.dropped = res.Written, res.Drops
	default:
		for _, m := range tcpdumpStat.FindAllStringSubmatch(stderrText, -1) {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			if m[2] == "captured" {
				r.written = n
			} else {
				r.dropped = n
			}
		}
	}
	return r
}

// floodAt floods the VIP's port from C at rate packets/s (0: unpaced)
// for d.
func floodAt(b *testing.B, p *lbPair, rate int, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := testkit.FloodUDP(ctx, p.C, p.VIP, rate, nil); err != nil {
		b.Fatalf("flood from %s: %v", p.C, err)
	}
}
