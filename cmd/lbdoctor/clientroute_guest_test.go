//go:build guest

package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A two-arm LB given a host route to a client out of the reals' interface
// (`ip route add 10.1.0.3/32 dev eth1`, the operator's typo): IPVS de-NATs
// the real's replies and the LB asks ARP for the client on eth1, where it
// is not. check passed while the client was broken (the replies die only
// when an ARP resolution gives up, about 3 s: the window may see none)
// and, when it saw the drops, failed drops.vip_flows with no fix. Now
// nat.return_path fails alone, from the route and the neighbour table,
// naming the route, and its fix, run as printed, deletes it: the client
// works and check passes. Run twice: the window may or may not see the
// drops, and neither may change the verdict.
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
	var f checks.Finding
	for try := 1; try <= 2; try++ {
		r, code := checkWithTraffic(t, h)
		f = findingOf(*r, "nat.return_path")
		if fails := failing(r); code != 1 || !slices.Equal(fails, []string{"nat.return_path"}) {
			t.Fatalf("check %d = exit %d, failing %v, want exit 1 and nat.return_path alone\n%s", try, code, fails, findingsText(r))
		}
		d := findingOf(*r, "drops.vip_flows")
		t.Logf("check %d: nat.return_path %s %q (%s)\n  fix %q\n  drops.vip_flows %s %q", try, f.Status, f.Title, f.Reason, f.Fix, d.Status, d.Title)
	}
	del := l.LB.ExecPrefix() + "ip route del " + route
	if !strings.Contains(f.Reason, "the LB routes client "+l.ClientIP.String()+" out of eth1 ("+route+")") || !slices.ContainsFunc(f.Fix, func(s string) bool { return strings.HasPrefix(s, del) }) {
		t.Fatalf("nat.return_path reason %q, fix %q; want the route named and %q", f.Reason, f.Fix, del)
	}
	runFixes(t, l, f.Fix)
	if res := answered(h); !res.OK {
		t.Fatalf("client → %s after the fix: %v, want an answer", h.vip, res.Err)
	}
	r, code := checkWithTraffic(t, h)
	if fails := failing(r); code != 0 || len(fails) > 0 {
		t.Errorf("check after the fix = exit %d, failing %v, want exit 0\n%s", code, fails, findingsText(r))
	}
}
