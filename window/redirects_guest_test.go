//go:build guest

package window_test

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
)

// One-arm LBs at send_redirects=1 on Debian's 6.1, watched on every port of
// their VIP under traffic. The nft DNAT LB as on the host (drops parsed
// through bpf_probe_read_kernel there: no bpf_rdonly_cast before 6.2): NAT
// drops its redirects to the real in output, drops.vip_flows passes and
// counts them apart. The seed's fixed LB on real IPVS (-m ipvs MASQUERADE):
// it redirects the real too (IcmpOutRedirects moves), but its services'
// ports are in the drop filter, which keeps ICMP out: drops.vip_flows passes
// with nothing of them.
func TestGuestWindowOwnRedirects(t *testing.T) {
	testkit.Tracefs(t)
	t.Run("nft DNAT", func(t *testing.T) {
		l, vip := testkit.DNATLab(t, 1)
		testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
		ownRedirectsPass(t, l, vip)
	})
	t.Run("IPVS", func(t *testing.T) {
		l, vip := testkit.FullNAT(t)
		testkit.Sysctl(t, l.LB, "net.ipv4.conf.all.send_redirects", "1")
		testkit.Sysctl(t, l.LB, "net.ipv4.conf.eth0.send_redirects", "1")
		snap := watchUnderTraffic(t, l, vip)
		sent := snap.Window.Deltas.SNMP["IcmpOutRedirects"]
		t.Logf("IcmpOutRedirects +%d, IpOutDiscards +%d, own redirects traced %d", sent, snap.Window.Deltas.SNMP["IpOutDiscards"], len(snap.Window.OwnRedirects))
		if f := statusOf(checks.Run(snap, probes.Selector{VIP: netip.AddrPortFrom(vip.Addr(), 0)}), "drops.vip_flows"); sent == 0 || f.Status != checks.Pass {
			t.Errorf("IPVS one-arm at send_redirects=1: IcmpOutRedirects +%d, drops.vip_flows = %s %q; want redirects sent and a pass", sent, f.Status, f.Title)
		}
	})
}
