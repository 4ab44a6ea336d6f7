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

// Stateful host firewalls on a two-arm IPVS NAT LB with
// net.ipv4.vs.conntrack at its default 0: conntrack does not follow IPVS's
// connections, so the real's SYN-ACK, forwarded, answers a request
// conntrack never saw and is INVALID (and the clients' FINs in input).
// Two firewalls: the classic lines `ct state invalid drop` in input and
// forward, and a hardened one (DROP policies behind established accepts,
// invalid drops, no counters) whose drops the window cannot join to a rule
// — check passed firewall.filter there and failed drops.vip_flows with a
// listing of the ruleset. check fails firewall.filter alone, even as a
// static snapshot, and its first fix line turns vs.conntrack on — the
// kernel's documented switch for stateful rules on IPVS traffic — where it
// told the operator to delete the rule. Run as printed, the client works
// with the firewall kept, and check finds nothing failing on that LB.
func TestGuestFirewallStatefulTwoArm(t *testing.T) {
	for _, tt := range []struct {
		name, ruleset string
		rules         int // the firewall's rules, kept by the fix
	}{
		{"invalid drops", "add table inet fw; " +
			"add chain inet fw input { type filter hook input priority filter; }; add rule inet fw input ct state invalid counter drop; " +
			"add chain inet fw forward { type filter hook forward priority filter; }; add rule inet fw forward ct state invalid counter drop", 2},
		{"hardened", "add table inet fw; " +
			"add chain inet fw input { type filter hook input priority filter; policy drop; }; add rule inet fw input ct state established,related accept; " +
			"add rule inet fw input ct state invalid drop; add rule inet fw input iif lo accept; add rule inet fw input tcp dport 8085 accept; " +
			"add chain inet fw forward { type filter hook forward priority filter; policy drop; }; add rule inet fw forward ct state established,related accept; " +
			"add rule inet fw forward ct state invalid drop", 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, h := twoArmLab(t)
			// Half-open connections the fault left behind: the real gives
			// up on their SYN-ACKs within 3 s, not a minute, so the check
			// after the fix watches the fixed LB, not their last
			// retransmissions.
			testkit.Run(t, l.Real, "sysctl", "-w", "net.ipv4.tcp_synack_retries=1")
			if res := answered(h); !res.OK {
				t.Fatalf("client → %s before the fault: %v, want an answer", h.vip, res.Err)
			}
			testkit.Run(t, l.LB, "nft", tt.ruleset)
			if res := h.client(); res.OK {
				t.Fatalf("client → %s after the fault: answered, want it broken", h.vip)
			}
			sysctlFix := l.LB.ExecPrefix() + "sysctl -w net.ipv4.vs.conntrack=1"
			r, code := runBinary(t, "check", "--netns", l.LB.Name, "--watch", "0", "-o", "json")
			if f := findingOf(*r, "firewall.filter"); code != 1 || f.Status != checks.Fail || len(f.Fix) == 0 || f.Fix[0] != sysctlFix {
				t.Errorf("check --watch 0 = exit %d, firewall.filter %s %q, fix %q; want exit 1, a fail and %q first\n%s", code, f.Status, f.Title, f.Fix, sysctlFix, findingsText(r))
			}

			r, code = checkWithTraffic(t, h)
			f := findingOf(*r, "firewall.filter")
			if fails := failing(r); code != 1 || !slices.Equal(fails, []string{"firewall.filter"}) {
				t.Fatalf("check after the fault = exit %d, failing %v, want exit 1 and firewall.filter alone\n%s", code, fails, findingsText(r))
			}
			t.Logf("firewall.filter: %s %q (%s)\n  evidence %v\n  fix %q", f.Status, f.Title, f.Reason, f.Evidence, f.Fix)
			if len(f.Fix) == 0 || f.Fix[0] != sysctlFix || !slices.Contains(f.Remedies, checks.Remedy{Sysctl: "net.ipv4.vs.conntrack", Value: "1"}) || !strings.Contains(f.Title, "nft inet fw forward") {
				t.Fatalf("firewall.filter title %q, fix %q, remedies %+v; want the forward chain's rule or policy named and %q first, as a remedy", f.Title, f.Fix, f.Remedies, sysctlFix)
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
			if out := testkit.Run(t, l.LB, "nft", "-a", "list", "table", "inet", "fw"); strings.Count(out, "# handle") != tt.rules+3 { // the table, two chains
				t.Errorf("the fix changed the firewall; want its %d rules kept:\n%s", tt.rules, out)
			}
		})
	}
}
