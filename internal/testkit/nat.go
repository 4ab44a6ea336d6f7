package testkit

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// NftNAT makes ns a netfilter (not IPVS) NAT load balancer for vip → real,
// with native nft rules, as an operator would on a kernel without IPVS:
// DNAT in prerouting and, when snat is set, masquerade of the VIP's flows.
func NftNAT(t testing.TB, ns netns.Target, vip, real netip.AddrPort, snat bool) {
	t.Helper()
	script := fmt.Sprintf(`add table ip lbdtest
add chain ip lbdtest pre { type nat hook prerouting priority dstnat; }
add chain ip lbdtest post { type nat hook postrouting priority srcnat; }
add rule ip lbdtest pre ip daddr %s tcp dport %d counter dnat to %s
`, vip.Addr(), vip.Port(), real)
	if snat {
		script += fmt.Sprintf("add rule ip lbdtest post ct original ip daddr %s ct original protocol tcp ct original proto-dst %d counter masquerade\n", vip.Addr(), vip.Port())
	}
	Run(t, ns, "nft", script)
}
