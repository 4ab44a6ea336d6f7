package rules_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// legacy and nft are rules of a backend as its save tool or nft lists them.
func legacy(spec string) rules.Rule { return rules.Rule{Backend: rules.IptablesLegacy, Spec: spec} }
func nft(spec string) rules.Rule    { return rules.Rule{Backend: rules.Nft, Spec: spec} }

func TestMatchPacket(t *testing.T) {
	syn := rules.Packet{Proto: "tcp", Dst: netip.MustParseAddr("10.1.0.6"), DPort: 8085}
	reply := rules.Packet{Proto: "tcp", Src: netip.MustParseAddr("10.1.0.50"), SPort: 8085}
	first := syn
	first.First, first.Remote = true, true
	invalidReply := reply
	invalidReply.Remote, invalidReply.Invalid = true, true
	for _, tt := range []struct {
		name string
		r    rules.Rule
		p    rules.Packet
		want rules.Match
	}{
		{"iptables VIP and port", legacy("-A INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP"), syn, rules.Matches},
		{"iptables every packet", legacy("-A INPUT -j DROP"), syn, rules.Matches},
		{"iptables reject with options", legacy("-A INPUT -d 10.1.0.6/32 -j REJECT --reject-with icmp-port-unreachable"), syn, rules.Matches},
		{"iptables other port", legacy("-A INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 22 -j DROP"), syn, rules.NoMatch},
		{"iptables port range", legacy("-A INPUT -p tcp -m tcp --dport 8000:9000 -j DROP"), syn, rules.Matches},
		{"iptables other protocol", legacy("-A INPUT -p udp -j DROP"), syn, rules.NoMatch},
		{"iptables a client's source", legacy("-A INPUT -s 10.9.0.0/16 -d 10.1.0.6/32 -j DROP"), syn, rules.Unclear},
		{"iptables conntrack state", legacy("-A INPUT -m conntrack --ctstate INVALID -j DROP"), syn, rules.Unclear},
		{"iptables interface", legacy("-A FORWARD -i eth1 -j DROP"), reply, rules.Unclear},
		{"iptables reply source", legacy("-A FORWARD -s 10.1.0.50/32 -p tcp -m tcp --sport 8085 -j DROP"), reply, rules.Matches},
		{"nft daddr and port", nft("ip daddr 10.1.0.6 tcp dport 8085 counter packets 3 bytes 180 drop"), syn, rules.Matches},
		{"nft reject with", nft("ip daddr 10.1.0.6 reject with icmp type host-unreachable"), syn, rules.Matches},
		{"nft port set", nft("tcp dport { 22, 23 } drop"), syn, rules.Unclear},
		{"nft other address", nft("ip daddr 10.1.0.7 drop"), syn, rules.NoMatch},
		{"nft udp rule, tcp packet", nft("udp dport 8085 drop"), syn, rules.NoMatch},
		{"nft ct state", nft("ct state invalid drop"), syn, rules.Unclear},
		{"iptables negated source, a source outside", legacy("-A FORWARD ! -s 10.9.0.0/16 -j DROP"), reply, rules.Matches},
		{"iptables negated source, a source inside", legacy("-A FORWARD ! -s 10.1.0.0/24 -j DROP"), reply, rules.NoMatch},
		{"iptables negated port", legacy("-A INPUT -p tcp -m tcp ! --dport 22 -j DROP"), syn, rules.Matches},
		{"iptables negated unknown source", legacy("-A INPUT ! -s 10.9.0.0/16 -j DROP"), syn, rules.Unclear},
		{"iptables established accept, a flow's first packet", legacy("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"), first, rules.NoMatch},
		{"iptables state accept, a flow's first packet", legacy("-A INPUT -m state --state ESTABLISHED -j ACCEPT"), first, rules.NoMatch},
		{"iptables new accept, a flow's first packet", legacy("-A INPUT -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT"), first, rules.Unclear},
		{"iptables not established, a flow's first packet", legacy("-A INPUT -m conntrack ! --ctstate ESTABLISHED -j DROP"), first, rules.Matches},
		{"iptables established accept, a reply", legacy("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"), reply, rules.Unclear},
		{"iptables loopback accept, a remote packet", legacy("-A INPUT -i lo -j ACCEPT"), first, rules.NoMatch},
		{"iptables not loopback, a remote packet", legacy("-A INPUT ! -i lo -j DROP"), first, rules.Matches},
		{"iptables other interface, a remote packet", legacy("-A INPUT -i eth0 -j ACCEPT"), first, rules.Unclear},
		{"nft established accept, a flow's first packet", nft("ct state established,related accept"), first, rules.NoMatch},
		{"nft established accept, a reply", nft("ct state established,related accept"), reply, rules.Unclear},
		{"nft state set, a flow's first packet", nft("ct state { established, new } accept"), first, rules.Unclear},
		{"nft state vmap, a flow's first packet", nft("ct state vmap { invalid : drop, established : accept }"), first, rules.Unclear},
		{"nft loopback accept, a remote packet", nft(`iif "lo" accept`), first, rules.NoMatch},
		{"nft loopback by name, a remote packet", nft(`iifname "lo" accept`), first, rules.NoMatch},
		{"nft not loopback, a remote packet", nft(`iifname != "lo" drop`), first, rules.Unclear},
		{"nft loopback, a packet not known remote", nft(`iif "lo" accept`), syn, rules.Unclear},
		{"nft icmp accept, a tcp packet", nft("icmp type echo-request accept"), first, rules.NoMatch},
		{"iptables INVALID drop, a reply conntrack never saw the request of", legacy("-A FORWARD -m conntrack --ctstate INVALID -j DROP"), invalidReply, rules.Matches},
		{"nft established accept, a reply conntrack never saw the request of", nft("ct state established,related accept"), invalidReply, rules.NoMatch},
		{"nft invalid drop, a reply conntrack never saw the request of", nft("ct state invalid counter packets 3 bytes 180 drop"), invalidReply, rules.Matches},
		{"iptables not INVALID, a reply conntrack never saw the request of", legacy("-A FORWARD -m conntrack ! --ctstate INVALID -j ACCEPT"), invalidReply, rules.NoMatch},
		{"iptables notrack of the VIP", legacy("-A PREROUTING -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j CT --notrack"), first, rules.Matches},
		{"nft notrack of the VIP", nft("ip daddr 10.1.0.6 tcp dport 8085 counter packets 0 bytes 0 notrack"), first, rules.Matches},
		{"nft notrack of another address", nft("ip daddr 10.1.0.7 notrack"), first, rules.NoMatch},
		{"nft icmpv6 accept, a tcp packet", nft("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"), first, rules.NoMatch},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.MatchPacket(tt.p); got != tt.want {
				t.Errorf("MatchPacket(%q, %+v) = %v, want %v", tt.r.Spec, tt.p, got, tt.want)
			}
		})
	}
}

func TestFixCommands(t *testing.T) {
	for _, tt := range []struct {
		name string
		got  []string
		want string
	}{
		{"iptables delete", rules.Rule{Backend: rules.IptablesLegacy, Table: "filter", Chain: "INPUT", Spec: `-A INPUT -d 10.1.0.6/32 -m comment --comment "no web" -j DROP`}.DeleteCommand(),
			"iptables-legacy -t filter -D INPUT -d 10.1.0.6/32 -m comment --comment no web -j DROP"},
		{"nft delete", rules.Rule{Backend: rules.Nft, Table: "inet f", Chain: "out", Handle: 7}.DeleteCommand(), "nft delete rule inet f out handle 7"},
		{"nft without handle", rules.Rule{Backend: rules.Nft, Table: "inet f", Chain: "out"}.DeleteCommand(), ""},
		{"iptables accept", rules.Chain{Backend: rules.IptablesNft, Table: "filter", Chain: "FORWARD"}.AcceptCommand(rules.Packet{Proto: "tcp", Src: netip.MustParseAddr("10.1.0.50"), SPort: 8085}),
			"iptables-nft -t filter -I FORWARD -s 10.1.0.50 -p tcp --sport 8085 -j ACCEPT"},
		{"nft accept", rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet f", Chain: "out"}.AcceptCommand(rules.Packet{Proto: "tcp", Dst: netip.MustParseAddr("10.1.0.50"), DPort: 8085}),
			"nft insert rule inet f out ip daddr 10.1.0.50 tcp dport 8085 accept"},
	} {
		if got := strings.Join(tt.got, " "); got != tt.want {
			t.Errorf("%s: command = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// SNATMatch judges a source-NAT rule's criteria beside its VIP match on
// the request IPVS sends a real (client → real): a rule narrowed to some
// clients or reals leaves the others without SNAT.
func TestSNATMatch(t *testing.T) {
	toReal := func(client, real string) rules.Packet {
		return rules.Packet{Proto: "tcp", Src: netip.MustParseAddr(client), Dst: netip.MustParseAddr(real), DPort: 8085, First: true, Remote: true}
	}
	for _, tt := range []struct {
		name string
		r    rules.Rule
		p    rules.Packet
		want rules.Match
	}{
		{"-m ipvs alone", legacy("-A POSTROUTING -m ipvs --vaddr 10.1.0.6/32 --vport 8085 -j MASQUERADE"), toReal("10.1.0.3", "10.1.0.50"), rules.Matches},
		{"-m ipvs --ipvs with a comment", legacy(`-A POSTROUTING -m comment --comment "lbdoctor snat" -m ipvs --ipvs --vaddr 10.1.0.6/32 -j MASQUERADE`), toReal("10.1.0.3", "10.1.0.50"), rules.Matches},
		{"sources narrowed, a client outside", legacy("-A POSTROUTING -s 10.99.0.0/16 -m ipvs --vaddr 10.1.0.6/32 -j MASQUERADE"), toReal("10.1.0.3", "10.1.0.50"), rules.NoMatch},
		{"sources narrowed, a client inside", legacy("-A POSTROUTING -s 10.99.0.0/16 -m ipvs --vaddr 10.1.0.6/32 -j MASQUERADE"), toReal("10.99.1.1", "10.1.0.50"), rules.Matches},
		{"sources excluded", legacy("-A POSTROUTING ! -s 10.1.0.0/24 -m ipvs --vaddr 10.1.0.6/32 -j MASQUERADE"), toReal("10.1.0.3", "10.1.0.50"), rules.NoMatch},
		{"one real", legacy("-A POSTROUTING -d 10.1.0.50/32 -m ipvs --vaddr 10.1.0.6/32 -j MASQUERADE"), toReal("10.1.0.3", "10.1.0.51"), rules.NoMatch},
		{"an interface", legacy("-A POSTROUTING -o eth0 -m ipvs --vaddr 10.1.0.6/32 -j MASQUERADE"), toReal("10.1.0.3", "10.1.0.50"), rules.Unclear},
		{"--ctorigdst SNAT", legacy("-A POSTROUTING -m conntrack --ctorigdst 10.1.0.6/32 -j SNAT --to-source 10.1.0.5"), toReal("10.1.0.3", "10.1.0.50"), rules.Matches},
		{"--ctorigdst and a port", legacy("-A POSTROUTING -p tcp -m conntrack --ctorigdst 10.1.0.6/32 --ctorigdstport 8085 -j MASQUERADE"), toReal("10.1.0.3", "10.1.0.50"), rules.Matches},
		{"nft ct original", nft("ct original ip daddr 10.1.0.6 ct protocol tcp ct original proto-dst 8085 counter packets 7 bytes 420 masquerade"), toReal("10.1.0.3", "10.1.0.50"), rules.Matches},
		{"nft ct original, other protocol", nft("ct original ip daddr 10.1.0.6 ct protocol udp masquerade"), toReal("10.1.0.3", "10.1.0.50"), rules.NoMatch},
		{"nft sources narrowed", nft("ip saddr 10.99.0.0/16 ct original ip daddr 10.1.0.6 masquerade"), toReal("10.1.0.3", "10.1.0.50"), rules.NoMatch},
		{"nft snat to", nft("ct original ip daddr 10.1.0.6 snat to 10.1.0.5"), toReal("10.1.0.3", "10.1.0.50"), rules.Matches},
		{"nft an interface", nft(`ct original ip daddr 10.1.0.6 oifname "eth0" masquerade`), toReal("10.1.0.3", "10.1.0.50"), rules.Unclear},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.SNATMatch(tt.p); got != tt.want {
				t.Errorf("SNATMatch(%q, %+v) = %v, want %v", tt.r.Spec, tt.p, got, tt.want)
			}
		})
	}
}

func TestUntracks(t *testing.T) {
	chains := []rules.Chain{
		{Backend: rules.Nft, Family: "ip", Table: "ip raw", Chain: "pre", Hook: "prerouting", Priority: "raw"},
		{Backend: rules.Nft, Family: "ip", Table: "ip raw", Chain: "late", Hook: "prerouting", Priority: "filter"},
		{Backend: rules.Nft, Family: "inet", Table: "inet t", Chain: "odd", Hook: "prerouting", Priority: "$prio"},
	}
	for _, tt := range []struct {
		name               string
		r                  rules.Rule
		untracks           bool
		before, knownOrder bool
	}{
		{"iptables CT --notrack in raw", rules.Rule{Backend: rules.IptablesLegacy, Table: "raw", Chain: "PREROUTING", Spec: "-A PREROUTING -d 10.1.0.6/32 -j CT --notrack", Target: "CT"}, true, true, true},
		{"iptables NOTRACK in raw", rules.Rule{Backend: rules.IptablesNft, Table: "raw", Chain: "PREROUTING", Spec: "-A PREROUTING -d 10.1.0.6/32 -j NOTRACK", Target: "NOTRACK"}, true, true, true},
		{"iptables CT with a zone", rules.Rule{Backend: rules.IptablesNft, Table: "raw", Chain: "PREROUTING", Spec: "-A PREROUTING -d 10.1.0.6/32 -j CT --zone 1", Target: "CT"}, false, true, true},
		{"iptables DROP in mangle", rules.Rule{Backend: rules.IptablesNft, Table: "mangle", Chain: "PREROUTING", Spec: "-A PREROUTING -j DROP", Target: "DROP"}, false, false, true},
		{"nft notrack at raw priority", rules.Rule{Backend: rules.Nft, Family: "ip", Table: "ip raw", Chain: "pre", Spec: "ip daddr 10.1.0.6 notrack", Target: "NOTRACK"}, true, true, true},
		{"nft notrack after conntrack", rules.Rule{Backend: rules.Nft, Family: "ip", Table: "ip raw", Chain: "late", Spec: "ip daddr 10.1.0.6 notrack", Target: "NOTRACK"}, true, false, true},
		{"nft notrack, priority not read", rules.Rule{Backend: rules.Nft, Family: "inet", Table: "inet t", Chain: "odd", Spec: "notrack", Target: "NOTRACK"}, true, false, false},
	} {
		before, known := tt.r.BeforeConntrack(chains)
		if got := tt.r.Untracks(); got != tt.untracks || before != tt.before || known != tt.knownOrder {
			t.Errorf("%s: Untracks, BeforeConntrack = %v, %v %v, want %v, %v %v", tt.name, got, before, known, tt.untracks, tt.before, tt.knownOrder)
		}
	}
}

func TestNftPriority(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"raw", -300, true}, {"-300", -300, true}, {"raw - 10", -310, true}, {"mangle + 5", -145, true},
		{"filter", 0, true}, {"dstnat", -100, true}, {"srcnat", 100, true}, {"", 0, false}, {"$p", 0, false}, {"raw * 2", 0, false},
	} {
		if got, ok := rules.NftPriority(tt.in); got != tt.want || ok != tt.ok {
			t.Errorf("NftPriority(%q) = %d, %v, want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
