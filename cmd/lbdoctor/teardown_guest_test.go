//go:build guest

package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A new user's sequence on a one-arm LB: an ipvsadm service A with
// forwarding off, check --fix (source NAT for A, ip_forward, vs.conntrack,
// send_redirects, recorded as made for A), setup of a second service B,
// then teardown --vip B. A still answers the client: B's teardown keeps
// the sysctls and the rule --fix made for A, one line each saying why.
func TestGuestTeardownVIPKeepsFixedService(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	l := testkit.Lab(t, lab.OneArm)
	testkit.Serve(t, l.Real, ":8085")
	a := netip.AddrPortFrom(l.VIP, 8085)
	b := netip.AddrPortFrom(l.VIP.Next(), 80)
	real := netip.AddrPortFrom(l.RealIP, 8085).String()
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", a.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", a.String(), "-r", real, "-m")
	const n = 4
	if ok := clientTries(l, a, n); ok != 0 {
		t.Fatalf("before --fix %d of %d connections to %s answered, want none (forwarding off, no SNAT)", ok, n, a)
	}
	fix, code := testkit.RunLbdoctor(t, "check", "--netns", l.LB.Name, "--fix", "--yes", "--watch", "0")
	if code != 0 || !strings.Contains(fix, "net.ipv4.vs.conntrack=1") || !strings.Contains(fix, "net.ipv4.ip_forward=1") {
		t.Fatalf("check --fix --yes = exit %d, want 0 with ip_forward=1 and vs.conntrack=1 in its plan:\n%s", code, fix)
	}
	if ok := clientTries(l, a, n); ok != n {
		t.Fatalf("after --fix %d of %d connections to %s answered, want all:\n%s", ok, n, a, fix)
	}
	if out, code := testkit.RunLbdoctor(t, "setup", "--netns", l.LB.Name, "--vip", b.String(), "--real", real); code != 0 {
		t.Fatalf("setup --vip %s = exit %d:\n%s", b, code, out)
	}
	down, code := testkit.RunLbdoctor(t, "teardown", "--netns", l.LB.Name, "--vip", b.String())
	t.Logf("teardown --vip %s:\n%s", b, down)
	for _, want := range []string{
		"kept sysctl net.ipv4.ip_forward: ",
		"kept sysctl net.ipv4.vs.conntrack: ",
		fmt.Sprintf("TCP %s", a),
		fmt.Sprintf("made for %s, not %s", a, b), // A's source NAT rule
	} {
		if !strings.Contains(down, want) {
			t.Errorf("teardown --vip %s printed no %q:\n%s", b, want, down)
		}
	}
	if code != 0 || strings.Contains(down, "ip_forward=0") || strings.Contains(down, "vs.conntrack=0") {
		t.Errorf("teardown --vip %s = exit %d, want 0 and neither ip_forward=0 nor vs.conntrack=0 in its plan:\n%s", b, code, down)
	}
	if ok := clientTries(l, a, n); ok != n {
		t.Errorf("after teardown --vip %s, %d of %d connections to %s answered, want all", b, ok, n, a)
	}
	if ipvs := testkit.Run(t, l.LB, "ipvsadm", "-Ln"); strings.Contains(ipvs, b.String()) || !strings.Contains(ipvs, a.String()) {
		t.Errorf("after teardown --vip %s, IPVS =\n%s\nwant %s only", b, ipvs, a)
	}
}
