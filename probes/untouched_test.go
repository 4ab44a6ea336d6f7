package probes

import (
	"net/netip"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// A flow no NAT touched (the reply tuple is the original reversed) and
// nothing answered is counted by protocol and VIP as untouched; one whose
// destination was rewritten but not its source, unanswered, as not
// SNATed; a flow that saw a reply, or SNAT touched, as neither.
func TestTallyUntouched(t *testing.T) {
	client := netip.MustParseAddrPort("10.1.0.3:53000")
	vip := netip.MustParseAddrPort("10.1.0.6:53")
	real := netip.MustParseAddrPort("10.1.0.50:53")
	lb := netip.MustParseAddrPort("10.1.0.5:61000")
	tests := []struct {
		name                 string
		head                 conntrack.Head
		untouched, notSNATed int
	}{
		{"before the service: untouched, unreplied", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: vip, Dst: client}}, 1, 0},
		{"untouched but answered (a local service)", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: vip, Dst: client}, Status: conntrack.StatusSeenReply}, 0, 0},
		{"rewritten by IPVS, no SNAT, unreplied", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: client}}, 0, 1},
		{"rewritten by IPVS, no SNAT, answered (two-arm)", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: client}, Status: conntrack.StatusSeenReply}, 0, 0},
		{"rewritten by IPVS and SNAT", conntrack.Head{Proto: unix.IPPROTO_UDP, Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: lb}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Conntrack
			c.tally(tt.head)
			c.tally(tt.head)
			want := func(n int) []FlowTally {
				if n == 0 {
					return nil
				}
				return []FlowTally{{Proto: "udp", Dst: vip, Count: 2 * n}}
			}
			if !reflect.DeepEqual(c.Untouched, want(tt.untouched)) || !reflect.DeepEqual(c.NotSNATed, want(tt.notSNATed)) {
				t.Errorf("tally(%s) twice: Untouched = %+v, NotSNATed = %+v; want %+v, %+v", tt.name, c.Untouched, c.NotSNATed, want(tt.untouched), want(tt.notSNATed))
			}
		})
	}
}
