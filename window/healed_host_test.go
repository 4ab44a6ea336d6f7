package window_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/window"
)

// A filter fault fixed during check's window, on a one-arm nft DNAT LB
// (forwarding on) under traffic from the moment the window opens: the
// operator sets the FORWARD policy back to ACCEPT, or deletes the DROP
// rule (iptables-nft, native nft), one second into a 3 s window. The drops made before the fix are
// joined to the policy or rule as the window's first read had it:
// firewall.filter does not fail (it passes, naming the fix) and
// drops.vip_flows warns "fixed during the window" (before: "joined to no
// DROP or REJECT rule nor DROP policy", and drops.vip_flows failed). A
// window wholly after the fix passes; one wholly during the fault fails
// firewall.filter, naming the policy.
func TestWindowFilterFixedDuringWindow(t *testing.T) {
	l, vip := forwardingDNATLab(t)
	// The real's replies, dropped in forward once its flow is confirmed:
	// the drops are attributed to the VIP's flow (a SYN dropped in
	// forward is not yet: conntrack confirms it after the hook).
	replies := []string{"FORWARD", "-s", l.RealIP.String() + "/32", "-p", "tcp", "-m", "tcp", "--sport", "8085", "-j", "DROP"}
	tests := []filterFix{
		{
			name: "iptables-legacy FORWARD policy DROP set to ACCEPT 1 s in", tool: "iptables-legacy",
			fault: []string{"-P", "FORWARD", "DROP"}, fix: []string{"-P", "FORWARD", "ACCEPT"}, fixAfter: time.Second,
			wantFilter: checks.Pass, wantDrops: checks.Warn,
			wantTitle: "no packet filter drops the selected flows: iptables-legacy filter FORWARD policy now ACCEPT",
			wantFact:  "; fixed during the window (now no packet filter drops the selected flows: iptables-legacy filter FORWARD policy now ACCEPT)",
		},
		{
			name: "a window wholly after the fix", tool: "iptables-legacy",
			wantFilter: checks.Skip, wantDrops: checks.Pass,
			wantFact: "0 drops of the selected flows",
		},
		{
			name: "iptables-legacy FORWARD policy DROP the whole window", tool: "iptables-legacy",
			fault: []string{"-P", "FORWARD", "DROP"}, fix: []string{"-P", "FORWARD", "ACCEPT"},
			wantFilter: checks.Fail, wantDrops: checks.Warn,
			wantTitle: "a packet filter drops the selected services' flows: iptables-legacy filter FORWARD policy DROP",
			wantFact:  "iptables-legacy filter FORWARD policy DROP (hook forward) drops requests to",
		},
		{
			name: "iptables-nft FORWARD rule on the real's replies deleted 1 s in", tool: "iptables-nft",
			fault: append([]string{"-A"}, replies...), fix: append([]string{"-D"}, replies...), fixAfter: time.Second,
			wantFilter: checks.Pass, wantDrops: checks.Warn,
			wantTitle: `no packet filter drops the selected flows: iptables-nft filter FORWARD rule "-A FORWARD -s 10.1.0.50/32 -p tcp -m tcp --sport 8085 -j DROP" deleted`,
			wantFact:  `; fixed during the window (now no packet filter drops the selected flows: iptables-nft filter FORWARD rule "-A FORWARD -s 10.1.0.50/32 -p tcp -m tcp --sport 8085 -j DROP" deleted)`,
		},
		{
			name: "native nft forward rule on the real's replies deleted with its table 1 s in", tool: "nft",
			fault: []string{"add table inet lbdhealed\nadd chain inet lbdhealed filter_fwd { type filter hook forward priority filter; }\n" +
				"add rule inet lbdhealed filter_fwd ip saddr " + l.RealIP.String() + " tcp sport 8085 counter drop\n"},
			fix: []string{"delete table inet lbdhealed"}, fixAfter: time.Second,
			wantFilter: checks.Pass, wantDrops: checks.Warn,
			wantTitle: `no packet filter drops the selected flows: nft inet lbdhealed filter_fwd rule "ip saddr 10.1.0.50 tcp sport 8085 counter packets 0 bytes 0 drop" deleted`,
			wantFact:  `; fixed during the window (now no packet filter drops the selected flows: nft inet lbdhealed filter_fwd rule "ip saddr 10.1.0.50 tcp sport 8085 counter packets 0 bytes 0 drop" deleted)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.watch(t, l, vip, nil) })
	}
}

// filterFix is a filter fault of the LB and its fix, applied by an
// operator's command during a window or after it.
type filterFix struct {
	name       string
	fault, fix []string // arguments of tool; no fault: none
	tool       string
	fixAfter   time.Duration // 0: the fault stays the whole window
	wantFilter checks.Status
	wantDrops  checks.Status
	wantTitle  string // in firewall.filter's title
	wantFact   string // in drops.vip_flows' evidence, or firewall.filter's when it fails
}

// watch applies the fault, runs a 3 s window with the drop tracer on vip
// while the client connects every 100 ms from the window's opening, fixes
// the fault fixAfter into it (else after it) and judges the window:
// firewall.filter and drops.vip_flows as wanted, and, with also, the
// other findings.
func (tt filterFix) watch(t *testing.T, l *lab.Lab, vip netip.AddrPort, also func([]checks.Finding)) {
	t.Helper()
	fixed := make(chan error, 1) // the fix, applied during the window or after it
	if tt.fault != nil {
		testkit.Run(t, l.LB, tt.tool, tt.fault...)
		t.Cleanup(func() {
			select {
			case <-fixed:
			default: // not applied in the window: the next case starts clean
				testkit.Run(t, l.LB, tt.tool, tt.fix...)
			}
		})
	}
	var traffic *testkit.Traffic
	opt := window.Options{Length: 3 * time.Second, Drops: true, Opened: func(time.Duration) {
		traffic = testkit.StartTraffic(t, 100*time.Millisecond, func() lab.ProbeResult {
			return lab.Probe(context.Background(), l.Client, vip, 300*time.Millisecond)
		})
		if tt.fixAfter > 0 {
			go func() {
				time.Sleep(tt.fixAfter)
				out, err := testkit.Output(l.LB, tt.tool, tt.fix...)
				if err != nil {
					err = fmt.Errorf("%s %s: %w: %s", tt.tool, strings.Join(tt.fix, " "), err, out)
				}
				fixed <- err
			}()
		}
	}}
	sel := probes.Selector{VIP: vip}
	snap, err := window.Run(context.Background(), l.LB, sel, opt)
	if traffic == nil {
		t.Fatalf("Run(%s): the window never opened (err %v)", vip, err)
	}
	ok, failed, _ := traffic.Stop()
	if tt.fixAfter > 0 {
		if err := <-fixed; err != nil {
			t.Fatal(err)
		}
		fixed <- nil // applied
	}
	if err != nil {
		t.Fatal(err)
	}
	if snap.Drops == nil {
		t.Fatalf("Run(%s): drops %+v, errors %v; want the drops traced", vip, snap.Drops, snap.Errors)
	}
	fs := checks.Run(snap, sel)
	fw, d := statusOf(fs, "firewall.filter"), statusOf(fs, "drops.vip_flows")
	judged := d
	if tt.wantFilter == checks.Fail {
		judged = fw
	}
	var facts []string
	for _, e := range judged.Evidence {
		facts = append(facts, e.Fact)
	}
	t.Logf("traffic %d ok, %d failed; firewall.filter %s %q; drops.vip_flows %s %q", ok, failed, fw.Status, fw.Title, d.Status, d.Title)
	if fw.Status != tt.wantFilter || !strings.Contains(fw.Title, tt.wantTitle) {
		t.Errorf("firewall.filter = %s %q (%s), want %s with %q", fw.Status, fw.Title, fw.Reason, tt.wantFilter, tt.wantTitle)
	}
	if d.Status != tt.wantDrops || !strings.Contains(strings.Join(facts, "\n"), tt.wantFact) {
		t.Errorf("drops.vip_flows = %s %q; %s evidence:\n%s\nwant drops.vip_flows %s, %q in the evidence", d.Status, d.Title, judged.ID, strings.Join(facts, "\n"), tt.wantDrops, tt.wantFact)
	}
	if tt.fault != nil && tt.fixAfter > 0 && (ok == 0 || failed == 0) {
		t.Errorf("the client's connections: %d ok, %d failed; want some of each (dropped before the fix, answered after)", ok, failed)
	}
	if also != nil {
		also(fs)
	}
}

// forwardingDNATLab is a healthy one-arm nft DNAT + masquerade LB
// (testkit.DNATLab with forwarding back on), ready for the drop tracer.
func forwardingDNATLab(t *testing.T) (*lab.Lab, netip.AddrPort) {
	t.Helper()
	testkit.Tracefs(t)
	l, vip := testkit.DNATLab(t, 1)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	return l, vip
}
