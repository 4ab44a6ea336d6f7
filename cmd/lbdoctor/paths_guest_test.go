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
	l, h := twoArmLab(t)
	vip := h.vip
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
	l, h := twoArmLab(t)
	vip := h.vip
	testkit.Connect(t, l, vip, 1)
	// The client's connections now come from an address the LB has no
	// route to (it has no default route).
	testkit.Run(t, l.Client, "ip", "addr", "add", "10.9.0.3/32", "dev", "eth0")
	testkit.Run(t, l.Client, "ip", "route", "replace", l.VIP.String()+"/32", "dev", "eth0", "src", "10.9.0.3")
	if res := lab.Probe(context.Background(), l.Client, vip, time.Second); res.OK {
		t.Fatalf("the client from 10.9.0.3 reached %s: the LB routes back to it", vip)
	}
	r, _ := checkUnderTraffic(t, l, vip)
	f := findingOf(*r, "drops.vip_flows")
	if f.Status != checks.Fail || !strings.Contains(f.Title, "IP_INNOROUTES") || !strings.Contains(f.Reason, "the LB has no route to 10.9.0.3") {
		t.Errorf("drops.vip_flows = %s %q (%s), want a fail on IP_INNOROUTES naming the missing route to 10.9.0.3:%s", f.Status, f.Title, f.Reason, describe(r))
	}
	t.Logf("drops.vip_flows: %s %q (%s) fix %q", f.Status, f.Title, f.Reason, f.Fix)
	p, ok := pathTo(r, netip.AddrPortFrom(l.RealIP, 8085).String())
	// Replies of a connection from before the address change may still be
	// routed in the window: "(other replies were routed)" then follows.
	if l := legOf(p, flowpath.Route); !ok || l.Status != flowpath.Stopped || !strings.HasPrefix(l.Note, "no route to 10.9.0.3") {
		t.Errorf("path %q: route leg %s %q, want stopped \"no route to 10.9.0.3\"", p, l.Status, l.Note)
	}
	t.Logf("path: %s", p)
}
