package netstate_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// The return-path question: one-arm, the real server answers the client
// directly; two-arm, through the LB.
func TestLookupReturnPath(t *testing.T) {
	tests := []struct {
		topo        lab.Topology
		wantNextHop func(*lab.Lab) netip.Addr
	}{
		{lab.OneArm, func(l *lab.Lab) netip.Addr { return l.ClientIP }},
		{lab.TwoArm, func(l *lab.Lab) netip.Addr { return l.RealGateway }},
	}
	for _, tt := range tests {
		t.Run(string(tt.topo), func(t *testing.T) {
			t.Parallel()
			l := testkit.Lab(t, tt.topo)
			d, err := netstate.Lookup(l.Real, l.ClientIP, netip.Addr{})
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.wantNextHop(l); d.NextHop != want || d.Src != l.RealIP {
				t.Errorf("Lookup(real → client) = %+v, want next hop %s from %s", d, want, l.RealIP)
			}
			if d, err := netstate.Lookup(l.LB, l.VIP, netip.Addr{}); err != nil || !d.Local {
				t.Errorf("Lookup(lb → VIP) = %+v, %v; want local delivery", d, err)
			}
		})
	}
}

func TestRead(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	// Traffic leaves a neighbour entry behind.
	testkit.Serve(t, l.Real, ":8085")
	lab.Probe(context.Background(), l.Client, netip.AddrPortFrom(l.RealIP, 8085), time.Second)

	s, err := netstate.Read(l.LB)
	if err != nil {
		t.Fatal(err)
	}
	var eth0 *netstate.Link
	for i := range s.Links {
		if s.Links[i].Name == "eth0" {
			eth0 = &s.Links[i]
		}
	}
	if eth0 == nil || !eth0.Up || eth0.Type != "veth" || len(eth0.Addrs) < 2 {
		t.Fatalf("Read(lb) eth0 = %+v, want an up veth with LB address and VIP", eth0)
	}
	if eth0.Addrs[0] != netip.MustParsePrefix("10.1.0.5/24") || eth0.Addrs[1] != netip.MustParsePrefix("10.1.0.6/32") {
		t.Errorf("Read(lb) eth0 addrs = %v, want 10.1.0.5/24 10.1.0.6/32", eth0.Addrs)
	}
	found := false
	for _, r := range s.Routes {
		found = found || (r.Dst == netip.MustParsePrefix("10.1.0.0/24") && r.Dev == "eth0")
	}
	if !found {
		t.Errorf("Read(lb) routes = %+v, want 10.1.0.0/24 dev eth0", s.Routes)
	}
	// ARP may still be resolving on a loaded machine: probe again, for a
	// bounded time, until the entry has its address.
	var c netstate.Snapshot
	found = false
	for deadline := time.Now().Add(5 * time.Second); !found && time.Now().Before(deadline); {
		if c, err = netstate.Read(l.Client); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Neighbours {
			found = found || (n.IP == l.RealIP && n.Dev == "eth0" && n.MAC != "")
		}
		if !found {
			lab.Probe(context.Background(), l.Client, netip.AddrPortFrom(l.RealIP, 8085), time.Second)
		}
	}
	if !found {
		t.Errorf("Read(client) neighbours = %+v, want the real server's entry", c.Neighbours)
	}
}

// The local table decides what is local, whatever the link's state: an
// address on a DOWN dummy (kube-proxy's kube-ipvs0) is local, an address
// deleted is not. A route question the kernel refuses is an answer: with
// strict reverse-path filtering and the route back to the client leaving
// by another interface, the input route from the client on eth0 is
// refused, and on the loose setting it is let in.
func TestLocalAndRefusedLookups(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	// (the host may have no dummy driver: a bridge left DOWN is as DOWN)
	testkit.Run(t, l.LB, "ip", "link", "add", "kube-ipvs0", "type", "bridge")
	testkit.Run(t, l.LB, "ip", "addr", "add", "10.96.0.10/32", "dev", "kube-ipvs0")
	testkit.Run(t, l.LB, "ip", "addr", "del", l.VIP.String()+"/32", "dev", "eth0")
	s, err := netstate.Read(l.LB)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		addr string
		want bool
	}{{"10.96.0.10", true}, {"10.1.0.5", true}, {"127.0.0.1", true}, {l.VIP.String(), false}, {"10.2.0.50", false}} {
		if got, ok := s.Holds(netip.MustParseAddr(tt.addr)); got != tt.want || !ok {
			t.Errorf("Read(lb).Holds(%s) = %v, %v; want %v (local table %v)", tt.addr, got, ok, tt.want, s.Local)
		}
	}

	testkit.Veth(t, testkit.VethEnd{NS: l.Client, Name: "eth1", Addrs: []string{"10.3.0.3/24"}}, testkit.VethEnd{NS: l.LB, Name: "eth2", Addrs: []string{"10.3.0.1/24"}})
	testkit.Run(t, l.LB, "ip", "route", "add", l.ClientIP.String()+"/32", "via", "10.3.0.3", "dev", "eth2")
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.all.rp_filter", "1")
	q := []netstate.Query{{Dst: l.ClientIP}, {Dst: l.LBIP, From: l.ClientIP, Iif: "eth0"}, {Dst: l.LBIP, From: l.ClientIP, Iif: "eth2"}}
	ds, err := netstate.LookupAll(l.LB, q)
	if err != nil {
		t.Fatal(err)
	}
	if ds[0].Dev != "eth2" || ds[1].Error == "" || (ds[1].Errno != "EXDEV" && ds[1].Errno != "EINVAL") || ds[2].Error != "" || !ds[2].Local {
		t.Errorf("LookupAll(strict, route back by eth2) = %+v, want the route back by eth2, eth0 refused (EXDEV or EINVAL), eth2 local", ds)
	}
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.eth0.rp_filter", "2")
	if ds, err = netstate.LookupAll(l.LB, q[1:2]); err != nil || ds[0].Error != "" {
		t.Errorf("LookupAll(loose on eth0) = %+v, %v; want it let in", ds, err)
	}
}

// BenchmarkLookupAll is the cost of the route questions of one snapshot at
// their cap (probes.MaxRouteSources sources × (1 + probes.MaxRPFilterIfaces)
// interfaces): one visit to the namespace, one netlink request each.
func BenchmarkLookupAll(b *testing.B) {
	l := testkit.Lab(b, lab.TwoArm)
	var qs []netstate.Query
	for i := 0; i < 32; i++ {
		src := netip.AddrFrom4([4]byte{10, 1, 0, byte(100 + i)})
		qs = append(qs, netstate.Query{Dst: src})
		for j := 0; j < 16; j++ {
			qs = append(qs, netstate.Query{Dst: l.VIP, From: src, Iif: "eth0"})
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := netstate.LookupAll(l.LB, qs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(qs)), "µs/lookup")
}
