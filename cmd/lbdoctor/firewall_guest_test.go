//go:build guest

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// checkUnderTraffic runs `check` (the default 3 s window) on the LB while
// the client tries the VIP throughout.
func checkUnderTraffic(t *testing.T, l *lab.Lab, vip netip.AddrPort) (*report.Report, int) {
	t.Helper()
	var r *report.Report
	var code int
	withTraffic(l, vip, func() { r, code = runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "-o", "json") })
	return r, code
}

// firewallFault is the rule for one packet-filter fault: the
// client works; the operator's commands break it; `check` fails
// firewall.filter and nothing else, with evidence naming wantIn; the
// finding's fix, run as printed, makes the id pass and the client work.
func firewallFault(t *testing.T, l *lab.Lab, vip netip.AddrPort, inject func(), wantIn ...string) {
	t.Helper()
	testkit.Connect(t, l, vip, 2)
	inject()
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); res.OK {
		t.Fatalf("after the fault the client still reaches %s", vip)
	}
	r, code := checkUnderTraffic(t, l, vip)
	var fw *checks.Finding
	for i, f := range r.Findings {
		if f.ID == "firewall.filter" {
			fw = &r.Findings[i]
		} else if f.Status == "fail" {
			t.Errorf("check also fails %s: %s (%s) %v", f.ID, f.Title, f.Reason, f.Evidence)
		} else if f.ID == "drops.vip_flows" {
			t.Logf("drops.vip_flows: %s %q (%s) %v fix %q", f.Status, f.Title, f.Reason, f.Evidence, f.Fix)
		}
	}
	if fw == nil {
		t.Fatalf("check has no firewall.filter finding: %+v", r.Findings)
	}
	ev := fmt.Sprint(fw.Evidence)
	t.Logf("firewall.filter: %s %q\n  evidence %s\n  fix %q\n  path %v", fw.Status, fw.Title, ev, fw.Fix, fw.Path)
	if code != 1 || fw.Status != "fail" || len(fw.Fix) == 0 {
		t.Fatalf("check = exit %d, firewall.filter %s %q fix %q; want exit 1 and a fail with a fix", code, fw.Status, fw.Title, fw.Fix)
	}
	for _, w := range wantIn {
		if !strings.Contains(ev, w) {
			t.Errorf("firewall.filter evidence %s\nwant %q in it", ev, w)
		}
	}
	runFixes(t, l, fw.Fix)
	testkit.Connect(t, l, vip, 2)
	r, code = checkUnderTraffic(t, l, vip)
	if got := statusOf(t, r, "firewall.filter"); got != "pass" || code != 0 {
		t.Errorf("after the fix: check = exit %d, firewall.filter %s; want exit 0 and pass (findings %+v)", code, got, r.Findings)
	}
}

// An INPUT rule on the VIP (iptables-legacy) drops the SYNs before IPVS's
// LOCAL_IN hook sees them: named statically, confirmed by the window's
// netfilter drops in input joined to the rule.
func TestGuestFirewallInputDropLegacy(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	firewallFault(t, l, vip, func() {
		testkit.Run(t, l.LB, "iptables-legacy", "-A", "INPUT", "-d", l.VIP.String(), "-p", "tcp", "--dport", "8085", "-j", "DROP")
	}, "iptables-legacy filter INPUT rule", "(hook input) drops requests to TCP "+vip.String(), "NETFILTER_DROP of the selected flows in input")
}

// A FORWARD policy DROP (iptables-nft) on a one-arm full NAT: the real's
// replies, de-SNATed to the client in PREROUTING, are forwarded and die in
// filter FORWARD before IPVS's FORWARD hook can rewrite them; the fix lets
// them through with an accept rule, the policy stays.
func TestGuestFirewallForwardPolicyNft(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	firewallFault(t, l, vip, func() {
		testkit.Run(t, l.LB, "iptables-nft", "-P", "FORWARD", "DROP")
	}, "iptables-nft filter FORWARD policy DROP", "drops replies of real "+l.RealIP.String()+":8085", "NETFILTER_DROP of the selected flows in forward")
	if out := testkit.Run(t, l.LB, "iptables-nft", "-S", "FORWARD"); !strings.Contains(out, "-P FORWARD DROP") {
		t.Errorf("the fix changed the policy; want an accept rule before it:\n%s", out)
	}
}

// A native nft output rule that rejects what IPVS sends one client's
// connections to the real (IPVS sends NAT'd requests through LOCAL_OUT):
// it matches on the client's address, so only the window's drops in
// output, joined to the rule by its counter, name it; the fix deletes it by
// handle.
func TestGuestFirewallOutputRejectNft(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	firewallFault(t, l, vip, func() {
		testkit.Run(t, l.LB, "nft", "add table inet f; add chain inet f out { type filter hook output priority 0; }; "+
			"add rule inet f out ip saddr "+l.ClientIP.String()+" ip daddr "+l.RealIP.String()+" tcp dport 8085 counter reject")
	}, "nft inet f out rule", "(hook output) drops requests IPVS sends to real "+l.RealIP.String()+":8085", "NETFILTER_DROP of the selected flows in output")
}

// runFixes runs fix commands as printed, through a shell. The guest's
// busybox `ip` has no `netns exec` (and its sh prefers its own applets to
// PATH): a shell function runs the command in the namespace with busybox's
// nsenter, as iproute2 would.
func runFixes(t *testing.T, l *lab.Lab, fixes []string) {
	t.Helper()
	shim := "ip() { if [ \"$1\" = netns ] && [ \"$2\" = exec ] && [ \"$3\" = " + shellquote.Quote(l.LB.Name) + " ]; then shift 3; " +
		"/bin/busybox nsenter --net=" + shellquote.Quote(l.LB.Path) + " \"$@\"; else /bin/busybox ip \"$@\"; fi; }\n"
	for _, fx := range fixes {
		if out, err := exec.Command("/bin/busybox", "sh", "-c", shim+fx).CombinedOutput(); err != nil {
			t.Fatalf("the fix %q: %v\n%s", fx, err, out)
		}
	}
}

// The usual host firewall in native nft: an input DROP policy after
// established/related, loopback and ssh accepts. A client's SYN opens its
// flow and comes from another host, so none of those rules takes it:
// check names the policy even as a static snapshot (--watch 0, no drop to
// join), where it passed before; the fix lets the VIP's port in above it.
func TestGuestFirewallHostPolicyNft(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	firewallFault(t, l, vip, func() {
		testkit.Run(t, l.LB, "nft", "add table inet fw; add chain inet fw input { type filter hook input priority 0; policy drop; }; "+
			"add rule inet fw input ct state established,related accept; add rule inet fw input iif lo accept; add rule inet fw input tcp dport 22 accept")
		r, code := runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "0", "-o", "json")
		if got := statusOf(t, r, "firewall.filter"); got != "fail" || code != 1 {
			t.Errorf("check --watch 0 = exit %d, firewall.filter %s; want exit 1 and fail (findings %+v)", code, got, r.Findings)
		}
	}, "nft inet fw input policy DROP", "(hook input) drops requests to TCP "+vip.String())
}
