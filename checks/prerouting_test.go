package checks_test

import (
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// A drop of the VIP's requests in prerouting (iptables' raw or mangle
// PREROUTING, an nft prerouting chain at any priority) is as final as one
// in INPUT. On the guest only the window named it, through
// drops.vip_flows: with no client retrying during the window, or with
// --watch 0, check passed a broken LB. firewall.filter now judges
// prerouting too, statically where the rule clearly matches, and takes the
// window's prerouting drops joined to a rule; a MARK or a DNAT there (kube-
// proxy, firewall marks) is no drop.
func TestFirewallPrerouting(t *testing.T) {
	rawDrop := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "raw", Chain: "PREROUTING", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP", Target: "DROP", HasCounter: true}
	rawChain := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "raw", Chain: "PREROUTING", Hook: "prerouting", Policy: "ACCEPT", HasCounter: true}
	mangleMark := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "mangle", Chain: "PREROUTING", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j MARK --set-xmark 0x10/0xffffffff", Target: "MARK", HasCounter: true}
	mangleChain := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "mangle", Chain: "PREROUTING", Hook: "prerouting", Policy: "ACCEPT", HasCounter: true}
	natDNAT := rules.Rule{Backend: rules.IptablesNft, Family: "ip", Table: "nat", Chain: "PREROUTING", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DNAT --to-destination 10.1.0.50:8085", Target: "DNAT", HasCounter: true}
	natChain := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "nat", Chain: "PREROUTING", Hook: "prerouting", Policy: "ACCEPT", HasCounter: true}
	nftPre := rules.Rule{Backend: rules.Nft, Family: "ip", Table: "ip m", Chain: "pre", Hook: "prerouting", Spec: "ip daddr 10.1.0.6 tcp dport 8085 counter packets 14 bytes 840 drop", Target: "DROP", HasCounter: true, Packets: 14, Handle: 2}
	nftChain := rules.Chain{Backend: rules.Nft, Family: "ip", Table: "ip m", Chain: "pre", Hook: "prerouting", Priority: "mangle", Policy: "ACCEPT"}
	nftIface := rules.Rule{Backend: rules.Nft, Family: "ip", Table: "ip m", Chain: "pre", Hook: "prerouting", Spec: `iifname "eth0" counter packets 14 bytes 840 drop`, Target: "DROP", HasCounter: true, Packets: 14, Handle: 3}
	for _, tt := range []struct {
		name    string
		rules   []rules.Rule
		chains  []rules.Chain
		window  *probes.Window
		want    checks.Status
		wantFix string
	}{
		{"iptables raw PREROUTING DROP of the VIP, static", []rules.Rule{rawDrop}, []rules.Chain{rawChain}, nil, checks.Fail,
			"ip netns exec lb iptables-nft -t raw -D PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP"},
		{"nft prerouting chain at mangle priority, static", []rules.Rule{nftPre}, []rules.Chain{nftChain}, nil, checks.Fail, "ip netns exec lb nft delete rule ip m pre handle 2"},
		{"a MARK in mangle PREROUTING", []rules.Rule{mangleMark}, []rules.Chain{mangleChain}, nil, checks.Pass, ""},
		{"a DNAT in nat PREROUTING", []rules.Rule{natDNAT}, []rules.Chain{natChain}, nil, checks.Pass, ""},
		// An interface the matcher does not read: only the window's drops
		// tell, so without one it is a skip, naming the rule.
		{"nft prerouting drop on an interface, no window", []rules.Rule{nftIface}, []rules.Chain{nftChain}, nil, checks.Skip, ""},
		{"nft prerouting drop on an interface, drops joined to it", []rules.Rule{nftIface}, []rules.Chain{nftChain},
			&probes.Window{DropPoints: []probes.DropPoint{{Reason: "NETFILTER_DROP", Function: "nft_do_chain", Hook: "prerouting", Count: 6, Rule: &nftIface, Services: []string{"TCP 10.1.0.6:8085"}}}},
			checks.Fail, "ip netns exec lb nft delete rule ip m pre handle 3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage3")
			s.Rules.Rules = append(s.Rules.Rules, tt.rules...)
			s.Rules.Chains = tt.chains
			s.Window = tt.window
			f := statusOf(checks.Run(s, probes.Selector{}), "firewall.filter")
			if f.Status != tt.want || !strings.Contains(strings.Join(f.Fix, "\n"), tt.wantFix) {
				t.Errorf("firewall.filter(%s) = %s %q (%s)\nfix %q\nwant %s and fix %q", tt.name, f.Status, f.Title, f.Reason, f.Fix, tt.want, tt.wantFix)
			}
		})
	}
}
