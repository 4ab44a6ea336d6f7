package drops_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	ct "github.com/ti-mo/conntrack"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// Flood benchmark: a sendmmsg sender in one netns floods a veth into an nft
// `counter drop` rule in another. This VM's speed drifts by tens of percent
// over seconds, so the rate ratio of each tracer configuration (-ratio) is
// measured under one continuous flood: round after round
// (LBDOCTOR_BENCH_TOGGLES, default 40), each configuration in turn is
// attached for one slice (LBDOCTOR_BENCH_SLICE, default 100ms) between two
// slices with nothing attached. An empty BPF program on the same tracepoint
// takes its turn too: the floor no BPF tracer can beat, and -vs-empty is each
// configuration's ratio over the floor's in the same round (what the
// tracer's own work costs). Rounds (LBDOCTOR_BENCH_ROUNDS, default 3) of
// whole windows (LBDOCTOR_BENCH_WINDOW, default 1s), each between two
// untraced ones, check the totals against the nft counter, measure the
// delivered fraction (-delivered, -window-ratio) and compare with perf
// record. Medians are reported. LBDOCTOR_BENCH_CONFIGS picks configurations ("aggregate;events").
// "window" is the tracer check's window loads (probes.WatchDrops:
// aggregate mode, filtered by namespace, the VIP's and reals' addresses
// and ports; every drop of the flood a NETFILTER_DROP whose hook is
// walked for on the kernel stack); "aggregate" filters by port alone.
//
//	sudo go test -run '^$' -bench Flood -benchtime 1x ./probes/drops/
func BenchmarkFlood(b *testing.B) {
	testkit.RequireRoot(b)
	rounds, window, toggles, slice := 3, time.Second, 40, 100*time.Millisecond
	envInt(b, "LBDOCTOR_BENCH_ROUNDS", &rounds)
	envInt(b, "LBDOCTOR_BENCH_TOGGLES", &toggles)
	envDuration(b, "LBDOCTOR_BENCH_WINDOW", &window)
	envDuration(b, "LBDOCTOR_BENCH_SLICE", &slice)
	snd, rcv := testkit.Netns(b, "fsnd"), testkit.Netns(b, "frcv")
	floodPair(b, snd, rcv)
	testkit.Run(b, rcv, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport 9 counter drop")

	configs := []string{"aggregate", "window", "events", "events, filtered out", "other netns"}
	if _, err := exec.LookPath("perf"); err == nil {
		testkit.Tracefs(b)
		configs = append(configs, "perf record")
	}
	if only := os.Getenv("LBDOCTOR_BENCH_CONFIGS"); only != "" { // e.g. "aggregate;perf record"
		configs = strings.Split(only, ";")
	}
	ratio, delivered, pps := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for r := 0; r < rounds; r++ {
		order := append(append([]string{}, configs[r%len(configs):]...), configs[:r%len(configs)]...)
		before, _ := floodWindow(b, snd, rcv, "no tracer", window)
		pps["no tracer"] = append(pps["no tracer"], before)
		for _, c := range order {
			p, d := floodWindow(b, snd, rcv, c, window)
			after, _ := floodWindow(b, snd, rcv, "no tracer", window)
			pps["no tracer"] = append(pps["no tracer"], after)
			pps[c] = append(pps[c], p)
			ratio[c] = append(ratio[c], p/((before+after)/2))
			if d >= 0 {
				delivered[c] = append(delivered[c], d)
			}
			before = after
		}
	}
	b.ReportMetric(median(pps["no tracer"])/1e6, "0-no_tracer-Mpps")
	// Each configuration with a tracer takes turns with the others and the
	// floor; one that sends every drop keeps its reader busy after its turn,
	// into the next one's, so it takes turns with the floor alone.
	floor := newNopTracer(b)
	names, trs := []string{"empty BPF program"}, []attacher{floor}
	var busy []string
	for _, c := range configs {
		if cfg := tracerConfig(c, snd, rcv); cfg != nil {
			if c == "events" { // every drop of the flood goes to the reader
				busy = append(busy, c)
				continue
			}
			names, trs = append(names, c), append(trs, newTracer(b, *cfg))
		}
	}
	turns := map[string][2][]float64{} // the configuration's ratios, the floor's
	all := toggled(b, snd, trs, toggles, slice)
	for i, n := range names {
		turns[n] = [2][]float64{all[i], all[0]}
	}
	for _, c := range busy {
		r := toggled(b, snd, []attacher{floor, newTracer(b, *tracerConfig(c, snd, rcv))}, toggles, slice)
		turns[c] = [2][]float64{r[1], r[0]}
	}
	for i, c := range configs {
		b.ReportMetric(median(pps[c])/1e6, fmt.Sprintf("%d-%s-Mpps", i+1, slug(c)))
		b.ReportMetric(median(ratio[c]), fmt.Sprintf("%d-%s-window-ratio", i+1, slug(c)))
		if len(delivered[c]) > 0 {
			b.ReportMetric(median(delivered[c]), fmt.Sprintf("%d-%s-delivered", i+1, slug(c)))
		}
		if t, ok := turns[c]; ok {
			var vs []float64
			for r := range t[0] {
				vs = append(vs, t[0][r]/t[1][r])
			}
			b.ReportMetric(median(t[0]), fmt.Sprintf("%d-%s-ratio", i+1, slug(c)))
			b.ReportMetric(median(vs), fmt.Sprintf("%d-%s-vs-empty", i+1, slug(c)))
		}
	}
	b.ReportMetric(median(all[0]), "0-empty_bpf_program-ratio")
}

// newTracer is a drop tracer for cfg, detached until toggled on; in event
// mode a reader drains it throughout, as lbdoctor does.
func newTracer(b *testing.B, cfg drops.Config) attacher {
	tr, err := drops.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	tr.SetHookRange(drops.LoadSymbols()) // as the window's Namer does
	b.Cleanup(func() { tr.Close() })
	if err := tr.Stop(); err != nil {
		b.Fatal(err)
	}
	if cfg.Events {
		ctx, cancel := context.WithCancel(context.Background())
		b.Cleanup(cancel)
		go tr.Read(ctx, func(drops.Packet, drops.RawEvent) {})
	}
	return tr
}

type attacher interface {
	Start() error
	Stop() error
}

// nopTracer is the least any BPF drop tracer can cost: an empty tp_btf
// program on kfree_skb, the floor the ratios are to be read against.
type nopTracer struct {
	prog *ebpf.Program
	lnk  link.Link
}

func newNopTracer(b *testing.B) *nopTracer {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "kfree_skb", License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	n := &nopTracer{prog: p}
	b.Cleanup(n.Close)
	return n
}

func (n *nopTracer) Start() (err error) {
	if n.lnk != nil {
		return nil
	}
	n.lnk, err = link.AttachTracing(link.TracingOptions{Program: n.prog})
	return err
}

func (n *nopTracer) Stop() error {
	if n.lnk == nil {
		return nil
	}
	defer func() { n.lnk = nil }()
	return n.lnk.Close()
}

func (n *nopTracer) Close() { n.Stop(); n.prog.Close() }

// toggled floods without pause and, for each of rounds rounds, attaches
// each tracer in turn (the order rotating) for one slice between two slices
// with none attached. The ratio of a turn is the attached rate over the mean
// of the rates beside it; ratios[i][r] is tracer i's ratio in round r. The
// sender does all the work of a packet, up to its drop, in its own syscall,
// so what it sends is what was dropped.
func toggled(b *testing.B, snd netns.Target, trs []attacher, rounds int, slice time.Duration) [][]float64 {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sent atomic.Uint64
	done := make(chan error)
	go func() { done <- floodUntil(snd, ctx, &sent) }()
	time.Sleep(slice) // the sender gets going
	rate := func() float64 {
		t0, n0 := time.Now(), sent.Load()
		time.Sleep(slice)
		return float64(sent.Load()-n0) / time.Since(t0).Seconds()
	}
	ratios := make([][]float64, len(trs))
	off := rate()
	for r := 0; r < rounds; r++ {
		for k := range trs {
			i := (k + r) % len(trs)
			if err := trs[i].Start(); err != nil {
				b.Fatal(err)
			}
			on := rate()
			if err := trs[i].Stop(); err != nil {
				b.Fatal(err)
			}
			next := rate()
			ratios[i] = append(ratios[i], on/((off+next)/2))
			off = next
		}
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return ratios
}

func tracerConfig(c string, snd, rcv netns.Target) *drops.Config {
	switch c {
	case "aggregate":
		return &drops.Config{NetnsInode: uint32(rcv.Inode), Proto: unix.IPPROTO_UDP, Ports: []uint16{9}}
	case "window":
		// What check's window loads (probes.WatchDrops): aggregate mode,
		// the namespace, the VIP's and its reals' addresses and ports (the
		// flood's destination is the VIP; two reals), no protocol; the
		// flood's drops are NETFILTER_DROPs, each walked for its hook.
		return &drops.Config{NetnsInode: uint32(rcv.Inode), Ports: []uint16{9, 8080},
			Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("10.77.1.10"), netip.MustParseAddr("10.77.1.11")}}
	case "events":
		return &drops.Config{NetnsInode: uint32(rcv.Inode), Proto: unix.IPPROTO_UDP, Ports: []uint16{9}, Events: true}
	case "other netns":
		return &drops.Config{NetnsInode: uint32(snd.Inode), Events: true}
	case "events, filtered out":
		return &drops.Config{NetnsInode: uint32(rcv.Inode), Events: true, Addrs: []netip.Addr{netip.MustParseAddr("10.99.99.99")}}
	}
	return nil
}

func envInt(b *testing.B, name string, v *int) {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatalf("%s=%q: %v", name, s, err)
		}
		*v = n
	}
}

func envDuration(b *testing.B, name string, v *time.Duration) {
	if s := os.Getenv(name); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("%s=%q: %v", name, s, err)
		}
		*v = d
	}
}

// floodWindow floods for d under configuration c and returns the drop rate
// the nft counter saw and, for configurations that deliver events, the
// fraction delivered (else -1). It fails the benchmark when the tracer's
// totals disagree with the counter.
func floodWindow(b *testing.B, snd, rcv netns.Target, c string, d time.Duration) (pps, delivered float64) {
	cfg := tracerConfig(c, snd, rcv)
	if c == "perf record" {
		before := nftCounter(b, rcv)
		samples := perfRecord(b, func() { flood(b, snd, d) })
		dropped := nftCounter(b, rcv) - before
		return float64(dropped) / d.Seconds(), float64(samples) / float64(max(dropped, 1))
	}
	if cfg == nil {
		before := nftCounter(b, rcv)
		flood(b, snd, d)
		return float64(nftCounter(b, rcv)-before) / d.Seconds(), -1
	}
	tr, err := drops.New(*cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	var got atomic.Uint64
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if cfg.Events {
		go func() {
			tr.Read(ctx, func(drops.Packet, drops.RawEvent) { got.Add(1) })
			close(done)
		}()
	}
	before := nftCounter(b, rcv)
	flood(b, snd, d)
	dropped := nftCounter(b, rcv) - before
	time.Sleep(100 * time.Millisecond) // the reader drains what is left
	tr.Stop()
	cancel()
	cnt, err := tr.Counters()
	if err != nil {
		b.Fatal(err)
	}
	pps = float64(dropped) / d.Seconds()
	switch c {
	case "aggregate", "window":
		aggs, err := tr.Aggregates()
		if err != nil {
			b.Fatal(err)
		}
		var total uint64
		for _, a := range aggs {
			total += a.Count
		}
		if cnt.Matched != dropped || total+cnt.AggLost != dropped {
			b.Errorf("%s: matched %d, counted %d (+%d lost), nft counter %d; want all equal", c, cnt.Matched, total, cnt.AggLost, dropped)
		}
		return pps, -1
	case "events":
		<-done
		if got.Load()+cnt.Lost() != dropped {
			b.Errorf("events: delivered %d + lost %d != nft counter %d", got.Load(), cnt.Lost(), dropped)
		}
	default:
		<-done
	}
	return pps, float64(got.Load()) / float64(max(dropped, 1))
}

// BenchmarkAttach measures load + attach of the default tracer.
func BenchmarkAttach(b *testing.B) {
	testkit.RequireRoot(b)
	var ms []float64
	for b.Loop() {
		tr, err := drops.New(drops.Config{Events: true})
		if err != nil {
			b.Fatal(err)
		}
		ms = append(ms, float64(tr.AttachTime.Microseconds())/1000)
		tr.Close()
	}
	b.ReportMetric(median(ms), "attach-ms")
}

func slug(s string) string { return regexp.MustCompile(`[^a-z]+`).ReplaceAllString(s, "_") }

func median(v []float64) float64 { return testkit.Median(v) }

func floodPair(b testing.TB, snd, rcv netns.Target) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	testkit.Veth(b, testkit.VethEnd{NS: snd, Name: "f0", Addrs: []string{"10.77.0.1/24"}},
		testkit.VethEnd{NS: rcv, Name: "f1", Addrs: []string{"10.77.0.2/24"}, MAC: mac})
	// A static neighbour: the flood must not wait on ARP.
	err := snd.Do(func() error {
		l, err := netlink.LinkByName("f0")
		if err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: net.IPv4(10, 77, 0, 2), HardwareAddr: mac, State: netlink.NUD_PERMANENT})
	})
	if err != nil {
		b.Fatal(err)
	}
}

// flood sends 64-byte UDP datagrams with sendmmsg for d.
func flood(b testing.TB, ns netns.Target, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := floodUntil(ns, ctx, nil); err != nil {
		b.Fatal(err)
	}
}

// floodUntil sends 64-byte UDP datagrams with sendmmsg from a thread pinned
// to the last CPU until ctx ends, adding what it sent to sent (if not nil).
func floodUntil(ns netns.Target, ctx context.Context, sent *atomic.Uint64) error {
	return testkit.FloodUDP(ctx, ns, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 77, 0, 2}), 9), 0, sent)
}

var nftPackets = regexp.MustCompile(`counter packets (\d+)`)

func nftCounter(b *testing.B, ns netns.Target) uint64 {
	out := testkit.Run(b, ns, "nft", "list", "chain", "ip", "f", "in")
	m := nftPackets.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no counter in %s", out)
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

var perfSamples = regexp.MustCompile(`SAMPLE events:\s+(\d+)`)

// perfRecord runs fn under `perf record -e skb:kfree_skb -a`, the tool a
// user would reach for instead, and returns how many drops perf recorded.
func perfRecord(b *testing.B, fn func()) uint64 {
	data := b.TempDir() + "/perf.data"
	cmd := exec.Command("perf", "record", "-q", "-e", "skb:kfree_skb", "-a", "-o", data)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // perf opens its buffers
	fn()
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	out, err := exec.Command("perf", "report", "--stats", "-i", data).CombinedOutput()
	if err != nil {
		b.Fatalf("perf report: %v\n%s", err, out)
	}
	m := perfSamples.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no sample count in perf report --stats:\n%s", out)
	}
	v, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return v
}

// BenchmarkProgramCost reports the tracer program's own run time per drop
// (kernel.bpf_stats_enabled, turned on for the benchmark and restored).
func BenchmarkProgramCost(b *testing.B) {
	testkit.RequireRoot(b)
	old, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("1"), 0o644)
	defer os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", old, 0o644)
	snd, rcv := testkit.Netns(b, "psnd"), testkit.Netns(b, "prcv")
	floodPair(b, snd, rcv)
	testkit.Run(b, rcv, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport 9 counter drop")
	b.Run("empty_program", func(b *testing.B) {
		nop := newNopTracer(b)
		if err := nop.Start(); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			flood(b, snd, time.Second)
		}
		reportProgramStats(b, nop.prog.Stats)
	})
	for _, c := range []struct {
		name string
		cfg  drops.Config
	}{
		{"rejected_by_netns", drops.Config{NetnsInode: uint32(snd.Inode)}},
		{"aggregate", drops.Config{NetnsInode: uint32(rcv.Inode)}},
		{"aggregate_port_filter", drops.Config{NetnsInode: uint32(rcv.Inode), Proto: unix.IPPROTO_UDP, Ports: []uint16{9}}},
		{"events_filtered_out", drops.Config{NetnsInode: uint32(rcv.Inode), Events: true, Addrs: []netip.Addr{netip.MustParseAddr("10.99.99.99")}}},
		{"events", drops.Config{NetnsInode: uint32(rcv.Inode), Events: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr, err := drops.New(c.cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			tr.SetHookRange(drops.LoadSymbols()) // as the window's Namer does
			if c.cfg.Events {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go tr.Read(ctx, func(drops.Packet, drops.RawEvent) {})
			}
			for b.Loop() {
				flood(b, snd, time.Second)
			}
			reportProgramStats(b, tr.ProgramStats)
			cnt, _ := tr.Counters()
			b.ReportMetric(float64(cnt.Matched), "matched")
		})
	}
}

// BenchmarkProgramCostDistinctFlows is the program's run time per drop
// when no two drops are of one flow, so that none takes a fast path: UDP to
// 25,000 ports dropped by an nft rule (NETFILTER_DROP: the hook is looked
// up on the stack for each) and, beside it, UDP to closed ports (NO_SOCKET:
// no hook to look up).
//
//	sudo go test -run '^$' -bench ProgramCostDistinct -benchtime 1x ./probes/drops/
func BenchmarkProgramCostDistinctFlows(b *testing.B) {
	testkit.RequireRoot(b)
	old, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("1"), 0o644)
	defer os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", old, 0o644)
	p := testkit.NewDropPair(b)
	for _, c := range []struct {
		name  string
		first int
	}{{"netfilter_drop", testkit.DroppedPorts}, {"no_socket", 1000}} {
		b.Run(c.name, func(b *testing.B) {
			tr, err := drops.New(drops.Config{NetnsInode: uint32(p.B.Inode), Proto: unix.IPPROTO_UDP, FlowMapSize: 65536})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			tr.SetHookRange(drops.LoadSymbols()) // as the window's Namer does: the hook is looked up
			if tr.NoHooks != "" {
				b.Fatalf("no hooks: %s", tr.NoHooks)
			}
			for b.Loop() {
				p.Flood(b, testkit.Ports(c.first, 25000), time.Second)
			}
			reportProgramStats(b, tr.ProgramStats)
		})
	}
}

func reportProgramStats(b *testing.B, stats func() (*ebpf.ProgramStats, error)) {
	st, err := stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(st.Runtime.Nanoseconds())/float64(st.RunCount), "ns/drop")
	b.ReportMetric(float64(st.RecursionMisses), "missed")
	b.ReportMetric(float64(st.RunCount), "runs")
}

// BenchmarkFloodCheckWindow measures what `lbdoctor check`'s window costs
// the traffic it watches: under one continuous flood into an nft `counter
// drop` (every packet a drop the window's tracer matches and counts: the
// flood goes to a DNAT VIP whose backend a conntrack flow shows), round
// after round (LBDOCTOR_BENCH_ROUNDS, default 5) an empty BPF program on the
// same tracepoint (the floor) and a whole `lbdoctor check --vip --watch`
// window (LBDOCTOR_BENCH_WINDOW, default 3s; the rate is taken from its
// tracer's attach to the window's end, and the floor's for as long) each
// run between two slices with nothing attached. -ratio is the rate with it
// over the mean of the rates beside it, -vs-empty the window's ratio over
// the floor's in the same round; -ns/drop is each program's own run time
// per drop (kernel.bpf_stats_enabled, on for the benchmark), which a loaded
// machine's noise in the rates does not hide. lbdoctor runs on the CPUs
// the sender does not (LBDOCTOR_BENCH_PIN=0: on any).
//
//	sudo go test -run '^$' -bench FloodCheckWindow -benchtime 1x ./probes/drops/
func BenchmarkFloodCheckWindow(b *testing.B) {
	testkit.RequireRoot(b)
	rounds, window, slice := 5, 3*time.Second, time.Second
	envInt(b, "LBDOCTOR_BENCH_ROUNDS", &rounds)
	envDuration(b, "LBDOCTOR_BENCH_WINDOW", &window)
	snd, rcv := testkit.Netns(b, "wsnd"), testkit.Netns(b, "wrcv")
	floodPair(b, snd, rcv)
	testkit.Run(b, rcv, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport 9 counter drop")
	// A flow that DNAT sent to 10.77.0.3:9: what tells check the VIP's backend.
	vip, backend := netip.MustParseAddrPort("10.77.0.2:9"), netip.MustParseAddrPort("10.77.0.3:9")
	err := rcv.Do(func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		f := ct.NewFlow(unix.IPPROTO_UDP, ct.StatusConfirmed|ct.StatusDstNAT|ct.StatusSeenReply, netip.MustParseAddr("10.77.0.1"), vip.Addr(), 1, vip.Port(), 600, 0)
		f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = backend.Addr(), backend.Port()
		return c.Create(f)
	})
	if err != nil {
		b.Fatalf("conntrack flow to %s via %s: %v", vip, backend, err)
	}
	bin := testkit.LbdoctorBinary(b)
	args := []string{"check", "--netns", rcv.Name, "--vip", vip.String(), "--watch", window.String()}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sent atomic.Uint64
	done := make(chan error, 1)
	go func() { done <- floodUntil(snd, ctx, &sent) }()
	rate := func(d time.Duration) float64 {
		t0, n0 := time.Now(), sent.Load()
		time.Sleep(d)
		return float64(sent.Load()-n0) / time.Since(t0).Seconds()
	}
	// lbdoctor runs off the sender's CPU (the last; LBDOCTOR_BENCH_PIN=0:
	// anywhere): what it costs the traffic is its tracer's work per packet,
	// not its reads and attribution taking turns with the sender on the
	// same CPU of a small machine.
	pin := ""
	if n := runtime.NumCPU(); n > 1 && os.Getenv("LBDOCTOR_BENCH_PIN") != "0" {
		pin = fmt.Sprintf("0-%d", n-2)
	}
	old, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("1"), 0o644)
	defer os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", old, 0o644)
	floor := newNopTracer(b)
	var empties, checks, vs, checkNs, emptyNs []float64
	off := rate(slice)
	for r := 0; r < rounds; r++ {
		// check's window: measured from its tracer's attach to the
		// window's end (its "watching … for W" line plus W), not while it
		// reads the namespace before or judges after (CPU a 2-core
		// machine's sender competes with, not a cost per packet).
		cmd := exec.Command(bin, args...)
		if pin != "" {
			cmd = exec.Command("taskset", append([]string{"-c", pin, bin}, args...)...) // execs bin: same pid
		}
		var out strings.Builder
		cmd.Stdout = &out
		stderr, err := cmd.StderrPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		opened := make(chan time.Time, 1)
		var errb strings.Builder
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "watching ") {
					opened <- time.Now()
				}
				errb.WriteString(sc.Text() + "\n")
			}
		}()
		started := time.Now()
		for name := drops.ProgramName(cmd.Process.Pid); len(testkit.LoadedPrograms(name)) == 0; time.Sleep(5 * time.Millisecond) {
			if time.Since(started) > time.Minute {
				cmd.Process.Kill()
				b.Fatalf("lbdoctor %v: no tracer after a minute", args)
			}
		}
		var end time.Time
		select {
		case t := <-opened:
			end = t.Add(window - 50*time.Millisecond)
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			b.Fatalf("lbdoctor %v: no \"watching\" line", args)
		}
		// Until the window's end, or until its tracer stops running
		// (detached: the window ended earlier, counted from its first read):
		// its program, held open, counts its runs only while attached.
		ids := testkit.LoadedPrograms(drops.ProgramName(cmd.Process.Pid))
		if len(ids) == 0 {
			b.Fatalf("lbdoctor %v: its tracer is gone", args)
		}
		prog, err := ebpf.NewProgramFromID(ids[0])
		if err != nil {
			b.Fatal(err)
		}
		st0, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		t0, n0 := time.Now(), sent.Load()
		last, t1, n1 := st0, t0, n0
		for time.Now().Before(end) {
			time.Sleep(100 * time.Millisecond)
			st, err := prog.Stats()
			if err != nil || st.RunCount == last.RunCount {
				break
			}
			last, t1, n1 = st, time.Now(), sent.Load()
		}
		prog.Close()
		d := t1.Sub(t0)
		if d < 200*time.Millisecond {
			// A loaded machine: the tracer came too late to measure.
			b.Logf("round %d: lbdoctor's tracer ran %s of its window: not measured", r, d.Round(time.Millisecond))
			cmd.Wait()
			<-readDone
			off = rate(slice)
			continue
		}
		on := float64(n1-n0) / d.Seconds()
		checkNs = append(checkNs, float64((last.Runtime-st0.Runtime).Nanoseconds())/float64(last.RunCount-st0.RunCount))
		err = cmd.Wait()
		<-readDone
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
			b.Fatalf("lbdoctor %v: %v\n%s", args, err, errb.String())
		}
		if !strings.Contains(out.String(), "drops.vip_flows") || !strings.Contains(out.String(), "NETFILTER_DROP") {
			b.Fatalf("lbdoctor %v saw no NETFILTER_DROP of the flood in drops.vip_flows:\n%s\n%s", args, out.String(), errb.String())
		}
		next := rate(slice)
		win := on / ((off + next) / 2)
		off = next

		// The floor for as long.
		st0, err = floor.prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if err := floor.Start(); err != nil {
			b.Fatal(err)
		}
		on = rate(d)
		if err := floor.Stop(); err != nil {
			b.Fatal(err)
		}
		if st1, err := floor.prog.Stats(); err == nil && st1.RunCount > st0.RunCount {
			emptyNs = append(emptyNs, float64((st1.Runtime-st0.Runtime).Nanoseconds())/float64(st1.RunCount-st0.RunCount))
		}
		next = rate(slice)
		empty := on / ((off + next) / 2)
		off = next
		empties, checks, vs = append(empties, empty), append(checks, win), append(vs, win/empty)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if len(checks) == 0 {
		b.Fatalf("no round measured: lbdoctor's tracer attached after its window's end every time; want a longer LBDOCTOR_BENCH_WINDOW than %s", window)
	}
	b.ReportMetric(median(empties), "empty_bpf_program-ratio")
	b.ReportMetric(median(checks), "check_window-ratio")
	b.ReportMetric(median(vs), "check_window-vs-empty")
	b.ReportMetric(median(checkNs), "check_window-ns/drop")
	b.ReportMetric(median(emptyNs), "empty_bpf_program-ns/drop")
	b.Logf("lbdoctor on CPUs %q; per round: empty BPF program %.3f (%.0f ns/drop), check window %.3f (%.0f ns/drop), window/empty %.3f", pin, empties, emptyNs, checks, checkNs, vs)
}
