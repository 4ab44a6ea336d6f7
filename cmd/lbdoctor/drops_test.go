package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// The seed's stage on a netfilter DNAT LB (the host has no IPVS), as a
// person sees it: events, then the summary; and the --summary table.
func TestDropsCommand(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.NftNAT(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085), true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	probe := func() {
		time.Sleep(500 * time.Millisecond)
		lab.Probe(context.Background(), l.Client, vip, 1500*time.Millisecond)
	}
	go probe()
	code, out, stderr := runCLI("drops", "--netns", l.LB.Name, "--host", l.ClientIP.String(), "--duration", "2500ms")
	if code != 0 || !strings.Contains(out, "IP_INADDRERRORS ip_error+0x") || !strings.Contains(out, "netns "+l.LB.Name+" dev eth0: tcp "+l.ClientIP.String()) || !strings.Contains(out, "[SYN]") {
		t.Errorf("drops = exit %d\n%s\n%s\nwant IP_INADDRERRORS SYN lines", code, out, stderr)
	}
	if !strings.Contains(stderr, "tracing drops (") || !strings.Contains(stderr, "drops matched in") || !strings.Contains(stderr, "0 lost") {
		t.Errorf("drops stderr = %q, want the start line and a summary with 0 lost", stderr)
	}

	go probe()
	code, out, stderr = runCLI("drops", "--netns", l.LB.Name, "--summary", "--duration", "2500ms", "-o", "json")
	var sum report.DropsSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil || code != 0 {
		t.Fatalf("drops --summary -o json = exit %d, %v:\n%s%s", code, err, out, stderr)
	}
	var n uint64
	for _, d := range sum.Aggregates {
		if d.Reason == "IP_INADDRERRORS" {
			n += d.Count
		}
	}
	if n == 0 || sum.Delivered != sum.Counters.Matched || sum.Lost != 0 {
		t.Errorf("drops --summary = %+v, want IP_INADDRERRORS counted and delivered = matched", sum)
	}
}

func TestDropsBadInput(t *testing.T) {
	for _, args := range [][]string{
		// A bad argument must stop it before it traces: the duration only
		// keeps a wrongly accepted one from running until Ctrl-C.
		{"drops", "--proto", "tcpp", "--duration", "1ms"},
		{"drops", "--proto", "0", "--duration", "1ms"},
		{"drops", "--top", "-1", "--summary", "--duration", "1ms"},
		{"drops", "--host", "nope"},
		{"drops", "--port", "70000"},
		{"drops", "--attach", "fexit"},
		{"drops", "--vip", "x"},
		{"drops", "--ignore-reason", "NO_SUCH_REASON", "--duration", "1ms"},
	} {
		code, _, stderr := runCLI(args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 {
			t.Errorf("lbdoctor %v = exit %d, stderr %q; want exit 2 and one line", args, code, stderr)
		}
	}
}

// --proto takes any protocol name; a protocol without ports is shown as
// addresses alone (no ":0").
func TestDropsProtoWithoutPorts(t *testing.T) {
	a, b := testkit.Netns(t, "pa"), testkit.Netns(t, "pb")
	testkit.Veth(t, testkit.VethEnd{NS: a, Name: "p0", Addrs: []string{"10.78.0.1/24"}},
		testkit.VethEnd{NS: b, Name: "p1", Addrs: []string{"10.78.0.2/24"}})
	testkit.Run(t, b, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in ip protocol icmp drop")
	// Three echo requests into the drop rule, once the run's tracer is
	// attached (this process's: runCLI runs lbdoctor in it).
	send := func() {
		for deadline := time.Now().Add(10 * time.Second); !tracerAttached(os.Getpid()) && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		a.Do(func() error {
			c, err := net.Dial("ip4:icmp", "10.78.0.2")
			if err != nil {
				return err
			}
			defer c.Close()
			echo := []byte{8, 0, 0xf7, 0xfe, 0, 1, 0, 0} // echo request, id 1, seq 0; checksum of these bytes
			for i := 0; i < 3; i++ {
				c.Write(echo)
			}
			return nil
		})
	}
	go send()
	code, out, stderr := runCLI("drops", "--netns", b.Name, "--proto", "icmp", "--duration", "2s")
	want := "NETFILTER_DROP " // at nf_hook_slow or nft_do_chain, by kernel
	if code != 0 || strings.Count(out, want) != 3 || !strings.Contains(out, ": icmp 10.78.0.1 → 10.78.0.2 (echo, type 8 code 0) len") {
		t.Errorf("drops --proto icmp = exit %d\n%s\n%s\nwant 3 × %q with icmp 10.78.0.1 → 10.78.0.2 (echo, type 8 code 0): no ports, its message", code, out, stderr, want)
	}
	go send()
	code, out, stderr = runCLI("drops", "--netns", b.Name, "--proto", "vrrp", "--duration", "1500ms")
	if code != 0 || strings.Contains(out, "icmp") || !strings.Contains(stderr, "\n0 drops matched") {
		t.Errorf("drops --proto vrrp while ICMP is dropped = exit %d\n%s\n%s\nwant 0 drops matched", code, out, stderr)
	}
}

// drops --vip on a VIP that nft DNATs traces the backends conntrack shows
// for it: the SYNs that die in ip_error carry the backend's address.
func TestDropsVIPOfAnNftDNAT(t *testing.T) {
	l, vip := testkit.DNATLab(t, 1)
	done := probeLater(l, vip)
	code, out, stderr := runCLI("drops", "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "2500ms")
	<-done
	want := "IP_INADDRERRORS ip_error+0x"
	if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "→ "+l.RealIP.String()+":8085 [SYN]") {
		t.Errorf("drops --vip %s = exit %d\n%s\n%s\nwant %s SYN lines to the backend", vip, code, out, stderr, want)
	}
	if !strings.Contains(stderr, "is not an IPVS service: tracing too the backends its conntrack flows and DNAT rules show: "+l.RealIP.String()+":8085 (conntrack, DNAT rule)") {
		t.Errorf("drops stderr = %q, want the learned backend named", stderr)
	}
}

// drops --vip ADDR, every port of a VIP that nft DNATs, traces the
// backends its DNAT rules name, whatever port they match: with no flow in
// conntrack yet (the VIP never worked), its SYNs that die in ip_error after
// the DNAT, addressed to the backend, are traced all the same.
func TestDropsVIPWithoutPortOfAnNftDNAT(t *testing.T) {
	l, vip := testkit.DNATLab(t, 0)
	done := probeLater(l, vip)
	code, out, stderr := runCLI("drops", "--netns", l.LB.Name, "--vip", vip.Addr().String(), "--duration", "2500ms")
	<-done
	if want := "→ " + l.RealIP.String() + ":8085 [SYN]"; code != 0 || !strings.Contains(out, "IP_INADDRERRORS ip_error+0x") || !strings.Contains(out, want) {
		t.Errorf("drops --vip %s = exit %d\n%s\n%s\nwant IP_INADDRERRORS SYN lines to the backend (%s)", vip.Addr(), code, out, stderr, want)
	}
	if want := "tracing too the backends its conntrack flows and DNAT rules show: " + l.RealIP.String() + ":8085 (DNAT rule)"; !strings.Contains(stderr, want) {
		t.Errorf("drops --vip %s stderr = %q, want %q", vip.Addr(), stderr, want)
	}
}

// drops --vip on a VIP DNATed the way kube-proxy's iptables mode does it
// (a rule of the VIP jumps to a service chain, which jumps to an endpoint
// chain holding the DNAT, no address of the VIP in it) traces the
// endpoint the chains lead to, before any flow: its SYNs that die in
// ip_error after the DNAT are seen.
func TestDropsVIPOfKubeProxyStyleChains(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
	script := fmt.Sprintf(`*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-A - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport %d -j KUBE-SVC-WEB
-A KUBE-SVC-WEB -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination %s
COMMIT
`, vip.Addr(), vip.Port(), real)
	testkit.RunStdin(t, l.LB, script, "iptables-legacy-restore")
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	done := probeLater(l, vip)
	code, out, stderr := runCLI("drops", "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "2500ms")
	<-done
	if want := "tracing too the backends its conntrack flows and DNAT rules show: " + real.String() + " (DNAT rule)"; !strings.Contains(stderr, want) {
		t.Errorf("drops --vip %s stderr = %q, want %q", vip, stderr, want)
	}
	if want := "→ " + real.String() + " [SYN]"; code != 0 || !strings.Contains(out, "IP_INADDRERRORS ip_error+0x") || !strings.Contains(out, want) {
		t.Errorf("drops --vip %s = exit %d\n%s\n%s\nwant IP_INADDRERRORS SYN lines to the endpoint (%s)", vip, code, out, stderr, want)
	}
}

// drops --vip on a VIP that nft DNATs through an anonymous map traces the
// map's backends; a named map beside it is not read, and drops says so.
func TestDropsVIPOfAnNftMap(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
	testkit.Run(t, l.LB, "nft", fmt.Sprintf(`add table ip m
add chain ip m pre { type nat hook prerouting priority dstnat; }
add map ip m bk { type ipv4_addr : ipv4_addr; }
add rule ip m pre ip daddr %s tcp dport %d dnat to numgen inc mod 1 map { 0 : %s }
add rule ip m pre ip daddr %s tcp dport %d dnat to ip saddr map @bk`, vip.Addr(), vip.Port(), real.Addr(), vip.Addr(), vip.Port()))
	code, _, stderr := runCLI("drops", "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "100ms")
	if want := "tracing too the backends its conntrack flows and DNAT rules show: " + real.String() + " (DNAT rule)"; code != 0 || !strings.Contains(stderr, want) {
		t.Errorf("drops --vip %s = exit %d, stderr %q; want %q", vip, code, stderr, want)
	}
	if want := `! its DNAT rule nft ip m pre "ip daddr ` + vip.Addr().String(); !strings.Contains(stderr, want) || !strings.Contains(stderr, "map @bk") {
		t.Errorf("drops --vip %s stderr = %q, want %q… naming the named map's rule", vip, stderr, want)
	}
}

// A --vip without a port is shown as the user gave it, the address alone:
// never with a ":0" the user did not type.
func TestDropsVIPWithoutPortShownAsGiven(t *testing.T) {
	ns := testkit.Netns(t, "vip")
	tests := []struct {
		name, vip, want, never string
	}{
		{"ipv4 address", "10.1.1.1", "! 10.1.1.1 is not an IPVS service and no conntrack flow to it and no DNAT rule shows a backend", "10.1.1.1:0"},
		{"ipv6 in brackets", "[2001:db8::1]", "! 2001:db8::1 is not an IPVS service and no conntrack flow to it and no DNAT rule shows a backend", "]:0"},
		{"ipv6 bare", "2001:db8::1", "! 2001:db8::1 is not an IPVS service", "]:0"},
		{"with a port", "10.1.1.1:80", "! 10.1.1.1:80 is not an IPVS service", "10.1.1.1:0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := runCLI("drops", "--netns", ns.Name, "--vip", tt.vip, "--duration", "200ms")
			if code != 0 || !strings.Contains(stderr, tt.want) || strings.Contains(out+stderr, tt.never) {
				t.Errorf("drops --vip %s = exit %d, stdout %q, stderr %q; want exit 0 and %q, never %q", tt.vip, code, out, stderr, tt.want, tt.never)
			}
		})
	} // inspect names the conntrack flows it read by the same VIP.
	_, out, stderr := runCLI("inspect", "--netns", ns.Name, "--vip", "10.1.1.1")
	if want := "flows with original destination tcp 10.1.1.1, udp 10.1.1.1: "; !strings.Contains(out, want) || strings.Contains(out+stderr, "10.1.1.1:0") {
		t.Errorf("inspect --vip 10.1.1.1 printed %q %q, want %q and no 10.1.1.1:0", out, stderr, want)
	}
}

// drops says which filters it applies — each one, where it came from — on
// its start line and in its JSON summary; stdout carries data only (events,
// the --summary table, JSON), the status lines go to stderr in every text
// mode; --summary -o json always has "drops".
func TestDropsEchoesFiltersAndKeepsStreams(t *testing.T) {
	ns := testkit.Netns(t, "echo")
	filters := []string{"--host", "10.77.0.9", "--port", "80", "--proto", "TCP", "--ignore-reason", "not_specified", "--vip", "10.77.0.6:8085"}
	wantEcho := []string{"netns " + ns.Name, "addresses 10.77.0.9", "ports 80", "addresses of the VIP and its reals 10.77.0.6", "ports of the VIP and its reals 8085", "protocol tcp", "ignoring NOT_SPECIFIED"}
	for _, tt := range []struct {
		mode       string
		args       []string
		wantStdout string
	}{
		{"events", nil, ""},
		{"summary", []string{"--summary"}, "no drops matched\n"},
	} {
		args := append(append([]string{"drops", "--netns", ns.Name, "--duration", "300ms"}, filters...), tt.args...)
		code, out, stderr := runCLI(args...)
		// Before the start line, a "!" line may say the VIP is no IPVS service.
		_, rest, _ := strings.Cut(stderr, "tracing drops (")
		lines := strings.Split(strings.TrimRight(rest, "\n"), "\n")
		if code != 0 || out != tt.wantStdout || len(lines) < 2 || !strings.HasPrefix(lines[1], "0 drops matched") {
			t.Errorf("lbdoctor %v = exit %d, stdout %q, stderr %q; want stdout %q, the start and closing lines on stderr", args, code, out, stderr, tt.wantStdout)
			continue
		}
		for _, w := range append(wantEcho, tt.mode) {
			if !strings.Contains(lines[0], w) {
				t.Errorf("lbdoctor %v start line %q does not say %q", args, lines[0], w)
			}
		}
	}
	args := append([]string{"drops", "--netns", ns.Name, "--duration", "300ms", "--summary", "-o", "json"}, filters...)
	code, out, stderr := runCLI(args...)
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 || strings.Contains(stderr, "drops matched") {
		t.Fatalf("lbdoctor %v = exit %d, %v:\n%s\n%s", args, code, err, out, stderr)
	}
	var f report.DropsFilter
	json.Unmarshal(doc["filter"], &f)
	if string(doc["drops"]) != "[]" || f.Mode != "summary" || f.Netns != "netns "+ns.Name || f.Proto != "tcp" ||
		len(f.Addrs) != 1 || len(f.VIPAddrs) != 1 || len(f.Ports) != 1 || len(f.VIPPorts) != 1 || len(f.IgnoreReasons) != 1 || f.IgnoreReasons[0] != "NOT_SPECIFIED" {
		t.Errorf("lbdoctor %v: drops %s, filter %+v; want [] and every filter", args, doc["drops"], f)
	}
}

// Without CAP_SYSLOG (kernel.kptr_restrict) /proc/kallsyms shows every
// address as 0: drops says why its locations are raw addresses instead of
// printing them unexplained. The process runs without it, as an operator's
// would: kallsyms is read beside the tracer's loading, by another thread
// than one a test could take the capability from.
func TestDropsSaysWhyLocationsAreRaw(t *testing.T) {
	testkit.RequireRoot(t)
	var r cliResult
	cmd := exec.Command("setpriv", "--inh-caps=-syslog", "--bounding-set=-syslog", "--",
		testkit.LbdoctorBinary(t), "drops", "--duration", "200ms", "--host", "10.77.0.99", "--summary")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("setpriv lbdoctor drops: %v", err)
	}
	r.stderr = stderr.String()
	kr, _ := os.ReadFile("/proc/sys/kernel/kptr_restrict")
	pp, _ := os.ReadFile("/proc/sys/kernel/perf_event_paranoid")
	if paranoid, _ := strconv.Atoi(strings.TrimSpace(string(pp))); strings.TrimSpace(string(kr)) == "0" && paranoid <= 1 {
		t.Fatalf("kptr_restrict=0 and perf_event_paranoid<=1 show symbols without CAP_SYSLOG: this test cannot hide them")
	}
	if r.code != 0 || strings.Count(r.stderr, "locations are raw addresses: /proc/kallsyms shows every address as 0") != 2 {
		t.Errorf("drops without CAP_SYSLOG = exit %d, stderr %q; want the reason locations are raw on the start line and at the end", r.code, r.stderr)
	}
}

// The tester's flood: 20,000 distinct flows, more than the aggregate map
// holds. The --summary table stays exact by place — its rows and its
// by-place lines add up to what the nft rule dropped — and says how many
// drops of flows were not itemised, on stdout and on stderr.
func TestDropsSummaryFlowMapFull(t *testing.T) {
	ns := testkit.Netns(t, "flood")
	testkit.Run(t, ns, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport 1-60000 counter drop")
	p := startLbdoctor(t, "tracing drops", "drops", "--netns", ns.Name, "--summary", "--duration", "3s")
	p.waitStart(t)
	const flows = 20000
	err := ns.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer c.Close()
		for port := 1; port <= flows; port++ {
			if _, err := c.WriteToUDP([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p.wait(t, 30*time.Second)
	dropped := testkit.NftPackets(t, ns, "ip", "f", "in")
	out, stderr := p.stdout.String(), p.errText()
	// "   N × NETFILTER_DROP place at netns X…": the top rows, then, after
	// the line that sums them up, the by-place lines.
	count := regexp.MustCompile(`^\s*(\d+) × NETFILTER_DROP `)
	var rows, placed uint64
	inPlaces := false
	var notItemisedLine string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "… ") {
			inPlaces = true
			continue
		}
		m := count.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[1], 10, 64)
		if inPlaces {
			placed += n
			if strings.Contains(line, "drops of flows not itemised") {
				notItemisedLine = line
			}
		} else {
			rows += n
		}
	}
	notItemised := regexp.MustCompile(`! (\d+) drops of flows not itemised: the flow map was full`).FindStringSubmatch(stderr)
	if p.code != 0 || dropped != flows || rows+placed != dropped || notItemisedLine == "" || notItemised == nil || !strings.Contains(stderr, " 0 lost ") {
		t.Errorf("drops --summary over %d flows = exit %d, %d in the top rows + %d by place, nft counter %d; want exit 0, rows + places = counter, "+
			"a place line with the drops not itemised, the count of them and 0 lost on stderr\n%s\n%s", flows, p.code, rows, placed, dropped, out, stderr)
	}
}
