package window_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/window"
)

// A healthy one-arm LB (nft DNAT and masquerade, forwarding on) with
// send_redirects at the kernel's default, watched on every port of its VIP
// (as serve --vip ADDR does: no port filter, so ICMP is traced) under
// traffic. It forwards the real's replies back out of eth0, so the kernel
// sends the real ICMP redirects, and netfilter's NAT hook drops each in
// output (as it does wherever a nat table is, NATed flow or not).
// Those drops are the LB's own messages, not the flows' packets:
// drops.vip_flows passes and counts them in a line of its own, with the
// sysctls that stop them. (Before, it failed: "NETFILTER_DROP at
// nf_hook_slow in output" on "icmp 10.1.0.5 → 10.1.0.50".)
func TestWindowOwnRedirectsAreNotTheFlowsDrops(t *testing.T) {
	l, vip := forwardingDNATLab(t)
	ownRedirectsPass(t, l, vip)
}

// ownRedirectsPass watches every port of a one-arm LB's VIP (NAT, forwarding
// on, send_redirects at the kernel's default) under traffic and asserts
// that drops.vip_flows passes with the LB's dropped redirects to the real
// counted apart.
func ownRedirectsPass(t *testing.T, l *lab.Lab, vip netip.AddrPort) {
	t.Helper()
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.all.send_redirects", "1") // the kernel's default, whatever the host's
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.eth0.send_redirects", "1")
	snap := watchUnderTraffic(t, l, vip)
	sel := probes.Selector{VIP: netip.AddrPortFrom(vip.Addr(), 0)}
	if snap.Window == nil || snap.Drops == nil {
		t.Fatalf("Run(%s): window %+v, drops %+v, errors %v; want the drops traced", sel.VIPString(), snap.Window, snap.Drops, snap.Errors)
	}
	f := statusOf(checks.Run(snap, sel), "drops.vip_flows")
	var facts []string
	for _, e := range f.Evidence {
		facts = append(facts, e.Fact)
	}
	want := " of the LB's own ICMP redirects to real " + l.RealIP.String() + " were dropped: NETFILTER_DROP at nf_hook_slow"
	line := slices.IndexFunc(facts, func(s string) bool { return strings.Contains(s, want) })
	if f.Status != checks.Pass || line < 0 || !strings.Contains(facts[line], "send_redirects=0") {
		t.Errorf("drops.vip_flows = %s %q; want pass with a line %q naming send_redirects=0:\n%s", f.Status, f.Title, want, strings.Join(facts, "\n"))
	}
	var redirects uint64
	for _, c := range snap.Window.OwnRedirects {
		if !c.Redirect() || c.Src.Addr() != l.LBIP || c.Dst.Addr() != l.RealIP {
			t.Errorf("Window.OwnRedirects has %s %s → %s ICMP type %d, want only redirects from the LB %s to the real %s", c.ReasonName, c.Src, c.Dst, c.ICMPType, l.LBIP, l.RealIP)
		}
		redirects += c.Count
	}
	if redirects == 0 {
		t.Errorf("Window.OwnRedirects counted none; want the LB's redirects to the real that NAT dropped in output (IcmpOutRedirects moved by %d)", snap.Window.Deltas.SNMP["IcmpOutRedirects"])
	}
	for _, c := range snap.Drops.Drops {
		if c.Redirect() {
			t.Errorf("Snapshot.Drops has the redirect %s → %s (%s in %s); want it only in Window.OwnRedirects", c.Src, c.Dst, c.ReasonName, c.Hook)
		}
	}
}

// watchUnderTraffic runs a 3 s window on every port of vip with the drop
// tracer while the client connects through the LB every 200 ms, from the
// moment the window opens: the kernel spaces a host's redirects out
// (doubling the gap, at most 9 in a row, then 20 s of silence), and a
// tracer that takes seconds to load (the guest) must not miss them.
func watchUnderTraffic(t *testing.T, l *lab.Lab, vip netip.AddrPort) *probes.Snapshot {
	t.Helper()
	var traffic *testkit.Traffic
	opt := window.Options{Length: 3 * time.Second, Drops: true, Opened: func(time.Duration) {
		traffic = testkit.StartTraffic(t, 200*time.Millisecond, func() lab.ProbeResult {
			return lab.Probe(context.Background(), l.Client, vip, time.Second)
		})
	}}
	sel := probes.Selector{VIP: netip.AddrPortFrom(vip.Addr(), 0)}
	snap, err := window.Run(context.Background(), l.LB, sel, opt)
	if traffic == nil {
		t.Fatalf("Run(%s): the window never opened (err %v)", sel.VIPString(), err)
	}
	ok, failed, firstErr := traffic.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if failed > 0 || ok == 0 {
		t.Fatalf("the client's connections through the LB: %d ok, %d failed (%v); want all ok: the LB is healthy", ok, failed, firstErr)
	}
	return snap
}

func statusOf(fs []checks.Finding, id string) checks.Finding {
	for _, f := range fs {
		if f.ID == id {
			return f
		}
	}
	return checks.Finding{}
}
