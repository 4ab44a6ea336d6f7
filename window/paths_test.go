package window

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// vip is join_test's: 10.1.0.6:8085.
var (
	real40 = netip.MustParseAddrPort("10.1.0.40:8085")
	client = netip.MustParseAddrPort("10.1.0.3:40000")
)

var masquerade = rules.Rule{Backend: rules.IptablesLegacy, Table: "nat", Chain: "POSTROUTING", HasCounter: true, Target: "MASQUERADE",
	Spec: "-A POSTROUTING -m ipvs --vaddr 10.1.0.6/32 --vport 8085 -j MASQUERADE", IPVS: &rules.IPVSMatch{VAddr: "10.1.0.6/32", VPort: 8085}}

// lb is the seed's one-arm LB after a window: VIP and real on eth0, the
// -m ipvs MASQUERADE rule, forwarding as given; the IPVS stats moved by in
// and out packets, the rule by snat flows.
func lb(forward string, in, out uint32, snat uint64) (*probes.Snapshot, *probes.Window) {
	s := &probes.Snapshot{
		IPVS: ipvs.Snapshot{Available: true, Services: []ipvs.Service{{Proto: "tcp", Addr: vip, Reals: []ipvs.Real{{Addr: real40, Method: ipvs.Masq, Weight: 1}}}}},
		Sysctls: sysctl.Snapshot{
			"net.ipv4.ip_forward":   {Key: "net.ipv4.ip_forward", Value: forward, Present: true},
			"net.ipv4.vs.conntrack": {Key: "net.ipv4.vs.conntrack", Value: "1", Present: true},
		},
		Rules: rules.Snapshot{Backends: []rules.Backend{{Name: rules.IptablesLegacy, Read: true, Rules: 1}}, Rules: []rules.Rule{masquerade}},
		Net: netstate.Snapshot{
			Links:  []netstate.Link{{Name: "eth0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.6/24")}}},
			Routes: []netstate.Route{{Dst: netip.MustParsePrefix("10.1.0.0/24"), Dev: "eth0"}},
		},
		Errors: map[string]string{},
	}
	w := &probes.Window{Skipped: map[string]string{}, Deltas: probes.Deltas{
		IPVS:  []probes.ServiceDelta{{Service: "TCP 10.1.0.6:8085", PacketsIn: in, Reals: []probes.RealDelta{{Real: real40.String(), PacketsIn: in, PacketsOut: out}}}},
		Rules: []probes.RuleDelta{{Rule: masquerade, Packets: snat}},
	}}
	return s, w
}

func TestPaths(t *testing.T) {
	tests := []struct {
		name     string
		fixture  func() (*probes.Snapshot, *probes.Window)
		want     string
		complete bool
	}{
		{"stage 3: forwarding off, the SYN-ACKs die in ip_error", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("0", 13, 0, 3)
			s.IPVS.ConnCounts = []ipvs.ConnCount{{Proto: "tcp", VIP: vip, Dest: real40, State: "SYN_RECV", Count: 3}}
			s.Drops = &drops.Sample{Drops: []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6}, Count: 13}, ReasonName: "IP_INADDRERRORS", Symbol: "ip_error+0x4a",
				Flow: &drops.Flow{Client: client, VIP: vip, Real: real40, Direction: "reply", Stage: "after SNAT reverse, before the VIP is restored"}}}}
			return s, w
		}, "client→VIP ✓ 13 · IPVS→real .40 ✓ 13 · SNAT ✓ · SYN-ACK real→LB ✓ 13 · de-SNAT (PREROUTING) · route: 10.1.0.3 not local, forwarding off · ✗ ip_error IP_INADDRERRORS ×13", false},
		{"healthy one-arm", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 13, 12, 3)
			s.IPVS.Conns = []ipvs.Conn{{Proto: "tcp", Client: client, VIP: vip, Dest: real40, State: "ESTABLISHED"}}
			s.IPVS.ConnCounts = []ipvs.ConnCount{{Proto: "tcp", VIP: vip, Dest: real40, State: "ESTABLISHED", Count: 1}}
			return s, w
		}, "client→VIP ✓ 13 · IPVS→real .40 ✓ 13 · SNAT ✓ · reply real→LB ✓ 12 · de-SNAT (PREROUTING) · route: forwarded to 10.1.0.3 ✓", true},
		{"no SNAT rule: the replies bypass the LB", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 6, 0, 0)
			s.Rules.Rules, w.Deltas.Rules = nil, nil
			return s, w
		}, "client→VIP ✓ 6 · IPVS→real .40 ✓ 6 · SNAT (no SNAT rule covers the VIP: replies bypass the LB) · reply real→LB 0 · route: forwarded to the client ?", false},
		{"SNAT rule not hit with vs.conntrack off", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 6, 0, 0)
			s.Sysctls["net.ipv4.vs.conntrack"] = sysctl.Value{Value: "0", Present: true}
			return s, w
		}, "client→VIP ✓ 6 · IPVS→real .40 ✓ 6 · SNAT (rule not hit, net.ipv4.vs.conntrack=0) · reply real→LB 0 · de-SNAT ? (PREROUTING) · route: forwarded to the client ?", false},
		{"a filter rule drops the SYNs before IPVS (not attributed)", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 0, 0, 0)
			s.Drops = &drops.Sample{Drops: []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: client, Dst: vip}, Count: 6}, ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x98"}}}
			w.DropPoints = []probes.DropPoint{{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Count: 6, Hook: "input", Cause: "iptables-legacy filter INPUT -d 10.1.0.6/32 -j DROP"}}
			return s, w
		}, "client→VIP 0 · IPVS→real .40 0 · SNAT (rule not hit) · reply real→LB 0 · de-SNAT ? (PREROUTING) · route: forwarded to the client ? · ✗ nf_hook_slow NETFILTER_DROP ×6 in input: iptables-legacy filter INPUT -d 10.1.0.6/32 -j DROP", false},
		{"two-arm: no SNAT, no de-SNAT", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 5, 5, 0)
			s.Rules.Rules, w.Deltas.Rules = nil, nil
			s.Net.Links = append(s.Net.Links, netstate.Link{Name: "eth1", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.2.0.1/24")}})
			s.Net.Routes = []netstate.Route{{Dst: netip.MustParsePrefix("10.1.0.0/24"), Dev: "eth0"}, {Dst: netip.MustParsePrefix("10.1.0.40/32"), Dev: "eth1"}}
			return s, w
		}, "client→VIP ✓ 5 · IPVS→real .40 ✓ 5 · reply real→LB ✓ 5 · route: forwarded to the client ✓", true},
		{"the counters were read once", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 5, 5, 1)
			w.Skipped["counters"] = "no second read in time"
			return s, w
		}, "client→VIP ? · IPVS→real .40 ? · SNAT ? (counters read once) · reply real→LB ? · de-SNAT ? (PREROUTING) · route: forwarded to the client ?", false},
		{"stage 3 with a capture: the legs are the wire's, the SYN-ACKs never leave", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("0", 13, 0, 3)
			s.IPVS.ConnCounts = []ipvs.ConnCount{{Proto: "tcp", VIP: vip, Dest: real40, State: "SYN_RECV", Count: 3}}
			w.Capture = &capture.Summary{Paths: []capture.PathLegs{{Proto: "tcp", VIP: vip, Real: real40, Flows: 3, Stopped: 3, Legs: [4]capture.LegCount{
				{Packets: 9, Segments: []string{"SYN"}}, {Packets: 9, Segments: []string{"SYN"}}, {Packets: 15, Segments: []string{"SYN-ACK"}}, {}}}}}
			return s, w
		}, "client→VIP ✓ 9 · IPVS→real .40 ✓ 9 · SNAT ✓ · SYN-ACK real→LB ✓ 15 · de-SNAT (PREROUTING) · route: the client not local, forwarding off · →client 0", false},
		{"a capture that saw none of the flows counts every leg 0", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 5, 5, 1)
			w.Capture = &capture.Summary{}
			return s, w
		}, "client→VIP 0 · IPVS→real .40 0 · SNAT ✓ · reply real→LB 0 · de-SNAT ? (PREROUTING) · route: forwarded to the client ✓ · →client 0", false},
		{"a real that never answers ARP: IPVS's packets out are the LB's ICMP errors, no reply", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 13, 5, 3)
			s.IPVS.ConnCounts = []ipvs.ConnCount{{Proto: "tcp", VIP: vip, Dest: real40, State: "SYN_RECV", Count: 5}}
			w.Health = []health.Result{{Service: "TCP 10.1.0.6:8085", Proto: "tcp", Real: real40, Connect: health.Timeout, Neighbour: "INCOMPLETE", NextHop: real40.Addr(), Dev: "eth0"}}
			s.Drops = &drops.Sample{Drops: []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6}, Count: 4}, ReasonName: "NEIGH_FAILED", Symbol: "neigh_invalidate+0x82",
				Flow: &drops.Flow{Client: client, VIP: vip, Real: real40, Direction: "request", Stage: "after DNAT and SNAT"}}}}
			w.DropPoints = []probes.DropPoint{{Reason: "NEIGH_FAILED", Function: "neigh_invalidate", Count: 4, Leg: flowpath.Request, Cause: "next hop 10.1.0.40 of real 10.1.0.40:8085 on eth0 is INCOMPLETE: it does not answer ARP/NDP"}}
			return s, w
		}, "client→VIP ✓ 13 · IPVS→real .40 13 (no ARP answer from 10.1.0.40) · SNAT ✓ · reply real→LB ✗ (no reply: no ARP answer from 10.1.0.40; IPVS's 5 packets out were ICMP errors about its flows) · de-SNAT ? (PREROUTING) · route: forwarded to 10.1.0.3 ? · ✗ neigh_invalidate NEIGH_FAILED ×4: next hop 10.1.0.40 of real 10.1.0.40:8085 on eth0 is INCOMPLETE: it does not answer ARP/NDP", false},
		{"no probe, no tracer: the neighbour entry FAILED tells no reply came", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 13, 5, 3)
			w.Neighbours = []probes.RealNeighbour{{Real: real40, NextHop: netip.MustParseAddr("10.1.0.1"), Dev: "eth0", State: "FAILED"}}
			return s, w
		}, "client→VIP ✓ 13 · IPVS→real .40 13 (no ARP answer from 10.1.0.1, the gateway to 10.1.0.40) · SNAT ✓ · reply real→LB ✗ (no reply: no ARP answer from 10.1.0.1, the gateway to 10.1.0.40; IPVS's 5 packets out were ICMP errors about its flows) · de-SNAT ? (PREROUTING) · route: forwarded to the client ?", false},
		{"no route to the real", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 7, 0, 0)
			w.Health = []health.Result{{Proto: "tcp", Real: real40, Connect: health.Unreachable, Route: "no route: network is unreachable"}}
			return s, w
		}, "client→VIP ✓ 7 · IPVS→real .40 7 (the LB has no route to 10.1.0.40) · SNAT (rule not hit) · reply real→LB ✗ (no reply: the LB has no route to 10.1.0.40) · de-SNAT ? (PREROUTING) · route: forwarded to the client ?", false},
		{"conntrack saw no reply on any flow to the real: packets out are not replies", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 6, 4, 2)
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real40, Dst: netip.MustParseAddrPort("10.1.0.6:40000")}, State: "SYN_SENT"}}
			return s, w
		}, "client→VIP ✓ 6 · IPVS→real .40 ✓ 6 · SNAT ✓ · reply real→LB ? (conntrack saw no reply on its 1 flows to the real: IPVS's 4 packets out may be ICMP errors) · de-SNAT ? (PREROUTING) · route: forwarded to 10.1.0.3 ?", false},
		{"a neighbour failed at the end after replies conntrack saw", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 6, 4, 2)
			w.Neighbours = []probes.RealNeighbour{{Real: real40, NextHop: real40.Addr(), Dev: "eth0", State: "FAILED"}}
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real40, Dst: netip.MustParseAddrPort("10.1.0.6:40000")}, State: "TIME_WAIT", Status: []string{"SEEN_REPLY"}}}
			return s, w
		}, "client→VIP ✓ 6 · IPVS→real .40 ✓ 6 · SNAT ✓ · reply real→LB ? (no ARP answer from 10.1.0.40 now, but conntrack saw replies on 1 of its 1 flows: IPVS's 4 packets out are replies and ICMP errors) · de-SNAT ? (PREROUTING) · route: forwarded to 10.1.0.3 ?", false},
		{"a real that refuses: its RSTs are replies", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 6, 6, 6)
			w.Health = []health.Result{{Proto: "tcp", Real: real40, Connect: health.Refused, Neighbour: "REACHABLE", NextHop: real40.Addr()}}
			return s, w
		}, "client→VIP ✓ 6 · IPVS→real .40 ✓ 6 · SNAT ✓ · reply real→LB ✓ 6 (RSTs: the real refuses connections) · de-SNAT (PREROUTING) · route: forwarded to the client ✓", true},
		{"two-arm: the LB has no route back to the client, the replies die in the route lookup", func() (*probes.Snapshot, *probes.Window) {
			return noRouteBack(0)
		}, "client→VIP ✓ 5 · IPVS→real .40 ✓ 5 · reply real→LB ✓ 5 · route: no route to 10.9.0.3 · ✗ ip_error IP_INNOROUTES ×5", false},
		{"two-arm: replies to one client routed, to another they die in the route lookup", func() (*probes.Snapshot, *probes.Window) {
			return noRouteBack(2)
		}, "client→VIP ✓ 5 · IPVS→real .40 ✓ 5 · reply real→LB ✓ 7 · route: no route to 10.9.0.3 (other replies were routed) · ✗ ip_error IP_INNOROUTES ×5", false},
		{"direct routing: the reply skips the LB", func() (*probes.Snapshot, *probes.Window) {
			s, w := lb("1", 5, 0, 0)
			s.IPVS.Services[0].Reals[0].Method = ipvs.Route
			return s, w
		}, "client→VIP ✓ 5 · IPVS→real .40 ✓ 5", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, w := tt.fixture()
			ps := Paths(s, w, probes.Selector{})
			if len(ps) != 1 {
				t.Fatalf("Paths(%s) = %d paths, want 1", tt.name, len(ps))
			}
			if got := ps[0].String(); got != tt.want || ps[0].Complete() != tt.complete {
				t.Errorf("Paths(%s) = %q (complete %v),\nwant %q (complete %v)", tt.name, got, ps[0].Complete(), tt.want, tt.complete)
			}
			if ps[0].Service != "TCP 10.1.0.6:8085" || ps[0].Real != real40.String() {
				t.Errorf("Paths(%s) = service %q real %q, want TCP 10.1.0.6:8085 → %s", tt.name, ps[0].Service, ps[0].Real, real40)
			}
		})
	}
}

// A selector keeps other services' paths out; more paths than MaxPaths
// keep the ones that stop, and say how many were left out.
func TestPathsSelectsAndCaps(t *testing.T) {
	s, w := lb("1", 1, 1, 1)
	if ps := Paths(s, w, probes.Selector{VIP: netip.MustParseAddrPort("10.1.0.7:80")}); len(ps) != 0 {
		t.Errorf("Paths(--vip 10.1.0.7:80) = %d paths, want 0", len(ps))
	}
	var reals []ipvs.Real
	for i := range MaxPaths + 10 {
		reals = append(reals, ipvs.Real{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)}), 8085), Method: ipvs.Masq})
	}
	s.IPVS.Services[0].Reals = reals
	last := reals[len(reals)-1].Addr
	s.Drops = &drops.Sample{Drops: []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6}, Count: 2}, ReasonName: "NO_SOCKET", Symbol: "tcp_v4_rcv+0x1",
		Flow: &drops.Flow{Client: client, VIP: vip, Real: last, Direction: "request", Stage: "after IPVS DNAT to the real server"}}}}
	ps := Paths(s, w, probes.Selector{})
	if len(ps) != MaxPaths || w.PathsOmitted != 10 || ps[0].Real != last.String() {
		t.Errorf("Paths(%d reals) = %d paths, %d omitted, first %s; want %d, 10 omitted, first the one that stops (%s)", len(reals), len(ps), w.PathsOmitted, ps[0].Real, MaxPaths, last)
	}
}

func TestShortReal(t *testing.T) {
	for _, tt := range []struct{ vip, real, want string }{
		{"10.1.0.6:8085", "10.1.0.40:8085", ".40"},
		{"10.1.0.6:80", "10.1.0.40:8085", ".40:8085"},
		{"10.1.0.6:8085", "10.2.0.40:8085", "10.2.0.40"},
		{"[fd00::6]:80", "[fd00::40]:8080", "[fd00::40]:8080"},
	} {
		if got := shortReal(netip.MustParseAddrPort(tt.vip), netip.MustParseAddrPort(tt.real)); got != tt.want {
			t.Errorf("shortReal(%s, %s) = %q, want %q", tt.vip, tt.real, got, tt.want)
		}
	}
}

// 1,000 services × 10 reals and a flow map's worth of drops (16,384: a
// SYN flood's, not attributed): what a big LB's window costs to draw.
func BenchmarkPaths(b *testing.B) {
	s, w := lb("1", 5, 5, 1)
	s.IPVS.Services = nil
	w.Deltas.IPVS = nil
	for i := range 1000 {
		svc := ipvs.Service{Proto: "tcp", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)}), 80)}
		sd := probes.ServiceDelta{Service: svc.Key(), PacketsIn: 10}
		for j := range 10 {
			r := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i / 25), byte(1 + (i%25)*10 + j)}), 80)
			svc.Reals = append(svc.Reals, ipvs.Real{Addr: r, Method: ipvs.Masq})
			sd.Reals = append(sd.Reals, probes.RealDelta{Real: r.String(), PacketsIn: 1, PacketsOut: 1})
		}
		s.IPVS.Services = append(s.IPVS.Services, svc)
		w.Deltas.IPVS = append(w.Deltas.IPVS, sd)
	}
	var ds []drops.Counted
	for i := range 16384 {
		src := netip.AddrPortFrom(client.Addr(), uint16(1024+i))
		ds = append(ds, drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: src, Dst: s.IPVS.Services[i%1000].Addr}, Count: 1}, ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x98"})
	}
	s.Drops = &drops.Sample{Drops: ds}
	b.ResetTimer()
	for range b.N {
		w.PathsOmitted = 0
		if ps := Paths(s, w, probes.Selector{}); len(ps) != MaxPaths {
			b.Fatalf("Paths = %d paths, want %d", len(ps), MaxPaths)
		}
	}
}

// noRouteBack is a two-arm LB whose main table has no route to client
// 10.9.0.3: its real's 5 replies to it die in ip_error (IP_INNOROUTES),
// while IPVS routed routed replies out to other clients.
func noRouteBack(routed uint32) (*probes.Snapshot, *probes.Window) {
	s, w := lb("1", 5, routed, 0)
	s.Rules.Rules, w.Deltas.Rules = nil, nil
	s.Net.Links = append(s.Net.Links, netstate.Link{Name: "eth1", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.2.0.1/24")}})
	s.Net.Routes = []netstate.Route{{Dst: netip.MustParsePrefix("10.1.0.0/24"), Dev: "eth0"}, {Dst: netip.MustParsePrefix("10.1.0.40/32"), Dev: "eth1"}}
	far := netip.MustParseAddrPort("10.9.0.3:40000")
	s.Drops = &drops.Sample{Drops: []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6}, Count: 5}, ReasonName: "IP_INNOROUTES", Symbol: "ip_error+0x92",
		Flow: &drops.Flow{Client: far, VIP: vip, Real: real40, Direction: "reply", Stage: "straight from the real server, never de-NATed by IPVS"}}}}
	return s, w
}
