package window

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// The health probe's own connections (the LB's address and port ↔ the
// real) are not the services' flows: their drops are counted apart.
func TestProbesOwn(t *testing.T) {
	ap := netip.MustParseAddrPort
	drop := func(src, dst string, n uint64) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap(src), Dst: ap(dst)}, Count: n}, ReasonName: "NOT_SPECIFIED"}
	}
	probed := health.Result{Real: ap("10.1.0.50:8085"), Source: netip.MustParseAddr("10.1.0.5"), SourcePort: 40589, Connect: health.OK}
	tests := []struct {
		name     string
		ds       []drops.Counted
		hs       []health.Result
		wantLeft int
		wantOwn  uint64
	}{
		{"the probe's reply", []drops.Counted{drop("10.1.0.50:8085", "10.1.0.5:40589", 1)}, []health.Result{probed}, 0, 1},
		{"the probe's request", []drops.Counted{drop("10.1.0.5:40589", "10.1.0.50:8085", 2)}, []health.Result{probed}, 0, 2},
		{"a client's flow via SNAT, another port", []drops.Counted{drop("10.1.0.50:8085", "10.1.0.5:40590", 3)}, []health.Result{probed}, 1, 0},
		{"not probed", []drops.Counted{drop("10.1.0.50:8085", "10.1.0.5:40589", 1)}, nil, 1, 0},
		{"a late answer to the first connect, which timed out", []drops.Counted{drop("10.1.0.50:8085", "10.1.0.5:40500", 2)},
			[]health.Result{{Real: ap("10.1.0.50:8085"), Source: netip.MustParseAddr("10.1.0.5"), SourcePort: 40589, FirstSourcePort: 40500, Connect: health.OK}}, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			smp := &drops.Sample{Drops: tt.ds}
			own, _, _ := splitOwn(smp, tt.hs, &probes.Snapshot{})
			if left := smp.Drops; len(left) != tt.wantLeft || own != tt.wantOwn {
				t.Errorf("splitOwn(%v) = %d drops left, %d the probes'; want %d, %d", tt.ds, len(left), own, tt.wantLeft, tt.wantOwn)
			}
		})
	}
}

// The drops split off a window's sample (the probes' own, the LB's own
// redirects) leave its attribution counts with them: attributed and not
// attributed add up to the drops the sample still lists.
func TestSplitOwnAttribution(t *testing.T) {
	ap := netip.MustParseAddrPort
	lb := netstate.Snapshot{Links: []netstate.Link{{Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24")}}}}
	probed := health.Result{Real: ap("10.1.0.50:8085"), Source: netip.MustParseAddr("10.1.0.5"), SourcePort: 40589, Connect: health.OK}
	flow := &drops.Flow{}
	drop := func(src, dst string, proto, typ uint8, n uint64, f *drops.Flow) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: proto, ICMPType: typ, Src: ap(src), Dst: ap(dst)}, Count: n},
			ReasonName: "NETFILTER_DROP", Hook: "output", Flow: f}
	}
	smp := &drops.Sample{
		Drops: []drops.Counted{
			drop("10.1.0.50:8085", "10.1.0.5:40589", 6, 0, 2, nil),  // the probe's reply, no flow
			drop("10.1.0.5:40589", "10.1.0.50:8085", 6, 0, 1, flow), // the probe's request, in conntrack
			drop("10.1.0.5:0", "10.1.0.50:0", 1, 5, 3, flow),        // the LB's redirect about a flow
			drop("10.1.0.3:5000", "10.1.0.5:80", 6, 0, 4, flow),     // a client's SYN
			drop("10.1.0.4:5000", "10.1.0.5:80", 6, 0, 5, nil),      // another, not attributed
		},
		Attribution: drops.Attribution{Attributed: 1 + 3 + 4, NotAttributed: 2 + 5},
	}
	probeDrops, own, _ := splitOwn(smp, []health.Result{probed}, &probes.Snapshot{Net: lb})
	got := smp.Attribution
	if probeDrops != 3 || len(own) != 1 || len(smp.Drops) != 2 || got.Attributed != 4 || got.NotAttributed != 5 {
		t.Errorf("splitOwn() = %d probe drops, %d own redirects, %d left, attribution %d/%d; want 3, 1, 2, 4/5",
			probeDrops, len(own), len(smp.Drops), got.Attributed, got.NotAttributed)
	}
}
