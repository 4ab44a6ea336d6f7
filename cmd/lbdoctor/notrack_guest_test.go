//go:build guest

package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// An operator exempts the VIP from conntrack (an nft `notrack` in a
// prerouting chain at raw priority, the usual tuning for a busy VIP) on a
// one-arm full NAT: its flows are never tracked, so the `-m ipvs`
// MASQUERADE never applies and the real answers the clients directly.
// check fails nat.return_path alone naming the notrack rule — as a static
// snapshot too — where it blamed the SNAT rule and printed the SNAT and
// vs.conntrack the LB already had; the fix, run as printed, deletes the
// rule and the client works again.
func TestGuestNotrackOneArm(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 2)
	testkit.Run(t, l.LB, "nft", "add table ip raw; add chain ip raw pre { type filter hook prerouting priority raw; }; "+
		"add rule ip raw pre ip daddr "+l.VIP.String()+" tcp dport 8085 counter notrack")
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); res.OK {
		t.Fatalf("client → %s with the VIP untracked = answered, want no answer", vip)
	}
	const title = "requests to TCP 10.1.0.6:8085 are untracked"
	r, code := runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "0", "-o", "json")
	if f := findingOf(*r, "nat.return_path"); code != 1 || f.Status != "fail" || !strings.Contains(f.Title, title) {
		t.Errorf("check --watch 0 = exit %d, nat.return_path %s %q; want exit 1 and a fail %q\n%s", code, f.Status, f.Title, title, findingsText(r))
	}

	r, code = checkUnderTraffic(t, l, vip)
	f := findingOf(*r, "nat.return_path")
	if fails := failing(r); code != 1 || !slices.Equal(fails, []string{"nat.return_path"}) || !strings.Contains(f.Title, title) {
		t.Fatalf("check = exit %d, failing %v, nat.return_path %q; want exit 1, nat.return_path alone failing with %q\n%s", code, fails, f.Title, title, findingsText(r))
	}
	t.Logf("nat.return_path: %s %q (%s)\n  evidence %v\n  fix %q", f.Status, f.Title, f.Reason, f.Evidence, f.Fix)
	if len(f.Fix) == 0 || !strings.Contains(f.Fix[0], "nft delete rule ip raw pre handle") {
		t.Fatalf("nat.return_path fix %q, want the notrack rule deleted first", f.Fix)
	}
	var fix []string
	for _, line := range f.Fix {
		if !strings.HasPrefix(line, "#") {
			fix = append(fix, line)
		}
	}
	runFixes(t, l, fix)
	testkit.Connect(t, l, vip, 2)
	r, code = checkUnderTraffic(t, l, vip)
	if st := statusOf(t, r, "nat.return_path"); code != 0 || st != "pass" {
		t.Errorf("after the fix: check = exit %d, nat.return_path %s; want exit 0 and pass\n%s", code, st, findingsText(r))
	}
}
