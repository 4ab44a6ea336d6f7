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
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// The ways a probe leaves a layer unread, as probes.Gather and the window
// record them: the layer blank (or part of it) and its Errors key set.

func ipvsUnread(s *probes.Snapshot) {
	// Listing the reals of a service failed: the services before it are
	// listed, Available is true.
	s.Errors[probes.ProbeIPVS] = "list real servers of TCP 10.1.0.7:80 in netns lb: needs CAP_NET_ADMIN: operation not permitted"
}

func ipvsUnreadNone(s *probes.Snapshot) {
	s.IPVS.Services = []ipvs.Service{}
	s.Errors[probes.ProbeIPVS] = "open IPVS in netns lb: needs CAP_NET_ADMIN: operation not permitted"
}

func connTableUnread(s *probes.Snapshot) {
	s.IPVS.Conns, s.IPVS.ConnCounts = nil, nil
	s.Errors[probes.ProbeIPVSConns] = "not read: IPVS holds 20000 connections (its reals' ActiveConn + InActConn), over 10000"
}

func conntrackUnread(s *probes.Snapshot) {
	s.Conntrack = probes.Conntrack{Flows: []conntrack.Flow{}}
	s.Errors[probes.ProbeConntrack] = "conntrack dump in netns lb: operation not permitted"
}

func conntrackPartial(s *probes.Snapshot) {
	s.Conntrack.Partial = "the dump stopped after 10000 flows of the 250000 entries conntrack holds: the flows are counted over those"
}

func netUnread(s *probes.Snapshot) {
	s.Net = netstate.Snapshot{}
	s.Errors[probes.ProbeNet] = "netlink in netns lb: operation not permitted"
}

func rulesUnread(names ...string) func(*probes.Snapshot) {
	return func(s *probes.Snapshot) {
		for i, b := range s.Rules.Backends {
			for _, n := range names {
				if b.Name == n {
					s.Rules.Backends[i] = rules.Backend{Name: n, Reason: "no " + n + " save tool on PATH"}
					s.Rules.Rules = slices.DeleteFunc(s.Rules.Rules, func(r rules.Rule) bool { return r.Backend == n })
				}
			}
		}
		s.Errors[probes.ProbeRules] = strings.Join(names, ", ") + " unread"
	}
}

func dropsUntraced(s *probes.Snapshot) {
	s.Drops = nil
	s.Errors[probes.ProbeDrops] = "tracing drops needs CAP_BPF (or CAP_SYS_ADMIN): run as root"
	if s.Window != nil {
		s.Window.Skipped[probes.LayerDrops] = s.Errors[probes.ProbeDrops]
	}
}

// sysctlEmpty makes keys read as empty: present, no value.
func sysctlEmpty(keys ...string) func(*probes.Snapshot) {
	return func(s *probes.Snapshot) {
		for _, k := range keys {
			s.Sysctls[k] = sysctl.Value{Key: k, Present: true}
		}
	}
}

func withErrors(s *probes.Snapshot) *probes.Snapshot {
	if s.Errors == nil {
		s.Errors = map[string]string{}
	}
	return s
}

// A conclusion never rests on a layer that could not be read: each check
// that concludes (passes, warns or fails) on a snapshot is run again with
// one layer it depends on left unread as its probe leaves it, and must
// skip naming that layer — or, where what it concludes does not rest on
// it, say in its evidence what was not read.
func TestChecksSkipOnUnreadLayers(t *testing.T) {
	fixture := func(name string) func(*testing.T) *probes.Snapshot {
		return func(t *testing.T) *probes.Snapshot { return withErrors(loadFixture(t, name)) }
	}
	dr := []ipvs.Real{method("10.2.0.51:8085", ipvs.Route, 1)}
	matching := []ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.51:8085", 1)}
	one := []ipvs.Real{real("10.2.0.50:8085", 1)}
	flow := conntrack.Flow{Proto: "tcp", State: "ESTABLISHED", Status: []string{"SEEN_REPLY", "ASSURED", "CONFIRMED"},
		Orig: conntrack.Tuple{Src: ap("10.9.0.3:40000"), Dst: ap("10.1.0.6:8085")}, Reply: conntrack.Tuple{Src: ap("10.1.0.50:8085"), Dst: ap("10.1.0.5:40000")}}
	assured := func(t *testing.T) *probes.Snapshot {
		s := withErrors(loadFixture(t, "seed-stage2"))
		s.Conntrack.Flows = []conntrack.Flow{flow}
		s.Conntrack.Counts = nil
		return s
	}
	notSNATed := func(t *testing.T) *probes.Snapshot {
		// seed-stage3: one-arm, an -m ipvs MASQUERADE covers the VIP;
		// flows IPVS rewrote and nothing source-NATed predate it.
		s := withErrors(loadFixture(t, "seed-stage3"))
		s.Conntrack.NotSNATed = []probes.FlowTally{{Proto: "tcp", Dst: ap("10.1.0.6:8085"), Count: 3}}
		return s
	}
	strictClient := func(t *testing.T) *probes.Snapshot {
		s := withErrors(twoArmLocal(t))
		setRP(s, "1", "1")
		s.Conntrack.Flows = []conntrack.Flow{flow}
		s.Net.Lookups = []netstate.Decision{{Dst: ad("10.9.0.3"), Dev: "eth0", NextHop: ad("10.9.0.3")},
			{Dst: ad("10.1.0.6"), From: ad("10.9.0.3"), Iif: "eth0", Local: true, Dev: "lo"}}
		s.Window = &probes.Window{Skipped: map[string]string{}}
		s.Drops = &drops.Sample{Window: time.Second}
		return s
	}
	fwdPolicy := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "DROP", HasCounter: true, Packets: 40}
	established := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Target: "ACCEPT",
		Spec: "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}
	filtered := func(t *testing.T) *probes.Snapshot {
		// A DROP policy after an accept of established flows: whether it
		// spares the replies only the window's drops tell; none here.
		s := withErrors(loadFixture(t, "seed-stage2"))
		s.Rules.Rules = append(s.Rules.Rules, established)
		s.Rules.Chains = []rules.Chain{fwdPolicy}
		s.Window = &probes.Window{Skipped: map[string]string{}}
		s.Drops = &drops.Sample{Window: time.Second}
		return s
	}
	tests := []struct {
		name   string
		id     string
		vip    string
		snap   func(*testing.T) *probes.Snapshot // the check concludes on it
		unread func(*probes.Snapshot)            // a layer left unread
		want   checks.Status
		wantIn string // in the reason of a skip; else in the title, reason, fix or evidence
	}{
		// IPVS: a read that failed lists no service, or those before it.
		{name: "reals_available, IPVS read failed", id: "ipvs.reals_available", snap: fixture("seed-stage2"), unread: ipvsUnread, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "ip_forward, IPVS read failed", id: "sysctl.ip_forward", snap: fixture("seed-stage3"), unread: ipvsUnread, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "vs_conntrack, IPVS read failed", id: "sysctl.vs_conntrack", snap: fixture("seed-stage2"), unread: ipvsUnread, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "return_path, IPVS read failed", id: "nat.return_path", snap: fixture("seed-stage1"), unread: ipvsUnread, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "expire_nodest_conn, IPVS read failed", id: "ipvs.expire_nodest_conn", snap: fixture("seed-stage2"), unread: ipvsUnread, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "stale_flows, IPVS read failed", id: "conntrack.stale_flows", snap: fixture("seed-stage2"), unread: ipvsUnread, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "drift, IPVS unread: no service missing", id: "ipvs.drift",
			snap: func(*testing.T) *probes.Snapshot {
				s := twoArm(matching, nil)
				s.Expected = conf()
				return s
			}, unread: ipvsUnreadNone, want: checks.Skip, wantIn: "IPVS could not be read"},
		{name: "forward_method, IPVS unread", id: "ipvs.forward_method", snap: func(*testing.T) *probes.Snapshot { return twoArm(dr, nil) },
			unread: ipvsUnreadNone, want: checks.Skip, wantIn: "IPVS could not be read"},
		// Sysctls: the probe failed, or a key read as empty ("" is neither 0 nor 1).
		{name: "ip_forward, sysctls unread", id: "sysctl.ip_forward", snap: fixture("seed-stage3"),
			unread: func(s *probes.Snapshot) {
				s.Sysctls = nil
				s.Errors[probes.ProbeSysctl] = "read sysctls in netns lb: open /proc/sys/net/ipv4/conf: permission denied"
			}, want: checks.Skip, wantIn: "permission denied"},
		{name: "ip_forward read as empty", id: "sysctl.ip_forward", snap: fixture("seed-stage3"),
			unread: func(s *probes.Snapshot) { setIPForward(s, "") }, want: checks.Skip, wantIn: "net.ipv4.ip_forward could not be read: read as empty"},
		{name: "vs_conntrack read as empty", id: "sysctl.vs_conntrack", snap: fixture("seed-stage2"),
			unread: sysctlEmpty("net.ipv4.vs.conntrack"), want: checks.Skip, wantIn: "net.ipv4.vs.conntrack could not be read"},
		{name: "expire_nodest_conn read as empty", id: "ipvs.expire_nodest_conn", snap: fixture("seed-stage2"),
			unread: sysctlEmpty("net.ipv4.vs.expire_nodest_conn"), want: checks.Skip, wantIn: "net.ipv4.vs.expire_nodest_conn could not be read"},
		{name: "conn_reuse before 5.9, vs.conntrack unread", id: "ipvs.conn_reuse",
			snap: func(t *testing.T) *probes.Snapshot {
				s := withErrors(churnFixture(t, map[string]string{"net.ipv4.vs.conn_reuse_mode": "1", "net.ipv4.vs.expire_nodest_conn": "1", "net.ipv4.vs.conntrack": "1"}))
				s.Kernel = "5.4.0-150-generic"
				return s
			}, unread: func(s *probes.Snapshot) { delete(s.Sysctls, "net.ipv4.vs.conntrack") }, want: checks.Skip, wantIn: "net.ipv4.vs.conntrack could not be read"},
		// The routes: which interface the replies arrive on.
		{name: "ip_forward, routes unread, an interface off", id: "sysctl.ip_forward",
			snap: func(t *testing.T) *probes.Snapshot {
				s := withErrors(twoArmLocal(t))
				setSysctl(s, "net.ipv4.conf.eth0.forwarding", "0")
				return s
			}, unread: netUnread, want: checks.Skip, wantIn: "the routes to the reals could not be read"},
		{name: "ip_forward, routes unread, every interface on", id: "sysctl.ip_forward", snap: func(t *testing.T) *probes.Snapshot { return withErrors(twoArmLocal(t)) },
			unread: netUnread, want: checks.Pass, wantIn: "every interface forwards (eth0, eth1)"},
		{name: "ip_forward, the replies' interface's switch unread", id: "sysctl.ip_forward", snap: func(t *testing.T) *probes.Snapshot { return withErrors(twoArmLocal(t)) },
			unread: func(s *probes.Snapshot) { delete(s.Sysctls, "net.ipv4.conf.eth1.forwarding") }, want: checks.Skip, wantIn: "net.ipv4.conf.eth1.forwarding could not be read"},
		{name: "send_redirects, SNMP unread", id: "net.send_redirects", snap: fixture("seed-stage2"),
			unread: func(s *probes.Snapshot) {
				s.SNMP = nil
				s.Errors[probes.ProbeSNMP] = "open /proc/net/snmp: permission denied"
			}, want: checks.Warn, wantIn: "IcmpOutRedirects not read: open /proc/net/snmp: permission denied"},
		{name: "stale_flows, routes unread: SNAT due or not", id: "conntrack.stale_flows", snap: notSNATed, unread: netUnread, want: checks.Skip, wantIn: "routes, which could not be read"},
		// The rules.
		{name: "stale_flows, the SNAT rule's backend unread", id: "conntrack.stale_flows", snap: notSNATed,
			unread: rulesUnread(rules.IptablesNft), want: checks.Skip, wantIn: "iptables-nft could not be read"},
		{name: "forward_method, DR alone, a backend unread", id: "ipvs.forward_method", snap: func(*testing.T) *probes.Snapshot { return twoArm(dr, nil) },
			unread: rulesUnread(rules.IptablesLegacy), want: checks.Skip, wantIn: "iptables-legacy could not be read"},
		{name: "kernel.ipvs, --vip no service, rules unread", id: "kernel.ipvs", vip: "10.1.0.9:80", snap: fixture("seed-stage2"),
			unread: rulesUnread(rules.IptablesLegacy, rules.IptablesNft, rules.Nft), want: checks.Skip, wantIn: "iptables-legacy could not be read"},
		{name: "kernel.ipvs, --vip no service, conntrack unread", id: "kernel.ipvs", vip: "10.1.0.9:80", snap: fixture("seed-stage2"),
			unread: conntrackUnread, want: checks.Skip, wantIn: "conntrack could not be read"},
		// Conntrack: unread, not dumped, dumped in part.
		{name: "flow_states, dump stopped", id: "conntrack.flow_states", snap: assured, unread: conntrackPartial, want: checks.Skip, wantIn: "conntrack was not dumped whole"},
		{name: "flow_states, flows not dumped", id: "conntrack.flow_states", snap: assured,
			unread: func(s *probes.Snapshot) { s.Conntrack.Flows, s.Conntrack.Selector = nil, "none (statistics only)" }, want: checks.Skip, wantIn: "flows were not read"},
		{name: "flow_states, conntrack unread", id: "conntrack.flow_states", snap: assured, unread: conntrackUnread, want: checks.Skip, wantIn: "conntrack could not be read"},
		{name: "stale_flows, dump stopped", id: "conntrack.stale_flows", snap: fixture("seed-stage2"), unread: conntrackPartial, want: checks.Skip, wantIn: "conntrack was not dumped whole"},
		{name: "hairpin, IPVS connections unread", id: "nat.hairpin", snap: fixture("seed-stage2"), unread: connTableUnread, want: checks.Skip, wantIn: "the IPVS connection table was not read"},
		{name: "hairpin, IPVS connections listed in part, conntrack unread", id: "nat.hairpin", snap: fixture("seed-stage3"),
			unread: func(s *probes.Snapshot) { s.IPVS.ConnsOmitted = 700; conntrackUnread(s) }, want: checks.Skip, wantIn: "700 IPVS connections past the 0 listed"},
		// The window: what rules another cause out must have been read.
		{name: "return_path window, ip_forward unread", id: "nat.return_path", vip: "10.1.0.6:8085",
			snap: func(*testing.T) *probes.Snapshot {
				return stuck(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
			},
			unread: func(s *probes.Snapshot) { delete(s.Sysctls, "net.ipv4.ip_forward") }, want: checks.Pass, wantIn: "net.ipv4.ip_forward could not be read"},
		{name: "return_path window, conntrack unread", id: "nat.return_path", vip: "10.1.0.6:8085",
			snap: func(*testing.T) *probes.Snapshot {
				return stuck(twoArm(one, []health.Result{answers}), "10.2.0.50:8085")
			},
			unread: conntrackUnread, want: checks.Pass, wantIn: "conntrack could not be read: conntrack dump in netns lb: operation not permitted: whether replies reach the LB is not known"},
		// Drops: none counted is no drop seen only when they were traced.
		{name: "rp_filter, drops not traced", id: "sysctl.rp_filter", snap: strictClient, unread: dropsUntraced, want: checks.Pass,
			wantIn: "none refused where it would arrive; drops were not traced: tracing drops needs CAP_BPF"},
		{name: "rp_filter, an interface's filter unread", id: "sysctl.rp_filter", snap: func(t *testing.T) *probes.Snapshot { return withErrors(twoArmLocal(t)) },
			unread: func(s *probes.Snapshot) { delete(s.Sysctls, "net.ipv4.conf.eth1.rp_filter") }, want: checks.Skip, wantIn: "rp_filter of eth1 could not be read"},
		{name: "rp_filter, client tables unread", id: "sysctl.rp_filter", snap: strictClient,
			unread: func(s *probes.Snapshot) { conntrackUnread(s); dropsUntraced(s) }, want: checks.Skip, wantIn: "conntrack could not be read"},
		{name: "firewall.filter, a policy only drops tell, drops not traced", id: "firewall.filter", snap: filtered, unread: dropsUntraced, want: checks.Skip,
			wantIn: "iptables-nft filter FORWARD policy DROP may drop the selected services' flows, which only the window's drops tell, and drops were not traced"},
		{name: "drops.vip_flows, drops not traced", id: "drops.vip_flows", snap: filtered, unread: dropsUntraced, want: checks.Skip, wantIn: "CAP_BPF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel := probes.Selector{}
			if tt.vip != "" {
				sel = probes.Selector{VIP: netip.MustParseAddrPort(tt.vip), Proto: "tcp"}
			}
			// The check concludes with every layer read.
			if f := statusOf(checks.Run(tt.snap(t), sel), tt.id); f.Status == checks.Skip {
				t.Fatalf("Run(%s, every layer read) %s = skip %q, want a conclusion to take a layer from", tt.name, tt.id, f.Reason)
			}
			s := tt.snap(t)
			tt.unread(s)
			f := statusOf(checks.Run(s, sel), tt.id)
			in := f.Reason
			if tt.want != checks.Skip {
				in = findingText(f)
			}
			if f.Status != tt.want || !strings.Contains(in, tt.wantIn) {
				t.Errorf("Run(%s) %s = %s %q (%s), want %s naming %q", tt.name, tt.id, f.Status, f.Title, f.Reason, tt.want, tt.wantIn)
			}
		})
	}
}

// A drop is "fixed during the window" only when the check that names its
// cause at the window's first read passes at its last on a layer read:
// forwarding switches read as empty at the last read fix nothing.
func TestDropsNotHealedByALayerNotRead(t *testing.T) {
	fwdDrop := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 2, Location: 0xffff,
		Src: ap("10.2.0.50:8085"), Dst: ap("10.1.0.3:40000")}, Count: 2},
		ReasonName: "IP_INADDRERRORS", Symbol: "ip_error+0x92"}
	tests := []struct {
		name   string
		last   func(*probes.Snapshot)
		want   checks.Status
		wantIn string
	}{
		{"forwarding on at the last read", func(*probes.Snapshot) {}, checks.Warn, "sysctl.ip_forward (fixed during the window)"},
		{"forwarding read as empty at the last read", func(s *probes.Snapshot) { setIPForward(s, "") }, checks.Fail, "IP_INADDRERRORS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := withErrors(twoArmLocal(t))
			setSysctl(first, "net.ipv4.ip_forward", "0")
			setSysctl(first, "net.ipv4.conf.eth1.forwarding", "0")
			s := withErrors(twoArmLocal(t))
			tt.last(s)
			s.Window = &probes.Window{First: first, Skipped: map[string]string{}}
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{fwdDrop}}
			f := statusOf(checks.Run(s, probes.Selector{}), "drops.vip_flows")
			if f.Status != tt.want || !strings.Contains(f.Title+f.Reason, tt.wantIn) {
				t.Errorf("Run(%s) drops.vip_flows = %s %q (%s), want %s with %q", tt.name, f.Status, f.Title, f.Reason, tt.want, tt.wantIn)
			}
		})
	}
}
