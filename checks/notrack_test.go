package checks_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// oneArmFullNAT is twoArm's LB one-arm: the real on the VIP's segment, an
// `-m ipvs` MASQUERADE that covers the service, vs.conntrack=1.
func oneArmFullNAT() *probes.Snapshot {
	r := real("10.1.0.50:8085", 1)
	s := twoArm([]ipvs.Real{r}, []health.Result{{Real: r.Addr, Connect: health.OK, Source: ad("10.1.0.5"), Neighbour: "REACHABLE", NextHop: ad("10.1.0.50"), Dev: "eth0"}})
	s.Window.Health[0].Service, s.Window.Health[0].Proto = "TCP 10.1.0.6:8085", "tcp"
	s.Sysctls["net.ipv4.vs.conntrack"] = sysctl.Value{Key: "net.ipv4.vs.conntrack", Value: "1", Present: true}
	s.Rules.Rules = append(s.Rules.Rules, rules.Rule{Backend: rules.IptablesNft, Table: "nat", Chain: "POSTROUTING", Spec: "-A POSTROUTING -m ipvs --vaddr 10.1.0.6 --vport 8085 -j MASQUERADE",
		HasCounter: true, Target: "MASQUERADE", IPVS: &rules.IPVSMatch{VAddr: "10.1.0.6", VPort: 8085}})
	return s
}

// untrack adds a rule that takes packets out of conntrack, as the backend
// reads it; delta is what it counted in the window.
func untrack(s *probes.Snapshot, r rules.Rule, delta uint64) *probes.Snapshot {
	r.HasCounter = true
	if r.Backend == rules.Nft {
		r.Target = "NOTRACK"
		fam, _, _ := strings.Cut(r.Table, " ")
		r.Family, r.Hook, r.Handle = fam, "prerouting", 3
		prio := "raw"
		if r.Chain == "late" {
			prio = "filter"
		}
		s.Rules.Chains = append(s.Rules.Chains, rules.Chain{Backend: rules.Nft, Family: fam, Table: r.Table, Chain: r.Chain, Hook: "prerouting", Priority: prio, Policy: "ACCEPT"})
	} else {
		r.Table, r.Chain, r.Target = "raw", "PREROUTING", "CT"
	}
	s.Rules.Rules = append(s.Rules.Rules, r)
	s.Window.Deltas.Rules = append(s.Window.Deltas.Rules, probes.RuleDelta{Rule: r, Packets: delta})
	return s
}

// A NOTRACK (iptables' `-j CT --notrack`, nft's `notrack`) on the VIP's
// requests before conntrack leaves their flows untracked: the source-NAT
// rule that covers the service never applies, and the one-arm real answers
// the clients directly. nat.return_path names that rule and deletes it —
// before, it blamed the SNAT rule and printed the SNAT and vs.conntrack the
// LB already had.
func TestReturnPathUntracked(t *testing.T) {
	iptRaw := rules.Rule{Backend: rules.IptablesNft, Spec: "-A PREROUTING -d 10.1.0.6/32 -j CT --notrack"}
	nftRaw := rules.Rule{Backend: rules.Nft, Table: "ip raw", Chain: "pre", Spec: "ip daddr 10.1.0.6 tcp dport 8085 counter packets 9 bytes 540 notrack"}
	nftLate := rules.Rule{Backend: rules.Nft, Table: "ip raw", Chain: "late", Spec: "ip daddr 10.1.0.6 notrack"}
	iptOther := rules.Rule{Backend: rules.IptablesNft, Spec: "-A PREROUTING -d 10.1.0.7/32 -j CT --notrack"}
	iptIface := rules.Rule{Backend: rules.IptablesNft, Spec: "-A PREROUTING -i eth0 -j CT --notrack"}
	const untracked, around = "requests to TCP 10.1.0.6:8085 are untracked", "do not come back through the LB"
	stuckOneArm := func() *probes.Snapshot { return stuck(oneArmFullNAT(), "10.1.0.50:8085") }
	tests := []struct {
		name      string
		snap      func() *probes.Snapshot
		want      checks.Status
		wantTitle string
		wantFix   string
	}{
		{"healthy one-arm", oneArmFullNAT, checks.Pass, "", ""},
		{"SNAT never hits, no untrack rule", stuckOneArm, checks.Fail, around, ""},
		{"iptables raw CT --notrack of the VIP", func() *probes.Snapshot { return untrack(stuckOneArm(), iptRaw, 9) }, checks.Fail, untracked,
			"ip netns exec lb iptables-nft -t raw -D PREROUTING -d 10.1.0.6/32 -j CT --notrack"},
		{"static: no window", func() *probes.Snapshot {
			s := untrack(oneArmFullNAT(), iptRaw, 0)
			s.Window, s.Drops = nil, nil
			return s
		}, checks.Fail, untracked, "ip netns exec lb iptables-nft -t raw -D PREROUTING -d 10.1.0.6/32 -j CT --notrack"},
		{"nft notrack at raw priority", func() *probes.Snapshot { return untrack(stuckOneArm(), nftRaw, 9) }, checks.Fail, untracked, "ip netns exec lb nft delete rule ip raw pre handle 3"},
		{"nft notrack after conntrack does nothing", func() *probes.Snapshot { return untrack(stuckOneArm(), nftLate, 9) }, checks.Fail, around, ""},
		{"notrack of another address", func() *probes.Snapshot { return untrack(stuckOneArm(), iptOther, 9) }, checks.Fail, around, ""},
		{"notrack on an interface, counted in the window", func() *probes.Snapshot { return untrack(stuckOneArm(), iptIface, 9) }, checks.Fail, untracked,
			"ip netns exec lb iptables-nft -t raw -D PREROUTING -i eth0 -j CT --notrack"},
		{"notrack on an interface, nothing counted", func() *probes.Snapshot { return untrack(stuckOneArm(), iptIface, 0) }, checks.Fail, around, ""},
		{"notrack on an interface, replies fine", func() *probes.Snapshot { return untrack(oneArmFullNAT(), iptIface, 9) }, checks.Pass, "", ""},
		// Two-arm needs no SNAT: untracked requests are rewritten by IPVS alone.
		{"two-arm", func() *probes.Snapshot {
			return untrack(twoArm([]ipvs.Real{real("10.2.0.50:8085", 1)}, []health.Result{answers}), iptRaw, 9)
		}, checks.Pass, "", ""},
	}
	for _, tt := range tests {
		f := find(checks.Run(tt.snap(), sel8085), "nat.return_path")
		if f.Status != tt.want || !strings.Contains(f.Title, tt.wantTitle) || (tt.wantFix != "" && !slices.Contains(f.Fix, tt.wantFix)) {
			t.Errorf("nat.return_path(%s) = %s %q (%s), fix %q; want %s, title with %q, a fix %q", tt.name, f.Status, f.Title, f.Reason, f.Fix, tt.want, tt.wantTitle, tt.wantFix)
		}
		if tt.wantTitle == untracked && (len(f.Remedies) != 0 || f.FixByHand == "") {
			t.Errorf("nat.return_path(%s) remedies %+v, fix by hand %q; want none (the rule is the user's) and why", tt.name, f.Remedies, f.FixByHand)
		}
	}
}
