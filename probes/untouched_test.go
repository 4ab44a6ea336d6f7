package probes

import (
	"net/netip"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// A flow no NAT touched (the reply tuple is the original reversed) and
// nothing answered is counted by protocol and VIP; a flow IPVS rewrote (the
// real answers), SNAT touched, or that saw a reply is not.
func TestTallyUntouched(t *testing.T) {
	client := netip.MustParseAddrPort("10.1.0.3:53000")
	vip := netip.MustParseAddrPort("10.1.0.6:53")
	real := netip.MustParseAddrPort("10.1.0.50:53")
	lb := netip.MustParseAddrPort("10.1.0.5:61000")
	tests := []struct {
		name  string
		head  conntrack.Head
		count int
	}{
		{"before the service: untouched, unreplied", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: vip, Dst: client}}, 1},
		{"untouched but answered (a local service)", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: vip, Dst: client}, Status: conntrack.StatusSeenReply}, 0},
		{"rewritten by IPVS", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: client}}, 0},
		{"rewritten by IPVS and SNAT", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: lb}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Conntrack
			c.tally(tt.head)
			c.tally(tt.head)
			var want []FlowTally
			if tt.count > 0 {
				want = []FlowTally{{Proto: "udp", Dst: vip, Count: 2 * tt.count}}
			}
			if !reflect.DeepEqual(c.Untouched, want) {
				t.Errorf("tally(%s) twice: Untouched = %+v, want %+v", tt.name, c.Untouched, want)
			}
		})
	}
}
