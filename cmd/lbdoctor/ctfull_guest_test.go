//go:build guest

package main

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A one-arm full NAT whose conntrack table is full (nf_conntrack_max, the
// host's, below the flows the LB holds): conntrack drops every new SYN in
// prerouting, before IPVS sees it. check fails conntrack.table alone and
// drops.vip_flows points at it, where it failed beside it blaming a
// packet-filter rule and listing `iptables -t filter -nvL PREROUTING`, a
// chain that does not exist. The fix, run as printed, grows the table; the
// client works and check fails nothing — conntrack.table warns that the
// counters, which count since the namespace started, saw drops before the
// window, where it failed for as long as the namespace lived.
func TestGuestConntrackFull(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	// Closed flows leave the table within a second (the LB's own
	// namespace settings), so a grown table keeps room under the
	// client's paced traffic.
	testkit.Sysctl(t, l.LB, "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
	testkit.Sysctl(t, l.LB, "net.netfilter.nf_conntrack_tcp_timeout_close", "1")
	testkit.Connect(t, l, vip, 2)
	// Ten long-lived connections through a second service (an echo server
	// keeps them open): established flows the table must keep. A limit of
	// ten leaves no room; twice that, the fix, leaves room for the paced
	// traffic.
	long := netip.AddrPortFrom(l.VIP, 8086)
	echo(t, l.Real, ":8086")
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", long.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", long.String(), "-r", netip.AddrPortFrom(l.RealIP, 8086).String(), "-m")
	testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "8086", "-j", "MASQUERADE")
	testkit.Run(t, l.LB, "conntrack", "-F")
	for i := 0; i < 10; i++ {
		c := idleConn(t, l.Client, long)
		t.Cleanup(func() { c.Close() })
	}
	time.Sleep(1500 * time.Millisecond)                        // the closed flows of the first connections expire
	const maxPath = "/proc/sys/net/netfilter/nf_conntrack_max" // the host's: global
	old, err := os.ReadFile(maxPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(maxPath, old, 0o644) })
	if err := os.WriteFile(maxPath, []byte("10"), 0o644); err != nil {
		t.Fatal(err)
	}
	client := tcpClient(l, vip)
	if res := client(); res.OK {
		t.Fatalf("client → %s with the table full = answered, want no answer", vip)
	}
	args := []string{"check", "--netns", l.LB.Name, "--vip", vip.String(), "-o", "json"}
	check := func() (*report.Report, int) {
		traffic := testkit.StartTraffic(t, 500*time.Millisecond, client)
		defer traffic.Stop()
		return runBinary(t, args...)
	}

	r, code := check()
	ct, d := findingOf(*r, "conntrack.table"), findingOf(*r, "drops.vip_flows")
	if fails := failing(r); code != 1 || !slices.Equal(fails, []string{"conntrack.table"}) {
		t.Fatalf("check with the table full = exit %d, failing %v, want exit 1 and conntrack.table alone\n%s", code, fails, findingsText(r))
	}
	t.Logf("conntrack.table: %s %q %v fix %q\ndrops.vip_flows: %s %q (%s) fix %q", ct.Status, ct.Title, ct.Evidence, ct.Fix, d.Status, d.Title, d.Reason, d.Fix)
	if d.Status != "warn" || !strings.Contains(d.Title, "the cause: conntrack.table") || strings.Contains(strings.Join(d.Fix, "\n"), "-t filter -nvL PREROUTING") {
		t.Errorf("drops.vip_flows = %s %q, fix %q; want a warning whose cause is conntrack.table, and no filter PREROUTING listing", d.Status, d.Title, d.Fix)
	}

	runFixes(t, l, ct.Fix)
	if res := answered(healthyLB{lb: l.LB, vip: vip, client: client}); !res.OK {
		t.Fatalf("client → %s after %q: %v, want an answer", vip, ct.Fix, res.Err)
	}
	r, code = check()
	if fails := failing(r); code != 0 || len(fails) > 0 {
		t.Errorf("check after the fix = exit %d, failing %v, want exit 0: the table has room now\n%s", code, fails, findingsText(r))
	} else if st := statusOf(t, r, "conntrack.table"); st != "warn" {
		t.Errorf("conntrack.table after the fix = %s, want warn: it dropped before the window\n%s", st, findingsText(r))
	}
}
