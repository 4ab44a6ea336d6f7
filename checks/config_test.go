package checks_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/snmp"
)

// twoArmLocal is the two-arm fixture with the local routing table the
// probe reads: the LB's own addresses and the VIP on eth0.
func twoArmLocal(t *testing.T) *probes.Snapshot {
	s := loadFixture(t, "two-arm")
	for _, p := range []string{"127.0.0.0/8", "10.1.0.5/32", "10.1.0.6/32", "10.2.0.1/32", "::1/128"} {
		s.Net.Local = append(s.Net.Local, netip.MustParsePrefix(p))
	}
	return s
}

// removeVIP takes the VIP off eth0 and the local table, as `ip addr del
// 10.1.0.6/32 dev eth0` does; the kernel now routes it out of eth0.
func removeVIP(s *probes.Snapshot) {
	vip := netip.MustParsePrefix("10.1.0.6/32")
	s.Net.Local = slices.DeleteFunc(s.Net.Local, func(p netip.Prefix) bool { return p == vip })
	for i := range s.Net.Links {
		s.Net.Links[i].Addrs = slices.DeleteFunc(s.Net.Links[i].Addrs, func(p netip.Prefix) bool { return p == vip })
	}
	s.Net.Lookups = append(s.Net.Lookups, netstate.Decision{Dst: vip.Addr(), Dev: "eth0", NextHop: vip.Addr()})
}

// kubeIPVS0 moves the VIP to a DOWN dummy kube-ipvs0, as kube-proxy
// leaves it: no route of the main table, a local route all the same.
func kubeIPVS0(s *probes.Snapshot) {
	removeVIP(s)
	s.Net.Lookups = nil
	s.Net.Links = append(s.Net.Links, netstate.Link{Index: 9, Name: "kube-ipvs0", Type: "dummy", Up: false, Addrs: []netip.Prefix{netip.MustParsePrefix("10.96.0.10/32")}})
	s.Net.Local = append(s.Net.Local, netip.MustParsePrefix("10.96.0.10/32"))
	s.IPVS.Services[0].Addr = netip.MustParseAddrPort("10.96.0.10:8085")
}

func TestVIPLocal(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*probes.Snapshot)
		want    checks.Status
		wantFix string // in the fix (fail) or the reason (skip) or the evidence (pass)
		remedy  checks.Remedy
	}{
		{"VIP on eth0", func(*probes.Snapshot) {}, checks.Pass, "local route 10.1.0.6/32, on eth0 (veth UP)", checks.Remedy{}},
		{"VIP removed", removeVIP, checks.Fail, "ip addr add 10.1.0.6/32 dev eth0", checks.Remedy{Addr: "10.1.0.6/32", Dev: "eth0"}},
		{"kube-ipvs0 DOWN holds it", kubeIPVS0, checks.Pass, "on kube-ipvs0 (dummy DOWN, local all the same)", checks.Remedy{}},
		{"kube-ipvs0 lost it", func(s *probes.Snapshot) {
			kubeIPVS0(s)
			s.Net.Local = s.Net.Local[:len(s.Net.Local)-1]
		}, checks.Fail, "ip addr add 10.96.0.10/32 dev kube-ipvs0", checks.Remedy{Addr: "10.96.0.10/32", Dev: "kube-ipvs0"}},
		{"off any subnet, no dummy", func(s *probes.Snapshot) {
			removeVIP(s)
			s.IPVS.Services[0].Addr = netip.MustParseAddrPort("192.0.2.6:8085")
		}, checks.Fail, "ip addr add 192.0.2.6/32 dev lo", checks.Remedy{Addr: "192.0.2.6/32", Dev: "lo"}},
		{"a local range (ip route add local)", func(s *probes.Snapshot) {
			removeVIP(s)
			s.Net.Local = append(s.Net.Local, netip.MustParsePrefix("10.1.0.0/28"))
		}, checks.Pass, "local route 10.1.0.0/28", checks.Remedy{}},
		{"fwmark service only", func(s *probes.Snapshot) {
			s.IPVS.Services[0].FWMark, s.IPVS.Services[0].Addr = 7, netip.AddrPort{}
		}, checks.Skip, "fwmark", checks.Remedy{}},
		{"local table not read", func(s *probes.Snapshot) { s.Net.Local = nil }, checks.Skip, "not read", checks.Remedy{}},
		{"routes unread", func(s *probes.Snapshot) { s.Errors = map[string]string{probes.ProbeNet: "netlink: permission denied"} }, checks.Skip, "routes could not be read", checks.Remedy{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "ipvs.vip_local")
			text := findingText(f)
			if f.Status != tt.want || !strings.Contains(text, tt.wantFix) || (tt.remedy != checks.Remedy{} && !slices.Contains(f.Remedies, tt.remedy)) {
				t.Errorf("Run(%s) ipvs.vip_local = %s %q\n%s\nremedies %v, want %s with %q and remedy %+v", tt.name, f.Status, f.Title, text, f.Remedies, tt.want, tt.wantFix, tt.remedy)
			}
		})
	}
}

// A VIP that is not local is one fault, named by ipvs.vip_local:
// nat.return_path does not judge its segment (a two-arm LB without SNAT
// was told to add it, a second failure for one fault).
func TestReturnPathVIPNotLocal(t *testing.T) {
	tests := []struct {
		name   string
		change func(*probes.Snapshot)
		want   checks.Status
		wantIn string
	}{
		{"two-arm, VIP on eth0", func(*probes.Snapshot) {}, checks.Pass, "another segment than the VIP's eth0"},
		{"two-arm, VIP removed", removeVIP, checks.Skip, "no selected masquerade service's VIP is a local address"},
		{"two-arm, local table not read, VIP removed", func(s *probes.Snapshot) { removeVIP(s); s.Net.Local = nil }, checks.Fail, "not an address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			tt.change(s)
			fs := checks.Run(s, probes.Selector{})
			f := statusOf(fs, "nat.return_path")
			text := findingText(f)
			if f.Status != tt.want || !strings.Contains(text, tt.wantIn) {
				t.Errorf("Run(%s) nat.return_path = %s %q\n%s\nwant %s with %q", tt.name, f.Status, f.Title, text, tt.want, tt.wantIn)
			}
		})
	}
}

func setRP(s *probes.Snapshot, all, eth0 string) {
	setSysctl(s, "net.ipv4.conf.all.rp_filter", all)
	setSysctl(s, "net.ipv4.conf.eth0.rp_filter", eth0)
}

// asymmetric is the two-arm LB whose route back to the client 10.9.0.3
// leaves by eth1 while the client comes in on eth0, strict on eth0: the
// kernel refuses the client on eth0 (the probe asked it).
func asymmetric(s *probes.Snapshot) {
	setRP(s, "1", "0")
	client, vip := netip.MustParseAddr("10.9.0.3"), netip.MustParseAddr("10.1.0.6")
	s.Net.Lookups = append(s.Net.Lookups,
		netstate.Decision{Dst: client, Dev: "eth1", Gw: netip.MustParseAddr("10.2.0.9"), NextHop: netip.MustParseAddr("10.2.0.9")},
		netstate.Decision{Dst: vip, From: client, Iif: "eth0", Error: "invalid cross-device link", Errno: "EXDEV"},
		netstate.Decision{Dst: vip, From: client, Iif: "eth1", Local: true, Dev: "lo"})
}

// rpDrops are a window's drops of the client's SYNs for IP_RPFILTER.
func rpDrops(s *probes.Snapshot) {
	s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{{
		Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 1, Location: 0xffff,
			Src: netip.MustParseAddrPort("10.9.0.3:40000"), Dst: netip.MustParseAddrPort("10.1.0.6:8085")}, Count: 4},
		ReasonName: "IP_RPFILTER", Symbol: "ip_rcv_finish_core+0x1a2"}}}
}

func TestRPFilter(t *testing.T) {
	flow := func(s *probes.Snapshot) {
		s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "ESTABLISHED",
			Orig: conntrack.Tuple{Src: netip.MustParseAddrPort("10.9.0.3:40000"), Dst: netip.MustParseAddrPort("10.1.0.6:8085")}}}
	}
	tests := []struct {
		name   string
		change func(*probes.Snapshot)
		want   checks.Status
		wantIn string
		remedy checks.Remedy
	}{
		{"off everywhere", func(*probes.Snapshot) {}, checks.Pass, "rp_filter = 0, and 0 on every up interface", checks.Remedy{}},
		{"strict, nobody seen", func(s *probes.Snapshot) { setRP(s, "1", "1") }, checks.Skip, "no client source", checks.Remedy{}},
		{"strict, symmetric client", func(s *probes.Snapshot) {
			setRP(s, "1", "1")
			flow(s)
			s.Net.Lookups = []netstate.Decision{{Dst: netip.MustParseAddr("10.9.0.3"), Dev: "eth0", NextHop: netip.MustParseAddr("10.9.0.3")},
				{Dst: netip.MustParseAddr("10.1.0.6"), From: netip.MustParseAddr("10.9.0.3"), Iif: "eth0", Local: true, Dev: "lo"}}
		}, checks.Pass, "1 client source(s) asked about", checks.Remedy{}},
		{"asymmetric, dropped in the window", func(s *probes.Snapshot) { asymmetric(s); rpDrops(s) }, checks.Fail,
			"4 × IP_RPFILTER: packets from 10.9.0.3 to 10.1.0.6", checks.Remedy{Sysctl: "net.ipv4.conf.eth0.rp_filter", Value: "2"}},
		{"asymmetric, a flow and no window", func(s *probes.Snapshot) { asymmetric(s); flow(s) }, checks.Warn, "arriving on eth0, the VIP's interface", checks.Remedy{}},
		// vs.conntrack=0: IPVS's own table keeps the client; the tracer
		// saw nothing (attached late), the kernel's counter did.
		{"asymmetric, an IPVS connection, the filter counted", func(s *probes.Snapshot) {
			asymmetric(s)
			s.IPVS.Conns = []ipvs.Conn{{Proto: "tcp", Client: netip.MustParseAddrPort("10.9.0.3:40000"), VIP: netip.MustParseAddrPort("10.1.0.6:8085"), State: "TIME_WAIT"}}
			s.Window = &probes.Window{Deltas: probes.Deltas{SNMP: snmp.Counters{"TcpExtIPReversePathFilter": 5}}}
			s.Drops = &drops.Sample{Window: time.Second, Drops: []drops.Counted{}}
		}, checks.Fail, "IPReversePathFilter +5 in the window", checks.Remedy{Sysctl: "net.ipv4.conf.eth0.rp_filter", Value: "2"}},
		{"strict, the filter counted, nobody known", func(s *probes.Snapshot) {
			setRP(s, "1", "1")
			s.Window = &probes.Window{Deltas: probes.Deltas{SNMP: snmp.Counters{"TcpExtIPReversePathFilter": 5}}}
		}, checks.Warn, "whose is unknown", checks.Remedy{}},
		{"asymmetric, loose", func(s *probes.Snapshot) {
			asymmetric(s)
			flow(s)
			setRP(s, "1", "2")
			// loose: the kernel lets it in, the probe saw no refusal
			s.Net.Lookups[len(s.Net.Lookups)-2] = netstate.Decision{Dst: netip.MustParseAddr("10.1.0.6"), From: netip.MustParseAddr("10.9.0.3"), Iif: "eth0", Local: true, Dev: "lo"}
		}, checks.Pass, "rp_filter of eth0 is 2, loose", checks.Remedy{}},
		{"IPv6 service", func(s *probes.Snapshot) {
			setRP(s, "1", "1")
			s.IPVS.Services[0].Addr = netip.MustParseAddrPort("[fd00:1::6]:8085")
		}, checks.Skip, "IPv4's", checks.Remedy{}},
		{"lookups failed", func(s *probes.Snapshot) {
			asymmetric(s)
			s.Errors = map[string]string{probes.ProbeRoutes: "route lookups in netns lb: setns: operation not permitted"}
		}, checks.Skip, "could not be asked", checks.Remedy{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "sysctl.rp_filter")
			text := findingText(f)
			if f.Status != tt.want || !strings.Contains(text, tt.wantIn) || (tt.remedy != checks.Remedy{} && !slices.Contains(f.Remedies, tt.remedy)) {
				t.Errorf("Run(%s) sysctl.rp_filter = %s\n%s\nremedies %v, want %s with %q and remedy %+v", tt.name, f.Status, text, f.Remedies, tt.want, tt.wantIn, tt.remedy)
			}
		})
	}
}

// A DNAT VIP's packets are filtered after PREROUTING's DNAT: the
// IP_RPFILTER drops of its clients carry a backend's address. They are the
// VIP's (its backend known from its DNAT rule or from conntrack):
// sysctl.rp_filter fails naming the source and the interface, and
// drops.vip_flows warns, explained by it — not a second failure. A drop to
// an address that is no backend of the VIP is not its client's.
func TestRPFilterDropsOfADNATVIP(t *testing.T) {
	vip := netip.MustParseAddrPort("10.1.0.6:8085")
	dnatVIP := func(s *probes.Snapshot) {
		s.IPVS.Services = nil // nft DNAT, not IPVS
		asymmetric(s)
	}
	dropsTo := func(s *probes.Snapshot, dst string) {
		rpDrops(s)
		s.Drops.Drops[0].Dst = netip.MustParseAddrPort(dst)
	}
	rule := func(s *probes.Snapshot) {
		s.Rules.Rules = append(s.Rules.Rules, rules.Rule{Backend: rules.Nft, Family: "ip", Table: "ip nat", Chain: "pre", Hook: "prerouting", Target: "DNAT",
			Spec: "ip daddr 10.1.0.6 tcp dport 8085 dnat to 10.2.0.50:8085"})
	}
	learned := func(s *probes.Snapshot) {
		s.Conntrack.Backends = []netip.AddrPort{netip.MustParseAddrPort("10.2.0.50:8085")}
	}
	tests := []struct {
		name             string
		backend, dropDst func(*probes.Snapshot) // where the backend is known from; the drops' destination
		wantRP, wantDrop checks.Status
		wantRPIn         string
	}{
		{"backend from its DNAT rule", rule, func(s *probes.Snapshot) { dropsTo(s, "10.2.0.50:8085") }, checks.Fail, checks.Warn, "4 × IP_RPFILTER: packets from 10.9.0.3 to 10.1.0.6"},
		{"backend from conntrack", learned, func(s *probes.Snapshot) { dropsTo(s, "10.2.0.50:8085") }, checks.Fail, checks.Warn, "the reverse-path filter dropped 4 packets from 10.9.0.3 to 10.1.0.6"},
		{"drops to no backend of it", rule, func(s *probes.Snapshot) { dropsTo(s, "10.2.0.99:8085") }, checks.Skip, checks.Fail, "no client source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			dnatVIP(s)
			tt.backend(s)
			tt.dropDst(s)
			fs := checks.Run(s, probes.Selector{VIP: vip})
			f := statusOf(fs, "sysctl.rp_filter")
			text := findingText(f)
			remedy := checks.Remedy{Sysctl: "net.ipv4.conf.eth0.rp_filter", Value: "2"}
			if f.Status != tt.wantRP || !strings.Contains(text, tt.wantRPIn) || (tt.wantRP == checks.Fail && !slices.Contains(f.Remedies, remedy)) {
				t.Errorf("Run(%s) sysctl.rp_filter = %s\n%s\nremedies %v, want %s with %q and remedy %+v", tt.name, f.Status, text, f.Remedies, tt.wantRP, tt.wantRPIn, remedy)
			}
			d := statusOf(fs, "drops.vip_flows")
			if d.Status != tt.wantDrop || (tt.wantDrop == checks.Warn && !strings.Contains(d.Title, "the cause: sysctl.rp_filter")) {
				t.Errorf("Run(%s) drops.vip_flows = %s %q (%s), want %s (explained by sysctl.rp_filter when a warning)", tt.name, d.Status, d.Title, d.Reason, tt.wantDrop)
			}
		})
	}
}

// One fault, one failing id: drops whose cause a failing finding names
// make drops.vip_flows warn and point at it; a drop nobody explains keeps
// it failing.
func TestDropsExplained(t *testing.T) {
	tests := []struct {
		name   string
		change func(*probes.Snapshot)
		want   checks.Status
		wantIn string
	}{
		{"rp_filter drops, explained", func(s *probes.Snapshot) { asymmetric(s); rpDrops(s) }, checks.Warn, "the cause: sysctl.rp_filter"},
		{"rp_filter drops, nothing refuses now", func(s *probes.Snapshot) { rpDrops(s) }, checks.Fail, "IP_RPFILTER"},
		{"VIP not local, its packets forwarded and dropped", func(s *probes.Snapshot) {
			removeVIP(s)
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{{
				Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Location: 0xfff,
					Src: netip.MustParseAddrPort("10.1.0.3:40000"), Dst: netip.MustParseAddrPort("10.1.0.6:8085")}, Count: 3},
				ReasonName: "NEIGH_FAILED", Symbol: "neigh_invalidate+0x8b"}}}
		}, checks.Warn, "the cause: ipvs.vip_local"},
		{"another drop beside", func(s *probes.Snapshot) {
			asymmetric(s)
			rpDrops(s)
			s.Drops.Drops = append(s.Drops.Drops, drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Location: 1}, Count: 1}, ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x9"})
		}, checks.Fail, "(and 1 more reason)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "drops.vip_flows")
			if f.Status != tt.want || !strings.Contains(f.Title+f.Reason, tt.wantIn) {
				t.Errorf("Run(%s) drops.vip_flows = %s %q (%s), want %s with %q", tt.name, f.Status, f.Title, f.Reason, tt.want, tt.wantIn)
			}
		})
	}
}

// IPv4 forwards a packet when the interface it came in on forwards: the
// replies' interface is judged, beside net.ipv4.ip_forward.
func TestIPv4ForwardingPerInterface(t *testing.T) {
	tests := []struct {
		name   string
		change func(*probes.Snapshot)
		want   checks.Status
		wantIn string
		remedy checks.Remedy
	}{
		{"all on", func(*probes.Snapshot) {}, checks.Pass, "net.ipv4.conf.eth1.forwarding = 1 (the replies of 10.2.0.50 arrive on eth1)", checks.Remedy{}},
		{"ip_forward off", func(s *probes.Snapshot) {
			setSysctl(s, "net.ipv4.ip_forward", "0")
			setSysctl(s, "net.ipv4.conf.eth1.forwarding", "0")
		}, checks.Fail, "net.ipv4.ip_forward=1", checks.Remedy{Sysctl: "net.ipv4.ip_forward", Value: "1"}},
		{"the replies' interface off", func(s *probes.Snapshot) { setSysctl(s, "net.ipv4.conf.eth1.forwarding", "0") }, checks.Fail,
			"sysctl -w net.ipv4.conf.eth1.forwarding=1", checks.Remedy{Sysctl: "net.ipv4.conf.eth1.forwarding", Value: "1"}},
		{"the clients' interface off only", func(s *probes.Snapshot) { setSysctl(s, "net.ipv4.conf.eth0.forwarding", "0") }, checks.Pass, "", checks.Remedy{}},
		{"ip_forward off, the replies' interface on", func(s *probes.Snapshot) { setSysctl(s, "net.ipv4.ip_forward", "0") }, checks.Pass,
			"the kernel asks the interface a packet came in on", checks.Remedy{}},
		{"many reals: the line names 8 and counts the rest", func(s *probes.Snapshot) {
			for i := 51; i < 61; i++ {
				r := s.IPVS.Services[0].Reals[0]
				r.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(i)}), r.Addr.Port())
				s.IPVS.Services[0].Reals = append(s.IPVS.Services[0].Reals, r)
			}
		}, checks.Pass, "(the replies of 10.2.0.50, 10.2.0.51, 10.2.0.52, 10.2.0.53, 10.2.0.54, 10.2.0.55, 10.2.0.56, 10.2.0.57 and 3 more reals arrive on eth1)", checks.Remedy{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "sysctl.ip_forward")
			text := findingText(f)
			if f.Status != tt.want || !strings.Contains(text, tt.wantIn) || (tt.remedy != checks.Remedy{} && !slices.Contains(f.Remedies, tt.remedy)) {
				t.Errorf("Run(%s) sysctl.ip_forward = %s\n%s\nremedies %v, want %s with %q and remedy %+v", tt.name, f.Status, text, f.Remedies, tt.want, tt.wantIn, tt.remedy)
			}
		})
	}
}

// Forwarding off on the interface the replies come in on (ip_forward=1):
// drops.vip_flows gives that interface's switch as sysctl.ip_forward does,
// not `ip route get` with "neither local nor routable".
func TestDropsForwardingOffOnInterface(t *testing.T) {
	s := twoArmLocal(t)
	setSysctl(s, "net.ipv4.ip_forward", "1")
	setSysctl(s, "net.ipv4.conf.eth1.forwarding", "0")
	s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{{
		Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 2, Location: 0xffff,
			Src: netip.MustParseAddrPort("10.2.0.50:8085"), Dst: netip.MustParseAddrPort("10.1.0.3:40000")}, Count: 2},
		ReasonName: "IP_INADDRERRORS", Symbol: "ip_error+0x92"}}}
	fs := checks.Run(s, probes.Selector{})
	fwd, f := statusOf(fs, "sysctl.ip_forward"), statusOf(fs, "drops.vip_flows")
	want := "ip netns exec lb sysctl -w net.ipv4.conf.eth1.forwarding=1"
	if fwd.Status != checks.Fail || f.Status != checks.Warn || !slices.Contains(f.Fix, want) || !strings.Contains(f.Reason, "came in on eth1") {
		t.Errorf("Run(eth1 forwarding off) sysctl.ip_forward = %s, drops.vip_flows = %s %q fix %q, want fail, warn with %q", fwd.Status, f.Status, f.Reason, f.Fix, want)
	}
}

// A two-arm LB that routes its clients back through a real server: the
// de-NATed replies go to the real again (found in the guest: the client
// got nothing and check passed). A route back through a router passes.
func TestReturnPathRouteBackViaReal(t *testing.T) {
	client := netip.MustParseAddr("10.9.0.3")
	tests := []struct {
		name   string
		route  netstate.Route
		want   checks.Status
		wantIn string
	}{
		{"client routed via a router on eth0", netstate.Route{Dst: netip.MustParsePrefix("10.9.0.0/16"), Gw: netip.MustParseAddr("10.1.0.1"), Dev: "eth0", Table: 254}, checks.Pass, "another segment than the VIP's eth0"},
		{"client routed via the real", netstate.Route{Dst: netip.MustParsePrefix("10.9.0.3/32"), Gw: netip.MustParseAddr("10.2.0.50"), Dev: "eth1", Table: 254}, checks.Fail,
			"ip netns exec lb ip route del 10.9.0.3/32 via 10.2.0.50 dev eth1"},
		{"default route via the real", netstate.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("10.2.0.50"), Dev: "eth1", Table: 254}, checks.Fail,
			"the default route (0.0.0.0/0 via 10.2.0.50 dev eth1) leads to a real server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			s.Net.Routes = append(s.Net.Routes, tt.route)
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "SYN_RECV",
				Orig: conntrack.Tuple{Src: netip.AddrPortFrom(client, 40000), Dst: netip.MustParseAddrPort("10.1.0.6:8085")}}}
			f := statusOf(checks.Run(s, probes.Selector{}), "nat.return_path")
			text := findingText(f)
			if f.Status != tt.want || !strings.Contains(text, tt.wantIn) {
				t.Errorf("Run(%s) nat.return_path = %s %q\n%s\nwant %s with %q", tt.name, f.Status, f.Title, text, tt.want, tt.wantIn)
			}
		})
	}
}

// Drops of a window whose first read had ip_forward=0 and whose last has 1:
// the fault was fixed during the window, so drops.vip_flows warns naming
// it; a drop explained by neither read keeps it failing.
func TestDropsHealedDuringWindow(t *testing.T) {
	fwdDrop := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 2, Location: 0xffff,
		Src: netip.MustParseAddrPort("10.2.0.50:8085"), Dst: netip.MustParseAddrPort("10.1.0.3:40000")}, Count: 2},
		ReasonName: "IP_INADDRERRORS", Symbol: "ip_error+0x92"}
	other := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Location: 1}, Count: 1}, ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x9"}
	tests := []struct {
		name   string
		drops  []drops.Counted
		want   checks.Status
		wantIn string
	}{
		{"forwarding fixed during the window", []drops.Counted{fwdDrop}, checks.Warn, "sysctl.ip_forward (fixed during the window)"},
		{"a drop explained by neither read", []drops.Counted{fwdDrop, other}, checks.Fail, "(and 1 more reason)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := twoArmLocal(t)
			setSysctl(first, "net.ipv4.ip_forward", "0")
			setSysctl(first, "net.ipv4.conf.eth1.forwarding", "0")
			s := twoArmLocal(t)
			s.Window = &probes.Window{First: first}
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: tt.drops}
			f := statusOf(checks.Run(s, probes.Selector{}), "drops.vip_flows")
			if f.Status != tt.want || !strings.Contains(f.Title+f.Reason, tt.wantIn) {
				t.Errorf("Run(%s) drops.vip_flows = %s %q (%s), want %s with %q", tt.name, f.Status, f.Title, f.Reason, tt.want, tt.wantIn)
			}
		})
	}
}

// A forwarding drop (IP_INNOROUTES) of a real's reply to a client the LB
// has no route back to, forwarding on: drops.vip_flows names the missing
// route from the routes read (found unexplained in a new operator's run),
// and one that leads nowhere; with a route there it stays the lookup.
func TestDropsNoRouteToTheDestination(t *testing.T) {
	noRoute := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 2, Location: 0xffff,
		Src: netip.MustParseAddrPort("10.2.0.50:8085"), Dst: netip.MustParseAddrPort("10.9.0.3:40000")}, Count: 3},
		ReasonName: "IP_INNOROUTES", Symbol: "ip_error+0x92",
		Flow: &drops.Flow{Client: netip.MustParseAddrPort("10.9.0.3:40000"), VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Real: netip.MustParseAddrPort("10.2.0.50:8085"), Direction: "reply"}}
	tests := []struct {
		name   string
		routes func([]netstate.Route) []netstate.Route
		wantIn string
	}{
		{"no route", func(r []netstate.Route) []netstate.Route { return r }, "the LB has no route to 10.9.0.3 (no route of its main table covers it, and there is no default route): the reply of real 10.2.0.50:8085 to client 10.9.0.3 died in ip_error"},
		{"an unreachable route", func(r []netstate.Route) []netstate.Route {
			return append(r, netstate.Route{Dst: netip.MustParsePrefix("10.9.0.0/16"), Table: 254})
		}, "the LB's route to 10.9.0.3 (10.9.0.0/16) leads nowhere"},
		{"a route there", func(r []netstate.Route) []netstate.Route {
			return append(r, netstate.Route{Dst: netip.MustParsePrefix("10.9.0.0/16"), Gw: netip.MustParseAddr("10.1.0.1"), Dev: "eth0", Table: 254})
		}, "neither local nor routable from here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArmLocal(t)
			setSysctl(s, "net.ipv4.ip_forward", "1")
			var keep []netstate.Route
			for _, r := range s.Net.Routes {
				if r.Dst.Bits() > 0 {
					keep = append(keep, r) // no default route
				}
			}
			s.Net.Routes = tt.routes(keep)
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{noRoute}}
			f := statusOf(checks.Run(s, probes.Selector{}), "drops.vip_flows")
			if f.Status != checks.Fail || !strings.Contains(f.Title+"\n"+f.Reason, tt.wantIn) || !slices.Contains(f.Fix, "ip netns exec lb ip route get 10.9.0.3") {
				t.Errorf("Run(%s) drops.vip_flows = %s %q (%s) fix %q, want fail with %q and the lookup", tt.name, f.Status, f.Title, f.Reason, f.Fix, tt.wantIn)
			}
		})
	}
}
