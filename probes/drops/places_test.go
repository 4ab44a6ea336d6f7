package drops

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// BenchmarkAddPlaces: caching the places of one conntrack flow, as each
// new-flow event does.
func BenchmarkAddPlaces(b *testing.B) {
	a := &Attributor{cur: map[tupleKey]*Flow{}, old: map[tupleKey]*Flow{}}
	o := conntrack.Tuple{Src: netip.MustParseAddrPort("10.0.0.1:1000"), Dst: netip.MustParseAddrPort("10.0.0.2:80")}
	r := conntrack.Tuple{Src: netip.MustParseAddrPort("10.0.1.2:8080"), Dst: netip.MustParseAddrPort("10.0.1.1:1000")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		o.Src = netip.AddrPortFrom(o.Src.Addr(), uint16(i))
		a.addPlacesLocked(17, conntrack.Flow{Orig: o, Reply: r})
		if len(a.cur) > 1<<16 {
			clear(a.cur)
		}
	}
}
