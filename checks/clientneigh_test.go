package checks_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// A two-arm LB whose route to a client leaves by the reals' interface
// (`ip route add 10.1.0.3/32 dev eth1`, a typo of an operator): the
// replies, de-NATed by IPVS, die asking ARP for the client where it is not
// (NEIGH_FAILED). drops.vip_flows named the reason alone, with no fix; it
// now names the route, the interface the clients come in on, and deletes
// the route — or, for a default route or a connected prefix, says what to
// look at instead of deleting it.
func TestDropsReplyNeighbourOfAClient(t *testing.T) {
	for _, tt := range []struct {
		name    string
		client  string
		routes  []netstate.Route
		wantWhy string
		wantFix string
	}{
		{"a host route out of the reals' interface", "10.1.0.3", []netstate.Route{{Dst: pf("10.1.0.3/32"), Dev: "eth1"}},
			"the LB routes client 10.1.0.3 out of eth1 (10.1.0.3/32 dev eth1), where 10.1.0.3 does not answer ARP/NDP (neighbour INCOMPLETE)",
			"ip netns exec lb ip route del 10.1.0.3/32 dev eth1"},
		{"the default route via the reals' side", "10.9.0.3", []netstate.Route{{Dst: pf("0.0.0.0/0"), Gw: ad("10.2.0.254"), Dev: "eth1"}},
			"where 10.2.0.254 does not answer ARP/NDP", "# the default route leads out of eth1"},
		{"a client on the reals' own segment", "10.2.0.77", nil,
			"the LB routes client 10.2.0.77 out of eth1 (10.2.0.0/24 dev eth1)", "# 10.2.0.0/24 is eth1's own segment"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers})
			s.Net.Routes = append(s.Net.Routes, tt.routes...)
			hop := ad(tt.client)
			if r, _ := s.Net.RouteTo(hop); r.Gw.IsValid() {
				hop = r.Gw
			}
			s.Net.Neighbours = append(s.Net.Neighbours, netstate.Neighbour{IP: hop, Dev: "eth1", State: "INCOMPLETE"})
			client := ap(tt.client + ":40000")
			s.Drops.Drops = []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap("10.1.0.6:8085"), Dst: client}, Count: 4},
				ReasonName: "NEIGH_FAILED", Symbol: "neigh_invalidate+0x82",
				Flow: &drops.Flow{Client: client, VIP: ap("10.1.0.6:8085"), Real: ap("10.2.0.50:8085"), Direction: "reply", Source: "ipvs"}}}
			f := find(checks.Run(s, sel8085), "drops.vip_flows")
			fix := strings.Join(f.Fix, "\n")
			if f.Status != checks.Fail || !strings.Contains(f.Reason, tt.wantWhy) || !strings.Contains(fix, tt.wantFix) {
				t.Errorf("drops.vip_flows(%s) = %s %q\nfix %q\nwant fail, reason with %q, fix with %q", tt.name, f.Status, f.Reason, f.Fix, tt.wantWhy, tt.wantFix)
			}
		})
	}
}

// nat.return_path judges the same fault from the tables alone: a known
// client (its IPVS connections) routed back out of another interface than
// the VIP's, whose neighbour entry there never answered. The drops show
// only when an ARP resolution gives up (about 3 s), which a 3 s window
// missed on the guest: the client was broken and check passed. Its
// NEIGH_FAILED drops, when seen, are then this finding's.
func TestReturnPathClientRoutedAstray(t *testing.T) {
	const title = "replies of TCP 10.1.0.6:8085 to client 10.1.0.3 leave by eth1, where 10.1.0.3 does not answer"
	for _, tt := range []struct {
		name      string
		route     netstate.Route
		state     string
		vipDummy  bool
		want      checks.Status
		wantTitle string
		wantFix   string
	}{
		{"host route out of the reals' interface", netstate.Route{Dst: pf("10.1.0.3/32"), Dev: "eth1"}, "INCOMPLETE", false, checks.Fail, title, "ip netns exec lb ip route del 10.1.0.3/32 dev eth1"},
		{"neighbour FAILED", netstate.Route{Dst: pf("10.1.0.3/32"), Dev: "eth1"}, "FAILED", false, checks.Fail, title, "ip netns exec lb ip route del 10.1.0.3/32 dev eth1"},
		{"the client answers there", netstate.Route{Dst: pf("10.1.0.3/32"), Dev: "eth1"}, "REACHABLE", false, checks.Pass, "", ""},
		{"a client gone from the VIP's own segment", netstate.Route{Dst: pf("10.1.0.3/32"), Dev: "eth0"}, "FAILED", false, checks.Pass, "", ""},
		{"VIP on a dummy link: where clients come in is not known", netstate.Route{Dst: pf("10.1.0.3/32"), Dev: "eth1"}, "INCOMPLETE", true, checks.Pass, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers})
			s.Net.Routes = append(s.Net.Routes, tt.route)
			s.Net.Neighbours = append(s.Net.Neighbours, netstate.Neighbour{IP: ad("10.1.0.3"), Dev: tt.route.Dev, State: tt.state})
			if tt.vipDummy {
				s.Net.Links[0].Type = "dummy"
			}
			for i := 0; i < 3; i++ {
				s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: netip.AddrPortFrom(ad("10.1.0.3"), uint16(40000+i)), VIP: ap("10.1.0.6:8085"), Dest: ap("10.2.0.50:8085"), State: "ESTABLISHED"})
			}
			s.IPVS.ConnCounts = ipvs.CountConns(s.IPVS.Conns)
			s.Drops.Drops = []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap("10.1.0.6:8085"), Dst: ap("10.1.0.3:40000")}, Count: 4},
				ReasonName: "NEIGH_FAILED", Symbol: "neigh_invalidate+0x82",
				Flow: &drops.Flow{Client: ap("10.1.0.3:40000"), VIP: ap("10.1.0.6:8085"), Real: ap("10.2.0.50:8085"), Direction: "reply", Source: "ipvs"}}}
			fs := checks.Run(s, sel8085)
			f, d := find(fs, "nat.return_path"), find(fs, "drops.vip_flows")
			if f.Status != tt.want || !strings.Contains(f.Title, tt.wantTitle) || (tt.wantFix != "" && !slices.ContainsFunc(f.Fix, func(l string) bool { return strings.HasPrefix(l, tt.wantFix) })) {
				t.Errorf("nat.return_path(%s) = %s %q (%s), fix %q; want %s, title %q, a fix %q", tt.name, f.Status, f.Title, f.Reason, f.Fix, tt.want, tt.wantTitle, tt.wantFix)
			}
			if tt.want == checks.Fail && (d.Status != checks.Warn || !strings.Contains(d.Title, "the cause: nat.return_path")) {
				t.Errorf("drops.vip_flows(%s) = %s %q, want a warning whose cause is nat.return_path", tt.name, d.Status, d.Title)
			}
		})
	}
}
