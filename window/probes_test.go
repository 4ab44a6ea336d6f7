package window

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
)

// The health probe's own connections (the LB's address and port ↔ the
// real) are not the services' flows: their drops are counted apart.
func TestWithoutProbes(t *testing.T) {
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
			left, own := withoutProbes(tt.ds, tt.hs)
			if len(left) != tt.wantLeft || own != tt.wantOwn {
				t.Errorf("withoutProbes(%v) = %d drops left, %d the probes'; want %d, %d", tt.ds, len(left), own, tt.wantLeft, tt.wantOwn)
			}
		})
	}
}
