//go:build guest

package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// Services an operator builds beside the usual one, on one one-arm lab
// with forwarding at the namespace's default (off), found by trying
// lbdoctor as a new user: a service with no real yet, whose SYNs IPVS
// itself drops (NETFILTER_DROP at nf_hook_slow in input), fails
// ipvs.reals_available alone (drops.vip_flows failed beside it, its fix a
// listing of INPUT rules); given a real on the LB itself — no SNAT, no
// forwarding needed — its client is answered and neither nat.return_path
// (it failed it as a real on the VIP's segment) nor sysctl.ip_forward fails.
func TestGuestOperatorLocalReal(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	local := netip.AddrPortFrom(l.LBIP, 8086)
	testkit.Serve(t, l.LB, local.String())
	vip := netip.AddrPortFrom(l.VIP, 8087)
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=0")
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	client := tcpClient(l, vip)
	args := []string{"check", "--netns", l.LB.Name, "--vip", vip.String(), "-o", "json"}
	check := func(t *testing.T) (*report.Report, int, []string) {
		traffic := testkit.StartTraffic(t, 50*time.Millisecond, client)
		r, code := runBinary(t, args...)
		traffic.Stop()
		var fails []string
		for _, f := range r.Findings {
			if f.Status == checks.Fail {
				fails = append(fails, f.ID)
			}
		}
		return r, code, fails
	}

	t.Run("no real", func(t *testing.T) {
		if res := client(); res.OK {
			t.Fatalf("client → %s with no real = answered, want refused", vip)
		}
		r, code, fails := check(t)
		if code != 1 || !slices.Equal(fails, []string{"ipvs.reals_available"}) {
			t.Errorf("lbdoctor %s = exit %d, failing %v, want exit 1 and ipvs.reals_available alone\n%s", strings.Join(args, " "), code, fails, findingsText(r))
		}
		if d := findingOf(*r, "drops.vip_flows"); d.Status == checks.Warn && !strings.Contains(d.Title, "ipvs.reals_available") {
			t.Errorf("drops.vip_flows = %s %q, want its drops explained by ipvs.reals_available", d.Status, d.Title)
		}
	})

	t.Run("a local real", func(t *testing.T) {
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", local.String(), "-m")
		res := client()
		for try := 1; !res.OK && try < 3; try++ {
			res = client()
		}
		if !res.OK {
			t.Fatalf("client → %s via local real %s: %v, want an answer", vip, local, res.Err)
		}
		r, code, fails := check(t)
		// The local server's own socket frees (NOT_SPECIFIED at
		// sk_stream_kill_queues, tcp_v4_rcv on 6.1), which a remote real
		// makes in its own namespace, are said, not failed.
		if len(fails) > 0 || code > 1 {
			t.Errorf("lbdoctor %s = exit %d, failing %v, want nat.return_path and sysctl.ip_forward passing: the local real answers without SNAT or forwarding\n%s", strings.Join(args, " "), code, fails, findingsText(r))
		} else {
			t.Logf("exit %d, verdict %s\n%s", code, r.Verdict, findingsText(r))
		}
	})
}

// An operator's source-NAT rule that covers the VIP but only some clients
// (`-s 10.99.0.0/16`: a subnet copied from another LB): the lab's client is
// not one of them, so IPVS's DNAT alone applies and the real answers it
// directly. check named a covering rule and passed nat.return_path
// statically, and conntrack.stale_flows said the client's flows predated the
// rule (deleting them changes nothing); now nat.return_path fails naming
// the client and the rule, nothing else fails, and its fix, pasted, works.
func TestGuestOperatorSNATNarrowed(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); res.OK {
		t.Fatalf("client %s → %s answered with SNAT narrowed to 10.99.0.0/16, want no answer", l.ClientIP, vip)
	}
	r, code := checkUnderTraffic(t, l, vip)
	var fails []string
	for _, f := range r.Findings {
		if f.Status == checks.Fail {
			fails = append(fails, f.ID)
		}
	}
	f := findingOf(*r, "nat.return_path")
	if code != 1 || !slices.Equal(fails, []string{"nat.return_path"}) || !strings.Contains(f.Title, "does not match them") || !strings.Contains(fmt.Sprint(f.Evidence), l.ClientIP.String()) {
		t.Fatalf("check = exit %d, failing %v, nat.return_path %q; want exit 1, nat.return_path alone, its rule not matching client %s\n%s", code, fails, f.Title, l.ClientIP, findingsText(r))
	}
	t.Logf("nat.return_path: %s\n  fix %q", f.Title, f.Fix)
	runFixes(t, l, f.Fix)
	testkit.Connect(t, l, vip, 2)
	r, code = checkUnderTraffic(t, l, vip)
	if got := statusOf(t, r, "nat.return_path"); got != "pass" || code > 1 {
		t.Errorf("after the fix: check = exit %d, nat.return_path %s; want pass\n%s", code, got, findingsText(r))
	}
}
