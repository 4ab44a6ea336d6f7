package drops_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

type seen struct {
	drops.Packet
	Reason   string
	Location string
	Raw      drops.RawEvent
}

// trace runs fn with an event-mode tracer and returns what it saw.
func trace(t *testing.T, cfg drops.Config, fn func()) ([]seen, drops.Counters) {
	t.Helper()
	testkit.RequireRoot(t)
	cfg.Events = true
	tr, err := drops.New(cfg)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("drops.New(%+v): %+v", cfg, ve)
		}
		t.Fatalf("drops.New(%+v): %v", cfg, err)
	}
	defer tr.Close()
	syms, err := drops.LoadSymbols()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []seen
	done := make(chan error, 1)
	go func() {
		done <- tr.Read(ctx, func(p drops.Packet, raw drops.RawEvent) {
			mu.Lock()
			got = append(got, seen{p, tr.Reasons[p.Reason], syms.Lookup(p.Location), raw})
			mu.Unlock()
		})
	}()
	fn()
	time.Sleep(200 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Matched != uint64(len(got))+c.Lost() {
		t.Errorf("matched %d != delivered %d + lost %d", c.Matched, len(got), c.Lost())
	}
	return got, c
}

func find(got []seen, reason string) *seen {
	for i := range got {
		if got[i].Reason == reason {
			return &got[i]
		}
	}
	return nil
}

func dial(ns netns.Target, to string) {
	ns.Do(func() error {
		c, err := net.DialTimeout("tcp", to, 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	})
}

// The seed's stage: DNAT in the LB with forwarding off kills the SYN in
// ip_error with IP_INADDRERRORS, in the LB's namespace, after DNAT.
func TestIPInAddrErrors(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
	testkit.NftNAT(t, l.LB, vip, real, true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	got, _ := trace(t, drops.Config{NetnsInode: uint32(l.LB.Inode)}, func() {
		lab.Probe(context.Background(), l.Client, vip, 500*time.Millisecond)
	})
	d := find(got, "IP_INADDRERRORS")
	if d == nil {
		t.Fatalf("no IP_INADDRERRORS drop; saw %+v", got)
	}
	if !strings.HasPrefix(d.Location, "ip_error+0x") || d.Netns != uint32(l.LB.Inode) || d.Proto != unix.IPPROTO_TCP ||
		d.Src.Addr() != l.ClientIP || d.Dst != real || drops.Kind(d.Raw.TCPFlags) != "SYN" || d.Raw.Ifname != "eth0" {
		t.Errorf("drop = %+v, want a SYN %s → %s (after DNAT) at ip_error+… on eth0 in netns %d", d, l.ClientIP, real, l.LB.Inode)
	}
}

func TestNetfilterDropAndNoSocket(t *testing.T) {
	ns := testkit.Netns(t, "drop")
	testkit.Run(t, ns, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in tcp dport 9 drop")
	got, _ := trace(t, drops.Config{NetnsInode: uint32(ns.Inode), Proto: unix.IPPROTO_TCP}, func() {
		dial(ns, "127.0.0.1:9")    // dropped by the rule
		dial(ns, "127.0.0.1:7777") // nobody listens
	})
	// 6.1 reports the verdict at nf_hook_slow, 6.18 inside nft_do_chain.
	if d := find(got, "NETFILTER_DROP"); d == nil || !(strings.HasPrefix(d.Location, "nf_hook_slow+") || strings.HasPrefix(d.Location, "nft_do_chain+")) || d.Dst.Port() != 9 {
		t.Errorf("NETFILTER_DROP drop = %+v, want one at nf_hook_slow or nft_do_chain to port 9 (saw %+v)", d, got)
	}
	if d := find(got, "NO_SOCKET"); d == nil || d.Dst.Port() != 7777 || !strings.HasPrefix(d.Location, "tcp_v4_rcv+") {
		t.Errorf("NO_SOCKET drop = %+v, want one at tcp_v4_rcv to port 7777 (saw %+v)", d, got)
	}
}

// IPv6 drops carry their addresses whole, and the address filter takes
// IPv6 too.
func TestIPv6(t *testing.T) {
	ns := testkit.Netns(t, "six")
	testkit.Run(t, ns, "nft", "add table ip6 f; add chain ip6 f in { type filter hook input priority 0; }; add rule ip6 f in tcp dport 9 drop")
	lo := netip.IPv6Loopback()
	got, _ := trace(t, drops.Config{NetnsInode: uint32(ns.Inode), Addrs: []netip.Addr{lo}}, func() {
		dial(ns, "[::1]:9")        // dropped by the rule
		dial(ns, "[::1]:7777")     // nobody listens
		dial(ns, "127.0.0.1:7778") // not ::1: filtered out
	})
	if d := find(got, "NETFILTER_DROP"); d == nil || d.Family != 6 || d.Src.Addr() != lo || d.Dst != netip.AddrPortFrom(lo, 9) || drops.Kind(d.Raw.TCPFlags) != "SYN" {
		t.Errorf("NETFILTER_DROP drop = %+v, want a SYN ::1 → [::1]:9 (saw %+v)", d, got)
	}
	if d := find(got, "NO_SOCKET"); d == nil || d.Family != 6 || d.Dst != netip.AddrPortFrom(lo, 7777) || !strings.HasPrefix(d.Location, "tcp_v6_rcv+") {
		t.Errorf("NO_SOCKET drop = %+v, want one to [::1]:7777 at tcp_v6_rcv (saw %+v)", d, got)
	}
	for _, d := range got {
		if d.Family != 6 {
			t.Errorf("address filter ::1 let through %+v", d)
		}
	}
}

// On a kernel whose kfree_skb passes no reason (before 5.17) the programs
// never read the argument, and drops still carry their location.
func TestWithoutReasons(t *testing.T) {
	testkit.RequireRoot(t)
	defer drops.AsKernelWithoutReasons()()
	testkit.Tracefs(t)
	ns := testkit.Netns(t, "norsn")
	for _, at := range []string{drops.AttachTPBTF, drops.AttachRawTP, drops.AttachTracepoint} {
		got, c := trace(t, drops.Config{NetnsInode: uint32(ns.Inode), Ports: []uint16{7020}, Attach: at}, func() {
			dial(ns, "127.0.0.1:7020")
		})
		if len(got) == 0 || c.Matched == 0 {
			t.Errorf("%s: no drop traced without reasons", at)
		}
		for _, d := range got {
			if d.Packet.Reason != 0 || d.Reason != "" || !strings.HasPrefix(d.Location, "tcp_v4_rcv+") || d.Dst.Port() != 7020 {
				t.Errorf("%s: drop = %+v (%q at %s), want reason 0 at tcp_v4_rcv to port 7020", at, d.Packet, d.Reason, d.Location)
			}
		}
	}
	tr, err := drops.New(drops.Config{NetnsInode: uint32(ns.Inode)})
	if err != nil {
		t.Fatal(err)
	}
	if tr.NoReasons == "" || tr.Reasons != nil {
		t.Errorf("Tracer.NoReasons = %q, Reasons %d names; want a reason why and no names", tr.NoReasons, len(tr.Reasons))
	}
	tr.Close()
	if _, err := drops.New(drops.Config{IgnoreReasons: []string{"NO_SOCKET"}}); !errors.Is(err, kernel.ErrNotSupported) {
		t.Errorf("drops.New(--ignore-reason without reasons) = %v, want ErrNotSupported", err)
	}
}

// On a kernel without the bpf_rdonly_cast kfunc (before 6.2; the guest's
// 6.1) the programs read headers through bpf_probe_read_kernel: the kfunc's
// references are unlinked before loading (cilium/ebpf would search every
// module's BTF for it at each), and each program still names every drop,
// in event and in aggregate mode.
func TestWithoutRdonlyCast(t *testing.T) {
	testkit.RequireRoot(t)
	p, err := drops.Prepare("")
	if err != nil {
		t.Fatal(err)
	}
	if n := drops.KfuncReferences(p); n == 0 {
		t.Fatalf("Prepare on %s: the programs refer to bpf_rdonly_cast %d times, want its references kept where the kernel has it", kernel.Release(), n)
	}
	defer drops.AsKernelWithoutRdonlyCast()()
	if p, err = drops.Prepare(""); err != nil {
		t.Fatal(err)
	}
	if n := drops.KfuncReferences(p); n != 0 {
		t.Errorf("Prepare on a kernel without bpf_rdonly_cast: the programs still refer to it %d times, want none (cilium/ebpf would search every module for it at each)", n)
	}
	testkit.Tracefs(t)
	ns := testkit.Netns(t, "nocast")
	for _, at := range []string{drops.AttachTPBTF, drops.AttachRawTP, drops.AttachTracepoint} {
		t.Run(at, func(t *testing.T) {
			cfg := drops.Config{NetnsInode: uint32(ns.Inode), LB: ns, Ports: []uint16{7021}, Attach: at}
			got, _ := trace(t, cfg, func() { dial(ns, "127.0.0.1:7021") })
			if d := find(got, "NO_SOCKET"); d == nil || d.Dst != netip.MustParseAddrPort("127.0.0.1:7021") || drops.Kind(d.Raw.TCPFlags) != "SYN" {
				t.Errorf("event mode: NO_SOCKET drop = %+v, want a SYN to 127.0.0.1:7021 (saw %+v)", d, got)
			}
			tr, err := drops.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			dial(ns, "127.0.0.1:7021")
			smp, err := tr.Watch(context.Background(), time.Now().Add(200*time.Millisecond), drops.Hooks{})
			if err != nil {
				t.Fatal(err)
			}
			var syns uint64
			for _, c := range smp.Drops {
				if c.ReasonName == "NO_SOCKET" && c.Dst == netip.MustParseAddrPort("127.0.0.1:7021") && c.Proto == unix.IPPROTO_TCP {
					syns += c.Count
				}
			}
			if syns == 0 {
				t.Errorf("aggregate mode: Watch(…).Drops = %+v, want the SYN to 127.0.0.1:7021 counted as NO_SOCKET", smp.Drops)
			}
		})
	}
}

// Strict reverse-path filtering drops a packet whose source has no route
// back through the interface it came in on.
func TestIPRPFilter(t *testing.T) {
	a, b := testkit.Netns(t, "rpa"), testkit.Netns(t, "rpb")
	testkit.Veth(t, testkit.VethEnd{NS: a, Name: "a0", Addrs: []string{"10.9.0.1/24", "10.8.0.1/32"}},
		testkit.VethEnd{NS: b, Name: "b0", Addrs: []string{"10.9.0.2/24"}})
	// A's ARP must not come from the unroutable address: B would ignore it.
	testkit.Sysctl(t, a, "net.ipv4.conf.a0.arp_announce", "2")
	testkit.Sysctl(t, b, "net.ipv4.conf.all.rp_filter", "1")
	testkit.Sysctl(t, b, "net.ipv4.conf.b0.rp_filter", "1")
	src := netip.MustParseAddr("10.8.0.1")
	got, _ := trace(t, drops.Config{NetnsInode: uint32(b.Inode), Addrs: []netip.Addr{src}}, func() {
		time.Sleep(300 * time.Millisecond) // let b0 come up
		testkit.SendUDP(t, a, src, netip.MustParseAddrPort("10.9.0.2:9"), 3)
	})
	if d := find(got, "IP_RPFILTER"); d == nil || d.Src.Addr() != src || d.Proto != unix.IPPROTO_UDP {
		t.Errorf("IP_RPFILTER drop = %+v, want a UDP packet from %s (saw %+v)", d, src, got)
	}
}

// Filters run in the kernel: drops in other namespaces and of other
// addresses never arrive.
func TestFiltersExclude(t *testing.T) {
	mine, other := testkit.Netns(t, "fa"), testkit.Netns(t, "fb")
	got, c := trace(t, drops.Config{NetnsInode: uint32(mine.Inode)}, func() {
		dial(mine, "127.0.0.1:7001")
		dial(other, "127.0.0.1:7002")
	})
	if len(got) == 0 || c.Matched == 0 {
		t.Fatal("netns filter: no drop from the traced namespace")
	}
	for _, d := range got {
		if d.Netns != uint32(mine.Inode) || d.Dst.Port() == 7002 {
			t.Errorf("netns filter let through %+v", d)
		}
	}
	// Address filter: only 127.0.0.2's drops.
	testkit.Run(t, mine, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo")
	want := netip.MustParseAddr("127.0.0.2")
	got, _ = trace(t, drops.Config{NetnsInode: uint32(mine.Inode), Addrs: []netip.Addr{want}}, func() {
		dial(mine, "127.0.0.1:7003")
		dial(mine, "127.0.0.2:7004")
	})
	if len(got) == 0 {
		t.Fatal("address filter: no drop to 127.0.0.2")
	}
	for _, d := range got {
		if d.Src.Addr() != want && d.Dst.Addr() != want {
			t.Errorf("address filter let through %+v", d)
		}
	}
	// Reason filter: NO_SOCKET ignored, NETFILTER_DROP kept.
	testkit.Run(t, mine, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in tcp dport 7005 drop")
	got, _ = trace(t, drops.Config{NetnsInode: uint32(mine.Inode), IgnoreReasons: []string{"no_socket"}}, func() {
		dial(mine, "127.0.0.1:7005") // dropped by the rule
		dial(mine, "127.0.0.1:7006") // nobody listens: ignored
	})
	if find(got, "NETFILTER_DROP") == nil {
		t.Errorf("with NO_SOCKET ignored, no NETFILTER_DROP drop (saw %+v)", got)
	}
	if d := find(got, "NO_SOCKET"); d != nil {
		t.Errorf("ignored reason NO_SOCKET let through %+v", d)
	}
}

// Aggregate mode counts in the kernel what event mode would have shown.
func TestAggregateMode(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "agg")
	tr, err := drops.New(drops.Config{NetnsInode: uint32(ns.Inode), Ports: []uint16{7005}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 4; i++ {
		dial(ns, "127.0.0.1:7005")
	}
	aggs, err := tr.Aggregates()
	if err != nil {
		t.Fatal(err)
	}
	c, _ := tr.Counters()
	var total uint64
	for _, a := range aggs {
		total += a.Count
		if a.Dst.Port() != 7005 || tr.Reasons[a.Reason] != "NO_SOCKET" {
			t.Errorf("aggregate %+v (%s), want NO_SOCKET to port 7005", a, tr.Reasons[a.Reason])
		}
	}
	if total != 4 || c.Matched != 4 || c.Lost() != 0 {
		t.Errorf("aggregates count %d, matched %d, lost %d; want 4, 4, 0", total, c.Matched, c.Lost())
	}
}

// Aggregate mode counts every packet to its own flow, also when flows
// interleave and the per-CPU fast path (last flow, last rejected packet)
// has to hand over to the map.
func TestAggregateCountsExactly(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "aggx")
	testkit.Run(t, ns, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport { 9, 10 } drop")
	tr, err := drops.New(drops.Config{NetnsInode: uint32(ns.Inode), Ports: []uint16{9}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sent := map[uint16]int{}
	err = ns.Do(func() error {
		var socks []*net.UDPConn
		for _, port := range []int{9, 9, 10} { // two flows to port 9, one filtered out
			c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
			if err != nil {
				return err
			}
			defer c.Close()
			socks = append(socks, c)
		}
		for round := 0; round < 50; round++ {
			for i, c := range socks {
				for n := 0; n < 1+i*3+round%4; n++ { // runs of different lengths
					if _, err := c.Write([]byte("x")); err != nil {
						return err
					}
					if i < 2 {
						sent[uint16(c.LocalAddr().(*net.UDPAddr).Port)]++
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.Stop()
	aggs, err := tr.Aggregates()
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16]int{}
	for _, a := range aggs {
		if a.Dst.Port() != 9 {
			t.Errorf("aggregate %+v: the port filter lets only port 9 through", a)
		}
		got[a.Src.Port()] += int(a.Count)
	}
	if !maps.Equal(got, sent) {
		t.Errorf("aggregates per source port = %v, want %v", got, sent)
	}
}

// A lone drop wakes the reader: it does not wait for the next poll (here
// an hour away) or for a batch to fill.
func TestLoneDropWakesReader(t *testing.T) {
	testkit.RequireRoot(t)
	defer drops.SetPollInterval(time.Hour)()
	ns := testkit.Netns(t, "wake")
	tr, err := drops.New(drops.Config{NetnsInode: uint32(ns.Inode), Ports: []uint16{7030}, Events: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	got := make(chan drops.Packet, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Read(ctx, func(p drops.Packet, _ drops.RawEvent) { got <- p }) }()
	dial(ns, "127.0.0.1:7030")
	select {
	case p := <-got:
		if p.Dst.Port() != 7030 {
			t.Errorf("event %+v, want the drop to port 7030", p)
		}
	case <-time.After(5 * time.Second):
		t.Error("a lone drop did not wake the reader (poll interval 1h)")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Every attach point the kernel offers delivers the same drop.
func TestEveryAttachPoint(t *testing.T) {
	testkit.Tracefs(t)
	ns := testkit.Netns(t, "att")
	for _, at := range []string{drops.AttachTPBTF, drops.AttachRawTP, drops.AttachTracepoint} {
		t.Run(at, func(t *testing.T) {
			got, _ := trace(t, drops.Config{NetnsInode: uint32(ns.Inode), Attach: at, Ports: []uint16{7010}}, func() {
				dial(ns, "127.0.0.1:7010")
			})
			if d := find(got, "NO_SOCKET"); d == nil || d.Dst.Port() != 7010 || d.Netns != uint32(ns.Inode) || !strings.HasPrefix(d.Location, "tcp_v4_rcv+") {
				t.Errorf("%s: NO_SOCKET drop = %+v, want one to port 7010 at tcp_v4_rcv (saw %+v)", at, d, got)
			}
		})
	}
}

// A tracer's links are bound to its file descriptors: a process killed
// with SIGKILL leaves no program attached.
func TestKilledTracerLeavesNothing(t *testing.T) {
	testkit.RequireRoot(t)
	bin := testkit.LbdoctorBinary(t)
	cmd := exec.Command(bin, "drops", "--summary")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stderr).ReadString('\n')
	if !strings.HasPrefix(line, "tracing drops") {
		cmd.Process.Kill()
		t.Fatalf("lbdoctor drops said %q, want it to start tracing", line)
	}
	name := drops.ProgramName(cmd.Process.Pid)
	if n := len(testkit.LoadedPrograms(name)); n != 1 {
		t.Errorf("while tracing: %d programs named %s loaded, want 1", n, name)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for len(testkit.LoadedPrograms(name)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after kill -9, %s is still loaded", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --stack: the kernel stack of a drop leads from the network stack's entry
// to the function that dropped it.
func TestStack(t *testing.T) {
	ns := testkit.Netns(t, "stk")
	got, _ := trace(t, drops.Config{NetnsInode: uint32(ns.Inode), Ports: []uint16{7020}, Stack: true}, func() {
		dial(ns, "127.0.0.1:7020")
	})
	d := find(got, "NO_SOCKET")
	if d == nil || len(d.Raw.Stack) < 3 {
		t.Fatalf("NO_SOCKET drop = %+v, want one with a kernel stack", d)
	}
	syms, _ := drops.LoadSymbols()
	var frames []string
	for _, pc := range d.Raw.Stack {
		frames = append(frames, syms.Lookup(pc))
	}
	if !strings.Contains(strings.Join(frames, " "), "tcp_v4_rcv+") {
		t.Errorf("stack %v does not go through tcp_v4_rcv", frames)
	}
}

// SIGTERM (like Ctrl-C) ends a trace cleanly: the summary is printed, the
// exit status is 0, and nothing stays attached.
func TestTerminatedTracerDetachesAndSummarizes(t *testing.T) {
	testkit.RequireRoot(t)
	cmd := exec.Command(testkit.LbdoctorBinary(t), "drops")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(stderr)
	if line, _ := rd.ReadString('\n'); !strings.HasPrefix(line, "tracing drops") {
		cmd.Process.Kill()
		t.Fatalf("lbdoctor drops said %q, want it to start tracing", line)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := io.ReadAll(rd)
	err = cmd.Wait()
	if err != nil || !strings.Contains(string(rest), "drops matched in") || !strings.Contains(string(rest), "lost") {
		t.Errorf("after SIGTERM: %v, stderr %q; want exit 0 and the summary with its lost count", err, rest)
	}
	// The kernel frees a released program after an RCU grace period.
	name := drops.ProgramName(cmd.Process.Pid)
	for deadline := time.Now().Add(3 * time.Second); len(testkit.LoadedPrograms(name)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGTERM, %s is still loaded", name)
		}
	}
}

// floodFlows sends rounds packets to each of n destination ports from one
// UDP socket in ns, round by round: n distinct flows, interleaved, so that
// every packet hands the CPU's last-flow slot over to the map.
func floodFlows(t *testing.T, ns netns.Target, n, rounds int) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer c.Close()
		for r := 0; r < rounds; r++ {
			for port := 1; port <= n; port++ {
				if _, err := c.WriteToUDP([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// More distinct flows than the aggregate map holds: the counts per place
// (netns, reason, location) stay exact — what the map had no room for is
// counted by place, marked not itemised — and nothing is lost. On every
// attach point (each has its own copy of the logic).
func TestAggregateFlowMapFull(t *testing.T) {
	testkit.Tracefs(t)
	ns := testkit.Netns(t, "full")
	testkit.Run(t, ns, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport 1-60000 counter drop")
	const mapSize, flows, rounds = 256, 2000, 2
	for _, at := range []string{drops.AttachTPBTF, drops.AttachRawTP, drops.AttachTracepoint} {
		t.Run(at, func(t *testing.T) {
			before := testkit.NftPackets(t, ns, "ip", "f", "in")
			tr, err := drops.New(drops.Config{NetnsInode: uint32(ns.Inode), Attach: at, FlowMapSize: mapSize})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			floodFlows(t, ns, flows, rounds)
			tr.Stop()
			dropped := testkit.NftPackets(t, ns, "ip", "f", "in") - before
			aggs, err := tr.Aggregates()
			if err != nil {
				t.Fatal(err)
			}
			c, err := tr.Counters()
			if err != nil {
				t.Fatal(err)
			}
			byPlace := map[string]uint64{}
			var itemised int
			var notItemised uint64
			for _, a := range aggs {
				byPlace[tr.ReasonName(a.Reason)] += a.Count
				if a.NotItemised {
					notItemised += a.Count
					if a.Family != 0 || a.Src.IsValid() {
						t.Errorf("not-itemised aggregate %+v has flow fields", a)
					}
				} else {
					itemised++
				}
			}
			if dropped != flows*rounds {
				t.Fatalf("nft counted %d drops, want %d", dropped, flows*rounds)
			}
			want := map[string]uint64{"NETFILTER_DROP": dropped}
			if !maps.Equal(byPlace, want) {
				t.Errorf("aggregates by reason = %v, want %v (the nft counter)", byPlace, want)
			}
			if c.Matched != dropped || c.AggLost != 0 || c.NotItemised != notItemised || notItemised == 0 {
				t.Errorf("counters = %+v, want matched %d, agg_lost 0, not_itemised %d > 0", c, dropped, notItemised)
			}
			// The map's flows, and at most one per CPU in its last-flow slot.
			if ncpu, _ := ebpf.PossibleCPU(); itemised > mapSize+ncpu {
				t.Errorf("%d flows itemised, want at most %d (map) + %d (CPUs)", itemised, mapSize, ncpu)
			}
		})
	}
}

// A NETFILTER_DROP carries its hook in aggregate mode, told by the function
// that ran it (nf_hook_slow's caller), whatever table or backend dropped it.
func TestNetfilterDropHooks(t *testing.T) {
	testkit.RequireRoot(t)
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Run(t, l.Client, "ip", "route", "add", l.RealIP.String(), "via", l.LBIP.String())
	testkit.Run(t, l.LB, "nft", `add table ip h
		add chain ip h pre { type filter hook prerouting priority 0; }
		add chain ip h in { type filter hook input priority 0; }
		add chain ip h fw { type filter hook forward priority 0; }
		add chain ip h out { type filter hook output priority 0; }
		add chain ip h post { type filter hook postrouting priority 0; }
		add rule ip h pre tcp dport 7101 drop
		add rule ip h in tcp dport 7102 drop
		add rule ip h fw tcp dport 7103 drop
		add rule ip h out tcp dport 7104 drop
		add rule ip h post tcp dport 7105 drop`)
	testkit.Run(t, l.LB, "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "7106", "-j", "DROP")
	tr, err := drops.New(drops.Config{NetnsInode: uint32(l.LB.Inode), LB: l.LB, Proto: unix.IPPROTO_TCP})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	n := tr.Namer() // it read kallsyms before the attach: where nf_hook_slow is
	if tr.NoHooks != "" {
		t.Fatalf("the tracer finds no hooks: %s", tr.NoHooks)
	}
	lb := l.LBIP.String()
	cases := []struct {
		name string
		ns   netns.Target
		to   string
		hook string
	}{
		{"nft prerouting", l.Client, lb + ":7101", drops.HookPrerouting},
		{"nft input", l.Client, lb + ":7102", drops.HookInput},
		{"nft forward", l.Client, l.RealIP.String() + ":7103", drops.HookForward},
		{"nft output", l.LB, "127.0.0.1:7104", drops.HookOutput},
		{"nft postrouting", l.LB, l.ClientIP.String() + ":7105", drops.HookPostrouting},
		{"iptables-legacy input", l.Client, lb + ":7106", drops.HookInput},
	}
	for _, tt := range cases {
		dial(tt.ns, tt.to)
	}
	s, err := tr.Sample(n, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hooks := map[uint16]string{}
	for _, c := range s.Drops {
		if c.ReasonName == "NETFILTER_DROP" {
			hooks[c.Dst.Port()] = c.Hook + " (" + c.CallerSymbol + ")"
		}
	}
	for i, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			port := uint16(7101 + i)
			if got, _, _ := strings.Cut(hooks[port], " "); got != tt.hook {
				t.Errorf("hook of the drop to port %d = %q, want %s (all: %v)", port, hooks[port], tt.hook, hooks)
			}
		})
	}
}

func TestHookOf(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"ip_local_deliver+0x119", drops.HookInput},
		{"ip_rcv+0x3c", drops.HookPrerouting},
		{"nf_hook_slow_list+0x8a", drops.HookPrerouting},
		{"ip_forward+0x4a1", drops.HookForward},
		{"__ip_local_out+0x15c", drops.HookOutput},
		{"ip_output+0x5f", drops.HookPostrouting},
		{"ip6_input+0x44", drops.HookInput},
		{"ip_vs_nat_xmit+0x1f0 [ip_vs]", drops.HookOutput},
		{"ip_forward.cold+0x2", drops.HookForward},
		{"tcp_v4_rcv+0x10", ""},
		{"", ""},
	} {
		if got := drops.HookOf(tt.in); got != tt.want {
			t.Errorf("HookOf(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
