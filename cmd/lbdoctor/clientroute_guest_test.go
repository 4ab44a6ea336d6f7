//go:build guest

package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A two-arm LB given a host route to a client out of the reals' interface
// (`ip route add 10.1.0.3/32 dev eth1`, the operator's typo): IPVS de-NATs
// the real's replies and the LB asks ARP for the client on eth1, where it
// is not; they die as NEIGH_FAILED. check fails drops.vip_flows alone and,
// where it named the reason with no fix, names the route and the VIP's
// interface the client came in on; its fix, run as printed, deletes the
// route and the client works.
func TestGuestClientRouteWrongInterface(t *testing.T) {
	l, h := twoArmLab(t)
	if res := answered(h); !res.OK {
		t.Fatalf("client → %s before the fault: %v, want an answer", h.vip, res.Err)
	}
	route := l.ClientIP.String() + "/32 dev eth1"
	testkit.Run(t, l.LB, "ip", "route", "add", l.ClientIP.String()+"/32", "dev", "eth1")
	if res := h.client(); res.OK {
		t.Fatalf("client → %s with its route out of eth1: answered, want it broken", h.vip)
	}
	r, code := checkWithTraffic(t, h)
	f := findingOf(*r, "drops.vip_flows")
	if fails := failing(r); code != 1 || !slices.Equal(fails, []string{"drops.vip_flows"}) {
		t.Fatalf("check = exit %d, failing %v, want exit 1 and drops.vip_flows alone\n%s", code, fails, findingsText(r))
	}
	t.Logf("drops.vip_flows: %s %q (%s)\n  fix %q", f.Status, f.Title, f.Reason, f.Fix)
	del := l.LB.ExecPrefix() + "ip route del " + route
	if !strings.Contains(f.Reason, "the LB routes client "+l.ClientIP.String()+" out of eth1 ("+route+")") || !slices.ContainsFunc(f.Fix, func(s string) bool { return strings.HasPrefix(s, del) }) {
		t.Fatalf("drops.vip_flows reason %q, fix %q; want the route named and %q", f.Reason, f.Fix, del)
	}
	runFixes(t, l, f.Fix)
	if res := answered(h); !res.OK {
		t.Fatalf("client → %s after the fix: %v, want an answer", h.vip, res.Err)
	}
	r, code = checkWithTraffic(t, h)
	if fails := failing(r); code != 0 || len(fails) > 0 {
		t.Errorf("check after the fix = exit %d, failing %v, want exit 0\n%s", code, fails, findingsText(r))
	}
}
