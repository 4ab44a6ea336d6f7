package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// With no rule tool on PATH, a namespace whose rules exist in x_tables and
// nf_tables cannot be judged: the rule checks skip naming what was not
// read, and every output lists the rules probe under its errors.
func TestCheckWithoutRuleTools(t *testing.T) {
	ns := testkit.Netns(t, "notools")
	testkit.Run(t, ns, "iptables-legacy", "-A", "OUTPUT", "-d", "127.0.0.9", "-j", "DROP")
	testkit.Run(t, ns, "nft", "add table inet own; add chain inet own out { type filter hook output priority 10; }; add rule inet own out udp dport 9 counter accept")
	t.Setenv("PATH", t.TempDir())

	r, code := checkJSON(t, "--netns", ns.Name)
	if f := findingOf(r, "rules.mixed_backends"); f.Status != "skip" || !strings.Contains(f.Reason, "iptables-legacy could not be read") || !strings.Contains(f.Reason, "nft could not be read") {
		t.Errorf("check rules.mixed_backends = %s (%s), want skip naming iptables-legacy and nft as unread", f.Status, f.Reason)
	}
	if e := r.Errors["rules"]; !strings.Contains(e, "iptables-nft: no iptables-nft save tool on PATH") || !strings.Contains(e, "x_tables has tables filter") {
		t.Errorf("check -o json errors[rules] = %q (exit %d), want the unread backends named", e, code)
	}

	_, out, _ := runCLI("check", "--watch", "0", "--netns", ns.Name)
	if !strings.Contains(out, "! probe rules could not read: iptables-legacy: ") || !strings.Contains(out, "- rules.mixed_backends") {
		t.Errorf("check text does not name the unread rules and the skipped check:\n%s", out)
	}
	_, out, _ = runCLI("check", "--watch", "0", "--netns", ns.Name, "-o", "junit")
	if !strings.Contains(out, "<system-err>probe rules could not read: iptables-legacy") || !strings.Contains(out, `<testcase classname="lbdoctor.rules" name="rules.mixed_backends">`+"\n      <skipped") {
		t.Errorf("check -o junit does not name the unread rules and the skipped check:\n%s", out)
	}
}

func findingOf(r report.Report, id string) checks.Finding {
	for _, f := range r.Findings {
		if f.ID == id {
			return f
		}
	}
	return checks.Finding{}
}

// checkJSON runs `check … -o json` in-process and decodes its report.
func checkJSON(t *testing.T, args ...string) (report.Report, int) {
	t.Helper()
	if !slices.Contains(args, "--watch") {
		args = append([]string{"--watch", "0"}, args...) // static unless a test watches
	}
	code, out, stderr := runCLI(append(append([]string{"check"}, args...), "-o", "json")...)
	var r report.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("check %v -o json: not JSON (%v): %s %s", args, err, out, stderr)
	}
	return r, code
}

// probeLater tries the VIP from the client once the command under test had
// time to start; the channel closes when the try is over.
func probeLater(l *lab.Lab, vip netip.AddrPort) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(500 * time.Millisecond)
		lab.Probe(context.Background(), l.Client, vip, 1500*time.Millisecond)
	}()
	return done
}

// probeThrough probes vip from the lab's client every 100 ms for d, from
// 300 ms on (a window's first read and its tracer's attach come first).
func probeThrough(l *lab.Lab, vip netip.AddrPort, d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond)
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			lab.Probe(context.Background(), l.Client, vip, 200*time.Millisecond)
		}
	}()
	return done
}

// conntrack.flow_states counts every flow the dump saw, not the 500 it
// lists: 580 SYN_SENT flows without a reply and 20 assured ones, all to the
// VIP, are 600 flows.
func TestCheckFlowStatesCountsEveryFlow(t *testing.T) {
	ns := testkit.Netns(t, "flows")
	vip := netip.MustParseAddr("10.1.0.6")
	createFlows(t, ns, vip, 600)
	r, _ := checkJSON(t, "--netns", ns.Name, "--vip", "10.1.0.6:8085")
	f := findingOf(r, "conntrack.flow_states")
	want := "600 flow(s): 20 assured, 0 with a reply that never completed, 580 with no reply"
	if f.Status != "warn" || len(f.Evidence) == 0 || f.Evidence[0].Fact != want || !strings.HasPrefix(f.Title, "580 flow(s)") {
		t.Errorf("check conntrack.flow_states = %s %q, evidence %v; want warn, 580 flow(s) …, evidence %q", f.Status, f.Title, f.Evidence, want)
	}
}

// conntrack.flow_states judges "no reply" by SEEN_REPLY whatever the
// protocol: UDP flows have no TCP state, and 3,000 of them never answered
// are a warning, not "the VIP's flows complete".
func TestCheckFlowStatesUDPWithoutReply(t *testing.T) {
	tests := []struct {
		name       string
		replied    bool
		wantStatus string
		wantTitle  string
		wantFact   string
	}{
		{"no reply", false, "warn", "3000 flow(s) never saw a reply: UDP 10.1.0.6:8085 (3000)", "3000 flow(s): 0 assured, 0 with a reply that never completed, 3000 with no reply"},
		{"replied", true, "pass", "the VIP's flows complete", "3000 flow(s): 0 assured, 0 with a reply that never completed, 0 with no reply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testkit.Netns(t, "udpflows")
			vip := netip.MustParseAddr("10.1.0.6")
			err := ns.Do(func() error {
				c, err := ct.Dial(nil)
				if err != nil {
					return err
				}
				defer c.Close()
				status := ct.StatusConfirmed
				if tt.replied {
					status |= ct.StatusSeenReply
				}
				for i := 0; i < 3000; i++ {
					client := netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})
					f := ct.NewFlow(unix.IPPROTO_UDP, status, client, vip, uint16(20000+i), 8085, 600, 0)
					if err := c.Create(f); err != nil {
						return fmt.Errorf("create udp flow %d: %w", i, err)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			r, _ := checkJSON(t, "--netns", ns.Name, "--vip", "10.1.0.6:8085")
			f := findingOf(r, "conntrack.flow_states")
			if string(f.Status) != tt.wantStatus || f.Title != tt.wantTitle || len(f.Evidence) == 0 || f.Evidence[0].Fact != tt.wantFact {
				t.Errorf("check conntrack.flow_states (UDP, %s) = %s %q, evidence %v; want %s %q, evidence %q", tt.name, f.Status, f.Title, f.Evidence, tt.wantStatus, tt.wantTitle, tt.wantFact)
			}
		})
	}
}

// drops.vip_flows on a VIP that nft DNATs (not an IPVS service): the
// backends are learned from conntrack and its DNAT rule, and the SYNs that
// die in ip_error with forwarding off are found, on a VIP that worked or
// never did; a port no DNAT rule and no flow names is skipped, saying why.
func TestCheckDropsOfAnNftDNATVIP(t *testing.T) {
	tests := []struct {
		name       string
		learned    bool   // a working flow left its backend in conntrack
		port       uint16 // the --vip's port (0: the DNAT rule's)
		wantStatus string
		wantIn     string
	}{
		{"backend learned from conntrack", true, 0, "fail", "IP_INADDRERRORS at ip_error"},
		{"backend from the DNAT rule alone", false, 0, "fail", "IP_INADDRERRORS at ip_error"},
		// Only the packets still addressed to the VIP are traced: the
		// SYNs that reach the LB's own stack, no DNAT rule of their port.
		{"nothing to learn", false, 9999, "fail", "no DNAT rule rewrote it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forwarded := 0
			if tt.learned {
				forwarded = 1
			}
			l, vip := testkit.DNATLab(t, forwarded)
			if tt.port != 0 {
				vip = netip.AddrPortFrom(vip.Addr(), tt.port)
			}
			done := probeLater(l, vip)
			if tt.port != 0 {
				// A port nothing listens on answers the first SYN with a
				// reset: probe through the window, not once.
				done = probeThrough(l, vip, 2500*time.Millisecond)
			}
			r, _ := checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
			<-done
			f := findingOf(r, "drops.vip_flows")
			text := f.Reason
			for _, x := range r.Findings {
				if x.ID == "drops.vip_flows" {
					text += " " + x.Title
				}
			}
			if string(f.Status) != tt.wantStatus || !strings.Contains(text, tt.wantIn) {
				t.Errorf("check --drops on nft DNAT VIP: drops.vip_flows = %s %q, want %s with %q", f.Status, text, tt.wantStatus, tt.wantIn)
			}
			// No IPVS serves the VIP: the forwarded packets are its DNATed
			// requests and their replies, not what IPVS did or did not take.
			if want := "a request DNATed to its backend, or a reply de-NATed to its client"; strings.Contains(tt.wantIn, "IP_INADDRERRORS") && (!strings.Contains(f.Reason, want) || strings.Contains(f.Reason, "IPVS")) {
				t.Errorf("check on nft DNAT VIP: drops.vip_flows reason = %q, want %q and no IPVS", f.Reason, want)
			}
		})
	}
}

// A VIP that IPVS does not serve and whose backends nothing shows (no
// flow in conntrack, no DNAT rule naming it: a map, kube-proxy's
// per-endpoint chains) is still traced by its own address: a drop before
// the DNAT (a raw prerouting rule) fails drops.vip_flows naming its rule,
// and a quiet window warns that the packets after the DNAT were not
// traced — never a pass, never a skip that hides the drops it could see.
func TestCheckDNATVIPWithoutBackendTracesItsOwnAddress(t *testing.T) {
	l, vip := testkit.DNATLab(t, 0)
	vip = netip.AddrPortFrom(vip.Addr(), 9999) // no DNAT rule names this port
	r, _ := checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "1s")
	f := findingOf(r, "drops.vip_flows")
	want := "only packets still addressed to it were traced, not those after its DNAT"
	if f.Status != "warn" || !strings.Contains(f.Title, "not every packet of the VIP's flows was traced") || !slices.ContainsFunc(f.Evidence, func(e checks.Evidence) bool { return strings.Contains(e.Fact, want) }) {
		t.Errorf("check on a quiet DNAT VIP without backends: drops.vip_flows = %s %q %v, want warn and %q", f.Status, f.Title, f.Evidence, want)
	}
	testkit.Run(t, l.LB, "nft", "add table ip rawdrop; add chain ip rawdrop pre { type filter hook prerouting priority raw; }; add rule ip rawdrop pre tcp dport 9999 counter drop")
	done := probeLater(l, vip)
	r, _ = checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
	<-done
	f = findingOf(r, "drops.vip_flows")
	if f.Status != "fail" || !strings.Contains(f.Title, "NETFILTER_DROP at nft_do_chain in prerouting") || !strings.Contains(f.Reason, "nft ip rawdrop pre rule") {
		t.Errorf("check on a DNAT VIP without backends, dropped in raw prerouting: drops.vip_flows = %s %q (%s), want fail naming nft ip rawdrop pre's rule", f.Status, f.Title, f.Reason)
	}
}

// A VIP that nft DNATs through a map: an anonymous one (numgen) names its
// backends, traced before any flow; a named one (@map) is not read, and a
// quiet window warns that the backends it chooses, unless a flow showed
// them, were not traced.
func TestCheckDNATVIPThroughAMap(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
	testkit.Run(t, l.LB, "nft", fmt.Sprintf(`add table ip m
add chain ip m pre { type nat hook prerouting priority dstnat; }
add map ip m bk { type ipv4_addr : ipv4_addr; }
add rule ip m pre ip daddr %s tcp dport %d dnat to numgen inc mod 1 map { 0 : %s }
add rule ip m pre ip daddr %s tcp dport %d dnat to ip saddr map @bk`, vip.Addr(), vip.Port(), real.Addr(), vip.Addr(), vip.Port()+1))
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	done := probeLater(l, vip)
	r, _ := checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
	<-done
	f := findingOf(r, "drops.vip_flows")
	if want := real.String() + " (DNAT rule)"; f.Status != "fail" || !strings.Contains(f.Title, "IP_INADDRERRORS at ip_error") || !slices.ContainsFunc(f.Evidence, func(e checks.Evidence) bool { return strings.Contains(e.Fact, want) }) {
		t.Errorf("check on a VIP DNATed through numgen's map: drops.vip_flows = %s %q %v, want fail, IP_INADDRERRORS, backend %s", f.Status, f.Title, f.Evidence, want)
	}
	named := netip.AddrPortFrom(vip.Addr(), vip.Port()+1)
	r, _ = checkJSON(t, "--netns", l.LB.Name, "--vip", named.String(), "--watch", "500ms")
	f = findingOf(r, "drops.vip_flows")
	if want := "no conntrack flow to it and no DNAT rule shows a backend"; f.Status != "warn" || !slices.ContainsFunc(f.Evidence, func(e checks.Evidence) bool { return strings.Contains(e.Fact, want) }) {
		t.Errorf("check on a VIP DNATed through a named map: drops.vip_flows = %s %q %v, want warn and %q", f.Status, f.Title, f.Evidence, want)
	}
	// Every port of the address: the numgen map's backend is known, the
	// named map's are not, which the quiet window says.
	r, _ = checkJSON(t, "--netns", l.LB.Name, "--vip", vip.Addr().String(), "--watch", "500ms")
	f = findingOf(r, "drops.vip_flows")
	if want := "chooses backends from a map or an expression lbdoctor does not read"; f.Status != "warn" || !slices.ContainsFunc(f.Evidence, func(e checks.Evidence) bool { return strings.Contains(e.Fact, want) }) {
		t.Errorf("check --vip %s (a numgen map and a named map): drops.vip_flows = %s %q %v, want warn and %q", vip.Addr(), f.Status, f.Title, f.Evidence, want)
	}
}

// A DNAT VIP that never worked (no flow of it was ever confirmed: a
// forward DROP policy kills its first SYN after the DNAT) is traced with
// the backend its DNAT rule names: check fails firewall.filter naming the
// policy, drops.vip_flows traced the drops and says where the backend came
// from, and `drops --vip` counts them.
func TestNeverWorkedDNATVIPBehindForwardDropPolicy(t *testing.T) {
	l, vip := testkit.DNATLab(t, 0)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Run(t, l.LB, "nft", "add table ip f; add chain ip f ffw { type filter hook forward priority 0; policy drop; }")
	backend := l.RealIP.String() + ":8085"

	done := probeLater(l, vip)
	r, _ := checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
	<-done
	fw := findingOf(r, "firewall.filter")
	if fw.Status != checks.Fail || !strings.Contains(fw.Title, "nft ip f ffw policy DROP") {
		t.Errorf("check firewall.filter = %s %q (%s), want fail naming nft ip f ffw policy DROP", fw.Status, fw.Title, fw.Reason)
	}
	d := findingOf(r, "drops.vip_flows")
	ev := ""
	for _, e := range d.Evidence {
		ev += e.Fact + "\n"
	}
	if d.Status != checks.Warn || !strings.Contains(d.Title, "NETFILTER_DROP") || !strings.Contains(ev, "traced with the backends its conntrack flows and DNAT rules show: "+backend+" (DNAT rule)") ||
		!strings.Contains(ev, "joined to nft ip f ffw policy DROP") {
		t.Errorf("check drops.vip_flows = %s %q (%s)\n%s\nwant warn, NETFILTER_DROP joined to nft ip f ffw policy DROP, backend %s (DNAT rule)", d.Status, d.Title, d.Reason, ev, backend)
	}

	done = probeLater(l, vip)
	code, out, stderr := runCLI("drops", "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "2500ms")
	<-done
	if code != 0 || !strings.Contains(out, "NETFILTER_DROP") || !strings.Contains(out, "→ "+backend+" [SYN]") || strings.Contains(stderr, "\n0 drops matched") {
		t.Errorf("drops --vip %s = exit %d\n%s\n%s\nwant NETFILTER_DROP SYNs to the backend %s counted", vip, code, out, stderr, backend)
	}
	if want := "tracing too the backends its conntrack flows and DNAT rules show: " + backend + " (DNAT rule)"; !strings.Contains(stderr, want) {
		t.Errorf("drops stderr = %q, want %q", stderr, want)
	}
}

// A client of an nft DNAT VIP whose source the two-arm LB routes back by
// its other arm is dropped by strict rp_filter after the DNAT (the dropped
// SYN carries the backend's address): sysctl.rp_filter fails naming the
// source and the VIP's interface, and drops.vip_flows warns, explained by
// it, instead of failing beside a passing sysctl.rp_filter.
func TestCheckRPFilterDropsOfAnNftDNATVIP(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.Serve(t, l.Real, ":8085")
	testkit.NftNAT(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085), false)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK { // the neighbours, learned
		t.Fatal(res.Err)
	}
	client := netip.MustParseAddr("10.9.0.3")
	testkit.Run(t, l.Client, "ip", "addr", "add", "10.9.0.3/24", "dev", "eth0")
	testkit.Run(t, l.LB, "ip", "route", "add", "10.9.0.0/24", "via", l.RealIP.String())
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.all.rp_filter", "1")

	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(500 * time.Millisecond)
		for range 3 {
			_ = l.Client.Do(func() error {
				d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, 0))}
				if c, err := d.Dial("tcp", vip.String()); err == nil {
					c.Close()
				}
				return nil
			})
		}
	}()
	r, _ := checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
	<-done
	rp := findingOf(r, "sysctl.rp_filter")
	remedy := checks.Remedy{Sysctl: "net.ipv4.conf.eth0.rp_filter", Value: "2"}
	if rp.Status != checks.Fail || !strings.Contains(rp.Title, "from 10.9.0.3 to "+l.VIP.String()) || !slices.Contains(rp.Remedies, remedy) {
		t.Errorf("check sysctl.rp_filter = %s %q, remedies %v; want fail from 10.9.0.3 to %s, remedy %+v", rp.Status, rp.Title, rp.Remedies, l.VIP, remedy)
	}
	d := findingOf(r, "drops.vip_flows")
	if d.Status != checks.Warn || !strings.Contains(d.Title, "IP_RPFILTER") || !strings.Contains(d.Title, "the cause: sysctl.rp_filter") {
		t.Errorf("check drops.vip_flows = %s %q (%s), want warn: IP_RPFILTER, the cause: sysctl.rp_filter", d.Status, d.Title, d.Reason)
	}
}

// drops.vip_flows under a SYN flood to an nft DNAT VIP with forwarding
// off: hundreds of client ports, each a drop or two in ip_error and none
// attributed (the SYNs die before conntrack confirms them), are one reason,
// IP_INADDRERRORS, which heads the finding with its fix, ip_forward=1.
func TestCheckDropsSYNFloodNamesTheReason(t *testing.T) {
	l, vip := testkit.DNATLab(t, 3)
	const syns = 300
	flood := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		flood <- synFlood(l.Client, vip, syns, 1200*time.Millisecond)
	}()
	r, _ := checkJSON(t, "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
	if err := <-flood; err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Findings {
		if f.ID != "drops.vip_flows" {
			continue
		}
		var first string // the first reason line of the evidence
		for _, e := range f.Evidence {
			if strings.Contains(e.Fact, " × ") && !strings.HasPrefix(e.Fact, " ") {
				first = e.Fact
				break
			}
		}
		var flows int
		if _, in, ok := strings.Cut(first, " in "); ok {
			fmt.Sscanf(in, "%d flows", &flows)
		}
		wantFix := "sysctl -w net.ipv4.ip_forward=1"
		if f.Status != "fail" || !strings.HasPrefix(f.Title, "packets of the selected flows are dropped: IP_INADDRERRORS at ip_error") ||
			!strings.Contains(first, "× IP_INADDRERRORS at ip_error") || flows < syns/2 || !strings.Contains(strings.Join(f.Fix, "\n"), wantFix) {
			t.Errorf("check --drops under a SYN flood: drops.vip_flows = %s %q, first reason %q (%d flows), fix %q; want fail naming IP_INADDRERRORS at ip_error first, over ≥ %d flows, with fix %q",
				f.Status, f.Title, first, flows, f.Fix, syns/2, wantFix)
		}
		return
	}
	t.Errorf("check --drops: no drops.vip_flows finding in %+v", r.Findings)
}

// synFlood opens n non-blocking TCP connections from ns to dst (n SYNs from
// n ports), keeps them for hold (so some SYNs are sent again) and closes them.
func synFlood(ns netns.Target, dst netip.AddrPort, n int, hold time.Duration) error {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	err := ns.Do(func() error {
		for i := 0; i < n; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("syn flood: socket: %w", err)
			}
			fds = append(fds, fd)
			if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}); err != nil && err != unix.EINPROGRESS {
				return fmt.Errorf("syn flood: connect %s: %w", dst, err)
			}
		}
		return nil
	})
	time.Sleep(hold)
	return err
}

// createFlows puts n TCP flows to vip:8085 into ns's conntrack table over
// netlink: every 30th assured (ESTABLISHED), the others SYN_SENT without a
// reply.
func createFlows(t *testing.T, ns netns.Target, vip netip.Addr, n int) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < n; i++ {
			client := netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})
			status, state := ct.StatusConfirmed, uint8(1) // SYN_SENT
			if i%30 == 0 {
				status, state = ct.StatusConfirmed|ct.StatusSeenReply|ct.StatusAssured, 3 // ESTABLISHED
			}
			f := ct.NewFlow(unix.IPPROTO_TCP, status, client, vip, uint16(20000+i), 8085, 600, 0)
			f.ProtoInfo.TCP = &ct.ProtoInfoTCP{State: state}
			if err := c.Create(f); err != nil {
				return fmt.Errorf("create flow %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// check --drops says it is watching while it watches: a VIP whose backends
// nothing shows is still traced by its own address (drops.vip_flows warns
// on a quiet window, see TestCheckDNATVIPWithoutBackendTracesItsOwnAddress).
func TestCheckSaysWatchingWhileItWatches(t *testing.T) {
	for _, tt := range []struct {
		name      string
		forwarded int
		otherPort bool // a port of the VIP no DNAT rule names
		traced    bool // drops.vip_flows judged (pass or fail), not skipped
	}{{"backend learned", 1, false, true}, {"backend named by its rule alone", 0, false, true}, {"no backend known: the VIP's own address", 0, true, true}} {
		t.Run(tt.name, func(t *testing.T) {
			l, vip := testkit.DNATLab(t, tt.forwarded)
			if tt.otherPort {
				vip = netip.AddrPortFrom(vip.Addr(), vip.Port()+1)
			}
			_, out, stderr := runCLI("check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "500ms")
			traced := strings.Contains(out, "drops.vip_flows") && !strings.Contains(out, "- drops.vip_flows")
			if want := "watching " + vip.String() + " ("; !strings.Contains(stderr, want) || !strings.Contains(stderr, "for 500ms") || traced != tt.traced {
				t.Errorf("check --watch 500ms (%s): stderr %q, want it to say %q…for 500ms; drops.vip_flows judged = %v, want %v:\n%s", tt.name, stderr, want, traced, tt.traced, out)
			}
			if _, out, stderr := runCLI("check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "0"); strings.Contains(stderr, "watching") || !strings.Contains(out, "- drops.vip_flows") {
				t.Errorf("check --watch 0 (%s): stderr %q says watching, or drops.vip_flows not skipped:\n%s", tt.name, stderr, out)
			}
		})
	}
}

// check --vip takes ADDR alone, as serve and inspect do (one parser):
// every port of the address is selected, and the report names the
// address as given.
func TestCheckVIPAddressAlone(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "cva")
	for _, vip := range []string{"10.1.0.6", "[fd00:1::6]"} {
		t.Run(vip, func(t *testing.T) {
			r, code := checkJSON(t, "--netns", ns.Name, "--vip", vip)
			want := strings.Trim(vip, "[]")
			if code == exitUsage || r.Target.VIP != want {
				t.Errorf("check --vip %s = exit %d, target.vip %q; want no usage error, %q", vip, code, r.Target.VIP, want)
			}
		})
	}
}
