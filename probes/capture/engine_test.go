package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// count tallies packets by interface, direction and flow.
func count(pkts []seenPacket) map[string]int {
	out := map[string]int{}
	for _, p := range pkts {
		out[fmt.Sprintf("%s %s %s %s>%s", p.Iface, p.Dir, p.Proto, p.Src, p.Dst)]++
	}
	return out
}

func TestCaptureVIPFlow(t *testing.T) {
	p := newLBPair(t)
	p.echo(t)
	var s seen
	r := startCapture(t, p.L, Options{Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}, Ports: []uint16{vipPort}}}, s.handle)
	// Every interface that is up, but loopback unless asked: lo is named.
	if got := fmt.Sprint(r.c.Skipped()); got != "[{lo loopback: only the LB's own traffic crosses it, no client's}]" {
		t.Errorf("Skipped() = %s, want lo alone", got)
	}
	const n = 50
	p.exchange(t, p.VIP, n, true)
	// Others the filter must leave out: another port of the VIP, the LB's
	// own address on the VIP's port.
	p.exchange(t, netip.AddrPortFrom(p.VIP.Addr(), 8086), 7, false)
	p.exchange(t, netip.AddrPortFrom(p.LAddr, vipPort), 5, false)
	s.waitFor(2*n, 2*time.Second)
	time.Sleep(3 * blockTimeout) // a stray packet would be in by now
	_, stats := r.stop(t)

	client := netip.AddrPortFrom(p.CAddr, 0)
	got := count(s.all())
	var clientPort uint16
	for _, pk := range s.all() {
		if pk.Dir == In {
			clientPort = pk.Src.Port()
		}
	}
	client = netip.AddrPortFrom(client.Addr(), clientPort)
	want := map[string]int{
		fmt.Sprintf("l0 in udp %s>%s", client, p.VIP):  n,
		fmt.Sprintf("l0 out udp %s>%s", p.VIP, client): n,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("captured = %v, want %v", got, want)
	}
	// The kernel's own count of the flow: nft's rule counters in L.
	if in, out := testkit.NftPackets(t, p.L, "ip", "cap", "in"), testkit.NftPackets(t, p.L, "ip", "cap", "out"); int(in) != got[fmt.Sprintf("l0 in udp %s>%s", client, p.VIP)] || int(out) != got[fmt.Sprintf("l0 out udp %s>%s", p.VIP, client)] {
		t.Errorf("nft counted in %d, out %d; captured %v", in, out, got)
	}
	// One socket per interface keeps the kernel's order: each request
	// before its answer.
	var dirs []string
	for _, pk := range s.all() {
		dirs = append(dirs, pk.Dir.String())
	}
	if want := strings.Repeat("in out ", n); strings.Join(dirs, " ")+" " != want {
		t.Errorf("directions in order = %v, want in, out %d times", dirs, n)
	}
	if len(stats) != 1 || stats[0].Packets != 2*n || stats[0].Drops != 0 || stats[0].Unread != 0 || stats[0].Unknown != 0 || stats[0].Ended != "" {
		t.Errorf("Stats = %+v, want l0 alone with %d packets, none dropped or unread, every direction known, not ended", stats, 2*n)
	}
}

// TestCaptureAttachRace sends packets the filter refuses while each socket
// is bound and has no filter yet: libpcap's race. They must never reach
// the handler; the flow's packets sent after Open all must.
func TestCaptureAttachRace(t *testing.T) {
	p := newLBPair(t)
	p.echo(t)
	testAfterBind = func(string) {
		p.exchange(t, netip.AddrPortFrom(p.VIP.Addr(), 8086), 10, false)
		time.Sleep(20 * time.Millisecond) // into the ring, not in flight
	}
	defer func() { testAfterBind = nil }()
	var s seen
	r := startCapture(t, p.L, Options{Interfaces: []string{"l0"}, Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}, Ports: []uint16{vipPort}}}, s.handle)
	testAfterBind = nil
	const n = 10
	p.exchange(t, p.VIP, n, true)
	s.waitFor(2*n, 2*time.Second)
	time.Sleep(3 * blockTimeout)
	r.stop(t)
	for _, pk := range s.all() {
		if pk.Src.Port() != vipPort && pk.Dst.Port() != vipPort {
			t.Errorf("delivered %+v, sent before the filter was set", pk)
		}
	}
	if got := len(s.all()); got != 2*n {
		t.Errorf("delivered %d packets, want %d (%d each way)", got, 2*n, n)
	}
}

// TestCaptureCancel: a cancelled context ends Run within 100 ms, idle and
// under a flood of the captured flow.
func TestCaptureCancel(t *testing.T) {
	for _, flood := range []bool{false, true} {
		t.Run(fmt.Sprintf("flood=%v", flood), func(t *testing.T) {
			p := newLBPair(t)
			var s seen
			r := startCapture(t, p.L, Options{Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}}}, s.handle)
			stopFlood := make(chan struct{})
			flooded := make(chan struct{})
			if flood {
				go func() {
					defer close(flooded)
					for {
						select {
						case <-stopFlood:
							return
						default:
							testkit.SendUDP(t, p.C, p.CAddr, p.VIP, 1000)
						}
					}
				}()
				s.waitFor(1000, 2*time.Second)
			} else {
				close(flooded)
				time.Sleep(200 * time.Millisecond)
			}
			took, _ := r.stop(t)
			close(stopFlood)
			<-flooded
			if took > 100*time.Millisecond {
				t.Errorf("Run returned %v after cancel, want within 100ms", took)
			}
			if flood && len(s.all()) == 0 {
				t.Errorf("captured nothing of the flood")
			}
		})
	}
}

// TestCaptureInterfaceGone deletes one of two captured interfaces, or sets
// it down, during the capture: its socket ends naming why, the other goes
// on.
func TestCaptureInterfaceGone(t *testing.T) {
	cases := []struct {
		name string
		cmd  []string
		want string
	}{
		{"deleted", []string{"link", "del", "l1"}, "interface l1 went away"},
		{"down", []string{"link", "set", "l1", "down"}, "interface l1 went down"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newLBPair(t)
			p.echo(t)
			testkit.Veth(t, testkit.VethEnd{NS: p.C, Name: "c1", Addrs: []string{"10.81.2.1/24"}},
				testkit.VethEnd{NS: p.L, Name: "l1", Addrs: []string{"10.81.2.2/24"}})
			var s seen
			r := startCapture(t, p.L, Options{Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}}}, s.handle)
			var socks []string
			for _, st := range r.c.Stats() {
				socks = append(socks, st.Interface)
			}
			if fmt.Sprint(socks) != "[l0 l1]" {
				t.Fatalf("sockets = %v, want l0 and l1", socks)
			}
			testkit.Run(t, p.L, "ip", tc.cmd...)
			time.Sleep(100 * time.Millisecond)
			const n = 5
			p.exchange(t, p.VIP, n, true)
			s.waitFor(2*n, 2*time.Second)
			_, stats := r.stop(t)
			for _, st := range stats {
				want := ""
				if st.Interface == "l1" {
					want = tc.want
				}
				if st.Ended != want {
					t.Errorf("Stats(%s).Ended = %q, want %q", st.Interface, st.Ended, want)
				}
			}
			if got := len(s.all()); got != 2*n {
				t.Errorf("captured %d packets on l0 after l1 %s, want %d", got, tc.name, 2*n)
			}
		})
	}
}

// TestCaptureDrops: a tiny ring under a flood its reader cannot keep up
// with loses packets; the statistics say how many, and so does the pcapng
// file's statistics block.
func TestCaptureDrops(t *testing.T) {
	p := newLBPair(t)
	path := filepath.Join(t.TempDir(), "drops.pcapng")
	w, err := CreateFile(path, DefaultSnaplen, []FileInterface{{Name: "l0"}})
	if err != nil {
		t.Fatal(err)
	}
	slow := func(pk Packet) bool {
		time.Sleep(time.Millisecond)
		return w.WritePacket(pk, pk.Socket, "") == nil
	}
	r := startCapture(t, p.L, Options{Interfaces: []string{"l0"}, RingBytes: minRingBytes, Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}}}, slow)
	start := time.Now()
	const n = 5000
	testkit.SendUDP(t, p.C, p.CAddr, p.VIP, n)
	time.Sleep(100 * time.Millisecond)
	_, stats := r.stop(t)
	if err := w.Close(FileStatsOf(stats, start, time.Now())); err != nil {
		t.Fatal(err)
	}
	in := stats[0]
	if in.Drops == 0 || in.Packets != n || in.Packets != w.Packets()+in.Drops+in.Unread {
		t.Errorf("Stats(l0) = %+v with %d delivered, want %d packets, some dropped, packets = delivered + dropped + unread", in, w.Packets(), n)
	}
	perIface, _, isb := readBack(t, path)
	if got := isb["l0"]; got.PacketsDropped != in.Drops || got.PacketsReceived != n || perIface["l0"] != int(w.Packets()) {
		t.Errorf("pcapng: %d packets, statistics %+v; want %d packets, %d received, %d dropped", perIface["l0"], got, w.Packets(), n, in.Drops)
	}
}

// TestCaptureAllGone: when the only captured interface goes away, Run ends
// on its own with an error naming it.
func TestCaptureAllGone(t *testing.T) {
	p := newLBPair(t)
	c, err := Open(p.L, Options{Interfaces: []string{"l0"}, Match: Match{Addrs: []netip.Addr{p.VIP.Addr()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background(), func(Packet) bool { return true }) }()
	testkit.Run(t, p.L, "ip", "link", "del", "l0")
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "l0: interface l0 went away") {
			t.Errorf("Run = %v, want an error naming l0 gone", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run still running 2 s after its only interface went away")
	}
}

// TestCaptureIPv6 runs the IPv6 half of the filter in the kernel: a UDP
// flow to an IPv6 address and port captured exactly, another port left out.
func TestCaptureIPv6(t *testing.T) {
	p := newLBPair(t)
	// No duplicate address detection (busybox's ip, in the guest, has no
	// nodad): the addresses are usable at once.
	for _, a := range []struct {
		ns        netns.Target
		dev, cidr string
	}{{p.C, "c0", "fd81::1/64"}, {p.L, "l0", "fd81::2/64"}} {
		err := a.ns.Do(func() error {
			l, err := netlink.LinkByName(a.dev)
			if err != nil {
				return err
			}
			ad, err := netlink.ParseAddr(a.cidr)
			if err != nil {
				return err
			}
			ad.Flags = unix.IFA_F_NODAD
			return netlink.AddrAdd(l, ad)
		})
		if err != nil {
			t.Fatalf("add %s to %s in %s: %v", a.cidr, a.dev, a.ns, err)
		}
	}
	dst := netip.MustParseAddrPort("[fd81::2]:8085")
	var s seen
	r := startCapture(t, p.L, Options{Match: Match{Proto: 17, Addrs: []netip.Addr{dst.Addr()}, Ports: []uint16{dst.Port()}}}, s.handle)
	send := func(to netip.AddrPort, n int) {
		err := p.C.Do(func() error {
			c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.ParseIP("fd81::1")})
			if err != nil {
				return err
			}
			defer c.Close()
			for i := 0; i < n; i++ {
				if _, err := c.WriteToUDPAddrPort([]byte("lbdoctor"), to); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
	}
	const n = 8
	send(dst, n)
	send(netip.AddrPortFrom(dst.Addr(), 8086), 3)
	s.waitFor(n, 2*time.Second)
	time.Sleep(3 * blockTimeout)
	r.stop(t)
	got := count(s.all())
	var src netip.AddrPort
	for _, pk := range s.all() {
		src = pk.Src
	}
	want := map[string]int{fmt.Sprintf("l0 in udp %s>%s", src, dst): n}
	if fmt.Sprint(got) != fmt.Sprint(want) || src.Addr() != netip.MustParseAddr("fd81::1") {
		t.Errorf("captured = %v, want %v from fd81::1", got, want)
	}
}

func TestOpenBadOptions(t *testing.T) {
	ns := testkit.Netns(t, "cb")
	cases := []struct {
		name string
		opt  Options
		want error
	}{
		{"negative snaplen", Options{Snaplen: -1}, ErrBadOptions},
		{"snaplen over 65535", Options{Snaplen: 65536}, ErrBadOptions},
		{"ring of one page", Options{RingBytes: 4096}, ErrBadOptions},
		{"ring over 1 GiB", Options{RingBytes: 2 << 30}, ErrBadOptions},
		{"ICMP", Options{Match: Match{Proto: 1}}, ErrBadOptions},
		{"no such interface", Options{Interfaces: []string{"nope0"}}, ErrNoInterface},
		{"nothing up but loopback", Options{}, ErrNoInterface},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Open(ns, tc.opt)
			if err == nil {
				c.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Open(%s) = %v, want %v", tc.name, err, tc.want)
			}
		})
	}
}

// TestCaptureLoopback: named, lo is captured; a datagram the namespace
// sends itself crosses it twice, sent then received, and the direction
// says which.
func TestCaptureLoopback(t *testing.T) {
	p := newLBPair(t)
	var s seen
	r := startCapture(t, p.L, Options{Interfaces: []string{"lo"}, Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}, Ports: []uint16{vipPort}}}, s.handle)
	const n = 4
	testkit.SendUDP(t, p.L, p.LAddr, p.VIP, n)
	s.waitFor(2*n, 2*time.Second)
	time.Sleep(3 * blockTimeout)
	r.stop(t)
	var dirs []string
	for _, pk := range s.all() {
		dirs = append(dirs, pk.Iface+" "+pk.Dir.String())
	}
	if want := strings.Repeat("lo out lo in ", n); strings.Join(dirs, " ")+" " != want {
		t.Errorf("captured on lo = %v, want out then in, %d times", dirs, n)
	}
}

// manyAddrs is addrs and n more IPv4 addresses no test host uses.
func manyAddrs(n int, addrs ...netip.Addr) []netip.Addr {
	for i := 0; i < n; i++ {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 200, byte(i / 250), byte(i%250 + 1)}))
	}
	return addrs
}

// TestCaptureManyAddresses: a match of more addresses than the kernel's
// filter can compare (an LB of many services, check --capture) opens with a
// filter on the ports alone and selects the addresses itself: the VIP's
// flow is delivered whole, a flow on the same port to an address not in
// the match is counted outside and never delivered, and Widened says so.
func TestCaptureManyAddresses(t *testing.T) {
	p := newLBPair(t)
	p.echo(t)
	m := Match{Proto: 17, Addrs: manyAddrs(2199, p.VIP.Addr()), Ports: []uint16{vipPort}}
	if _, err := Filter(m, DefaultSnaplen); !errors.Is(err, ErrFilterTooLong) {
		t.Fatalf("Filter(2,200 addresses) = %v, want ErrFilterTooLong (else this test widens nothing)", err)
	}
	var s seen
	r := startCapture(t, p.L, Options{Interfaces: []string{"l0"}, Match: m}, s.handle)
	if w := r.c.Widened(); !strings.Contains(w, "ports alone") {
		t.Errorf("Widened() = %q, want it to say the kernel's filter takes the ports alone", w)
	}
	const n = 20
	p.exchange(t, p.VIP, n, true)
	p.exchange(t, netip.AddrPortFrom(p.LAddr, vipPort), 5, false) // the port, not an address of the match
	p.exchange(t, netip.AddrPortFrom(p.VIP.Addr(), 8086), 5, false)
	s.waitFor(2*n, 2*time.Second)
	time.Sleep(3 * blockTimeout)
	_, stats := r.stop(t)
	for _, pk := range s.all() {
		if pk.Src.Addr() != p.VIP.Addr() && pk.Dst.Addr() != p.VIP.Addr() {
			t.Errorf("delivered %+v: no address of the match", pk)
		}
	}
	if got := len(s.all()); got != 2*n {
		t.Errorf("delivered %d packets, want %d (%d each way)", got, 2*n, n)
	}
	// The datagrams to the LB's own address on the port: taken by the
	// kernel's filter, left out here (the port-unreachable errors the LB
	// answers with are not UDP); the VIP's other port never reached it.
	if len(stats) != 1 || stats[0].Packets != 2*n+5 || stats[0].Outside != 5 || stats[0].Unread != 0 {
		t.Errorf("Stats = %+v, want %d packets, 5 of them outside, none unread", stats, 2*n+5)
	}
}

func TestFrameAddrs(t *testing.T) {
	tests := []struct {
		name     string
		frame    []byte
		src, dst string
		ok       bool
	}{
		{"ipv4", frame(t, "10.1.0.3", "10.1.0.6", protoUDP, 40000, 8085, nil), "10.1.0.3", "10.1.0.6", true},
		{"ipv6", frame(t, "fd00::3", "fd00::6", protoTCP, 40000, 8085, nil), "fd00::3", "fd00::6", true},
		{"arp", append(make([]byte, 12), 0x08, 0x06, 0, 1), "", "", false},
		{"short ipv4", append(make([]byte, 12), 0x08, 0x00, 0x45), "", "", false},
		{"empty", nil, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, dst, ok := frameAddrs(tt.frame)
			if ok != tt.ok || (ok && (src.String() != tt.src || dst.String() != tt.dst)) {
				t.Errorf("frameAddrs(%s) = %s, %s, %v; want %s, %s, %v", tt.name, src, dst, ok, tt.src, tt.dst, tt.ok)
			}
		})
	}
}
