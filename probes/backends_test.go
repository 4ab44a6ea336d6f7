package probes

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/rules"
)

func TestRuleBackends(t *testing.T) {
	sel := Selector{VIP: netip.MustParseAddrPort("10.1.0.6:8085")}
	tests := []struct {
		name string
		rule rules.Rule
		want []netip.AddrPort
	}{
		{"nft dnat with a port", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport 8085 counter packets 1 bytes 60 dnat to 10.1.0.50:8080"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8080")}},
		{"nft dnat without a port keeps the VIP's", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport 8085 dnat ip to 10.1.0.50"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8085")}},
		{"iptables DNAT", rules.Rule{Target: "DNAT", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DNAT --to-destination 10.1.0.51:80"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.51:80")}},
		{"another VIP's rule", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.66 tcp dport 8085 dnat to 10.1.0.50:8080"}, nil},
		{"not a DNAT", rules.Rule{Target: "ACCEPT", Spec: "ip daddr 10.1.0.6 accept"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RuleBackends([]rules.Rule{tt.rule}, sel); !slices.Equal(got, tt.want) {
				t.Errorf("RuleBackends(%q) = %v, want %v", tt.rule.Spec, got, tt.want)
			}
		})
	}
}
