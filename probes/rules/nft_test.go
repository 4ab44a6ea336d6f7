package rules_test

import (
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/rules"
)

const nftRuleset = `# Warning: table ip nat is managed by iptables-nft, do not touch!
table ip nat { # handle 1
	chain POSTROUTING { # handle 1
		type nat hook postrouting priority srcnat; policy accept;
		xt match "ipvs" counter packets 0 bytes 0 xt target "MASQUERADE" # handle 2
	}
}
table inet lb { # handle 2
	set reals { # handle 3
		type ipv4_addr
		elements = { 10.1.0.50, 10.1.0.51 }
	}

	chain post { # handle 1
		type nat hook postrouting priority srcnat; policy accept;
		ct original ip daddr 10.1.0.6 ct protocol tcp ct original proto-dst 8085 counter packets 7 bytes 420 masquerade # handle 4
		ip daddr @reals snat to 10.1.0.5 # handle 5
	}
	chain fwd { # handle 6
		type filter hook forward priority filter; policy accept;
		tcp dport { 22, 23 } drop # handle 7
		jump more # handle 8
	}
	chain more { # handle 9
		accept # handle 10
	}
	chain pre { # handle 11
		type filter hook prerouting priority raw; policy accept;
		ip daddr 10.1.0.6 counter packets 2 bytes 120 notrack # handle 12
	}
}
`

func TestParseNftList(t *testing.T) {
	got, err := rules.ParseNftList([]byte(nftRuleset))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		chain, hook, target, ctOrigDst string
		counter                        bool
		packets                        uint64
	}{
		{"post", "postrouting", "MASQUERADE", "10.1.0.6", true, 7},
		{"post", "postrouting", "SNAT", "", false, 0},
		{"fwd", "forward", "DROP", "", false, 0},
		{"fwd", "forward", "more", "", false, 0},
		{"more", "", "ACCEPT", "", false, 0},
		{"pre", "prerouting", "NOTRACK", "", true, 2},
	}
	if len(got) != len(want) {
		t.Fatalf("ParseNftList() = %d rules %+v, want %d (the iptables-nft table and the set skipped)", len(got), got, len(want))
	}
	for i, w := range want {
		r := got[i]
		if r.Table != "inet lb" || r.Chain != w.chain || r.Hook != w.hook || r.Target != w.target || r.CtOrigDst != w.ctOrigDst || r.HasCounter != w.counter || r.Packets != w.packets {
			t.Errorf("ParseNftList() [%d] = %+v, want %+v", i, r, w)
		}
	}
	for _, bad := range []string{"}\n", "table ip x {\n", "table ip x {\n\tchain c {\n"} {
		if _, err := rules.ParseNftList([]byte(bad)); err == nil {
			t.Errorf("ParseNftList(%q) = nil error, want an error", bad)
		}
	}
}

func FuzzParseNftList(f *testing.F) {
	f.Add([]byte(nftRuleset))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := rules.ParseNftList(data)
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.Table == "" || r.Chain == "" {
				t.Fatalf("rule outside a table or chain: %+v", r)
			}
		}
	})
}

// Base chains come with hook, priority and policy (no counter: nft shows
// none), rules with their handle; the iptables-nft table is left out.
func TestParseNftRulesetChains(t *testing.T) {
	rs, chains, err := rules.ParseNftRuleset([]byte(nftRuleset + "table ip6 f {\n\tchain o {\n\t\ttype filter hook output priority 0; policy drop;\n\t}\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.Chain{
		{Backend: rules.Nft, Family: "inet", Table: "inet lb", Chain: "post", Hook: "postrouting", Priority: "srcnat", Policy: "ACCEPT"},
		{Backend: rules.Nft, Family: "inet", Table: "inet lb", Chain: "fwd", Hook: "forward", Priority: "filter", Policy: "ACCEPT"},
		{Backend: rules.Nft, Family: "inet", Table: "inet lb", Chain: "pre", Hook: "prerouting", Priority: "raw", Policy: "ACCEPT"},
		{Backend: rules.Nft, Family: "ip6", Table: "ip6 f", Chain: "o", Hook: "output", Priority: "0", Policy: "DROP"},
	}
	if len(chains) != len(want) {
		t.Fatalf("ParseNftRuleset() chains = %+v, want %+v", chains, want)
	}
	for i := range want {
		if chains[i] != want[i] {
			t.Errorf("ParseNftRuleset() chain %d = %+v, want %+v", i, chains[i], want[i])
		}
	}
	if rs[0].Handle != 4 || rs[len(rs)-1].Handle != 12 {
		t.Errorf("ParseNftRuleset() handles %d … %d, want 4 … 12", rs[0].Handle, rs[len(rs)-1].Handle)
	}
}
