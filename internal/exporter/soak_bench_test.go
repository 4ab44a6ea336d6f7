package exporter

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/window"
)

// BenchmarkServeSoak runs serve's loop in process on an nft DNAT LB whose
// VIP's SYNs die (forwarding off) under steady traffic, windows of 100 ms
// back to back with a scrape of /metrics after each, for
// LBDOCTOR_BENCH_INTERVALS intervals (default 300; the 10,000 take
// about half an hour here). It reports RSS, the Go heap and the CPU per
// interval over the first and the second half of the run (after a tenth
// as warm-up): flat is no growth. An RSS that doubled fails it. Each
// windower serve can run is measured in turn on the same LB and traffic.
func BenchmarkServeSoak(b *testing.B) {
	testkit.RequireRoot(b)
	n := testkit.EnvInt("LBDOCTOR_BENCH_INTERVALS", 300)
	l, vip := testkit.DNATLab(b, 2)
	traffic := testkit.StartTraffic(b, 100*time.Millisecond, func() lab.ProbeResult {
		return lab.Probe(context.Background(), l.Client, vip, 200*time.Millisecond)
	})
	defer traffic.Stop()
	sel := probes.Selector{VIP: vip}
	for _, wr := range soakWindowers(sel) {
		b.Run(wr.name, func(b *testing.B) { soak(b, l.LB.Name, sel, n, wr.open) })
	}
}

// soakWindower is one way serve runs its windows.
type soakWindower struct {
	name string
	open func(netns.Target) Windower
}

func soakWindowers(sel probes.Selector) []soakWindower {
	opt := window.Options{Drops: true, Probe: true}
	return []soakWindower{
		{"watcher", func(t netns.Target) Windower { return window.NewWatcher(t, sel, opt) }},
		{"window.Run", func(t netns.Target) Windower { return &runWindower{target: t, sel: sel, opt: opt} }},
	}
}

func soak(b *testing.B, ns string, sel probes.Selector, n int, open func(netns.Target) Windower) {
	for b.Loop() {
		e := New([]string{ns}, sel.VIPString())
		h := Handler(e, time.Minute)
		ctx, cancel := context.WithCancel(context.Background())
		type mark struct {
			rss, heap uint64
			cpu       time.Duration
			at        time.Time
		}
		marks := map[int]mark{}
		warm, half := n/10, n/10+(n-n/10)/2
		count := 0
		cfg := Config{Netns: []string{ns}, Sel: sel, Interval: 100 * time.Millisecond, Open: open,
			Ran: func(string, Result) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
				io.Copy(io.Discard, rec.Body)
				count++
				if count == warm || count == half || count == n {
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					marks[count] = mark{rss: rssBytes(b), heap: ms.HeapInuse, cpu: cpuTime(b), at: time.Now()}
				}
				if count == n {
					cancel()
				}
			}}
		Run(ctx, cfg, e)
		cancel()
		first, mid, end := marks[warm], marks[half], marks[n]
		perInterval := func(a, b mark, k int) float64 { return float64((b.cpu - a.cpu).Microseconds()) / 1000 / float64(k) }
		b.ReportMetric(float64(first.rss)/(1<<20), "rss-MB-warm")
		b.ReportMetric(float64(mid.rss)/(1<<20), "rss-MB-mid")
		b.ReportMetric(float64(end.rss)/(1<<20), "rss-MB-end")
		b.ReportMetric(float64(first.heap)/(1<<20), "heap-MB-warm")
		b.ReportMetric(float64(end.heap)/(1<<20), "heap-MB-end")
		b.ReportMetric(perInterval(first, mid, half-warm), "cpu-ms/interval-1st-half")
		b.ReportMetric(perInterval(mid, end, n-half), "cpu-ms/interval-2nd-half")
		b.ReportMetric(float64(end.at.Sub(first.at).Milliseconds())/float64(n-warm), "wall-ms/interval")
		b.ReportMetric(float64(n), "intervals")
		if end.rss > 2*first.rss {
			b.Errorf("RSS grew from %d to %d bytes over %d intervals", first.rss, end.rss, n-warm)
		}
	}
}

// rssBytes is the process's resident set (VmRSS).
func rssBytes(b *testing.B) uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// cpuTime is the process's user and system CPU so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runWindower runs each window afresh (window.Run: a watcher of one
// window), the tracer loaded for each: serve before the watcher kept it.
type runWindower struct {
	target netns.Target
	sel    probes.Selector
	opt    window.Options
}

func (w *runWindower) Next(ctx context.Context, length time.Duration) (*probes.Snapshot, error) {
	opt := w.opt
	opt.Length = length
	return window.Run(ctx, w.target, w.sel, opt)
}

func (w *runWindower) Close() error { return nil }
