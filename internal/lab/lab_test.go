package lab_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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

// A lab whose name is taken by a namespace someone else made fails to build
// and leaves that namespace (Build used to delete it on its way out), and
// Down removes only the namespaces its record proves it made.
func TestBuildLeavesATakenName(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	for _, recorded := range []bool{false, true} {
		name := testkit.UniqueName("lbd-taken")
		theirs, err := netns.Create(name + "-lb")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { theirs.Delete() })
		if recorded {
			rec := lab.Record{Name: name, Topology: lab.OneArm}
			_, err = lab.BuildRecorded(&rec)
			if err == nil {
				t.Fatalf("BuildRecorded(%s) over a taken %s-lb = nil error", name, name)
			}
			gone, left, err := lab.Down(name, nil)
			if err != nil || len(gone) != 1 || !slices.Contains(left, "netns "+name+"-lb: not made by this lab (inode differs)") {
				t.Errorf("Down(%s) = gone %q, left %q, %v; want the record gone and %s-lb left (inode differs)", name, gone, left, err, name)
			}
		} else if _, err := lab.Build(lab.OneArm, name); err == nil {
			t.Fatalf("Build(%s) over a taken %s-lb = nil error", name, name)
		}
		if got, err := netns.Resolve(name + "-lb"); err != nil || got.Inode != theirs.Inode {
			t.Errorf("after a failed build, %s-lb = %+v, %v; want inode %d untouched", name, got, err, theirs.Inode)
		}
		for _, role := range []string{"sw", "client", "real"} {
			if _, err := os.Stat(filepath.Join(netns.RunDir, name+"-"+role)); !os.IsNotExist(err) {
				t.Errorf("after a failed build, %s-%s remains (stat %v)", name, role, err)
			}
		}
	}
}

// AddReal puts one more real server on the real servers' segment (the VIP's
// one-arm, the LB's second two-arm, with the LB as gateway); it answers the
// client over IPv4 and IPv6 alike, and goes with the lab.
func TestAddRealAnswers(t *testing.T) {
	tests := []struct {
		topo lab.Topology
		addr netip.Addr
	}{
		{lab.OneArm, netip.MustParseAddr("10.1.0.51")},
		{lab.TwoArm, netip.MustParseAddr("10.2.0.51")},
	}
	for _, tt := range tests {
		t.Run(string(tt.topo), func(t *testing.T) {
			l := testkit.Lab(t, tt.topo)
			real2, err := l.AddReal(tt.addr)
			if err != nil {
				t.Fatalf("AddReal(%s) = %v", tt.addr, err)
			}
			testkit.Serve(t, real2, ":8085")
			if tt.topo == lab.TwoArm {
				testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
				testkit.Run(t, l.Client, "ip", "route", "add", "10.2.0.0/24", "via", l.LBIP.String())
			}
			if res := lab.Probe(context.Background(), l.Client, netip.AddrPortFrom(tt.addr, 8085), 2*time.Second); !res.OK || res.Peer.Addr() != l.ClientIP {
				t.Errorf("Probe(client → %s) = %+v, want OK with peer %s", tt.addr, res, l.ClientIP)
			}
			if tt.topo != lab.OneArm {
				return
			}
			// IPv6 on the same segment: Serve and Probe pick the family from the address.
			for _, h := range []struct {
				ns   netns.Target
				addr string
			}{{l.Client, "fd00:9::3/64"}, {real2, "fd00:9::51/64"}} {
				testkit.Sysctl(t, h.ns, "net.ipv6.conf.all.accept_dad", "0") // DAD is skipped when all and eth0 say so
				testkit.Sysctl(t, h.ns, "net.ipv6.conf.eth0.accept_dad", "0")
				testkit.Run(t, h.ns, "ip", "-6", "addr", "add", h.addr, "dev", "eth0")
			}
			testkit.Serve(t, real2, "[::]:8086")
			if res := lab.Probe(context.Background(), l.Client, netip.MustParseAddrPort("[fd00:9::51]:8086"), 2*time.Second); !res.OK || res.Peer.Addr() != netip.MustParseAddr("fd00:9::3") {
				t.Errorf("Probe(client → [fd00:9::51]:8086) = %+v, want OK with peer fd00:9::3", res)
			}
		})
	}
}
