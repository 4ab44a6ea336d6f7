package capture

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// count tallies packets by interface, direction and flow.
func count(pkts []seenPacket) map[string]int {
	out := map[string]int{}
	for _, p := range pkts {
		out[fmt.Sprintf("%s %s %s %s>%s", p.Iface, p.Dir, p.Proto, p.Src, p.Dst)]++
	}
	return out
}

func TestCaptureVIPFlow(t *testing.T) {
	p := newLBPair(t)
	p.echo(t)
	var s seen
	r := startCapture(t, p.L, Options{Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}, Ports: []uint16{vipPort}}}, s.handle)
	const n = 50
	p.exchange(t, p.VIP, n, true)
	// Others the filter must leave out: another port of the VIP, the LB's
	// own address on the VIP's port.
	p.exchange(t, netip.AddrPortFrom(p.VIP.Addr(), 8086), 7, false)
	p.exchange(t, netip.AddrPortFrom(p.LAddr, vipPort), 5, false)
	s.waitFor(2*n, 2*time.Second)
	time.Sleep(3 * blockTimeout) // a stray packet would be in by now
	_, stats := r.stop(t)

	client := netip.AddrPortFrom(p.CAddr, 0)
	got := count(s.all())
	var clientPort uint16
	for _, pk := range s.all() {
		if pk.Dir == In {
			clientPort = pk.Src.Port()
		}
	}
	client = netip.AddrPortFrom(client.Addr(), clientPort)
	want := map[string]int{
		fmt.Sprintf("l0 in udp %s>%s", client, p.VIP):  n,
		fmt.Sprintf("l0 out udp %s>%s", p.VIP, client): n,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("captured = %v, want %v", got, want)
	}
	// The kernel's own count of the flow: nft's rule counters in L.
	if in, out := testkit.NftPackets(t, p.L, "ip", "cap", "in"), testkit.NftPackets(t, p.L, "ip", "cap", "out"); int(in) != got[fmt.Sprintf("l0 in udp %s>%s", client, p.VIP)] || int(out) != got[fmt.Sprintf("l0 out udp %s>%s", p.VIP, client)] {
		t.Errorf("nft counted in %d, out %d; captured %v", in, out, got)
	}
	for _, st := range stats {
		want := uint64(n)
		if st.Packets != want || st.Drops != 0 || st.Ended != "" {
			t.Errorf("Stats(%s %s) = %+v, want %d packets, no drops, not ended", st.Interface, st.Direction, st, want)
		}
	}
}
