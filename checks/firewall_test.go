package checks_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// firewall.filter on the seed's one-arm LB (tcp 10.1.0.6:8085 → real
// 10.1.0.50:8085, masquerade) with filter rules and policies added: static
// where a rule clearly matches, else only when the window's drops are joined
// to it; the fix deletes the rule or lets the flows past the policy.
func TestFirewallFilter(t *testing.T) {
	inputDrop := rules.Rule{Backend: rules.IptablesLegacy, Table: "filter", Chain: "INPUT", Spec: "-A INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP", Target: "DROP", HasCounter: true, Packets: 13}
	otherPort := rules.Rule{Backend: rules.IptablesLegacy, Table: "filter", Chain: "INPUT", Spec: "-A INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 22 -j DROP", Target: "DROP", HasCounter: true}
	fwdPolicy := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "DROP", HasCounter: true, Packets: 40}
	established := rules.Rule{Backend: rules.IptablesNft, Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", Target: "ACCEPT", HasCounter: true}
	outClient := rules.Rule{Backend: rules.Nft, Table: "inet f", Chain: "out", Hook: "output", Spec: "ip saddr 10.1.0.3 ip daddr 10.1.0.50 tcp dport 8085 counter packets 6 bytes 360 reject", Target: "REJECT", HasCounter: true, Packets: 6, Handle: 4}
	outChain := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet f", Chain: "out", Hook: "output", Priority: "filter", Policy: "ACCEPT"}
	// The usual host firewall: a DROP policy, with established flows,
	// loopback and ssh let in. A client's SYN opens its flow: dropped.
	hostInput := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "input", Hook: "input", Priority: "filter", Policy: "DROP"}
	var hostFirewall []rules.Rule
	for i, spec := range []string{"ct state established,related accept", `iif "lo" accept`, "tcp dport 22 accept", "icmp type echo-request accept", "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"} {
		hostFirewall = append(hostFirewall, rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "input", Hook: "input", Spec: spec, Target: "ACCEPT", Handle: uint64(2 + i)})
	}
	legacyHostInput := rules.Chain{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Hook: "input", Policy: "DROP", HasCounter: true, Packets: 21}
	var legacyHostFirewall []rules.Rule
	for _, spec := range []string{"-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-A INPUT -i lo -j ACCEPT", "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"} {
		legacyHostFirewall = append(legacyHostFirewall, rules.Rule{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Spec: spec, Target: "ACCEPT", HasCounter: true})
	}
	notFromOther := rules.Rule{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD ! -s 10.9.0.0/16 -j DROP", Target: "DROP", HasCounter: true}
	window := func(points ...probes.DropPoint) *probes.Window {
		return &probes.Window{DropPoints: points, Paths: nil}
	}
	for _, tt := range []struct {
		name     string
		rules    []rules.Rule
		chains   []rules.Chain
		window   *probes.Window
		unread   bool
		want     checks.Status
		wantFact string
		wantFix  string
	}{
		{"no filter rule", nil, nil, nil, false, checks.Pass, "no filter rule or DROP policy", ""},
		{"a rule on another port", []rules.Rule{otherPort}, nil, nil, false, checks.Pass, "no filter rule or DROP policy", ""},
		{"INPUT DROP on the VIP, static", []rules.Rule{inputDrop}, []rules.Chain{{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Hook: "input", Policy: "ACCEPT", HasCounter: true}}, nil, false, checks.Fail,
			`iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP" (hook input) drops requests to TCP 10.1.0.6:8085: 13 packets counted; it matches them by address, protocol and port`,
			"ip netns exec lb iptables-legacy -t filter -D INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP"},
		{"FORWARD policy DROP, nothing accepts", nil, []rules.Chain{fwdPolicy}, nil, false, checks.Fail,
			"iptables-nft filter FORWARD policy DROP (hook forward) drops replies of real 10.1.0.50:8085: 40 packets counted by the policy",
			"ip netns exec lb iptables-nft -t filter -I FORWARD -s 10.1.0.50 -p tcp --sport 8085 -j ACCEPT"},
		// Whether the accept spares the replies is the window's drops' to
		// tell: with none traced, nothing is concluded.
		{"FORWARD policy DROP after an ESTABLISHED accept, no window", []rules.Rule{established}, []rules.Chain{fwdPolicy}, nil, false, checks.Skip, "clearly matches", ""},
		{"FORWARD policy DROP after an ESTABLISHED accept, drops joined to it", []rules.Rule{established}, []rules.Chain{fwdPolicy},
			window(probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "forward", Count: 9, Policy: &fwdPolicy, Services: []string{"TCP 10.1.0.6:8085"}}), false, checks.Fail,
			"9 × NETFILTER_DROP of the selected flows in forward during the window, joined to it",
			"ip netns exec lb iptables-nft -t filter -I FORWARD -s 10.1.0.50 -p tcp --sport 8085 -j ACCEPT"},
		{"nft output reject of one client, drops joined to it", []rules.Rule{outClient}, []rules.Chain{outChain},
			window(probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "output", Count: 6, Rule: &outClient}), false, checks.Fail,
			`nft inet f out rule "ip saddr 10.1.0.3 ip daddr 10.1.0.50 tcp dport 8085 counter packets 6 bytes 360 reject" (hook output) drops requests IPVS sends to real 10.1.0.50:8085`,
			"ip netns exec lb nft delete rule inet f out handle 4"},
		{"drops seen before the tracer knew the hook: the joined rule's hook", []rules.Rule{outClient}, []rules.Chain{outChain},
			window(probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Count: 2, Rule: &outClient}), false, checks.Fail,
			"2 × NETFILTER_DROP of the selected flows in output during the window, joined to it", "ip netns exec lb nft delete rule inet f out handle 4"},
		{"nft output reject of one client, no window", []rules.Rule{outClient}, []rules.Chain{outChain}, nil, false, checks.Pass, "", ""},
		{"a host firewall: nft input policy drop after established, loopback and ssh accepts, no window", hostFirewall, []rules.Chain{hostInput}, nil, false, checks.Fail,
			"nft inet fw input policy DROP (hook input) drops requests to TCP 10.1.0.6:8085: nft keeps no policy counter; no rule before it takes them",
			"ip netns exec lb nft insert rule inet fw input ip daddr 10.1.0.6 tcp dport 8085 accept"},
		{"a host firewall: iptables INPUT policy DROP after established, loopback and ssh accepts, no window", legacyHostFirewall, []rules.Chain{legacyHostInput}, nil, false, checks.Fail,
			"iptables-legacy filter INPUT policy DROP (hook input) drops requests to TCP 10.1.0.6:8085: 21 packets counted by the policy; no rule before it takes them",
			"ip netns exec lb iptables-legacy -t filter -I INPUT -d 10.1.0.6 -p tcp --dport 8085 -j ACCEPT"},
		{"FORWARD drops every source outside another network, static", []rules.Rule{notFromOther}, []rules.Chain{{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "ACCEPT", HasCounter: true}}, nil, false, checks.Fail,
			`iptables-legacy filter FORWARD rule "-A FORWARD ! -s 10.9.0.0/16 -j DROP" (hook forward) drops replies of real 10.1.0.50:8085`,
			"ip netns exec lb iptables-legacy -t filter -D FORWARD '!' -s 10.9.0.0/16 -j DROP"},
		{"nothing found, a backend unread", nil, nil, nil, true, checks.Skip, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage2")
			s.Rules.Rules = append(s.Rules.Rules, tt.rules...)
			s.Rules.Chains = tt.chains
			s.Window = tt.window
			if tt.unread {
				s.Rules.Backends[0] = rules.Backend{Name: rules.IptablesLegacy, Reason: "no iptables-legacy save tool on PATH"}
			}
			f := statusOf(checks.Run(s, probes.Selector{}), "firewall.filter")
			var facts []string
			for _, e := range f.Evidence {
				facts = append(facts, e.Fact)
			}
			if f.Status != tt.want || !strings.Contains(strings.Join(facts, "\n"), tt.wantFact) || !strings.Contains(strings.Join(f.Fix, "\n"), tt.wantFix) {
				t.Errorf("firewall.filter = %s %q\nevidence %q\nfix %q\nwant %s with %q and fix %q", f.Status, f.Reason, facts, f.Fix, tt.want, tt.wantFact, tt.wantFix)
			}
		})
	}
}

// drops.vip_flows shows the netfilter drops with their hook and the rule
// they were joined to, with the rule's fix (never "see inspect"); drops
// whose root cause firewall.filter names warn here and fail there.
func TestDropsJoinedToAFilterRule(t *testing.T) {
	rule := rules.Rule{Backend: rules.IptablesLegacy, Table: "filter", Chain: "INPUT", Spec: "-A INPUT -d 10.1.0.6/32 -j DROP", Target: "DROP", HasCounter: true, Packets: 6}
	for _, tt := range []struct {
		name     string
		joined   bool
		want     checks.Status
		wantFact string
		wantFix  string
	}{
		{"joined to the rule", true, checks.Warn, `  joined to iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -j DROP", +6 packets in the window`,
			"ip netns exec lb iptables-legacy -t filter -D INPUT -d 10.1.0.6/32 -j DROP"},
		{"no rule explains them", false, checks.Fail, "6 × NETFILTER_DROP at nf_hook_slow+0x7a in input in 6 flows",
			"ip netns exec lb iptables-legacy -t filter -nvL INPUT --line-numbers"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage3-drops")
			ds := inputSYNDrops(6)
			s.Drops.Drops = ds
			s.Rules.Backends[0].Rules = 1
			p := probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "input", Count: 6}
			if tt.joined {
				s.Rules.Rules = append(s.Rules.Rules, rule)
				p.Rule, p.Delta, p.Source = &rule, 6, "rule counters over the window, netns lb"
				p.Cause = `iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -j DROP", +6 packets in the window`
			}
			s.Window = &probes.Window{DropPoints: []probes.DropPoint{p}}
			f := statusOf(checks.Run(s, probes.Selector{}), "drops.vip_flows")
			var facts []string
			for _, e := range f.Evidence {
				facts = append(facts, e.Fact)
			}
			if f.Status != tt.want || !strings.Contains(strings.Join(facts, "\n"), tt.wantFact) || !strings.Contains(strings.Join(f.Fix, "\n"), tt.wantFix) || strings.Contains(strings.Join(f.Fix, "\n"), "inspect") {
				t.Errorf("drops.vip_flows = %s %q\nevidence %q\nfix %q\nwant %s with %q and fix %q", f.Status, f.Title, facts, f.Fix, tt.want, tt.wantFact, tt.wantFix)
			}
		})
	}
}

// inputSYNDrops are n SYNs of n clients to the seed's VIP dropped in input.
func inputSYNDrops(n int) []drops.Counted {
	var ds []drops.Counted
	for i := 0; i < n; i++ {
		ds = append(ds, drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Location: 0x1234,
			Src: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.3"), uint16(40000+i)), Dst: netip.MustParseAddrPort("10.1.0.6:8085")}, Count: 1},
			ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x7a", Hook: "input"})
	}
	return ds
}

// A filter rule deleted, or a DROP policy set to ACCEPT, during the window:
// its drops are joined to it as the first read had it (Gone, Changed).
// firewall.filter passes on the last read, naming the fix, and
// drops.vip_flows warns that they were dropped while the fault was there
// (explainDrops, on the window's first read), with no fix to type. One
// still there at the window's end fails firewall.filter as before.
func TestFilterFixedDuringWindow(t *testing.T) {
	rule := rules.Rule{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Spec: "-A INPUT -d 10.1.0.6/32 -j DROP", Target: "DROP", HasCounter: true, Packets: 6}
	policy := rules.Chain{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Hook: "input", Policy: "DROP", HasCounter: true, Packets: 6}
	accept := policy
	accept.Policy, accept.Packets = "ACCEPT", 2
	for _, tt := range []struct {
		name                 string
		first, last          rules.Snapshot
		point                probes.DropPoint
		wantFilter, wantDrop checks.Status
		wantTitle, wantFact  string
		wantFix              string // in drops.vip_flows' fix; "" none
	}{
		{
			name: "rule deleted during the window", first: rules.Snapshot{Rules: []rules.Rule{rule}},
			point:      probes.DropPoint{Rule: &rule, Gone: true, Uncounted: true},
			wantFilter: checks.Pass, wantDrop: checks.Warn,
			wantTitle: `no packet filter drops the selected flows: iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -j DROP" deleted`,
			wantFact:  `dropped while firewall.filter (a packet filter drops the selected services' flows: iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -j DROP"); fixed during the window (now no packet filter drops the selected flows: iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -j DROP" deleted)`,
		},
		{
			name: "policy DROP set to ACCEPT during the window", first: rules.Snapshot{Chains: []rules.Chain{policy}}, last: rules.Snapshot{Chains: []rules.Chain{accept}},
			point:      probes.DropPoint{Policy: &policy, Changed: true, Uncounted: true},
			wantFilter: checks.Pass, wantDrop: checks.Warn,
			wantTitle: "no packet filter drops the selected flows: iptables-legacy filter INPUT policy now ACCEPT",
			wantFact:  "fixed during the window (now no packet filter drops the selected flows: iptables-legacy filter INPUT policy now ACCEPT)",
		},
		{
			name: "rule there at both ends", first: rules.Snapshot{Rules: []rules.Rule{rule}}, last: rules.Snapshot{Rules: []rules.Rule{rule}},
			point:      probes.DropPoint{Rule: &rule, Delta: 6},
			wantFilter: checks.Fail, wantDrop: checks.Warn,
			wantTitle: `a packet filter drops the selected services' flows: iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -j DROP"`,
			wantFact:  "6 × NETFILTER_DROP at nf_hook_slow+0x7a in input in 6 flows",
			wantFix:   "ip netns exec lb iptables-legacy -t filter -D INPUT -d 10.1.0.6/32 -j DROP",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage3-drops")
			ds := inputSYNDrops(6)
			first := *s
			first.Drops = nil
			first.Rules.Rules = append(slices.Clone(s.Rules.Rules), tt.first.Rules...)
			first.Rules.Chains = tt.first.Chains
			s.Rules.Rules = append(s.Rules.Rules, tt.last.Rules...)
			s.Rules.Chains = tt.last.Chains
			s.Drops.Drops = ds
			p := tt.point
			p.Reason, p.Function, p.Hook, p.Count = "NETFILTER_DROP", "nf_hook_slow", "input", 6
			s.Window = &probes.Window{DropPoints: []probes.DropPoint{p}, First: &first}
			fs := checks.Run(s, probes.Selector{})
			fw, d := statusOf(fs, "firewall.filter"), statusOf(fs, "drops.vip_flows")
			var facts []string
			for _, e := range d.Evidence {
				facts = append(facts, e.Fact)
			}
			fix := strings.Join(d.Fix, "\n")
			if fw.Status != tt.wantFilter || fw.Title != tt.wantTitle {
				t.Errorf("firewall.filter = %s %q, want %s %q", fw.Status, fw.Title, tt.wantFilter, tt.wantTitle)
			}
			if d.Status != tt.wantDrop || !strings.Contains(strings.Join(facts, "\n"), tt.wantFact) || (tt.wantFix == "") != (fix == "") || !strings.Contains(fix, tt.wantFix) {
				t.Errorf("drops.vip_flows = %s %q\nevidence %q\nfix %q\nwant %s with %q and fix %q", d.Status, d.Reason, facts, d.Fix, tt.wantDrop, tt.wantFact, tt.wantFix)
			}
		})
	}
}

// A VIP that IPVS does not serve (nft DNAT, its backend learned from
// conntrack) is judged by the window's netfilter drops joined to a rule or
// policy: a FORWARD policy DROP fails it, the fix letting the requests
// DNATed to the backend and the backend's replies past it (one side when
// the drops' flows say which); no drop
// joined, it is skipped as before.
func TestFirewallFilterDNATVIP(t *testing.T) {
	policy := rules.Chain{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "DROP", HasCounter: true, Packets: 4}
	sel := probes.Selector{VIP: netip.MustParseAddrPort("10.99.0.6:8085")}
	for _, tt := range []struct {
		name    string
		point   *probes.DropPoint
		want    checks.Status
		wantFix string
	}{
		{"SYNs dropped by the policy, no flow attributed: either side", &probes.DropPoint{Count: 4}, checks.Fail,
			"ip netns exec vflb iptables-legacy -t filter -I FORWARD -d 10.99.0.50 -p tcp --dport 8085 -j ACCEPT\nip netns exec vflb iptables-legacy -t filter -I FORWARD -s 10.99.0.50 -p tcp --sport 8085 -j ACCEPT"},
		{"replies dropped by the policy", &probes.DropPoint{Count: 4, Leg: flowpath.Reply, Services: []string{"TCP 10.99.0.6:8085"}, Reals: []netip.AddrPort{netip.MustParseAddrPort("10.99.0.50:8085")}}, checks.Fail,
			"ip netns exec vflb iptables-legacy -t filter -I FORWARD -s 10.99.0.50 -p tcp --sport 8085 -j ACCEPT"},
		{"no drop joined", nil, checks.Skip, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "nft-dnat-forward-off")
			s.IPVS.Available = false
			s.Rules.Chains = []rules.Chain{policy}
			s.Window = &probes.Window{}
			if tt.point != nil {
				p := *tt.point
				p.Reason, p.Function, p.Hook, p.Policy = "NETFILTER_DROP", "nf_hook_slow", "forward", &policy
				s.Window.DropPoints = []probes.DropPoint{p}
			}
			f := statusOf(checks.Run(s, sel), "firewall.filter")
			if fix := strings.Join(f.Fix, "\n"); f.Status != tt.want || fix != tt.wantFix {
				t.Errorf("firewall.filter = %s %q, fix %q; want %s, fix %q", f.Status, f.Reason, f.Fix, tt.want, tt.wantFix)
			}
		})
	}
}
