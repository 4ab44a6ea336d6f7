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
