//go:build guest

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/window"
)

// Scale of the LB the benchmark builds: services × reals, and IPVS
// connections (LBDOCTOR_BENCH_SERVICES, LBDOCTOR_BENCH_CONNS override).
const (
	scaleServices = 1000
	scaleReals    = 10
	scaleConns    = 100000
	scaleWindow   = window.DefaultLength // check's default
)

// BenchmarkGuestCheckScale measures `lbdoctor check` on an LB with 1,000
// services × 10 reals and 100,000 IPVS connections (each a client packet
// to a VIP: ESTABLISHED in IPVS and, with vs.conntrack=1, in conntrack),
// static (--watch 0) and with its default window, beside `ipvsadm -Ln` and `ipvsadm -Lnc` on
// the same table: wall time (for the window: beyond it) and peak RSS
// (busybox time). The target is the window plus ≤ 1 s and
// ≤ 100 MB.
//
//	make guest-test RUN='^$' BENCH=GuestCheckScale GUEST_PKGS=./cmd/lbdoctor/ LBDOCTOR_GUEST_MEMORY=1G
//
// BENCH='GuestCheckScale/^check-' measures lbdoctor alone.
// LBDOCTOR_BENCH_BASE names another lbdoctor binary in the guest (added
// with LBDOCTOR_GUEST_FILES, e.g. main's build) measured beside it.
func BenchmarkGuestCheckScale(b *testing.B) {
	services, conns := scaleServices, scaleConns
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_SERVICES")); err == nil && v > 0 {
		services = v
	}
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_CONNS")); err == nil && v > 0 {
		conns = v
	}
	s := newScaleLB(b, services, scaleReals)
	start := time.Now()
	got := s.fill(b, conns)
	b.Logf("%d services × %d reals; %d packets sent in %s: %d IPVS connections, %s conntrack entries",
		services, scaleReals, conns, time.Since(start).Round(time.Millisecond), got, s.conntrackCount(b))
	if got < conns*99/100 {
		b.Fatalf("IPVS holds %d connections after %d packets, want %d", got, conns, conns)
	}
	bin, err := exec.LookPath("lbdoctor")
	if err != nil {
		b.Fatal("no lbdoctor binary in the guest: run it with `make guest-test` (it adds bin/lbdoctor)")
	}
	type run struct {
		name   string
		ns     netns.Target // "" Spec: the test's own namespace
		window time.Duration
		argv   []string
	}
	checkRuns := func(prefix, bin string) []run {
		runs := []run{
			{prefix + "check-static", netns.Target{}, 0, []string{bin, "check", "--netns", s.lb.Name, "--watch", "0", "-o", "json"}},
			{prefix + "check-window", netns.Target{}, scaleWindow, []string{bin, "check", "--netns", s.lb.Name, "-o", "json"}}, // the default window
		}
		if os.Getenv("LBDOCTOR_BENCH_CAPTURE") != "" {
			// check --capture: its join reads the tables within the drop
			// tracer's bounds, of every service and of one VIP.
			runs = append(runs, run{prefix + "check-capture", netns.Target{}, scaleWindow, []string{bin, "check", "--netns", s.lb.Name, "--capture", "-o", "json"}},
				run{prefix + "check-capture-vip", netns.Target{}, scaleWindow, []string{bin, "check", "--netns", s.lb.Name, "--vip", s.vips[0].String(), "--capture", "-o", "json"}})
		}
		return runs
	}
	// lbdoctor first: conntrack lets the flows of the fill go after a few
	// minutes (they never saw a reply), and ipvsadm reads no conntrack.
	// LBDOCTOR_BENCH_ROUNDS repeats lbdoctor's runs, each binary in turn:
	// a host that is busy now and then weighs on both alike.
	rounds := 1
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	var runs []run
	for range rounds {
		runs = append(runs, checkRuns("", bin)...)
		if base := os.Getenv("LBDOCTOR_BENCH_BASE"); base != "" {
			// Another lbdoctor binary in the guest (e.g. main's), measured on
			// the same table, side by side.
			runs = append(runs, checkRuns("base-", base)...)
		}
	}
	runs = append(runs, run{"ipvsadm-Ln", s.lb, 0, []string{"ipvsadm", "-Ln"}}, run{"ipvsadm-Lnc", s.lb, 0, []string{"ipvsadm", "-Lnc"}},
		// What an operator runs for what check --watch 0 reads past
		// IPVS's connections (which it leaves unread over 10,000): IPVS
		// with its counters, and the rules of each backend with theirs.
		run{"operator-reads", s.lb, 0, []string{"sh", "-c", "ipvsadm -Ln --stats && iptables-nft-save -c && xtables-nft-multi ip6tables-save -c && nft -a list ruleset"}})
	if os.Getenv("LBDOCTOR_BENCH_GCTRACE") != "" {
		// The Go runtime's own account of each lbdoctor run's heap, on
		// stderr, beside the RSS the kernel counts.
		b.Setenv("GODEBUG", "gctrace=1")
	}
	if os.Getenv("LBDOCTOR_BENCH_PROFILE") != "" {
		b.Run("gather-profile", func(b *testing.B) {
			profileGather(b, s.lb)
		})
	}
	// The IPVS read alone, in this process, on the same table, beside
	// moby/ipvs's (what ipvs.Read used before), in turn: what the probe
	// costs here, beside what it costs inside `check`.
	b.Run("ipvs-read", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			for round := 0; round < 2; round++ {
				start := time.Now()
				v, err := ipvs.Read(s.lb)
				if err != nil || len(v.Services) != services {
					b.Fatalf("ipvs.Read = %d services, %v; want %d", len(v.Services), err, services)
				}
				ours := time.Since(start)
				start = time.Now()
				h, err := mobyipvs.New(s.lb.Path)
				if err != nil {
					b.Fatal(err)
				}
				svcs, err := h.GetServices()
				for _, svc := range svcs {
					if _, err = h.GetDestinations(svc); err != nil {
						break
					}
				}
				h.Close()
				if err != nil || len(svcs) != services {
					b.Fatalf("moby/ipvs read = %d services, %v; want %d", len(svcs), err, services)
				}
				b.Logf("round %d: ipvs.Read %s, moby/ipvs %s", round, ours.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			}
		}
	})
	for _, r := range runs {
		b.Run(r.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				before := s.conntrackCount(b)
				m := measureCmd(b, r.ns, r.argv...)
				if r.argv[1] == "check" {
					var rep report.Report
					if err := json.Unmarshal(m.out, &rep); err != nil || (m.code != 0 && m.code != 1) {
						b.Fatalf("%v = exit %d, %d bytes (%v), want exit 0 or 1 and a JSON report\n%s", r.argv[1:], m.code, len(m.out), err, m.err)
					}
					b.Logf("%s: verdict %s, summary %+v, errors %v", r.name, rep.Verdict, rep.Summary, rep.Errors)
					for _, f := range rep.Findings {
						if f.Status != checks.Pass {
							b.Logf("%s: %s %s: %s %s", r.name, f.Status, f.ID, f.Title, f.Reason)
						}
						if f.Status == checks.Fail {
							for _, e := range f.Evidence[:min(len(f.Evidence), 12)] {
								b.Logf("%s: %s evidence: %s", r.name, f.ID, e)
							}
						}
					}
					if _, unread := rep.Errors[probes.ProbeIPVSConns]; r.argv[0] == bin && got > probes.MaxConnTable && !unread {
						b.Errorf("%s on %d IPVS connections: errors %v, want %q saying the table was not read", r.name, got, rep.Errors, probes.ProbeIPVSConns)
					}
					// Every service's capture is made on a big LB (its
					// kernel filter takes the ports alone past the kernel's
					// limit) and says it left IPVS's big table unread.
					_, unread := rep.Errors[probes.LayerCapture+".ipvs"]
					notMade, ok := rep.Errors[probes.LayerCapture]
					if r.argv[0] == bin && slices.Contains(r.argv, "--capture") && got > probes.MaxConnTable && (!unread || ok) {
						b.Errorf("%s on %d IPVS connections: errors %v, want %q saying the capture left the table unread, and the capture made (%s)", r.name, got, rep.Errors, probes.LayerCapture+".ipvs", notMade)
					}
				} else if m.code != 0 {
					b.Fatalf("%v = exit %d\n%s", r.argv, m.code, m.err)
				}
				m.report(b, r.window)
				b.Logf("%s: the guest's CPU over its run: %s; its own (and its children's) %s, the bench's (its poller) %s", r.name, m.guest, m.cpu.Round(time.Millisecond), m.self.Round(time.Millisecond))
				b.Logf("%s: wall %s (window %s), peak RSS %.1f MB (own %.1f MB; programs it ran: %s), CPU %s, %d bytes out; conntrack entries before: %s, after: %s",
					r.name, m.wall.Round(time.Millisecond), r.window, float64(m.maxRSS)/(1<<20), float64(m.ownRSS)/(1<<20), showKids(m.kidRSS), m.cpu.Round(time.Millisecond), len(m.out), before, s.conntrackCount(b))
				m.logProfile(b, r.name)
				for _, e := range []struct{ env, line string }{{"LBDOCTOR_PROFILE", "PROFILE"}, {"LBDOCTOR_TRACE", "TRACE"}} {
					// Out of the guest on its console, for go tool pprof / trace.
					if path := os.Getenv(e.env); path != "" && r.argv[1] == "check" {
						if p, err := os.ReadFile(path); err == nil {
							fmt.Printf("%s %s %s\n", e.line, r.name, base64.StdEncoding.EncodeToString(p))
						}
					}
				}
			}
		})
	}
	if got := s.count(b); got < conns*99/100 {
		b.Errorf("IPVS held %d connections at the end, want %d: the numbers are for a smaller table", got, conns)
	}
}

// scaleLB is a client and an LB with many IPVS masquerade services on
// local VIPs (as kube-proxy's IPVS mode builds it), whose reals lie behind
// a router that is down: the reals need not answer for IPVS to hold a
// connection per client packet, and what the LB sends them costs nothing
// past its own namespace.
type scaleLB struct {
	client, lb netns.Target
	clientIP   netip.Addr
	vips       []netip.AddrPort
}

func newScaleLB(b *testing.B, services, reals int) *scaleLB {
	b.Helper()
	s := &scaleLB{client: testkit.Netns(b, "scl"), lb: testkit.Netns(b, "slb"), clientIP: netip.MustParseAddr("10.1.0.2")}
	router := testkit.Netns(b, "srt")
	testkit.Veth(b, testkit.VethEnd{NS: s.client, Name: "c0", Addrs: []string{"10.1.0.2/24"}}, testkit.VethEnd{NS: s.lb, Name: "l0", Addrs: []string{"10.1.0.1/24"}})
	testkit.Veth(b, testkit.VethEnd{NS: s.lb, Name: "l1", Addrs: []string{"10.2.0.1/24"}}, testkit.VethEnd{NS: router, Name: "r0", Addrs: []string{"10.2.0.2/24"}})
	var rules bytes.Buffer
	for i := 0; i < services; i++ {
		vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}), 80)
		s.vips = append(s.vips, vip)
		fmt.Fprintf(&rules, "-A -t %s -s rr\n", vip)
		for j := 0; j < reals; j++ {
			k := i*reals + j
			fmt.Fprintf(&rules, "-a -t %s -r 10.244.%d.%d:8080 -m -w 1\n", vip, k/250, k%250+1)
		}
	}
	err := s.lb.Do(func() error {
		// lo, not kube-proxy's dummy kube-ipvs0: the guest has no dummy
		// module, and a VIP is as local on either.
		d, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, v := range s.vips {
			if err := netlink.AddrAdd(d, &netlink.Addr{IPNet: &net.IPNet{IP: v.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return fmt.Errorf("add %s: %w", v.Addr(), err)
			}
		}
		_, reals, _ := net.ParseCIDR("10.244.0.0/16")
		if err := netlink.RouteAdd(&netlink.Route{Dst: reals, Gw: net.ParseIP("10.2.0.2")}); err != nil {
			return err
		}
		l1, err := netlink.LinkByName("l1")
		if err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: l1.Attrs().Index, IP: net.ParseIP("10.2.0.2"), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 2, 2}, State: netlink.NUD_PERMANENT})
	})
	if err != nil {
		b.Fatalf("VIPs and routes in %s: %v", s.lb, err)
	}
	err = s.client.Do(func() error {
		_, vips, _ := net.ParseCIDR("10.96.0.0/16")
		return netlink.RouteAdd(&netlink.Route{Dst: vips, Gw: net.ParseIP("10.1.0.1")})
	})
	if err != nil {
		b.Fatalf("route to the VIPs in %s: %v", s.client, err)
	}
	start := time.Now()
	err = s.lb.Do(func() error {
		cmd := exec.Command("ipvsadm", "-R")
		cmd.Stdin = &rules
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		b.Fatalf("ipvsadm -R (%d services × %d reals) in %s: %v", services, reals, s.lb, err)
	}
	b.Logf("ipvsadm -R of %d services × %d reals: %s", services, reals, time.Since(start).Round(time.Millisecond))
	testkit.Run(b, router, "ip", "link", "set", "r0", "down")
	// kube-proxy's IPVS mode: IPVS connections in conntrack, masqueraded.
	testkit.Sysctl(b, s.lb, "net.ipv4.vs.conntrack", "1")
	testkit.Sysctl(b, s.lb, "net.ipv4.ip_forward", "1")
	// A connection per client ACK (no handshake: the reals do not answer),
	// ESTABLISHED in IPVS (15 min) as in conntrack (picked up mid-stream):
	// the table holds for the whole benchmark.
	testkit.Sysctl(b, s.lb, "net.ipv4.vs.sloppy_tcp", "1")
	testkit.Run(b, s.lb, "ipvsadm", "--set", "3600", "120", "300") // ESTABLISHED for an hour, not 15 min
	// conntrack keeps a flow that saw no reply 5 min: less than filling
	// the table and measuring take in TCG.
	testkit.Sysctl(b, s.lb, "net.netfilter.nf_conntrack_tcp_timeout_unacknowledged", "3600")
	testkit.Sysctl(b, s.lb, "net.netfilter.nf_conntrack_tcp_timeout_established", "3600")
	// A flow picked up mid-stream has no window seen yet: conntrack gives
	// it the retransmission timeout (5 min), not the state's.
	testkit.Sysctl(b, s.lb, "net.netfilter.nf_conntrack_tcp_timeout_max_retrans", "3600")
	testkit.Run(b, s.lb, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--ipvs", "--vdir", "ORIGINAL", "--vmethod", "MASQ", "-j", "MASQUERADE")
	// The conntrack table's limit is the host's (init namespace) alone.
	const ctMax = "/proc/sys/net/netfilter/nf_conntrack_max"
	if old, err := os.ReadFile(ctMax); err == nil {
		if err := os.WriteFile(ctMax, []byte("262144"), 0o644); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.WriteFile(ctMax, old, 0o644) })
	}
	return s
}

// fill sends n client ACKs from distinct (source port, VIP) pairs and
// returns how many connections IPVS then holds.
func (s *scaleLB) fill(b *testing.B, n int) int {
	b.Helper()
	err := s.client.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		pkt := make([]byte, 40)
		for i := 0; i < n; i++ {
			vip := s.vips[i%len(s.vips)]
			sport := uint16(10000 + i/len(s.vips))
			ackPacket(pkt, s.clientIP, vip, sport)
			for {
				err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: vip.Addr().As4()})
				if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil {
					return fmt.Errorf("send ACK to %s: %w", vip, err)
				}
				break
			}
		}
		return nil
	})
	if err != nil {
		b.Fatalf("ACKs from %s: %v", s.client, err)
	}
	return s.count(b)
}

// count is the number of connections IPVS holds.
func (s *scaleLB) count(b *testing.B) int {
	var count int
	err := s.lb.Do(func() error {
		f, err := os.Open(ipvs.ConnTableFile)
		if err != nil {
			return err
		}
		defer f.Close()
		count, err = countLines(f)
		return err
	})
	if err != nil {
		b.Fatalf("count IPVS connections in %s: %v", s.lb, err)
	}
	return count - 1 // the header
}

func (s *scaleLB) conntrackCount(b *testing.B) string {
	var v []byte
	s.lb.Do(func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		return err
	})
	return strings.TrimSpace(string(v))
}

func countLines(r io.Reader) (int, error) {
	buf := make([]byte, 64*1024)
	n := 0
	for {
		m, err := r.Read(buf)
		n += bytes.Count(buf[:m], []byte{'\n'})
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// ackPacket writes an IPv4 TCP ACK src:sport → dst into pkt (40 bytes);
// the kernel fills the IP header's length, id and checksum (IPPROTO_RAW).
func ackPacket(pkt []byte, src netip.Addr, dst netip.AddrPort, sport uint16) {
	clear(pkt)
	pkt[0] = 0x45
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_TCP
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(pkt[12:16], s4[:])
	copy(pkt[16:20], d4[:])
	tcp := pkt[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], uint32(sport)<<16|1)
	tcp[12] = 5 << 4
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[13] = 0x10 // ACK
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	// Checksum over the pseudo header and the segment.
	sum := uint32(0)
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	sum += unix.IPPROTO_TCP + uint32(len(tcp))
	for i := 0; i < len(tcp); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(tcp[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
}

// profileGather runs check's window and checks on s.lb in this process
// under the CPU profiler and prints the profile (base64, one line "PROFILE
// cpu …", and the heap in use after it) for `go tool pprof` on the host.
func profileGather(b *testing.B, ns netns.Target) {
	var cpu, heap bytes.Buffer
	if err := pprof.StartCPUProfile(&cpu); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	snap, err := window.Run(context.Background(), ns, probes.Selector{}, window.Options{Length: scaleWindow, Drops: true, Probe: true})
	if err != nil {
		b.Fatal(err)
	}
	watched := time.Since(start)
	fs := checks.Run(snap, probes.Selector{})
	checked := time.Since(start)
	var out bytes.Buffer
	report.JSON(&out, report.New(report.Target{Netns: ns}, fs, snap.Errors))
	pprof.StopCPUProfile()
	runtime.GC()
	pprof.WriteHeapProfile(&heap)
	b.Logf("in process: window of %s done at %s, checked at %s, reported at %s (%d bytes); %d services, %d conns listed, %d omitted, %d conntrack flows",
		scaleWindow, watched, checked, time.Since(start), out.Len(), len(snap.IPVS.Services), len(snap.IPVS.Conns), snap.IPVS.ConnsOmitted, snap.Conntrack.Total())
	if w := snap.Window; w != nil && snap.Drops != nil {
		// Whose packets the window's drops are: each beside the health
		// probe of its real, if one was.
		for _, c := range snap.Drops.Drops {
			b.Logf("in process: drop %s at %s %s → %s ×%d", c.ReasonName, c.Symbol, c.Src, c.Dst, c.Count)
			for _, h := range w.Health {
				if h.Real == c.Dst || h.Real == c.Src {
					b.Logf("in process:   its real's probe: %+v", h)
				}
			}
		}
		b.Logf("in process: probe drops %d, %d reals probed, %d left out, tracer stages %v", w.ProbeDrops, len(w.Health), w.HealthLeftOut, w.TracerTook)
	}
	fmt.Printf("PROFILE cpu %s\nPROFILE heap %s\n", base64.StdEncoding.EncodeToString(cpu.Bytes()), base64.StdEncoding.EncodeToString(heap.Bytes()))
}
