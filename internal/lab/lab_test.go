package lab_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

func TestBuildReachesRealServerDirectly(t *testing.T) {
	for _, topo := range []lab.Topology{lab.OneArm, lab.TwoArm} {
		t.Run(string(topo), func(t *testing.T) {
			t.Parallel()
			l := testkit.Lab(t, topo)
			testkit.Serve(t, l.Real, ":8085")
			if topo == lab.TwoArm {
				// The client has no route to the real segment; the LB routes it.
				testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
				testkit.Run(t, l.Client, "ip", "route", "add", "10.2.0.0/24", "via", l.LBIP.String())
			}
			res := lab.Probe(context.Background(), l.Client, netip.AddrPortFrom(l.RealIP, 8085), 2*time.Second)
			if !res.OK || res.Peer.Addr() != l.ClientIP {
				t.Fatalf("Probe(client → real) = %+v, want OK with peer %s", res, l.ClientIP)
			}
		})
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	testkit.RequireRoot(t)
	l, err := lab.Build(lab.OneArm, testkit.UniqueName("lbd"))
	if err != nil {
		t.Fatal(err)
	}
	names := []string{l.Client.Name, l.LB.Name, l.Real.Name, l.Switch.Name}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(netns.RunDir, n)); !os.IsNotExist(err) {
			t.Errorf("after Close, %s still exists (stat err %v)", n, err)
		}
	}
}

func TestBuildRejectsUnknownTopology(t *testing.T) {
	if _, err := lab.Build("three-arm", "x"); err == nil {
		t.Fatal(`Build("three-arm") = nil error, want an error`)
	}
}
