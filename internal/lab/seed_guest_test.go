//go:build guest

package lab_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/snmp"
)

// The seed's story, asserted from the client's side on real IPVS.

const failTimeout = 2 * time.Second

func seedLab(t *testing.T, topo lab.Topology) (*lab.Lab, netip.AddrPort) {
	t.Helper()
	l := testkit.Lab(t, topo)
	t.Logf("%s on %s", strings.TrimSpace(testkit.Run(t, l.LB, "head", "-1", "/proc/net/ip_vs")), strings.TrimSpace(testkit.Run(t, l.LB, "uname", "-r")))
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	return l, vip
}

func TestGuestTwoArmKeepsClientAddress(t *testing.T) {
	l, vip := seedLab(t, lab.TwoArm)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	res := lab.Probe(context.Background(), l.Client, vip, 5*time.Second)
	if !res.OK {
		t.Fatalf("two-arm NAT: client → %s failed: %v", vip, res.Err)
	}
	if res.Peer.Addr() != l.ClientIP {
		t.Fatalf("two-arm NAT: real server saw %s, want the client %s", res.Peer.Addr(), l.ClientIP)
	}
}

func TestGuestOneArmStages(t *testing.T) {
	l, vip := seedLab(t, lab.OneArm)
	masq := func() rules.Rule {
		t.Helper()
		snap, err := rules.Read(l.LB)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range snap.Rules {
			if r.IPVS != nil && r.IsSourceNAT() {
				return r
			}
		}
		t.Fatalf("rules.Read(lb) found no -m ipvs MASQUERADE rule in %+v", snap.Rules)
		return rules.Rule{}
	}
	probe := func(name string, wantOK bool, wantPeer netip.Addr) {
		t.Helper()
		res := lab.Probe(context.Background(), l.Client, vip, failTimeout)
		t.Logf("%s: client → %s: ok=%v peer=%v err=%v", name, vip, res.OK, res.Peer, res.Err)
		if res.OK != wantOK {
			t.Fatalf("%s: client → %s ok = %v (err %v), want %v", name, vip, res.OK, res.Err, wantOK)
		}
		if wantOK && res.Peer.Addr() != wantPeer {
			t.Fatalf("%s: real server saw %s, want %s", name, res.Peer.Addr(), wantPeer)
		}
	}

	// Stage 1: IPVS masquerade only does DNAT; the real server answers the
	// client directly and the client drops the reply.
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "0")
	probe("no SNAT", false, netip.Addr{})

	// Stage 2: the MASQUERADE rule is never hit while vs.conntrack=0.
	testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs",
		"--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
	for _, fwd := range []string{"0", "1"} {
		testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", fwd)
		probe("MASQUERADE, vs.conntrack=0, ip_forward="+fwd, false, netip.Addr{})
	}
	if r := masq(); r.Packets != 0 {
		t.Fatalf("with vs.conntrack=0 the MASQUERADE rule counted %d packets, want 0 (%s)", r.Packets, r.Spec)
	}

	// Stage 3: SNAT happens, but the SYN-ACK is de-SNATed before IPVS sees
	// it and dies in ip_error while forwarding is off.
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	before := counters(t, l)
	probe("vs.conntrack=1, ip_forward=0", false, netip.Addr{})
	if r := masq(); r.Packets == 0 {
		t.Fatalf("with vs.conntrack=1 the MASQUERADE rule counted no packets (%s)", r.Spec)
	}
	if d := snmp.Delta(before, counters(t, l)); d["IpInAddrErrors"] == 0 {
		t.Fatalf("IpInAddrErrors of lb did not rise while forwarding was off (deltas %v)", d)
	}

	// Stage 4: with forwarding on it works, and the real server sees the LB.
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	probe("vs.conntrack=1, ip_forward=1", true, l.LBIP)
}

func counters(t *testing.T, l *lab.Lab) snmp.Counters {
	t.Helper()
	c, err := snmp.Read(l.LB)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
