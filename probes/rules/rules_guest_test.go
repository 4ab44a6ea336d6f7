//go:build guest

package rules_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// The `-m ipvs` MASQUERADE rule is recognised on real IPVS, and its counter
// agrees with iptables-save -c; a native nft rule's with nft list ruleset.
func TestGuestRulesAgreeWithTools(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Run(t, l.LB, "nft", "add table ip extra; add chain ip extra in { type filter hook input priority 0; }; add rule ip extra in tcp dport 9 counter drop")
	testkit.Connect(t, l, vip, 3)
	snap, err := rules.Read(l.LB)
	if err != nil {
		t.Fatal(err)
	}
	var masq, drop *rules.Rule
	for i, r := range snap.Rules {
		switch {
		case r.IPVS != nil && r.Target == "MASQUERADE":
			masq = &snap.Rules[i]
		case r.Backend == rules.Nft && r.Target == "DROP":
			drop = &snap.Rules[i]
		}
	}
	if masq == nil || !masq.IPVS.MatchesVIP(vip.Addr(), vip.Port()) || masq.Packets == 0 || masq.Backend != rules.IptablesNft {
		t.Fatalf("Read(lb) -m ipvs rule = %+v, want an iptables-nft MASQUERADE for %s that counted packets", masq, vip)
	}
	save := testkit.Run(t, l.LB, "iptables-save", "-c", "-t", "nat")
	if want := "[" + itoa(masq.Packets) + ":" + itoa(masq.Bytes) + "] " + masq.Spec; !strings.Contains(save, want) {
		t.Errorf("iptables-save -c disagrees: want line %q in\n%s", want, save)
	}
	if drop == nil || !drop.HasCounter || drop.Table != "ip extra" {
		t.Fatalf("Read(lb) nft drop rule = %+v, want the ip extra rule with a counter", drop)
	}
	if out := testkit.Run(t, l.LB, "nft", "list", "table", "ip", "extra"); !strings.Contains(out, drop.Spec) {
		t.Errorf("nft list table disagrees: want %q in\n%s", drop.Spec, out)
	}
	for _, r := range snap.Rules {
		if r.Backend == rules.Nft && r.Table == "ip nat" {
			t.Errorf("the iptables-nft table was read as native nft: %+v", r)
		}
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
