//go:build guest

package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// pathTo is the path of a failing finding's flows to real, from check's
// JSON (findings[].path), and whether one was found.
func pathTo(r *report.Report, real string) (flowpath.Path, bool) {
	for _, f := range r.Findings {
		for _, p := range f.Path {
			if p.Real == real {
				return p, true
			}
		}
	}
	return flowpath.Path{}, false
}

// legOf is the path's leg of kind k.
func legOf(p flowpath.Path, k flowpath.LegKind) flowpath.Leg {
	for _, l := range p.Legs {
		if l.Kind == k {
			return l
		}
	}
	return flowpath.Leg{}
}

// The causal chain of a sick real tells what came back from it, under
// client traffic on real IPVS: a real that never answers ARP (an unused
// address on the LB's subnet) sent no reply — IPVS counts the ICMP
// host-unreachable errors the LB's own stack sends about its flows as the
// real's packets out, and the path must not show them as SYN-ACKs; a real
// that refuses did answer (RSTs, which IPVS relays); a real the LB has no
// route to was never reached.
func TestGuestPathOfASickReal(t *testing.T) {
	tests := []struct {
		name   string
		topo   lab.Topology
		inject func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string // returns the sick real
		check  func(t *testing.T, p flowpath.Path)
	}{
		{name: "no ARP answer", topo: lab.OneArm,
			inject: func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string {
				testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", "10.1.0.77:8085", "-m")
				return "10.1.0.77:8085"
			},
			// Was "IPVS→real .77 ✓ 32 · SNAT ✓ · SYN-ACK real→LB ✓ 31 · … route: forwarded to 10.1.0.3 ✓".
			check: func(t *testing.T, p flowpath.Path) {
				wantLeg(t, p, flowpath.Schedule, flowpath.Stopped, "no ARP answer from 10.1.0.77")
				wantLeg(t, p, flowpath.Reply, flowpath.Failed, "no reply: no ARP answer from 10.1.0.77")
				if l := legOf(p, flowpath.Route); l.Status == flowpath.OK {
					t.Errorf("route leg %s, want it not crossed: no reply came", l.Status)
				}
				if s := p.String(); strings.Contains(s, "SYN-ACK") || !strings.Contains(s, "reply real→LB ✗ (no reply: no ARP answer from 10.1.0.77") {
					t.Errorf("path = %q, want no SYN-ACK and \"reply real→LB ✗ (no reply: no ARP answer from 10.1.0.77…\"", s)
				}
			}},
		{name: "refuses", topo: lab.OneArm,
			inject: func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string {
				sick := netip.AddrPortFrom(l.RealIP, 8086).String()
				testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", sick, "-m")
				return sick
			},
			// Its RSTs are replies, and IPVS relays them.
			check: func(t *testing.T, p flowpath.Path) {
				wantLeg(t, p, flowpath.Schedule, flowpath.OK, "")
				wantLeg(t, p, flowpath.Reply, flowpath.OK, "RSTs: the real refuses connections")
			}},
		{name: "no route", topo: lab.TwoArm,
			inject: func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string {
				testkit.Run(t, l.LB, "ip", "route", "del", "10.2.0.0/24", "dev", "eth1")
				return netip.AddrPortFrom(l.RealIP, 8085).String()
			},
			check: func(t *testing.T, p flowpath.Path) {
				wantLeg(t, p, flowpath.Schedule, flowpath.Stopped, "the LB has no route to 10.2.0.50")
				wantLeg(t, p, flowpath.Reply, flowpath.Failed, "no reply: the LB has no route to 10.2.0.50")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l *lab.Lab
			var vip netip.AddrPort
			if tt.topo == lab.OneArm {
				l, vip = testkit.FullNAT(t)
			} else {
				l = testkit.Lab(t, lab.TwoArm)
				testkit.Serve(t, l.Real, ":8085")
				vip = netip.AddrPortFrom(l.VIP, 8085)
				testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
				testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
			}
			sick := tt.inject(t, l, vip)
			r, _ := checkUnderTraffic(t, l, vip)
			p, ok := pathTo(r, sick)
			if !ok {
				t.Fatalf("check has no path to %s:%s", sick, describe(r))
			}
			var b strings.Builder
			for _, l := range p.Legs {
				fmt.Fprintf(&b, "\n  %s %q %s counted=%v %d note=%q src=%q", l.Kind, l.Name, l.Status, l.Counted, l.Packets, l.Note, l.Source)
			}
			t.Logf("path to %s: %s", sick, p)
			tt.check(t, p)
			if t.Failed() {
				t.Logf("legs:%s%s", b.String(), describe(r))
			}
		})
	}
}

// wantLeg fails t unless p's leg of kind k has status st and a note that
// starts with note.
func wantLeg(t *testing.T, p flowpath.Path, k flowpath.LegKind, st flowpath.Status, note string) {
	t.Helper()
	if l := legOf(p, k); l.Status != st || !strings.HasPrefix(l.Note, note) {
		t.Errorf("%s leg = %s %q, want %s %q…", k, l.Status, l.Note, st, note)
	}
}

// A real that calls its own service on a two-arm LB (no SNAT: the real
// answers itself, and its call to the VIP hangs): check --fix applies
// nat.hairpin's masquerade through the transactional path — the plan
// printed, the rule and vs.conntrack recorded — the real's call works and
// the check after the fix passes it; teardown removes only what --fix
// made, and the hairpin hangs again.
func TestGuestHairpinFix(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Connect(t, l, vip, 1)
	if res := lab.Probe(context.Background(), l.Real, vip, time.Second); res.OK {
		t.Fatalf("the real reached its own service %s with no masquerade: no hairpin fault", vip)
	}
	out, code := testkit.RunLbdoctor(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "0", "--fix", "--yes")
	rule := fmt.Sprintf("-s %s/32 -d %s/32", l.RealIP, l.RealIP)
	before, after, _ := strings.Cut(out, "after --fix:")
	if code != 0 || !strings.Contains(before, "✗ nat.hairpin") || !strings.Contains(before, rule) || !strings.Contains(before, "net.ipv4.vs.conntrack=1") ||
		!strings.Contains(after, "✓ nat.hairpin") || strings.Contains(out, "--fix cannot repair nat.hairpin") {
		t.Fatalf("check --fix = exit %d, want 0, nat.hairpin failing, a plan with the MASQUERADE %s and vs.conntrack=1, nat.hairpin passing after:\n%s", code, rule, out)
	}
	if res := lab.Probe(context.Background(), l.Real, vip, 2*time.Second); !res.OK {
		t.Errorf("the real → its own service %s after --fix: %v, want an answer", vip, res.Err)
	}
	out, code = testkit.RunLbdoctor(t, "teardown", "--netns", l.LB.Name)
	if code != 0 || !strings.Contains(out, rule) {
		t.Errorf("teardown = exit %d, want 0 removing the rule %s:\n%s", code, rule, out)
	}
	if save := testkit.Run(t, l.LB, "iptables-save", "-t", "nat"); strings.Contains(save, rule) {
		t.Errorf("after teardown the nat table still has the hairpin masquerade:\n%s", save)
	}
	if res := lab.Probe(context.Background(), l.Real, vip, time.Second); res.OK {
		t.Errorf("the real → its own service %s after teardown: answered, want it to hang again (the masquerade gone)", vip)
	}
}

// A client the LB has no route back to (a new operator's run left one
// IP_INNOROUTES drop unexplained): a two-arm LB, its real's replies to
// 10.9.0.3 die in the LB's route lookup. drops.vip_flows names the missing
// route, and the path stops at the route leg saying so.
func TestGuestNoRouteBackToClient(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Connect(t, l, vip, 1)
	// The client's connections now come from an address the LB has no
	// route to (it has no default route).
	testkit.Run(t, l.Client, "ip", "addr", "add", "10.9.0.3/32", "dev", "eth0")
	testkit.Run(t, l.Client, "ip", "route", "replace", l.VIP.String()+"/32", "dev", "eth0", "src", "10.9.0.3")
	if res := lab.Probe(context.Background(), l.Client, vip, time.Second); res.OK {
		t.Fatalf("the client from 10.9.0.3 reached %s: the LB routes back to it", vip)
	}
	r, _ := checkUnderTraffic(t, l, vip)
	var f checks.Finding
	for _, x := range r.Findings {
		if x.ID == "drops.vip_flows" {
			f = x
		}
	}
	if f.Status != checks.Fail || !strings.Contains(f.Title, "IP_INNOROUTES") || !strings.Contains(f.Reason, "the LB has no route to 10.9.0.3") {
		t.Errorf("drops.vip_flows = %s %q (%s), want a fail on IP_INNOROUTES naming the missing route to 10.9.0.3:%s", f.Status, f.Title, f.Reason, describe(r))
	}
	p, ok := pathTo(r, netip.AddrPortFrom(l.RealIP, 8085).String())
	if l := legOf(p, flowpath.Route); !ok || l.Status != flowpath.Stopped || l.Note != "no route to 10.9.0.3" {
		t.Errorf("path %q: route leg %s %q, want stopped \"no route to 10.9.0.3\"", p, l.Status, l.Note)
	}
	t.Logf("drops.vip_flows: %s (%s) fix %q\npath: %s", f.Title, f.Reason, f.Fix, p)
}
