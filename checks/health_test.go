package checks_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

var (
	ap = netip.MustParseAddrPort
	pf = netip.MustParsePrefix
	ad = netip.MustParseAddr
)

// twoArm is a two-arm LB after a window: VIP 10.1.0.6:8085 on eth0, the
// reals on eth1 (10.2.0.1/24), forwarding on, every rule backend read and
// empty, the drop tracer run and quiet. Each real is probed as given.
func twoArm(reals []ipvs.Real, probed []health.Result) *probes.Snapshot {
	svc := ipvs.Service{Proto: "tcp", Addr: ap("10.1.0.6:8085"), Scheduler: "rr", Reals: reals}
	sd := probes.ServiceDelta{Service: svc.Key()}
	for _, r := range reals {
		sd.Reals = append(sd.Reals, probes.RealDelta{Real: r.Addr.String(), Conns: 3, PacketsIn: 9, PacketsOut: 9})
	}
	for i := range probed {
		probed[i].Service = svc.Key()
		probed[i].Proto = "tcp"
	}
	return &probes.Snapshot{
		Target: netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb"},
		IPVS:   ipvs.Snapshot{Available: true, Services: []ipvs.Service{svc}},
		Sysctls: sysctl.Snapshot{
			"net.ipv4.ip_forward":   {Key: "net.ipv4.ip_forward", Value: "1", Present: true},
			"net.ipv4.vs.conntrack": {Key: "net.ipv4.vs.conntrack", Value: "0", Present: true},
		},
		Rules: rules.Snapshot{Backends: []rules.Backend{{Name: rules.IptablesLegacy, Read: true}, {Name: rules.IptablesNft, Read: true}, {Name: rules.Nft, Read: true}}},
		Net: netstate.Snapshot{
			Links: []netstate.Link{
				{Name: "eth0", Up: true, Addrs: []netip.Prefix{pf("10.1.0.5/24"), pf("10.1.0.6/32")}},
				{Name: "eth1", Up: true, Addrs: []netip.Prefix{pf("10.2.0.1/24")}},
			},
			Routes: []netstate.Route{{Dst: pf("10.1.0.0/24"), Dev: "eth0"}, {Dst: pf("10.2.0.0/24"), Dev: "eth1"}},
		},
		Drops:  &drops.Sample{Window: 3 * time.Second},
		Window: &probes.Window{Length: 3 * time.Second, Deltas: probes.Deltas{IPVS: []probes.ServiceDelta{sd}}, Health: probed, Skipped: map[string]string{}},
		Errors: map[string]string{},
	}
}

func real(addr string, weight int) ipvs.Real {
	return ipvs.Real{Addr: ap(addr), Method: ipvs.Masq, Weight: weight}
}

var (
	answers  = health.Result{Real: ap("10.2.0.50:8085"), Connect: health.OK, Source: ad("10.2.0.1"), Neighbour: "REACHABLE", NextHop: ad("10.2.0.50"), Dev: "eth1", RTT: time.Millisecond}
	refuses  = health.Result{Real: ap("10.2.0.50:8086"), Connect: health.Refused, Source: ad("10.2.0.1"), Neighbour: "REACHABLE", NextHop: ad("10.2.0.50"), Dev: "eth1"}
	noARP    = health.Result{Real: ap("10.2.0.99:8085"), Connect: health.Timeout, Error: "no answer within 500ms", Source: ad("10.2.0.1"), Neighbour: "INCOMPLETE", NextHop: ad("10.2.0.99"), Dev: "eth1"}
	noRoute  = health.Result{Real: ap("10.2.0.50:8085"), Connect: health.Unreachable, Route: "no route: network is unreachable"}
	slow     = health.Result{Real: ap("10.2.0.50:8085"), Connect: health.Timeout, Error: "no answer within 500ms", Source: ad("10.2.0.1"), Neighbour: "REACHABLE", NextHop: ad("10.2.0.50"), Dev: "eth1"}
	tooLate  = health.Result{Real: ap("10.2.0.50:8085"), Skipped: "the window ended before it was probed"}
	sel8085  = probes.Selector{VIP: ap("10.1.0.6:8085"), Proto: "tcp"}
	ipvsadmD = "ip netns exec lb ipvsadm -d -t 10.1.0.6:8085 -r "
)

func TestRealHealth(t *testing.T) {
	tests := []struct {
		name       string
		snap       func() *probes.Snapshot
		want       checks.Status
		wantTitle  string // contained
		wantFix0   string // the first fix line
		wantFact   string // an evidence line contains it
		wantReason string // contained
	}{
		{name: "static snapshot", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, nil)
			s.Window = nil
			return s
		}, want: checks.Skip, wantReason: "--watch 0"},
		{name: "--no-probe", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, nil)
			s.Window.Skipped[probes.LayerHealth] = "the reals were not probed (--no-probe)"
			return s
		}, want: checks.Skip, wantReason: "--no-probe"},
		{name: "every real answers", snap: func() *probes.Snapshot {
			return twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers})
		}, want: checks.Pass, wantFact: "10.2.0.50:8085 answered a TCP connect from 10.2.0.1"},
		{name: "one of two refuses", snap: func() *probes.Snapshot {
			return twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.50:8086", 1)}, []health.Result{answers, refuses})
		}, want: checks.Fail, wantTitle: "real 10.2.0.50:8086 of TCP 10.1.0.6:8085 refuses connections", wantFix0: ipvsadmD + "10.2.0.50:8086", wantFact: "nothing listens on port 8086"},
		{name: "refuses, its connections by state", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.50:8086", 1)}, []health.Result{answers, refuses})
			for i, st := range []string{"CLOSE", "SYN_RECV", "CLOSE"} {
				s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: netip.AddrPortFrom(ad("10.1.0.3"), uint16(40000+i)), VIP: ap("10.1.0.6:8085"), Dest: ap("10.2.0.50:8086"), State: st})
			}
			s.IPVS.ConnCounts = ipvs.CountConns(s.IPVS.Conns)
			return s
		}, want: checks.Fail, wantTitle: "real 10.2.0.50:8086 of TCP 10.1.0.6:8085 refuses connections", wantFix0: ipvsadmD + "10.2.0.50:8086", wantFact: "IPVS connections of TCP 10.1.0.6:8085 to 10.2.0.50:8086: 2 CLOSE, 1 SYN_RECV"},
		{name: "refuses, its counts unsorted (a snapshot from a file)", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.50:8086", 1)}, []health.Result{answers, refuses})
			count := func(dest, state string, n int) ipvs.ConnCount {
				return ipvs.ConnCount{Proto: "tcp", VIP: ap("10.1.0.6:8085"), Dest: ap(dest), State: state, Count: n}
			}
			s.IPVS.ConnCounts = []ipvs.ConnCount{count("10.2.0.50:8086", "CLOSE", 2), count("10.2.0.50:8085", "ESTABLISHED", 4), count("10.2.0.50:8086", "SYN_RECV", 1)}
			return s
		}, want: checks.Fail, wantTitle: "real 10.2.0.50:8086 of TCP 10.1.0.6:8085 refuses connections", wantFix0: ipvsadmD + "10.2.0.50:8086", wantFact: "IPVS connections of TCP 10.1.0.6:8085 to 10.2.0.50:8086: 2 CLOSE, 1 SYN_RECV"},
		{name: "refuses, the connection table not read", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.50:8086", 1)}, []health.Result{answers, refuses})
			s.Errors[probes.ProbeIPVSConns] = "not read: IPVS holds 200000 connections"
			s.IPVS.Services[0].Reals[1].InactiveConns = 3
			return s
		}, want: checks.Fail, wantTitle: "real 10.2.0.50:8086 of TCP 10.1.0.6:8085 refuses connections", wantFix0: ipvsadmD + "10.2.0.50:8086", wantFact: "IPVS connections of TCP 10.1.0.6:8085 to 10.2.0.50:8086: 0 active, 3 inactive"},
		{name: "no ARP answer", snap: func() *probes.Snapshot {
			return twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.99:8085", 1)}, []health.Result{answers, noARP})
		}, want: checks.Fail, wantTitle: "real 10.2.0.99:8085 of TCP 10.1.0.6:8085 does not answer ARP", wantFix0: ipvsadmD + "10.2.0.99:8085", wantFact: "neighbour 10.2.0.99 on eth1 is INCOMPLETE"},
		{name: "no route: the route of the LB's own segment comes back first", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{noRoute})
			s.Net.Routes = s.Net.Routes[:1]
			return s
		}, want: checks.Fail, wantTitle: "real 10.2.0.50:8085 of TCP 10.1.0.6:8085 has no route", wantFix0: "ip netns exec lb ip route add 10.2.0.0/24 dev eth1 src 10.2.0.1", wantFact: "network is unreachable"},
		{name: "weight 0 is not judged", snap: func() *probes.Snapshot {
			return twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.50:8086", 0)}, []health.Result{answers, refuses})
		}, want: checks.Pass, wantFact: "10.2.0.50:8086 of TCP 10.1.0.6:8085 has weight 0: it takes no new connections, so it is not judged"},
		{name: "a slow answer warns", snap: func() *probes.Snapshot {
			return twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{slow})
		}, want: checks.Warn, wantFact: "got no answer"},
		{name: "not probed in time", snap: func() *probes.Snapshot {
			return twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{tooLate})
		}, want: checks.Skip, wantFact: "not probed: the window ended"},
		{name: "reals left out are counted", snap: func() *probes.Snapshot {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers})
			s.Window.HealthLeftOut = 44
			return s
		}, want: checks.Pass, wantFact: "44 more reals not probed: a window probes at most 256"},
	}
	for _, tt := range tests {
		f := find(checks.Run(tt.snap(), sel8085), "ipvs.real_health")
		var facts []string
		for _, e := range f.Evidence {
			facts = append(facts, e.Fact)
		}
		fix0 := ""
		if len(f.Fix) > 0 {
			fix0 = f.Fix[0]
		}
		if f.Status != tt.want || !strings.Contains(f.Title, tt.wantTitle) || !strings.HasPrefix(fix0, tt.wantFix0) ||
			!strings.Contains(strings.Join(facts, "\n"), tt.wantFact) || !strings.Contains(f.Reason, tt.wantReason) {
			t.Errorf("ipvs.real_health(%s) = %s %q (%s), fix %q, evidence %q;\nwant %s, title with %q, first fix %q, a fact with %q, reason with %q",
				tt.name, f.Status, f.Title, f.Reason, f.Fix, facts, tt.want, tt.wantTitle, tt.wantFix0, tt.wantFact, tt.wantReason)
		}
		if f.Status == checks.Fail && len(f.Remedies) > 0 {
			t.Errorf("ipvs.real_health(%s) has remedies %v: --fix must not take a real out on its own", tt.name, f.Remedies)
		}
	}
}

// find returns the finding id, failing the test when it is absent.
func find(fs []checks.Finding, id string) checks.Finding {
	for _, f := range fs {
		if f.ID == id {
			return f
		}
	}
	panic("no finding " + id)
}

// stuck makes real r's window look like SYNs that never got an answer
// through IPVS: packets in, none out, connections in SYN_RECV.
func stuck(s *probes.Snapshot, r string) *probes.Snapshot {
	for i := range s.Window.Deltas.IPVS[0].Reals {
		if d := &s.Window.Deltas.IPVS[0].Reals[i]; d.Real == r {
			d.PacketsOut = 0
		}
	}
	for i := 0; i < 4; i++ {
		s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: netip.AddrPortFrom(ad("10.1.0.3"), uint16(40000+i)), VIP: ap("10.1.0.6:8085"), Dest: ap(r), State: "SYN_RECV"})
	}
	s.IPVS.ConnCounts = ipvs.CountConns(s.IPVS.Conns) // as probes.Gather tallies them
	return s
}

// stuckUnread is stuck on an LB whose connection table was too big to
// read: IPVS's per-real counters say 4 inactive, none active.
func stuckUnread(s *probes.Snapshot, r string) *probes.Snapshot {
	s = stuck(s, r)
	s.IPVS.Conns, s.IPVS.ConnCounts = nil, nil
	s.Errors[probes.ProbeIPVSConns] = "not read: IPVS holds 200000 connections"
	for i := range s.IPVS.Services[0].Reals {
		if x := &s.IPVS.Services[0].Reals[i]; x.Addr == ap(r) {
			x.ActiveConns, x.InactiveConns = 0, 4
		}
	}
	return s
}

// nat.return_path from the window: SYNs reach a real that answers the LB
// itself, and nothing comes back through IPVS — unless another check
// names why (the real is sick, forwarding is off, the replies die on the
// LB).
func TestReturnPathWindow(t *testing.T) {
	one := []ipvs.Real{real("10.2.0.50:8085", 1)}
	tests := []struct {
		name      string
		snap      func() *probes.Snapshot
		want      checks.Status
		wantFix   string // a fix line
		wantFact  string
		wantTitle string
	}{
		{name: "healthy window", snap: func() *probes.Snapshot { return twoArm(one, []health.Result{answers}) }, want: checks.Pass},
		{name: "the real's gateway is not the LB", snap: func() *probes.Snapshot {
			return stuck(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
		}, want: checks.Fail, wantTitle: "replies of TCP 10.1.0.6:8085 from real 10.2.0.50:8085 do not come back through the LB",
			wantFix: "ip route replace default via 10.2.0.1", wantFact: "4 of its IPVS connections are in SYN_RECV"},
		{name: "connection table not read: IPVS's counters", snap: func() *probes.Snapshot {
			return stuckUnread(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
		}, want: checks.Fail, wantTitle: "replies of TCP 10.1.0.6:8085 from real 10.2.0.50:8085 do not come back through the LB",
			wantFix: "ip route replace default via 10.2.0.1", wantFact: "none of its IPVS connections is established (4 inactive"},
		{name: "connection table not read, a connection established", snap: func() *probes.Snapshot {
			s := stuckUnread(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
			s.IPVS.Services[0].Reals[0].ActiveConns = 1
			return s
		}, want: checks.Pass},
		{name: "no probe, the neighbour answered", snap: func() *probes.Snapshot {
			s := stuck(twoArm(one, nil), "10.2.0.50:8085")
			s.Net.Neighbours = []netstate.Neighbour{{IP: ad("10.2.0.50"), Dev: "eth1", State: "REACHABLE"}}
			return s
		}, want: checks.Fail, wantFix: "ip route replace default via 10.2.0.1", wantFact: "neighbour 10.2.0.50 on eth1 is REACHABLE"},
		{name: "no probe, no neighbour: cannot tell", snap: func() *probes.Snapshot {
			return stuck(twoArm(one, nil), "10.2.0.50:8085")
		}, want: checks.Pass, wantFact: "is not known"},
		{name: "the real refuses: ipvs.real_health's", snap: func() *probes.Snapshot {
			r := refuses
			r.Real = ap("10.2.0.50:8085")
			return stuck(twoArm(one, []health.Result{r}), "10.2.0.50:8085")
		}, want: checks.Pass, wantFact: "see ipvs.real_health"},
		{name: "forwarding off: sysctl.ip_forward's", snap: func() *probes.Snapshot {
			s := stuck(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
			s.Sysctls["net.ipv4.ip_forward"] = sysctl.Value{Key: "net.ipv4.ip_forward", Value: "0", Present: true}
			return s
		}, want: checks.Pass, wantFact: "see sysctl.ip_forward"},
		{name: "replies die on the LB: drops.vip_flows'", snap: func() *probes.Snapshot {
			s := stuck(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
			s.Drops.Drops = []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Src: ap("10.2.0.50:8085"), Dst: ap("10.1.0.3:40000")}, Count: 5}, ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x9"}}
			return s
		}, want: checks.Pass, wantFact: "see drops.vip_flows"},
		{name: "no drop tracer: a warning", snap: func() *probes.Snapshot {
			s := stuck(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
			s.Drops = nil
			s.Errors[probes.ProbeDrops] = "no CAP_BPF"
			return s
		}, want: checks.Warn, wantFix: "ip route replace default via 10.2.0.1"},
	}
	for _, tt := range tests {
		f := find(checks.Run(tt.snap(), sel8085), "nat.return_path")
		var facts []string
		for _, e := range f.Evidence {
			facts = append(facts, e.Fact)
		}
		if f.Status != tt.want || (tt.wantFix != "" && !slices.Contains(f.Fix, tt.wantFix)) || !strings.Contains(strings.Join(facts, "\n"), tt.wantFact) || !strings.Contains(f.Title, tt.wantTitle) {
			t.Errorf("nat.return_path(%s) = %s %q (%s), fix %q, evidence %q;\nwant %s, title with %q, a fix %q, a fact with %q",
				tt.name, f.Status, f.Title, f.Reason, f.Fix, facts, tt.want, tt.wantTitle, tt.wantFix, tt.wantFact)
		}
	}
}

// drops.vip_flows defers to ipvs.real_health for the drops a sick real
// explains — its neighbour never answered — and still fails for any other.
func TestDropsExplainedByRealHealth(t *testing.T) {
	neigh := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap("10.2.0.1:40000"), Dst: ap("10.2.0.99:8085")}, Count: 7}, ReasonName: "NEIGH_FAILED", Symbol: "neigh_invalidate+0x5a"}
	other := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap("10.1.0.3:40000"), Dst: ap("10.1.0.6:8085")}, Count: 2}, ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x9"}
	tests := []struct {
		name  string
		drops []drops.Counted
		want  checks.Status
	}{
		{"every drop explained", []drops.Counted{neigh}, checks.Warn},
		{"one more drop", []drops.Counted{neigh, other}, checks.Fail},
	}
	for _, tt := range tests {
		s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.99:8085", 1)}, []health.Result{answers, noARP})
		s.Drops.Drops = tt.drops
		f := find(checks.Run(s, sel8085), "drops.vip_flows")
		if f.Status != tt.want {
			t.Errorf("drops.vip_flows(%s) = %s %q %v, want %s", tt.name, f.Status, f.Title, f.Evidence, tt.want)
		}
	}
}
