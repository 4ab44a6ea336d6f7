package testkit

import (
	"net"
	"net/netip"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// DropPair is two namespaces on one veth, where B drops what A sends it:
// UDP to ports from DroppedPorts on by an nft rule in B's input (before
// conntrack confirms the flow: a flow no table knows), UDP to any other
// port by B itself, finding no socket (after conntrack confirmed the flow:
// a flow B's conntrack table knows). UDP to ports from DNATPorts to
// DroppedPorts is first DNATed to RealB, an address of B's own: a
// load-balanced flow; below DNATPorts, a plain local flow, no NAT.
type DropPair struct {
	A, B                netns.Target
	AddrA, AddrB, RealB netip.Addr
}

// DroppedPorts are the ports B's nft rule drops: [DroppedPorts, 65535];
// DNATPorts the ports it DNATs to RealB: [DNATPorts, DroppedPorts).
const (
	DroppedPorts = 40000
	DNATPorts    = 20000
)

// NewDropPair builds a DropPair that is removed when the test ends.
func NewDropPair(t testing.TB) *DropPair {
	t.Helper()
	p := &DropPair{A: Netns(t, "fa"), B: Netns(t, "fb"), AddrA: netip.MustParseAddr("10.79.0.1"), AddrB: netip.MustParseAddr("10.79.0.2"), RealB: netip.MustParseAddr("10.79.0.3")}
	Veth(t, VethEnd{NS: p.A, Name: "f0", Addrs: []string{"10.79.0.1/24"}}, VethEnd{NS: p.B, Name: "f1", Addrs: []string{"10.79.0.2/24"}})
	Run(t, p.B, "ip", "addr", "add", p.RealB.String()+"/32", "dev", "lo")
	Run(t, p.B, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in ct state invalid drop; add rule ip f in udp dport 40000-65535 drop; "+
		"add chain ip f pre { type nat hook prerouting priority -100; }; add rule ip f pre udp dport 20000-39999 dnat to "+p.RealB.String())
	// B answers each closed port with an ICMP error: rate-limited by
	// default; off, so that the flood is all B does.
	Sysctl(t, p.B, "net.ipv4.icmp_ratelimit", "0")
	return p
}

// Flood sends one UDP datagram from A to B on each port of ports (one flow
// each: one source port, distinct destination ports), spread evenly over d.
func (p *DropPair) Flood(t testing.TB, ports []uint16, d time.Duration) {
	t.Helper()
	SendUDPFlows(t, p.A, p.AddrA, p.AddrB, ports, d)
}

// SendUDPFlows sends one UDP datagram from src (one port) in ns to dst on each
// of ports, spread evenly over d: one conntrack flow each in every
// namespace they cross (a closed port answers with an ICMP error, and
// conntrack confirms the flow all the same) — how a test fills a real
// conntrack table.
func SendUDPFlows(t testing.TB, ns netns.Target, src, dst netip.Addr, ports []uint16, d time.Duration) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src.AsSlice()})
		if err != nil {
			return err
		}
		defer c.Close()
		const slices = 100
		start := time.Now()
		for i := 0; i < slices; i++ {
			for _, port := range ports[i*len(ports)/slices : (i+1)*len(ports)/slices] {
				c.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(dst, port))
			}
			time.Sleep(time.Until(start.Add(d * time.Duration(i+1) / slices)))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send UDP from %s in %s: %v", src, ns, err)
	}
}

// Ports returns n ports from first on.
func Ports(first, n int) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = uint16(first + i)
	}
	return out
}

// ForgetFlows flushes B's conntrack table: a flood's flows (30 s for
// unanswered UDP) would otherwise be in the next run's first dump and not
// new to its event subscription, and each run would measure another table.
func (p *DropPair) ForgetFlows(t testing.TB) {
	t.Helper()
	err := p.B.Do(func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("flush conntrack in %s: %v", p.B, err)
	}
}
