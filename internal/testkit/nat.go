package testkit

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
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

// DNATLab is a one-arm lab whose LB DNATs a VIP (port 8085) to the real
// with nft (NftNAT, with masquerade) and then forwards no more: the client
// first opens forwarded connections through it, which leave the VIP's
// backend in conntrack (the drop tracer learns it there: the VIP is gone
// from a packet after the DNAT), and its SYNs now die in ip_error.
func DNATLab(t testing.TB, forwarded int) (*lab.Lab, netip.AddrPort) {
	t.Helper()
	l := Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	Serve(t, l.Real, ":8085")
	NftNAT(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085), true)
	Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	for i := 0; i < forwarded; i++ {
		// The lab's first connection may wait for its neighbours.
		for try := 1; ; try++ {
			res := lab.Probe(context.Background(), l.Client, vip, time.Second)
			if res.OK {
				break
			}
			if try == 3 {
				t.Fatal(res.Err)
			}
		}
	}
	Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	return l, vip
}
