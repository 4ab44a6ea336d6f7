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
		{"nft dnat of another port of the VIP", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 udp dport 53 counter packets 0 bytes 0 dnat ip to 10.1.0.50:5353"}, nil},
		{"iptables DNAT of another port of the VIP", rules.Rule{Target: "DNAT", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.1.0.51:80"}, nil},
		{"nft dnat of a port set holding the VIP's", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport { 80, 8085 } dnat ip to 10.1.0.50"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8085")}},
		{"nft dnat of a port set without the VIP's", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport { 80, 443 } dnat ip to 10.1.0.50"}, nil},
		{"iptables multiport DNAT holding the VIP's port", rules.Rule{Target: "DNAT", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m multiport --dports 80,8085 -j DNAT --to-destination 10.1.0.51"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.51:8085")}},
		{"nft dnat of every port of the VIP", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 dnat ip to 10.1.0.50"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8085")}},
	}
	udp := Selector{VIP: sel.VIP, Proto: "udp"}
	for _, tt := range []struct {
		name string
		rule rules.Rule
		want []netip.AddrPort
	}{
		{"nft dnat of TCP, the VIP's UDP asked", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport 8085 dnat ip to 10.1.0.50:8080"}, nil},
		{"iptables DNAT of TCP, the VIP's UDP asked", rules.Rule{Target: "DNAT", Spec: "-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DNAT --to-destination 10.1.0.51:80"}, nil},
		{"nft dnat of UDP, the VIP's UDP asked", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 udp dport 8085 dnat ip to 10.1.0.50:53"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:53")}},
		{"nft dnat of any protocol, the VIP's UDP asked", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 dnat ip to 10.1.0.50"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8085")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := RuleBackends([]rules.Rule{tt.rule}, udp); !slices.Equal(got, tt.want) {
				t.Errorf("RuleBackends(%q, udp) = %v, want %v", tt.rule.Spec, got, tt.want)
			}
		})
	}
	// A VIP given without a port is every port of it: each of its DNAT
	// rules names a backend, whatever port the rule matches.
	anyPort := Selector{VIP: netip.AddrPortFrom(sel.VIP.Addr(), 0)}
	for _, tt := range []struct {
		name string
		rule rules.Rule
		want []netip.AddrPort
	}{
		{"nft dnat of one port, with a port", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport 443 counter packets 0 bytes 0 dnat ip to 10.1.0.50:8443"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8443")}},
		{"iptables DNAT of one port, without a port, keeps the rule's", rules.Rule{Target: "DNAT", Spec: "-A PREROUTING -d 10.1.0.6/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.1.0.51"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.51:53")}},
		{"nft dnat of a port set, without a port, is any port", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 tcp dport { 80, 443 } dnat ip to 10.1.0.50"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:0")}},
		{"nft dnat of every port, without a port", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.6 dnat ip to 10.1.0.50"}, []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:0")}},
		{"another VIP's rule", rules.Rule{Target: "DNAT", Spec: "ip daddr 10.1.0.66 tcp dport 443 dnat to 10.1.0.50:8443"}, nil},
	} {
		t.Run("any port/"+tt.name, func(t *testing.T) {
			if got := RuleBackends([]rules.Rule{tt.rule}, anyPort); !slices.Equal(got, tt.want) {
				t.Errorf("RuleBackends(%q, 10.1.0.6) = %v, want %v", tt.rule.Spec, got, tt.want)
			}
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RuleBackends([]rules.Rule{tt.rule}, sel); !slices.Equal(got, tt.want) {
				t.Errorf("RuleBackends(%q) = %v, want %v", tt.rule.Spec, got, tt.want)
			}
		})
	}
}

func TestVIPBackendString(t *testing.T) {
	for _, tt := range []struct {
		name string
		b    VIPBackend
		want string
	}{
		{"with a port", VIPBackend{Addr: netip.MustParseAddrPort("10.1.0.50:8080"), From: []string{FromConntrack, FromDNATRule}}, "10.1.0.50:8080 (conntrack, DNAT rule)"},
		{"any port", VIPBackend{Addr: netip.MustParseAddrPort("10.1.0.50:0"), From: []string{FromDNATRule}}, "10.1.0.50 (DNAT rule)"},
		{"IPv6 any port", VIPBackend{Addr: netip.MustParseAddrPort("[fd00::50]:0"), From: []string{FromDNATRule}}, "fd00::50 (DNAT rule)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.b.String(); got != tt.want {
				t.Errorf("VIPBackend.String() = %q, want %q", got, tt.want)
			}
		})
	}
}
