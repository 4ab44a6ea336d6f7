package window

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

var (
	vip  = netip.MustParseAddrPort("10.1.0.6:8085")
	real = netip.MustParseAddrPort("10.1.0.50:8085")
)

// syn is a drop of one client's SYN to the VIP, attributed to its flow.
func syn(reason, fn, hook string, client int, n uint64) drops.Counted {
	c := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.3"), uint16(40000+client))
	return drops.Counted{
		Aggregate:  drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: c, Dst: vip}, Count: n},
		ReasonName: reason, Symbol: fn + "+0x10", Hook: hook,
		Flow: &drops.Flow{Client: c, VIP: vip, Real: real, Direction: "request"},
	}
}

// gone is a real no longer in its service.
var gone = netip.MustParseAddrPort("10.1.0.99:8085")

// toReal is c with its flow going to real r.
func toReal(c drops.Counted, r netip.AddrPort) drops.Counted {
	f := *c.Flow
	f.Real = r
	c.Flow = &f
	return c
}

var (
	inputDrop   = rules.Rule{Backend: rules.IptablesLegacy, Table: "filter", Chain: "INPUT", Spec: "-A INPUT -d 10.1.0.6/32 -p tcp -j DROP", Target: "DROP", HasCounter: true, Packets: 13}
	forwardDrop = rules.Rule{Backend: rules.Nft, Table: "ip f", Chain: "fw", Hook: "forward", Spec: "tcp dport 8085 counter packets 5 bytes 300 drop", Target: "DROP", HasCounter: true, Packets: 5, Handle: 4}
	outputDrop  = rules.Rule{Backend: rules.Nft, Table: "inet f", Chain: "out", Hook: "output", Spec: "tcp sport 8085 reject", Target: "REJECT", Handle: 7}
	fwdPolicy   = rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "DROP", HasCounter: true, Packets: 20}
)

func TestJoin(t *testing.T) {
	for _, tt := range []struct {
		name      string
		drops     []drops.Counted
		rules     []rules.Rule
		chains    []rules.Chain
		deltas    probes.Deltas
		neigh     []netstate.Neighbour
		services  []ipvs.Service
		want      probes.DropPoint
		wantCause string
	}{
		{
			name:  "six SYNs in input: one point, joined to the rule that moved by as much",
			drops: []drops.Counted{syn("NETFILTER_DROP", "nf_hook_slow", "input", 1, 3), syn("NETFILTER_DROP", "nf_hook_slow", "input", 2, 2), syn("NETFILTER_DROP", "nf_hook_slow", "input", 3, 2), syn("NETFILTER_DROP", "nf_hook_slow", "input", 4, 2), syn("NETFILTER_DROP", "nf_hook_slow", "input", 5, 2), syn("NETFILTER_DROP", "nf_hook_slow", "input", 6, 2)},
			rules: []rules.Rule{forwardDrop, inputDrop},
			deltas: probes.Deltas{Rules: []probes.RuleDelta{
				{Rule: forwardDrop, Packets: 13}, // same count, other hook: not it
				{Rule: inputDrop, Packets: 13},
			}},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "input", Count: 13, Flows: 6, Attributed: 13, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}, Delta: 13},
			wantCause: `iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -p tcp -j DROP", +13 packets in the window`,
		},
		{
			name:      "forward policy that counted more than the selected flows",
			drops:     []drops.Counted{syn("NETFILTER_DROP", "nf_hook_slow", "forward", 1, 13)},
			rules:     []rules.Rule{forwardDrop},
			chains:    []rules.Chain{fwdPolicy},
			deltas:    probes.Deltas{Chains: []probes.ChainDelta{{Chain: fwdPolicy, Packets: 20}}, Rules: []probes.RuleDelta{{Rule: forwardDrop, Packets: 2}}},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "forward", Count: 13, Flows: 1, Attributed: 13, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}, Delta: 20},
			wantCause: "iptables-nft filter FORWARD policy DROP, +20 packets in the window",
		},
		{
			name:      "an nft rule without a counter, the only one in its hook",
			drops:     []drops.Counted{syn("NETFILTER_DROP", "nft_do_chain", "output", 1, 4)},
			rules:     []rules.Rule{inputDrop, outputDrop},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nft_do_chain", Hook: "output", Count: 4, Flows: 1, Attributed: 4, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}, Uncounted: true},
			wantCause: `nft inet f out rule "tcp sport 8085 reject" (handle 7) (no counter: the only DROP or REJECT in this hook)`,
		},
		{
			name:      "nothing drops in that hook",
			drops:     []drops.Counted{syn("NETFILTER_DROP", "nf_hook_slow", "prerouting", 1, 2)},
			rules:     []rules.Rule{inputDrop},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "prerouting", Count: 2, Flows: 1, Attributed: 2, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}},
			wantCause: "no DROP or REJECT rule nor DROP policy in prerouting was read",
		},
		{
			name:      "a neighbour that never answered",
			drops:     []drops.Counted{syn("NEIGH_FAILED", "__neigh_event_send", "", 1, 3)},
			neigh:     []netstate.Neighbour{{IP: netip.MustParseAddr("10.1.0.51"), Dev: "eth0", State: "FAILED"}, {IP: real.Addr(), Dev: "eth0", State: "FAILED"}},
			want:      probes.DropPoint{Reason: "NEIGH_FAILED", Function: "__neigh_event_send", Count: 3, Flows: 1, Attributed: 3, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}},
			wantCause: "neighbour 10.1.0.50 on eth0 is FAILED: it does not answer ARP/NDP",
		},
		{
			name:      "IPVS's own drop of a connection to a removed real: no rule moved",
			drops:     []drops.Counted{toReal(syn("NETFILTER_DROP", "nf_hook_slow", "input", 1, 2), gone)},
			rules:     []rules.Rule{inputDrop},
			services:  []ipvs.Service{{Proto: "tcp", Addr: vip, Reals: []ipvs.Real{{Addr: real}}}},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "input", Count: 2, Flows: 1, Attributed: 2, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}},
			wantCause: "IPVS itself (ip_vs_in): 2 of these drops are of connections to 10.1.0.99:8085, no longer a real of TCP 10.1.0.6:8085; IPVS drops a packet of a connection whose real was removed (each one while net.ipv4.vs.expire_nodest_conn=0; with 1, the first of a connection whose conntrack entry is old, e.g. a retransmission or a reused client port)",
		},
		{
			name:      "a rule that counted the drops keeps them, the real gone or not",
			drops:     []drops.Counted{toReal(syn("NETFILTER_DROP", "nf_hook_slow", "input", 1, 13), gone)},
			rules:     []rules.Rule{inputDrop},
			deltas:    probes.Deltas{Rules: []probes.RuleDelta{{Rule: inputDrop, Packets: 13}}},
			services:  []ipvs.Service{{Proto: "tcp", Addr: vip, Reals: []ipvs.Real{{Addr: real}}}},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "input", Count: 13, Flows: 1, Attributed: 13, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}, Delta: 13},
			wantCause: `iptables-legacy filter INPUT rule "-A INPUT -d 10.1.0.6/32 -p tcp -j DROP", +13 packets in the window`,
		},
		{
			name:      "a real still in its service is not IPVS's drop",
			drops:     []drops.Counted{syn("NETFILTER_DROP", "nf_hook_slow", "input", 1, 2)},
			services:  []ipvs.Service{{Proto: "tcp", Addr: vip, Reals: []ipvs.Real{{Addr: real}}}},
			want:      probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "input", Count: 2, Flows: 1, Attributed: 2, Leg: flowpath.Request, Services: []string{"TCP 10.1.0.6:8085"}},
			wantCause: "no DROP or REJECT rule nor DROP policy in input was read",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			after := &probes.Snapshot{Rules: rules.Snapshot{Rules: tt.rules, Chains: tt.chains}, Net: netstate.Snapshot{Neighbours: tt.neigh}, IPVS: ipvs.Snapshot{Services: tt.services}, Drops: &drops.Sample{Drops: tt.drops}}
			got := Join(&probes.Snapshot{}, after, &probes.Window{Deltas: tt.deltas})
			if len(got) != 1 {
				t.Fatalf("Join() = %d points %+v, want 1", len(got), got)
			}
			g := got[0]
			if g.Cause != tt.wantCause {
				t.Errorf("Join() cause = %q, want %q", g.Cause, tt.wantCause)
			}
			g.Cause, g.Source, g.Rule, g.Policy, g.Examples = "", "", nil, nil, nil
			if !equalPoint(g, tt.want) {
				t.Errorf("Join() = %+v, want %+v", g, tt.want)
			}
		})
	}
}

func equalPoint(a, b probes.DropPoint) bool {
	return a.Reason == b.Reason && a.Function == b.Function && a.Hook == b.Hook && a.Count == b.Count && a.Flows == b.Flows &&
		a.Attributed == b.Attributed && a.Leg == b.Leg && strings.Join(a.Services, ",") == strings.Join(b.Services, ",") &&
		a.Delta == b.Delta && a.Uncounted == b.Uncounted
}

// Drops of different kinds or hooks are different points, the most first
// (ties in the order first seen).
func TestJoinGroupsByKindAndHook(t *testing.T) {
	after := &probes.Snapshot{Drops: &drops.Sample{Drops: []drops.Counted{
		syn("NETFILTER_DROP", "nf_hook_slow", "input", 1, 1),
		syn("NETFILTER_DROP", "nf_hook_slow", "forward", 1, 5),
		syn("IP_INADDRERRORS", "ip_error", "", 2, 2),
		syn("NETFILTER_DROP", "nf_hook_slow", "input", 2, 1),
	}}}
	got := Join(&probes.Snapshot{}, after, &probes.Window{})
	var keys []string
	for _, p := range got {
		keys = append(keys, p.Reason+"/"+p.Hook+"/"+strings.Repeat("x", int(p.Count)))
	}
	if want := "NETFILTER_DROP/forward/xxxxx NETFILTER_DROP/input/xx IP_INADDRERRORS//xx"; strings.Join(keys, " ") != want {
		t.Errorf("Join() points = %v, want %s", keys, want)
	}
	if Join(&probes.Snapshot{}, &probes.Snapshot{}, &probes.Window{}) != nil {
		t.Errorf("Join() without a drop sample = non-nil, want nil")
	}
}

// Rules and policies are taken from both reads: one that dropped at the
// window's start and no longer at its end (deleted, or a policy set to
// ACCEPT) explains drops that nothing of the last read counted, marked as
// fixed during the window.
func TestJoinFixedDuringWindow(t *testing.T) {
	read := []rules.Backend{{Name: rules.IptablesLegacy, Read: true}, {Name: rules.IptablesNft, Read: true}, {Name: rules.Nft, Read: true}}
	accept := fwdPolicy
	accept.Policy, accept.Packets = "ACCEPT", 7 // its counter starts again from 0 when set
	legacyPolicy := fwdPolicy
	legacyPolicy.Backend = rules.IptablesLegacy
	legacyAccept := accept
	legacyAccept.Backend = rules.IptablesLegacy
	nftFwd := forwardDrop
	nftFwd.Handle, nftFwd.Spec, nftFwd.Packets = 9, "tcp dport 8085 counter packets 2 bytes 120 drop", 2 // added again: a new handle
	v6Drop := rules.Rule{Backend: rules.IptablesNft, Family: "ip6", Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD -d fd00::50/128 -j DROP", Target: "DROP", HasCounter: true}
	nftChain := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet f", Chain: "fwd", Hook: "forward", Policy: "DROP"}
	fwdDrop := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD -d 10.1.0.50/32 -p tcp -j DROP", Target: "DROP", HasCounter: true, Packets: 4}
	for _, tt := range []struct {
		name                  string
		before, after         rules.Snapshot
		deltas                probes.Deltas
		wantGone, wantChanged bool
		wantRule, wantPolicy  bool
		wantCause             string
	}{
		{
			name:        "iptables-legacy policy DROP set to ACCEPT: its counter counted the accepts after",
			before:      rules.Snapshot{Backends: read, Chains: []rules.Chain{legacyPolicy}},
			after:       rules.Snapshot{Backends: read, Chains: []rules.Chain{legacyAccept}},
			deltas:      probes.Deltas{Chains: []probes.ChainDelta{{Chain: legacyAccept, Packets: 7}}},
			wantChanged: true, wantPolicy: true,
			wantCause: "iptables-legacy filter FORWARD policy DROP (set to ACCEPT during the window, which starts a policy's counter again from 0: what it dropped in the window is not counted, and no rule or policy there at the window's end counted these drops)",
		},
		{
			name:     "iptables-nft rule deleted",
			before:   rules.Snapshot{Backends: read, Rules: []rules.Rule{fwdDrop}},
			after:    rules.Snapshot{Backends: read},
			wantGone: true, wantRule: true,
			wantCause: `iptables-nft filter FORWARD rule "-A FORWARD -d 10.1.0.50/32 -p tcp -j DROP" (deleted during the window: what it dropped in the window is not counted, and no rule or policy there at the window's end counted these drops)`,
		},
		{
			name:     "native nft chain with policy drop deleted with its table",
			before:   rules.Snapshot{Backends: read, Chains: []rules.Chain{nftChain}},
			after:    rules.Snapshot{Backends: read},
			wantGone: true, wantPolicy: true,
			wantCause: "nft inet f fwd policy DROP (its chain deleted during the window: what it dropped in the window is not counted, and no rule or policy there at the window's end counted these drops)",
		},
		{
			name:      "native nft rule deleted and added again (a new handle): the same rule, counted from 0",
			before:    rules.Snapshot{Backends: read, Rules: []rules.Rule{forwardDrop}},
			after:     rules.Snapshot{Backends: read, Rules: []rules.Rule{nftFwd}},
			deltas:    probes.Deltas{Rules: []probes.RuleDelta{{Rule: nftFwd, Packets: 2}}},
			wantRule:  true,
			wantCause: `nft ip f fw rule "tcp dport 8085 counter packets 2 bytes 120 drop" (handle 9), +2 packets in the window`,
		},
		{
			name:      "a rule of the last read that counted the drops wins over a deleted one",
			before:    rules.Snapshot{Backends: read, Rules: []rules.Rule{fwdDrop, forwardDrop}},
			after:     rules.Snapshot{Backends: read, Rules: []rules.Rule{forwardDrop}},
			deltas:    probes.Deltas{Rules: []probes.RuleDelta{{Rule: forwardDrop, Packets: 5}}},
			wantRule:  true,
			wantCause: `nft ip f fw rule "tcp dport 8085 counter packets 5 bytes 300 drop" (handle 4), +5 packets in the window`,
		},
		{
			name:      "a rule the last read lacks because its backend was not read is not gone",
			before:    rules.Snapshot{Backends: read, Rules: []rules.Rule{fwdDrop}},
			after:     rules.Snapshot{Backends: []rules.Backend{{Name: rules.IptablesNft, Reason: "permission denied"}}},
			wantCause: "no DROP or REJECT rule nor DROP policy in forward was read (a rule backend could not be read)",
		},
		{
			name:      "an ip6tables rule the last read lacks while its IPv6 half was unread is not gone",
			before:    rules.Snapshot{Backends: read, Rules: []rules.Rule{v6Drop}},
			after:     rules.Snapshot{Backends: []rules.Backend{{Name: rules.IptablesNft, Read: true, IPv6Unread: "no ip6tables-nft-save"}}},
			wantCause: "no DROP or REJECT rule nor DROP policy in forward was read",
		},
		{
			name:       "a policy DROP at both ends is joined as the last read has it",
			before:     rules.Snapshot{Backends: read, Chains: []rules.Chain{fwdPolicy}},
			after:      rules.Snapshot{Backends: read, Chains: []rules.Chain{fwdPolicy}},
			deltas:     probes.Deltas{Chains: []probes.ChainDelta{{Chain: fwdPolicy, Packets: 5}}},
			wantPolicy: true,
			wantCause:  "iptables-nft filter FORWARD policy DROP, +5 packets in the window",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := &probes.Snapshot{Rules: tt.before}
			after := &probes.Snapshot{Rules: tt.after, Drops: &drops.Sample{Drops: []drops.Counted{syn("NETFILTER_DROP", "nf_hook_slow", "forward", 1, 5)}}}
			got := Join(before, after, &probes.Window{Deltas: tt.deltas})
			if len(got) != 1 {
				t.Fatalf("Join() = %d points %+v, want 1", len(got), got)
			}
			g := got[0]
			if g.Cause != tt.wantCause || g.Gone != tt.wantGone || g.Changed != tt.wantChanged || (g.Rule != nil) != tt.wantRule || (g.Policy != nil) != tt.wantPolicy {
				t.Errorf("Join() = cause %q, gone %v, changed %v, rule %v, policy %v; want %q, %v, %v, %v, %v",
					g.Cause, g.Gone, g.Changed, g.Rule != nil, g.Policy != nil, tt.wantCause, tt.wantGone, tt.wantChanged, tt.wantRule, tt.wantPolicy)
			}
			if (g.Gone || g.Changed) && (!g.Uncounted || g.Delta != 0) {
				t.Errorf("Join() fixed during the window: uncounted %v, delta %d; want uncounted, no delta", g.Uncounted, g.Delta)
			}
			if g.Changed && g.Policy.Policy != "DROP" {
				t.Errorf("Join() changed policy = %s, want the first read's DROP", g.Policy.Policy)
			}
		})
	}
}
