//go:build guest

package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// The classic host firewall lines — `ct state invalid drop` in input and
// forward — on a two-arm IPVS NAT LB with net.ipv4.vs.conntrack at its
// default 0: conntrack does not follow IPVS's connections, so the real's
// SYN-ACK, forwarded, belongs to no flow it saw and is INVALID (and the
// clients' FINs in input). check fails firewall.filter alone, naming the
// forward rule, and its first fix line turns vs.conntrack on — the
// kernel's documented switch for stateful rules on IPVS traffic — where it
// told the operator to delete the rule. Run as printed, the client works
// with the firewall kept, and check finds nothing failing on that LB.
func TestGuestFirewallStatefulTwoArm(t *testing.T) {
	l, h := twoArmLab(t)
	// Half-open connections the fault left behind: the real gives up on
	// their SYN-ACKs within 3 s, not a minute, so the check after the fix
	// watches the fixed LB, not their last retransmissions.
	testkit.Run(t, l.Real, "sysctl", "-w", "net.ipv4.tcp_synack_retries=1")
	if res := answered(h); !res.OK {
		t.Fatalf("client → %s before the fault: %v, want an answer", h.vip, res.Err)
	}
	testkit.Run(t, l.LB, "nft", "add table inet fw; "+
		"add chain inet fw input { type filter hook input priority filter; }; add rule inet fw input ct state invalid counter drop; "+
		"add chain inet fw forward { type filter hook forward priority filter; }; add rule inet fw forward ct state invalid counter drop")
	if res := h.client(); res.OK {
		t.Fatalf("client → %s after the fault: answered, want it broken", h.vip)
	}

	r, code := checkWithTraffic(t, h)
	f := findingOf(*r, "firewall.filter")
	sysctlFix := l.LB.ExecPrefix() + "sysctl -w net.ipv4.vs.conntrack=1"
	if fails := failing(r); code != 1 || !slices.Equal(fails, []string{"firewall.filter"}) {
		t.Fatalf("check after the fault = exit %d, failing %v, want exit 1 and firewall.filter alone\n%s", code, fails, findingsText(r))
	}
	t.Logf("firewall.filter: %s %q (%s)\n  evidence %v\n  fix %q", f.Status, f.Title, f.Reason, f.Evidence, f.Fix)
	if len(f.Fix) == 0 || f.Fix[0] != sysctlFix || !slices.Contains(f.Remedies, checks.Remedy{Sysctl: "net.ipv4.vs.conntrack", Value: "1"}) || !strings.Contains(f.Title, `"ct state invalid`) {
		t.Fatalf("firewall.filter title %q, fix %q, remedies %+v; want the invalid-drop rule named and %q first, as a remedy", f.Title, f.Fix, f.Remedies, sysctlFix)
	}

	runFixes(t, l, f.Fix[:1])
	time.Sleep(4 * time.Second) // the half-open connections' last SYN-ACKs
	if res := answered(h); !res.OK {
		t.Fatalf("client → %s after %q: %v, want an answer", h.vip, f.Fix[0], res.Err)
	}
	r, code = checkWithTraffic(t, h)
	if fails := failing(r); code != 0 || len(fails) > 0 {
		t.Errorf("check after the fix = exit %d, failing %v, want exit 0 and nothing failing: the firewall stays and passes IPVS's flows\n%s", code, fails, findingsText(r))
	}
	if out := testkit.Run(t, l.LB, "nft", "list", "table", "inet", "fw"); strings.Count(out, "ct state invalid") != 2 {
		t.Errorf("the fix changed the firewall; want both invalid-drop rules kept:\n%s", out)
	}
}
