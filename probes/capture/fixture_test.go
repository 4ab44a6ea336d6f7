package capture

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// lbPair is a client namespace C and an LB namespace L on veth c0–l0, the
// VIP on L's loopback, routed from C through l0; L counts the VIP's UDP
// packets in and out with nft rule counters and echoes UDP on VIP:vipPort.
type lbPair struct {
	C, L         netns.Target
	CAddr, LAddr netip.Addr
	VIP          netip.AddrPort
}

const vipPort = 8085

func newLBPair(t testing.TB) *lbPair {
	t.Helper()
	p := &lbPair{C: testkit.Netns(t, "cc"), L: testkit.Netns(t, "cl"),
		CAddr: netip.MustParseAddr("10.81.0.1"), LAddr: netip.MustParseAddr("10.81.0.2"),
		VIP: netip.MustParseAddrPort("10.81.1.1:8085")}
	testkit.Veth(t, testkit.VethEnd{NS: p.C, Name: "c0", Addrs: []string{"10.81.0.1/24"}},
		testkit.VethEnd{NS: p.L, Name: "l0", Addrs: []string{"10.81.0.2/24"}})
	testkit.Run(t, p.L, "ip", "addr", "add", "10.81.1.1/32", "dev", "lo")
	testkit.Run(t, p.C, "ip", "route", "add", "10.81.1.0/24", "via", "10.81.0.2")
	testkit.Run(t, p.L, "nft", `add table ip cap
add chain ip cap in { type filter hook input priority 0; }
add chain ip cap out { type filter hook output priority 0; }
add rule ip cap in ip daddr 10.81.1.1 udp dport 8085 counter
add rule ip cap out ip saddr 10.81.1.1 udp sport 8085 counter
`)
	return p
}

// echo answers every UDP datagram to the VIP's port in L until the test ends.
func (p *lbPair) echo(t testing.TB) {
	t.Helper()
	var c *net.UDPConn
	err := p.L.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(p.VIP))
		return err
	})
	if err != nil {
		t.Fatalf("echo on %s in %s: %v", p.VIP, p.L, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
}

// exchange sends n datagrams from C to dst and waits for n answers (when
// answered is set), failing the test when they do not all come back.
func (p *lbPair) exchange(t testing.TB, dst netip.AddrPort, n int, answered bool) {
	t.Helper()
	var c *net.UDPConn
	err := p.C.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: p.CAddr.AsSlice()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	got := 0
	for i := 0; i < n; i++ {
		if _, err := c.WriteToUDPAddrPort([]byte("lbdoctor"), dst); err != nil {
			t.Fatalf("send to %s: %v", dst, err)
		}
		if !answered {
			continue
		}
		// One at a time: the echo must not lose a datagram to a full queue.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("answer %d of %d from %s: %v", i+1, n, dst, err)
		}
		got++
	}
}

// seen is what a handler kept of the packets it was given.
type seen struct {
	mu   sync.Mutex
	pkts []seenPacket
}

type seenPacket struct {
	Iface     string
	Dir       Direction
	Src, Dst  netip.AddrPort
	Proto     string
	Length    int
	Captured  int
	Timestamp time.Time
}

func (s *seen) handle(p Packet) bool {
	sp := seenPacket{Iface: p.Interface, Dir: p.Direction, Length: p.Length, Captured: len(p.Data), Timestamp: p.Time}
	pkt := gopacket.NewPacket(p.Data, layers.LayerTypeEthernet, gopacket.NoCopy)
	var src, dst netip.Addr
	if ip, ok := pkt.NetworkLayer().(*layers.IPv4); ok {
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
	}
	if ip, ok := pkt.NetworkLayer().(*layers.IPv6); ok {
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
	}
	switch l := pkt.TransportLayer().(type) {
	case *layers.UDP:
		sp.Proto, sp.Src, sp.Dst = "udp", netip.AddrPortFrom(src, uint16(l.SrcPort)), netip.AddrPortFrom(dst, uint16(l.DstPort))
	case *layers.TCP:
		sp.Proto, sp.Src, sp.Dst = "tcp", netip.AddrPortFrom(src, uint16(l.SrcPort)), netip.AddrPortFrom(dst, uint16(l.DstPort))
	default:
		sp.Proto = "other"
	}
	s.mu.Lock()
	s.pkts = append(s.pkts, sp)
	s.mu.Unlock()
	return true
}

func (s *seen) all() []seenPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenPacket(nil), s.pkts...)
}

// waitFor polls until the handler saw n packets or d passed.
func (s *seen) waitFor(n int, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if len(s.all()) >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running is a Capture whose Run goes on in a goroutine until stop.
type running struct {
	c      *Capture
	cancel context.CancelFunc
	done   chan error
}

func startCapture(t testing.TB, ns netns.Target, opt Options, handle func(Packet) bool) *running {
	t.Helper()
	c, err := Open(ns, opt)
	if err != nil {
		t.Fatalf("Open(%s, %+v): %v", ns, opt, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx, handle) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the run and returns how long Run took to return and the
// sockets' last statistics.
func (r *running) stop(t testing.TB) (time.Duration, []Stats) {
	t.Helper()
	if r.cancel == nil {
		return 0, nil
	}
	start := time.Now()
	r.cancel()
	r.cancel = nil
	if err := <-r.done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	took := time.Since(start)
	return took, r.c.Close()
}
