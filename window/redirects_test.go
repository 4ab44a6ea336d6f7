package window

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
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
			_, own, _ := splitOwn(smp, nil, &probes.Snapshot{Net: lb})
			if got := len(own) == 1; got != tt.wantOwn || len(smp.Drops)+len(own) != 1 {
				t.Errorf("splitOwn(%+v) = %d left, %d the LB's own redirects; want own %v", tt.d.Packet, len(smp.Drops), len(own), tt.wantOwn)
			}
		})
	}
}

// What a socket of the LB's own lets go with no reason named (a local
// real's unread queue at close, a late segment to a TIME_WAIT socket) is
// split off the window's drops; a packet IPVS did not take, a reason the
// kernel names, a remote address, and a kernel without reasons are not.
func TestLocalSocketFree(t *testing.T) {
	lb := &probes.Snapshot{
		Net: netstate.Snapshot{
			Links: []netstate.Link{{Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24")}}},
			Local: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/32"), netip.MustParsePrefix("10.1.0.6/32"), netip.MustParsePrefix("127.0.0.0/8")},
		},
		IPVS: ipvs.Snapshot{Services: []ipvs.Service{{Proto: "tcp", Addr: netip.MustParseAddrPort("10.1.0.6:8085")}}},
	}
	tcp := func(src, dst, reason, symbol string) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6,
			Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}, Count: 2}, ReasonName: reason, Symbol: symbol}
	}
	tests := []struct {
		name      string
		d         drops.Counted
		noReasons string
		wantFreed bool
	}{
		{"a local real's receive queue purged at close", tcp("10.1.0.3:40000", "10.1.0.5:8080", "NOT_SPECIFIED", "sk_stream_kill_queues+0x58"), "", true},
		{"a late segment to a local real's TIME_WAIT socket", tcp("10.1.0.3:40000", "10.1.0.5:8080", "NOT_SPECIFIED", "tcp_v4_rcv+0x1a2"), "", true},
		{"a local real on 127.0.0.2 (a local route, no link address)", tcp("10.1.0.3:40000", "127.0.0.2:8080", "NOT_SPECIFIED", "tcp_v4_rcv+0x1a2"), "", true},
		{"the VIP's own port: IPVS did not take it", tcp("10.1.0.3:40000", "10.1.0.6:8085", "NOT_SPECIFIED", "tcp_v4_rcv+0x1a2"), "", false},
		{"nothing listens (NO_SOCKET)", tcp("10.1.0.3:40000", "10.1.0.5:8080", "NO_SOCKET", "tcp_v4_rcv+0x81"), "", false},
		{"to a remote real", tcp("10.1.0.5:40000", "10.1.0.50:8085", "NOT_SPECIFIED", "tcp_v4_rcv+0x1a2"), "", false},
		{"elsewhere than a socket", tcp("10.1.0.3:40000", "10.1.0.5:8080", "NOT_SPECIFIED", "ip_rcv_finish_core+0x10"), "", false},
		{"a kernel without reasons", tcp("10.1.0.3:40000", "10.1.0.5:8080", "NOT_SPECIFIED", "tcp_v4_rcv+0x81"), "kfree_skb has no reason before 5.17", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			smp := &drops.Sample{Drops: []drops.Counted{tt.d}, NoReasons: tt.noReasons, Attribution: drops.Attribution{NotAttributed: 2}}
			_, _, freed := splitOwn(smp, nil, lb)
			if got := len(freed) == 1; got != tt.wantFreed || len(smp.Drops)+len(freed) != 1 {
				t.Errorf("splitOwn(%s %s → %s at %s) = %d left, %d freed by the LB's sockets; want freed %v", tt.d.ReasonName, tt.d.Src, tt.d.Dst, tt.d.Symbol, len(smp.Drops), len(freed), tt.wantFreed)
			}
			if tt.wantFreed && smp.Attribution.NotAttributed != 0 {
				t.Errorf("attribution after the split = %+v, want the freed drops' counts gone", smp.Attribution)
			}
		})
	}
}
