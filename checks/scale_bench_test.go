package checks_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// BenchmarkRunScale runs the catalog on the two-arm fixture grown to
// 1,000 services × 10 reals (issue 11's scale) with as many IPVS
// connections and conntrack flows as a snapshot lists, static and with a window
// whose deltas name every service and real: the checks' share of
// `check` on a big LB, measured on the host (the guest benchmark,
// BenchmarkGuestCheckScale, measures the whole command).
func BenchmarkRunScale(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "two-arm.snapshot.json"))
	if err != nil {
		b.Fatal(err)
	}
	var base probes.Snapshot
	if err := json.Unmarshal(data, &base); err != nil {
		b.Fatal(err)
	}
	if len(base.IPVS.Services) == 0 {
		b.Fatal("two-arm fixture has no IPVS service")
	}
	proto := base.IPVS.Services[0]
	s := base
	s.IPVS.Services = nil
	var deltas []probes.ServiceDelta
	for i := 0; i < 1000; i++ {
		svc := proto
		svc.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}), 80)
		svc.Reals = nil
		d := probes.ServiceDelta{Service: svc.Key()}
		for j := 0; j < 10; j++ {
			k := i*10 + j
			r := proto.Reals[0]
			r.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(k / 250), byte(k%250 + 1)}), 8080)
			svc.Reals = append(svc.Reals, r)
			d.Reals = append(d.Reals, probes.RealDelta{Real: r.Addr.String(), Conns: 1, PacketsIn: 1})
		}
		s.IPVS.Services = append(s.IPVS.Services, svc)
		s.Net.Local = append(s.Net.Local, netip.PrefixFrom(svc.Addr.Addr(), 32))
		deltas = append(deltas, d)
	}
	// The listed tables full, as on a busy LB: a check that walks them
	// for each real costs services × reals × MaxListed.
	client := netip.MustParseAddr("10.1.0.2")
	s.IPVS.Conns, s.Conntrack.Flows = nil, nil
	for i := 0; i < probes.MaxListed; i++ {
		svc := s.IPVS.Services[i%len(s.IPVS.Services)]
		src := netip.AddrPortFrom(client, uint16(10000+i))
		s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: svc.Proto, Client: src, VIP: svc.Addr, Dest: svc.Reals[0].Addr, State: "ESTABLISHED", Expires: 3600})
		s.Conntrack.Flows = append(s.Conntrack.Flows, conntrack.Flow{Proto: svc.Proto, Orig: conntrack.Tuple{Src: src, Dst: svc.Addr}, Reply: conntrack.Tuple{Src: svc.Reals[0].Addr, Dst: src}, State: "ESTABLISHED", Status: []string{"DST_NAT"}, Timeout: 3600})
	}
	withWindow := s
	withWindow.Window = &probes.Window{Length: 3e9, Elapsed: 3e9, Deltas: probes.Deltas{IPVS: deltas}, Skipped: map[string]string{}}
	for _, tc := range []struct {
		name string
		s    *probes.Snapshot
	}{{"static", &s}, {"window", &withWindow}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if fs := checks.Run(tc.s, probes.Selector{}); len(fs) == 0 {
					b.Fatalf("Run(%s) = no finding", tc.name)
				}
			}
		})
	}
}
