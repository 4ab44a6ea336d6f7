package conntrack_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// Benchmark: one VIP's 1,000 flows in a table of 1,000,000, found by the
// streaming, kernel-filtered dump, beside what an operator would type.
//
//	go test -run '^$' -bench DumpVIP -benchtime 5x ./probes/conntrack/
//
// Set LBDOCTOR_BENCH_FLOWS to change the table size. It raises the host's
// nf_conntrack_max (global: a child netns cannot set its own) and restores it.

var benchVIP = netip.MustParseAddr("10.1.0.6")

func BenchmarkDumpVIP(b *testing.B) {
	testkit.RequireRoot(b)
	total := 1_000_000
	if s := os.Getenv("LBDOCTOR_BENCH_FLOWS"); s != "" {
		total, _ = strconv.Atoi(s)
	}
	const vipFlows = 1000
	testkit.RaiseHostSysctl(b, "net.netfilter.nf_conntrack_max", total+100_000)
	testkit.RaiseHostSysctl(b, "net.netfilter.nf_conntrack_buckets", total/4)
	ns := testkit.Netns(b, "bench")
	if err := testkit.FillConntrack(ns, total, netip.AddrPortFrom(benchVIP, 8085), vipFlows, netip.AddrPort{}); err != nil {
		b.Fatal(err)
	}
	st, err := conntrack.ReadStats(ns)
	if err != nil || int(st.Entries) < total {
		b.Fatalf("table has %d entries (%v), want %d", st.Entries, err, total)
	}
	filter := conntrack.Filter{Field: conntrack.OrigDst, Addr: benchVIP, Port: 8085, Proto: unix.IPPROTO_UDP}

	b.Run("lbdoctor", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			n := 0
			ds, err := conntrack.Dump(ns, filter, func(conntrack.Flow) error { n++; return nil })
			if err != nil || n != vipFlows || !ds.KernelFiltered {
				b.Fatalf("Dump = %d flows, %+v, %v; want %d kernel-filtered", n, ds, err, vipFlows)
			}
		}
		b.ReportMetric(maxRSS(b, exec.Command(os.Args[0]), ns), "peak-RSS-MB")
	})
	b.Run("conntrack -L -d", func(b *testing.B) {
		var rss float64
		for b.Loop() {
			rss = maxRSS(b, exec.Command("conntrack", "-L", "-d", benchVIP.String()), ns)
		}
		b.ReportMetric(rss, "peak-RSS-MB")
	})
	b.Run("conntrack -L | grep", func(b *testing.B) {
		var rss float64
		for b.Loop() {
			list := exec.Command("conntrack", "-L")
			grep := exec.Command("grep", "-c", "dst="+benchVIP.String()+" ")
			pipe, err := list.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			grep.Stdin = pipe
			var count bytes.Buffer
			grep.Stdout = &count
			if err := grep.Start(); err != nil {
				b.Fatal(err)
			}
			rss = maxRSS(b, list, ns)
			if err := grep.Wait(); err != nil || strings.TrimSpace(count.String()) != strconv.Itoa(vipFlows) {
				b.Fatalf("conntrack -L | grep counted %q (%v), want %d", count.String(), err, vipFlows)
			}
		}
		b.ReportMetric(rss, "peak-RSS-MB")
	})
}

// TestMain doubles as the child process BenchmarkDumpVIP measures the peak
// RSS of: with LBDOCTOR_BENCH_NETNS set it only dumps the VIP's flows.
func TestMain(m *testing.M) {
	if name := os.Getenv("LBDOCTOR_BENCH_NETNS"); name != "" {
		os.Exit(helperDump(name))
	}
	os.Exit(m.Run())
}

func helperDump(name string) int {
	ns, err := netns.Resolve(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	n := 0
	_, err = conntrack.Dump(ns, conntrack.Filter{Field: conntrack.OrigDst, Addr: benchVIP, Port: 8085, Proto: unix.IPPROTO_UDP},
		func(conntrack.Flow) error { n++; return nil })
	if err != nil || n == 0 {
		fmt.Fprintln(os.Stderr, "dump:", n, err)
		return 1
	}
	return 0
}

// maxRSS runs cmd inside ns and returns its peak RSS (VmHWM) in MB, polled
// while it runs: rusage's maxrss would count the benchmark's own memory, which
// a vforked child shares until exec.
func maxRSS(b *testing.B, cmd *exec.Cmd, ns netns.Target) float64 {
	cmd.Env = append(os.Environ(), "LBDOCTOR_BENCH_NETNS="+ns.Name)
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	cmd.Stderr = &out
	if err := ns.Do(cmd.Start); err != nil {
		b.Fatalf("%v: %v", cmd.Args, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	var peak float64
	for {
		select {
		case err := <-done:
			if err != nil {
				b.Fatalf("%v: %v\n%s", cmd.Args, err, out.String())
			}
			return peak
		case <-time.After(2 * time.Millisecond):
			data, _ := os.ReadFile(status)
			for _, line := range strings.Split(string(data), "\n") {
				if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
					kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
					peak = max(peak, float64(kb)/1024)
				}
			}
		}
	}
}
