package testkit

import (
	"net"
	"net/netip"
	"syscall"
	"testing"

	mobyipvs "github.com/moby/ipvs"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// IPVSMasq creates a TCP masquerade (NAT) virtual service vip → reals inside
// ns with moby/ipvs, as `ipvsadm -A -t VIP -s rr; ipvsadm -a -t VIP -r REAL -m`
// would. It needs real IPVS: run it in the guest.
func IPVSMasq(t testing.TB, ns netns.Target, vip netip.AddrPort, reals ...netip.AddrPort) {
	t.Helper()
	h, err := mobyipvs.New(ns.Path)
	if err != nil {
		t.Fatalf("open IPVS in %s: %v", ns, err)
	}
	defer h.Close()
	svc := &mobyipvs.Service{
		Address: net.IP(vip.Addr().AsSlice()), Port: vip.Port(), Protocol: syscall.IPPROTO_TCP,
		AddressFamily: syscall.AF_INET, SchedName: mobyipvs.RoundRobin, Netmask: 0xffffffff,
	}
	if err := h.NewService(svc); err != nil {
		t.Fatalf("create IPVS service %s in %s: %v", vip, ns, err)
	}
	for _, r := range reals {
		d := &mobyipvs.Destination{
			Address: net.IP(r.Addr().AsSlice()), Port: r.Port(), Weight: 1,
			ConnectionFlags: mobyipvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET,
		}
		if err := h.NewDestination(svc, d); err != nil {
			t.Fatalf("add real server %s to %s in %s: %v", r, vip, ns, err)
		}
	}
}
