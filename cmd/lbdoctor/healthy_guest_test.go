//go:build guest

package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// healthyLB is a working load balancer built as an operator would: the LB's
// namespace, the client that uses it and how one client exchange is made.
type healthyLB struct {
	lb     netns.Target
	vip    netip.AddrPort
	client func() lab.ProbeResult
}

// Healthy LBs: zero false failures. Each topology is built with the
// commands an operator types, shown to work from the client, then checked
// with check's default window while a client keeps using the VIP: no
// finding may fail.
func TestGuestHealthyLBs(t *testing.T) {
	tests := []struct {
		name  string
		build func(t *testing.T) healthyLB
	}{
		{"one-arm-legacy-ipvs-masquerade", oneArmLegacyMasq},
		{"one-arm-udp-nft-ct-original", oneArmUDPNft},
		{"one-arm-iptables-nft-two-reals", oneArmNftTwoReals},
		{"two-arm-kube-ipvs0", func(t *testing.T) healthyLB { return twoArmKubeIPVS(t, false) }},
		{"two-arm-kube-ipvs0-send-redirects-default", func(t *testing.T) healthyLB { return twoArmKubeIPVS(t, true) }},
		{"two-arm-ipv6", twoArmIPv6},
		{"one-arm-ipv6-ip6tables-masquerade", oneArmIPv6Masq},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.build(t)
			// The first exchange resolves every neighbour on the way; on a
			// loaded TCG guest that may take more than one try.
			res := h.client()
			for try := 1; !res.OK && try < 3; try++ {
				res = h.client()
			}
			if !res.OK {
				t.Fatalf("client → %s: %v in 3 tries, want an answer (the LB is built wrong)", h.vip, res.Err)
			}
			// The default window (3 s) with its health probes of the reals.
			args := []string{"check", "--netns", h.lb.Name, "-o", "json"}
			traffic := testkit.StartTraffic(t, 20*time.Millisecond, h.client)
			r, code := runBinary(t, args...)
			ok, failed, firstErr := traffic.Stop()
			// A healthy LB answers; on a one-CPU TCG guest that shares a
			// loaded host, one exchange in hundreds may still time out
			// (seen twice, kube-ipvs0 LBs, 1 of ~750): up to 1% is said,
			// more fails.
			switch {
			case ok == 0 || failed*100 > ok+failed:
				t.Errorf("client → %s during the window: %d answered, %d not (first: %v), want every exchange answered", h.vip, ok, failed, firstErr)
			case failed > 0:
				t.Logf("client → %s during the window: %d answered, %d not (first: %v)", h.vip, ok, failed, firstErr)
			}
			var fails []string
			for _, f := range r.Findings {
				if f.Status == checks.Fail {
					fails = append(fails, f.ID)
				}
			}
			if code != 0 || len(fails) > 0 {
				t.Errorf("lbdoctor %s = exit %d, failing %v, want exit 0 and no failure on a healthy LB\n%s", strings.Join(args, " "), code, fails, findingsText(r))
			} else {
				t.Logf("exit 0, verdict %s, %d exchanges during the window\n%s", r.Verdict, ok, findingsText(r))
			}
		})
	}
}

// findingsText lists every finding with what it rests on, for a failure message.
func findingsText(r *report.Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "  %-4s %s: %s\n", f.Status, f.ID, f.Title)
		if f.Reason != "" {
			fmt.Fprintf(&b, "       reason: %s\n", f.Reason)
		}
		for _, e := range f.Evidence {
			fmt.Fprintf(&b, "       - %s\n", e)
		}
	}
	for probe, e := range r.Errors {
		fmt.Fprintf(&b, "  error %s: %s\n", probe, e)
	}
	return b.String()
}

// exchangeTimeout bounds one client exchange: a SYN retransmitted once on a
// loaded TCG guest still makes it; a path that drops does not.
const exchangeTimeout = 5 * time.Second

// tcpClient makes one TCP exchange from the lab's client to vip.
func tcpClient(l *lab.Lab, vip netip.AddrPort) func() lab.ProbeResult {
	return func() lab.ProbeResult { return lab.Probe(context.Background(), l.Client, vip, exchangeTimeout) }
}

// oneArmLegacyMasq: the seed's fixed LB. One segment; SNAT by an
// iptables-legacy `-m ipvs` MASQUERADE, which needs vs.conntrack=1.
func oneArmLegacyMasq(t *testing.T) healthyLB {
	l := testkit.Lab(t, lab.OneArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", l.RealIP.String()+":8085", "-m")
	testkit.Run(t, l.LB, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs",
		"--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.vs.conntrack=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=1")
	return healthyLB{lb: l.LB, vip: vip, client: tcpClient(l, vip)}
}

// oneArmUDPNft: a UDP service whose SNAT is a native nft masquerade keyed
// on conntrack's original destination (the VIP before IPVS rewrote it).
func oneArmUDPNft(t *testing.T) healthyLB {
	l := testkit.Lab(t, lab.OneArm)
	srv, err := lab.ServeUDP(l.Real, ":8085")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-u", vip.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-u", vip.String(), "-r", l.RealIP.String()+":8085", "-m")
	testkit.Run(t, l.LB, "nft", fmt.Sprintf(`add table ip lb
add chain ip lb post { type nat hook postrouting priority srcnat; }
add rule ip lb post ct original ip daddr %s ct original protocol udp ct original proto-dst %d counter masquerade
`, vip.Addr(), vip.Port()))
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.vs.conntrack=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=1")
	return healthyLB{lb: l.LB, vip: vip, client: func() lab.ProbeResult {
		return lab.ProbeUDP(context.Background(), l.Client, vip, exchangeTimeout)
	}}
}

// oneArmNftTwoReals: two real servers, round robin, SNAT by an `-m ipvs`
// MASQUERADE written through iptables-nft (nf_tables, not x_tables).
func oneArmNftTwoReals(t *testing.T) healthyLB {
	l := testkit.Lab(t, lab.OneArm)
	real2IP := netip.MustParseAddr("10.1.0.51")
	real2, err := l.AddReal(real2IP)
	if err != nil {
		t.Fatalf("add a second real server: %v", err)
	}
	testkit.Serve(t, l.Real, ":8085")
	testkit.Serve(t, real2, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	for _, r := range []netip.Addr{l.RealIP, real2IP} {
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", r.String()+":8085", "-m")
	}
	testkit.Run(t, l.LB, "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs",
		"--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.vs.conntrack=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=1")
	return healthyLB{lb: l.LB, vip: vip, client: tcpClient(l, vip)}
}

// twoArmKubeIPVS is kube-proxy's IPVS mode: the service address on the
// dummy link kube-ipvs0, which is left DOWN (a local address all the same),
// the reals behind the LB with the LB as their gateway, no SNAT. With
// redirects it leaves send_redirects at the kernel's default (1); without,
// it turns them off as a careful operator would.
func twoArmKubeIPVS(t *testing.T, redirects bool) healthyLB {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.MustParseAddrPort("10.96.0.10:8085")
	testkit.Run(t, l.LB, "ip", "addr", "del", l.VIP.String()+"/32", "dev", "eth0")
	testkit.Run(t, l.LB, "ip", "link", "add", "kube-ipvs0", "type", "dummy")
	testkit.Run(t, l.LB, "ip", "addr", "add", vip.Addr().String()+"/32", "dev", "kube-ipvs0")
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", l.RealIP.String()+":8085", "-m")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.vs.conntrack=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=1")
	if !redirects {
		testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.conf.all.send_redirects=0")
		testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.conf.eth0.send_redirects=0")
		testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.conf.eth1.send_redirects=0")
	} else if v := strings.TrimSpace(testkit.Run(t, l.LB, "sysctl", "-n", "net.ipv4.conf.all.send_redirects")); v != "1" {
		t.Fatalf("net.ipv4.conf.all.send_redirects = %s in a new namespace, want the kernel default 1", v)
	}
	if out := testkit.Run(t, l.LB, "ip", "link", "show", "kube-ipvs0"); strings.Contains(out, ",UP") || strings.Contains(out, "<UP") {
		t.Fatalf("kube-ipvs0 is up, want it DOWN as kube-proxy leaves it:\n%s", out)
	}
	testkit.Run(t, l.Client, "ip", "route", "add", "10.96.0.0/12", "via", l.LBIP.String())
	return healthyLB{lb: l.LB, vip: vip, client: tcpClient(l, vip)}
}

// v6Addr is an IPv6 address (CIDR) on an interface of a lab host.
type v6Addr struct {
	ns        netns.Target
	dev, addr string
}

// ipv6Hosts gives the lab's hosts IPv6 addresses, usable at once (no
// duplicate address detection to wait for).
func ipv6Hosts(t *testing.T, addrs ...v6Addr) {
	t.Helper()
	for _, a := range addrs {
		// DAD is skipped only when both "all" and the interface say so.
		testkit.Run(t, a.ns, "sysctl", "-w", "net.ipv6.conf.all.accept_dad=0")
		testkit.Run(t, a.ns, "sysctl", "-w", "net.ipv6.conf."+a.dev+".accept_dad=0")
		testkit.Run(t, a.ns, "ip", "-6", "addr", "add", a.addr, "dev", a.dev)
	}
}

// oneArmIPv6Masq is the seed's fixed LB in IPv6: one segment, SNAT by an
// ip6tables `-m ipvs` MASQUERADE (iptables-nft), vs.conntrack=1, IPv6
// forwarding on and IPv4 forwarding off.
func oneArmIPv6Masq(t *testing.T) healthyLB {
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.MustParseAddrPort("[fd00:1::6]:8085")
	ipv6Hosts(t, v6Addr{l.Client, "eth0", "fd00:1::3/64"}, v6Addr{l.LB, "eth0", "fd00:1::5/64"},
		v6Addr{l.LB, "eth0", "fd00:1::6/128"}, v6Addr{l.Real, "eth0", "fd00:1::50/64"})
	testkit.Serve(t, l.Real, "[::]:8085")
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", "[fd00:1::50]:8085", "-m")
	testkit.Run(t, l.LB, "ip6tables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs",
		"--vaddr", vip.Addr().String(), "--vport", "8085", "-j", "MASQUERADE")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.vs.conntrack=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv6.conf.all.forwarding=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=0")
	return healthyLB{lb: l.LB, vip: vip, client: tcpClient(l, vip)}
}

// twoArmIPv6 is an IPv6-only two-arm service: the LB forwards IPv6
// (net.ipv6.conf.all.forwarding=1) and leaves IPv4 forwarding off, as an
// operator of an IPv6 service would.
func twoArmIPv6(t *testing.T) healthyLB {
	l := testkit.Lab(t, lab.TwoArm)
	vip := netip.MustParseAddrPort("[fd00:1::6]:8085")
	realIP := netip.MustParseAddr("fd00:2::50")
	ipv6Hosts(t, v6Addr{l.Client, "eth0", "fd00:1::3/64"}, v6Addr{l.LB, "eth0", "fd00:1::5/64"},
		v6Addr{l.LB, "eth0", vip.Addr().String() + "/128"}, v6Addr{l.LB, "eth1", "fd00:2::1/64"}, v6Addr{l.Real, "eth1", realIP.String() + "/64"})
	testkit.Run(t, l.Real, "ip", "-6", "route", "add", "default", "via", "fd00:2::1")
	testkit.Serve(t, l.Real, "[::]:8085")
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", netip.AddrPortFrom(realIP, 8085).String(), "-m")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv6.conf.all.forwarding=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=0")
	return healthyLB{lb: l.LB, vip: vip, client: tcpClient(l, vip)}
}
