package testkit

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
)

// FullNAT builds the seed's one-arm lab with a working full NAT on real IPVS:
// a masquerade service VIP:8085 → real:8085, an `-m ipvs` MASQUERADE rule,
// vs.conntrack=1 and ip_forward=1. It needs the guest.
func FullNAT(t testing.TB) (*lab.Lab, netip.AddrPort) {
	t.Helper()
	l := Lab(t, lab.OneArm)
	Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
	Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "1")
	Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	return l, vip
}

// Connect makes n successful client → vip connections, failing the test otherwise.
func Connect(t testing.TB, l *lab.Lab, vip netip.AddrPort, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if res := lab.Probe(context.Background(), l.Client, vip, 5*time.Second); !res.OK {
			t.Fatalf("connection %d to %s: %v", i, vip, res.Err)
		}
	}
}
