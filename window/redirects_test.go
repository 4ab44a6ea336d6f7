package window

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// The ICMP redirects the LB sends itself are messages about the services'
// flows, not packets of them: their drops are kept apart. Someone else's
// redirect, or any other ICMP message the LB sends (a "fragmentation
// needed" it could not send breaks the flow), stays among the flows' drops.
func TestOwnRedirect(t *testing.T) {
	lb := netstate.Snapshot{Links: []netstate.Link{{Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24")}}}}
	icmp := func(src, dst string, family, proto, typ uint8, reason, hook string) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: family, Proto: proto, ICMPType: typ,
			Src: netip.AddrPortFrom(netip.MustParseAddr(src), 0), Dst: netip.AddrPortFrom(netip.MustParseAddr(dst), 0)}, Count: 3},
			ReasonName: reason, Hook: hook}
	}
	tests := []struct {
		name    string
		d       drops.Counted
		wantOwn bool
	}{
		{"the LB's redirect to a real, dropped by NAT in output", icmp("10.1.0.5", "10.1.0.50", 4, 1, 5, "NETFILTER_DROP", "output"), true},
		{"the LB's redirect, hook not known, from its own address", icmp("10.1.0.5", "10.1.0.50", 4, 1, 5, "NETFILTER_DROP", ""), true},
		{"the LB's redirect, its neighbour failed", icmp("10.1.0.5", "10.1.0.50", 4, 1, 5, "NEIGH_FAILED", ""), true},
		{"an IPv6 redirect (NDISC 137) in output", icmp("fd00:1::5", "fd00:1::50", 6, 58, 137, "NETFILTER_DROP", "output"), true},
		{"a redirect another router sent, forwarded", icmp("10.1.0.1", "10.1.0.50", 4, 1, 5, "NETFILTER_DROP", "forward"), false},
		{"the LB's fragmentation needed, in output", icmp("10.1.0.5", "10.1.0.3", 4, 1, 3, "NETFILTER_DROP", "output"), false},
		{"type 137 over IPv4 ICMP is no redirect", icmp("10.1.0.5", "10.1.0.50", 4, 1, 137, "NETFILTER_DROP", "output"), false},
		{"a TCP segment in output", drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6,
			Src: netip.MustParseAddrPort("10.1.0.5:40000"), Dst: netip.MustParseAddrPort("10.1.0.50:8085")}, Count: 1}, ReasonName: "NETFILTER_DROP", Hook: "output"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			smp := &drops.Sample{Drops: []drops.Counted{tt.d}}
			_, own := splitOwn(smp, nil, lb)
			if got := len(own) == 1; got != tt.wantOwn || len(smp.Drops)+len(own) != 1 {
				t.Errorf("splitOwn(%+v) = %d left, %d the LB's own redirects; want own %v", tt.d.Packet, len(smp.Drops), len(own), tt.wantOwn)
			}
		})
	}
}
