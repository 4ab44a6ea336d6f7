//go:build guest

package main

import (
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A DROP of the VIP's requests in raw PREROUTING (iptables-nft), before
// conntrack and IPVS: only the window's drops named it, through
// drops.vip_flows, so with no client retrying, or --watch 0, check passed a
// broken LB. firewall.filter names it now, statically too, and its fix
// deletes it.
func TestGuestFirewallPreroutingRaw(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	firewallFault(t, l, vip, func() {
		testkit.Run(t, l.LB, "iptables", "-t", "raw", "-A", "PREROUTING", "-d", l.VIP.String(), "-p", "tcp", "--dport", "8085", "-j", "DROP")
		r, code := runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "0", "-o", "json")
		if got := statusOf(t, r, "firewall.filter"); got != "fail" || code != 1 {
			t.Errorf("check --watch 0 = exit %d, firewall.filter %s; want exit 1 and fail (findings %+v)", code, got, r.Findings)
		}
	}, "iptables-nft raw PREROUTING rule", "(hook prerouting) drops requests to TCP "+vip.String(), "NETFILTER_DROP of the selected flows in prerouting")
}
