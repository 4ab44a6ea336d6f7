package probes

import (
	"net/netip"
	"slices"
	"strings"
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

// TestRuleBackendsFollowsJumps: a rule of the VIP that jumps to a chain is
// followed to the DNAT rules below it, as kube-proxy's iptables mode builds
// them, and a DNAT of another address in a chain it reaches is not the
// VIP's.
func TestRuleBackendsFollowsJumps(t *testing.T) {
	ipt := func(chain, spec, target string) rules.Rule {
		return rules.Rule{Backend: "iptables-legacy", Family: "ip", Table: "nat", Chain: chain, Spec: spec, Target: target}
	}
	nft := func(chain, spec, target string) rules.Rule {
		return rules.Rule{Backend: "nft", Family: "inet", Table: "lb", Chain: chain, Spec: spec, Target: target}
	}
	kubeProxy := []rules.Rule{
		ipt("KUBE-SERVICES", "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEB", "KUBE-SVC-WEB"),
		ipt("KUBE-SERVICES", "-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-OTHER", "KUBE-SVC-OTHER"),
		ipt("KUBE-SVC-WEB", "-A KUBE-SVC-WEB -m statistic --mode random --probability 0.5 -j KUBE-SEP-A", "KUBE-SEP-A"),
		ipt("KUBE-SVC-WEB", "-A KUBE-SVC-WEB -j KUBE-SEP-B", "KUBE-SEP-B"),
		ipt("KUBE-SEP-A", "-A KUBE-SEP-A -s 10.244.1.5/32 -j KUBE-MARK-MASQ", "KUBE-MARK-MASQ"),
		ipt("KUBE-SEP-A", "-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080", "DNAT"),
		ipt("KUBE-SEP-B", "-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.2.7:8080", "DNAT"),
		ipt("KUBE-SVC-OTHER", "-A KUBE-SVC-OTHER -j KUBE-SEP-C", "KUBE-SEP-C"),
		ipt("KUBE-SEP-C", "-A KUBE-SEP-C -p tcp -m tcp -j DNAT --to-destination 10.244.3.9:9090", "DNAT"),
	}
	shared := []rules.Rule{
		nft("pre", "ip daddr 10.96.0.10 jump vips", "vips"),
		nft("vips", "ip daddr 10.96.0.10 tcp dport 80 dnat ip to 10.244.1.5:8080", "DNAT"),
		nft("vips", "ip daddr 10.96.0.12 tcp dport 80 dnat ip to 10.244.9.9:8080", "DNAT"),
	}
	tests := []struct {
		name string
		rs   []rules.Rule
		vip  string
		want []netip.AddrPort
	}{
		{"kube-proxy: the VIP's endpoints", kubeProxy, "10.96.0.10:80", []netip.AddrPort{netip.MustParseAddrPort("10.244.1.5:8080"), netip.MustParseAddrPort("10.244.2.7:8080")}},
		{"kube-proxy: another port of the VIP", kubeProxy, "10.96.0.10:443", nil},
		{"kube-proxy: every port of the VIP", kubeProxy, "10.96.0.10:0", []netip.AddrPort{netip.MustParseAddrPort("10.244.1.5:8080"), netip.MustParseAddrPort("10.244.2.7:8080")}},
		{"kube-proxy: the other VIP's endpoint", kubeProxy, "10.96.0.11:80", []netip.AddrPort{netip.MustParseAddrPort("10.244.3.9:9090")}},
		{"nft: a shared chain's DNAT of another VIP is not this one's", shared, "10.96.0.10:80", []netip.AddrPort{netip.MustParseAddrPort("10.244.1.5:8080")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel := Selector{VIP: netip.MustParseAddrPort(tt.vip)}
			if got := RuleBackends(tt.rs, sel); !slices.Equal(got, tt.want) {
				t.Errorf("RuleBackends(%s) = %v, want %v", tt.vip, got, tt.want)
			}
		})
	}
}

// TestRuleBackendsMaps: an nft DNAT to an anonymous map (numgen, jhash)
// names its backends, as nft lists its elements; a named map or an
// expression is not read, and UnreadDNATs says which rule that is.
func TestRuleBackendsMaps(t *testing.T) {
	sel := Selector{VIP: netip.MustParseAddrPort("10.1.0.6:80")}
	tests := []struct {
		name       string
		spec       string
		want       []netip.AddrPort
		wantUnread bool
	}{
		// As nft 1.0 lists them (the inet table's `dnat ip to` too).
		{"numgen map of addresses keeps the VIP's port", "ip daddr 10.1.0.6 tcp dport 80 counter packets 0 bytes 0 dnat to numgen inc mod 2 map { 0 : 10.1.0.50, 1 : 10.1.0.51 }",
			[]netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:80"), netip.MustParseAddrPort("10.1.0.51:80")}, false},
		{"numgen map of addresses in an inet table", "ip daddr 10.1.0.6 tcp dport 80 dnat ip to numgen inc mod 2 map { 0 : 10.1.0.50, 1 : 10.1.0.51 }",
			[]netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:80"), netip.MustParseAddrPort("10.1.0.51:80")}, false},
		{"numgen map of addresses, one port after it", "ip daddr 10.1.0.6 tcp dport 80 dnat to numgen random mod 2 map { 0 : 10.1.0.50, 1 : 10.1.0.51 }:8080",
			[]netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8080"), netip.MustParseAddrPort("10.1.0.51:8080")}, false},
		{"jhash map of address . port", "ip daddr 10.1.0.6 tcp dport 80 dnat ip to jhash ip saddr mod 2 map { 0 : 10.1.0.50 . 8080, 1 : 10.1.0.51 . 8081 }",
			[]netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8080"), netip.MustParseAddrPort("10.1.0.51:8081")}, false},
		{"jhash map of IPv6 address . port", "ip6 daddr fd00::6 tcp dport 80 dnat ip6 to jhash ip6 saddr mod 2 map { 0 : fd00::50 . 8080, 1 : fd00::51 . 8081 }",
			[]netip.AddrPort{netip.MustParseAddrPort("[fd00::50]:8080"), netip.MustParseAddrPort("[fd00::51]:8081")}, false},
		{"named map", "ip daddr 10.1.0.6 tcp dport 80 dnat to ip daddr map @bk", nil, true},
		{"an address of one port", "ip daddr 10.1.0.6 tcp dport 80 dnat ip to 10.1.0.50:8080", []netip.AddrPort{netip.MustParseAddrPort("10.1.0.50:8080")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := []rules.Rule{{Backend: "nft", Family: "ip", Table: "lb", Chain: "pre", Target: "DNAT", Spec: tt.spec}}
			sel := sel
			if strings.HasPrefix(tt.spec, "ip6") {
				sel.VIP = netip.MustParseAddrPort("[fd00::6]:80")
			}
			if got := RuleBackends(rs, sel); !slices.Equal(got, tt.want) {
				t.Errorf("RuleBackends(%q) = %v, want %v", tt.spec, got, tt.want)
			}
			if got := UnreadDNATs(rs, sel); (len(got) > 0) != tt.wantUnread {
				t.Errorf("UnreadDNATs(%q) = %v, want unread %v", tt.spec, got, tt.wantUnread)
			}
		})
	}
}
