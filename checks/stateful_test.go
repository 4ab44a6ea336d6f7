package checks_test

import (
	"cmp"
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// The classic host firewall line — drop INVALID, or a forward DROP policy
// behind an accept of established flows — on an LB with
// net.ipv4.vs.conntrack=0: conntrack does not follow IPVS's connections,
// so a real's SYN-ACK (forward) and the clients' FIN and RST (input) look
// INVALID and die. firewall.filter names the rule as before; its fix now
// turns vs.conntrack on (the kernel's documented switch for stateful rules
// on IPVS traffic, which --fix applies) and keeps the rule, its deletion
// only the other way. With vs.conntrack=1, or a rule that drops the
// requests whatever the state, the fix is the rule's as before.
func TestFirewallStatefulVSConntrackOff(t *testing.T) {
	const sysctlFix = "ip netns exec lb sysctl -w net.ipv4.vs.conntrack=1"
	fwdInvalid := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD -m conntrack --ctstate INVALID -j DROP", Target: "DROP", HasCounter: true, Packets: 30}
	fwdChain := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "ACCEPT", HasCounter: true}
	inInvalid := rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "input", Hook: "input", Spec: "ct state invalid counter packets 9 bytes 540 drop", Target: "DROP", HasCounter: true, Packets: 9, Handle: 3}
	inSet := rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "input", Hook: "input", Spec: "ct state { invalid, untracked } drop", Target: "DROP", Handle: 4}
	inChain := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "input", Hook: "input", Priority: "filter", Policy: "ACCEPT"}
	fwdPolicy := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Priority: "filter", Policy: "DROP"}
	fwdEstablished := rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Spec: "ct state { established, related } accept", Target: "ACCEPT", Handle: 2}
	notEstablished := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD -m conntrack ! --ctstate INVALID -j DROP", Target: "DROP", HasCounter: true}
	point := func(hook string, r *rules.Rule, c *rules.Chain) probes.DropPoint {
		return probes.DropPoint{Reason: "NETFILTER_DROP", Function: "nft_do_chain", Hook: hook, Count: 9, Rule: r, Policy: c, Services: []string{"TCP 10.1.0.6:8085"}}
	}
	for _, tt := range []struct {
		name        string
		vsConntrack string
		rules       []rules.Rule
		chains      []rules.Chain
		points      []probes.DropPoint
		wantFix0    string // the first fix line
		wantDelete  string // a fix line further down
		wantRemedy  bool   // --fix turns vs.conntrack on
	}{
		{"forward INVALID drop, vs.conntrack off", "0", []rules.Rule{fwdInvalid}, []rules.Chain{fwdChain}, []probes.DropPoint{point("forward", &fwdInvalid, nil)},
			sysctlFix, "ip netns exec lb iptables-nft -t filter -D FORWARD -m conntrack --ctstate INVALID -j DROP", true},
		{"forward INVALID drop, vs.conntrack on", "1", []rules.Rule{fwdInvalid}, []rules.Chain{fwdChain}, []probes.DropPoint{point("forward", &fwdInvalid, nil)},
			"ip netns exec lb iptables-nft -t filter -D FORWARD -m conntrack --ctstate INVALID -j DROP", "", false},
		{"nft input ct state invalid drop, vs.conntrack off", "0", []rules.Rule{inInvalid}, []rules.Chain{inChain}, []probes.DropPoint{point("input", &inInvalid, nil)},
			sysctlFix, "ip netns exec lb nft delete rule inet fw input handle 3", true},
		{"nft input ct state set with invalid, vs.conntrack off", "0", []rules.Rule{inSet}, []rules.Chain{inChain}, []probes.DropPoint{point("input", &inSet, nil)},
			sysctlFix, "ip netns exec lb nft delete rule inet fw input handle 4", true},
		{"nft forward DROP policy behind established accept, vs.conntrack off", "0", []rules.Rule{fwdEstablished}, []rules.Chain{fwdPolicy}, []probes.DropPoint{point("forward", nil, &fwdPolicy)},
			sysctlFix, "ip netns exec lb nft insert rule inet fw forward ip saddr 10.1.0.50 tcp sport 8085 accept", true},
		{"a rule that drops all but INVALID: not the state's doing", "0", []rules.Rule{notEstablished}, []rules.Chain{fwdChain}, []probes.DropPoint{point("forward", &notEstablished, nil)},
			"ip netns exec lb iptables-nft -t filter -D FORWARD -m conntrack '!' --ctstate INVALID -j DROP", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage2")
			s.Sysctls["net.ipv4.vs.conntrack"] = sysctl.Value{Key: "net.ipv4.vs.conntrack", Value: tt.vsConntrack, Present: true}
			s.Rules.Rules = append(s.Rules.Rules, tt.rules...)
			s.Rules.Chains = tt.chains
			s.Window = &probes.Window{DropPoints: tt.points}
			f := statusOf(checks.Run(s, probes.Selector{}), "firewall.filter")
			remedy := slices.Contains(f.Remedies, checks.Remedy{Sysctl: "net.ipv4.vs.conntrack", Value: "1"})
			if f.Status != checks.Fail || len(f.Fix) == 0 || f.Fix[0] != tt.wantFix0 || !slices.Contains(f.Fix, cmp.Or(tt.wantDelete, tt.wantFix0)) || remedy != tt.wantRemedy {
				t.Errorf("firewall.filter(%s) = %s %q, fix %q, remedies %+v; want fail, fix %q first and %q, remedy vs.conntrack=1 %v", tt.name, f.Status, f.Reason, f.Fix, f.Remedies, tt.wantFix0, tt.wantDelete, tt.wantRemedy)
			}
			if tt.wantRemedy && !strings.Contains(f.Reason, "net.ipv4.vs.conntrack = 0") {
				t.Errorf("firewall.filter(%s) reason %q, want vs.conntrack named", tt.name, f.Reason)
			}
		})
	}
}

// The same firewalls with no window (--watch 0): on a two-arm LB with
// vs.conntrack=0 a real's first reply, the SYN-ACK, answers a request
// conntrack never saw and is INVALID to it, so a forward rule that drops
// INVALID packets, or a forward DROP policy behind an accept of
// established flows, drops it for certain. The guest's hardened firewall
// (both, no counters) left the window nothing to join its drops to:
// firewall.filter passed and drops.vip_flows failed with a listing of the
// ruleset. Where replies need source NAT (one-arm) they come back only
// once vs.conntrack is on: not judged so.
func TestFirewallStatefulStatic(t *testing.T) {
	fwdInvalid := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Spec: "-A FORWARD -m conntrack --ctstate INVALID -j DROP", Target: "DROP", HasCounter: true}
	fwdChain := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "ACCEPT", HasCounter: true}
	fwdPolicy := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Priority: "filter", Policy: "DROP"}
	fwdEstablished := rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Spec: "ct state established,related accept", Target: "ACCEPT", Handle: 2}
	nftInvalid := rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Spec: "ct state invalid drop", Target: "DROP", Handle: 3}
	const sysctlFix = "ip netns exec lb sysctl -w net.ipv4.vs.conntrack=1"
	twoArmLB := func() *probes.Snapshot {
		s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers})
		s.Window, s.Drops = nil, nil
		return s
	}
	oneArmLB := func() *probes.Snapshot {
		s := oneArmFullNAT()
		s.Sysctls["net.ipv4.vs.conntrack"] = sysctl.Value{Key: "net.ipv4.vs.conntrack", Value: "0", Present: true}
		s.Window, s.Drops = nil, nil
		return s
	}
	for _, tt := range []struct {
		name        string
		lb          func() *probes.Snapshot
		vsConntrack string
		rules       []rules.Rule
		chains      []rules.Chain
		want        checks.Status
		wantFact    string
	}{
		{"two-arm, forward INVALID drop", twoArmLB, "0", []rules.Rule{fwdInvalid}, []rules.Chain{fwdChain}, checks.Fail, "conntrack sees a real's first reply INVALID"},
		{"two-arm, the hardened forward chain", twoArmLB, "0", []rules.Rule{fwdEstablished, nftInvalid}, []rules.Chain{fwdPolicy}, checks.Fail, `nft inet fw forward rule "ct state invalid drop" (hook forward) drops replies of real 10.2.0.50:8085`},
		{"two-arm, forward DROP policy behind established accept", twoArmLB, "0", []rules.Rule{fwdEstablished}, []rules.Chain{fwdPolicy}, checks.Fail, "nft inet fw forward policy DROP (hook forward) drops replies of real 10.2.0.50:8085"},
		// Undecided without a window (a state match on a reply): skipped,
		// not failed as INVALID, nor passed.
		{"two-arm, vs.conntrack on", twoArmLB, "1", []rules.Rule{fwdEstablished, nftInvalid}, []rules.Chain{fwdPolicy}, checks.Skip, ""},
		{"one-arm, replies need SNAT", oneArmLB, "0", []rules.Rule{fwdInvalid}, []rules.Chain{fwdChain}, checks.Skip, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.lb()
			s.Sysctls["net.ipv4.vs.conntrack"] = sysctl.Value{Key: "net.ipv4.vs.conntrack", Value: tt.vsConntrack, Present: true}
			s.Rules.Rules = append(s.Rules.Rules, tt.rules...)
			s.Rules.Chains = tt.chains
			f := find(checks.Run(s, sel8085), "firewall.filter")
			var facts []string
			for _, e := range f.Evidence {
				facts = append(facts, e.Fact)
			}
			if f.Status != tt.want || !strings.Contains(strings.Join(facts, "\n"), tt.wantFact) || (tt.want == checks.Fail && (len(f.Fix) == 0 || f.Fix[0] != sysctlFix)) {
				t.Errorf("firewall.filter(%s) = %s %q\nevidence %q\nfix %q\nwant %s with %q and %q first", tt.name, f.Status, f.Reason, facts, f.Fix, tt.want, tt.wantFact, sysctlFix)
			}
		})
	}
}

// The hardened forward chain's drops: a DROP policy and an INVALID drop
// rule, neither with a counter, so the window joins its netfilter drops in
// forward to neither. firewall.filter names them statically, and those
// drops are its: drops.vip_flows warns, pointing at it, where it failed
// beside it listing the ruleset. A drop in a hook where nothing clearly
// drops is still drops.vip_flows' own.
func TestFirewallExplainsUnjoinedDropsOfItsHook(t *testing.T) {
	fwdPolicy := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Priority: "filter", Policy: "DROP"}
	hardened := []rules.Rule{
		{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Spec: "ct state established,related accept", Target: "ACCEPT", Handle: 2},
		{Backend: rules.Nft, Family: "inet", Table: "inet fw", Chain: "forward", Hook: "forward", Spec: "ct state invalid drop", Target: "DROP", Handle: 3},
	}
	for _, tt := range []struct {
		name string
		hook string
		want checks.Status
	}{
		{"dropped in forward, where the firewall clearly drops", "forward", checks.Warn},
		{"dropped in input, where nothing clearly drops", "input", checks.Fail},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers})
			s.Rules.Rules, s.Rules.Chains = hardened, []rules.Chain{fwdPolicy}
			c := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap("10.2.0.50:8085"), Dst: ap("10.1.0.3:40000")}, Count: 9},
				ReasonName: "NETFILTER_DROP", Symbol: "nft_do_chain+0x580", Hook: tt.hook,
				Flow: &drops.Flow{Client: ap("10.1.0.3:40000"), VIP: ap("10.1.0.6:8085"), Real: ap("10.2.0.50:8085"), Direction: "reply", Source: "ipvs"}}
			s.Drops.Drops = []drops.Counted{c}
			s.Window.DropPoints = []probes.DropPoint{{Reason: "NETFILTER_DROP", Function: "nft_do_chain", Hook: tt.hook, Count: 9, Services: []string{"TCP 10.1.0.6:8085"}}}
			fs := checks.Run(s, sel8085)
			if f := find(fs, "firewall.filter"); f.Status != checks.Fail {
				t.Fatalf("firewall.filter(%s) = %s %q, want fail", tt.name, f.Status, f.Title)
			}
			if d := find(fs, "drops.vip_flows"); d.Status != tt.want || (tt.want == checks.Warn && !strings.Contains(d.Title, "the cause: firewall.filter")) {
				t.Errorf("drops.vip_flows(%s) = %s %q, want %s", tt.name, d.Status, d.Title, tt.want)
			}
		})
	}
}
