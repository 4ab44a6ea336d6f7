//go:build guest

package window_test

import (
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// The same on real IPVS (Debian's 6.1): the seed's fixed one-arm LB (an
// -m ipvs MASQUERADE rule), its iptables-legacy FORWARD policy DROP set
// back to ACCEPT one second into the window. Until then the real's
// replies, de-SNATed to the client in PREROUTING, die in filter FORWARD
// before IPVS's FORWARD hook. The first read fails firewall.filter
// (statically, and on the drops joined to the policy), the last passes
// naming the fix; drops.vip_flows warns "fixed during the window", and
// nothing fails.
func TestGuestWindowFilterFixedDuringWindow(t *testing.T) {
	testkit.Tracefs(t)
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 1)
	filterFix{
		name: "iptables-legacy FORWARD policy DROP set to ACCEPT 1 s in", tool: "iptables-legacy",
		fault: []string{"-P", "FORWARD", "DROP"}, fix: []string{"-P", "FORWARD", "ACCEPT"}, fixAfter: time.Second,
		wantFilter: checks.Pass, wantDrops: checks.Warn,
		wantTitle: "no packet filter drops the selected flows: iptables-legacy filter FORWARD policy now ACCEPT",
		wantFact:  "; fixed during the window (now no packet filter drops the selected flows: iptables-legacy filter FORWARD policy now ACCEPT)",
	}.watch(t, l, vip, func(fs []checks.Finding) {
		for _, f := range fs {
			if f.Status == checks.Fail {
				t.Errorf("the window of the fix also fails %s: %s (%s) %v", f.ID, f.Title, f.Reason, f.Evidence)
			}
		}
	})
}
