package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

func decodeInspection(t *testing.T, out string) *report.Inspection {
	t.Helper()
	var in report.Inspection
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("inspect -o json: not JSON (%v):\n%s", err, out)
	}
	return &in
}

// On a netfilter NAT LB (this host has no IPVS) inspect shows the rules
// with counters, the VIP's conntrack flows, and with --watch what moved.
func TestInspectNftLoadBalancer(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
	testkit.Serve(t, l.Real, ":8085")
	testkit.NftNAT(t, l.LB, vip, real, true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	for i := 0; i < 2; i++ {
		if res := lab.Probe(context.Background(), l.Client, vip, time.Second); !res.OK {
			t.Fatal(res.Err)
		}
	}

	code, out, stderr := runCLI("inspect", "--netns", l.LB.Name, "--vip", l.VIP.String(), "-o", "json")
	if code != 0 {
		t.Fatalf("inspect = exit %d: %s", code, stderr)
	}
	in := decodeInspection(t, out)
	s := in.Snapshot
	if in.Schema != 1 || s.Target.Name != l.LB.Name || len(s.Conntrack.Flows) != 2 || s.Features == nil {
		t.Fatalf("inspect: schema %d target %s, %d flows, features %v; want 1, %s, 2 flows, features", in.Schema, s.Target.Name, len(s.Conntrack.Flows), s.Features != nil, l.LB.Name)
	}
	if f := s.Conntrack.Flows[0]; f.Orig.Dst != vip || f.Reply.Src != real {
		t.Errorf("inspect flow = %s, want to %s answered by %s", f, vip, real)
	}
	var dnat bool
	for _, r := range s.Rules.Rules {
		dnat = dnat || (r.Target == "DNAT" && r.Packets == 2)
	}
	if !dnat {
		t.Errorf("inspect rules = %+v, want the DNAT rule with 2 packets", s.Rules.Rules)
	}

	// --watch: traffic during the window shows as deltas.
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond)
		for i := 0; i < 3; i++ {
			lab.Probe(context.Background(), l.Client, vip, time.Second)
		}
	}()
	code, out, stderr = runCLI("inspect", "--netns", l.LB.Name, "--watch", "1500ms", "-o", "json")
	<-done
	if code != 0 {
		t.Fatalf("inspect --watch = exit %d: %s", code, stderr)
	}
	in = decodeInspection(t, out)
	var moved uint64
	for _, rd := range in.Deltas.Rules {
		if rd.Rule.Target == "DNAT" {
			moved = rd.Packets
		}
	}
	// The probes start 300 ms into the window; a loaded machine may read the
	// first snapshot later, so only some of them may fall inside it.
	if in.Deltas == nil || moved == 0 || moved > 3 || in.Deltas.Conntrack.Entries < int64(moved) {
		t.Errorf("inspect --watch deltas = %+v, want the DNAT rule +1..3 packets and as many more conntrack entries", in.Deltas)
	}

	// Text, for a person: the sections in packet order.
	code, out, _ = runCLI("inspect", "--netns", l.LB.Name)
	last := -1
	for _, sec := range []string{"\nIPVS\n", "\nSysctls\n", "\nRules", "\nConntrack", "\nSNMP", "\nNetwork\n", "\nKernel"} {
		i := strings.Index(out, sec)
		if i < last {
			t.Errorf("inspect text: section %q missing or out of order:\n%s", strings.TrimSpace(sec), out)
		}
		last = i
	}
	if code != 0 || !strings.Contains(out, "dnat to 10.1.0.50:8085") {
		t.Errorf("inspect text = exit %d, want the DNAT rule listed:\n%s", code, out)
	}
}

func TestInspectBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"inspect", "--vip", "not-an-ip"},
		{"inspect", "--watch", "soon"},
		{"inspect", "--watch", "-1s"},
		{"inspect", "--netns", "nope"},
	} {
		code, _, stderr := runCLI(args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 {
			t.Errorf("lbdoctor %v = exit %d, stderr %q; want exit 2 and one line", args, code, stderr)
		}
	}
}

// inspect caps every long list, in text at report.MaxShown and in JSON at
// probes.MaxListed, and says how many entries it left out.
func TestInspectCapsLongLists(t *testing.T) {
	ns := testkit.Netns(t, "caps")
	var script strings.Builder
	script.WriteString("add table inet many; add chain inet many out { type filter hook output priority 0; }\n")
	for i := 0; i < 510; i++ {
		fmt.Fprintf(&script, "add rule inet many out tcp dport %d counter accept\n", 10000+i)
	}
	testkit.Run(t, ns, "nft", script.String())
	for i := 0; i < 25; i++ {
		a, b := fmt.Sprintf("va%d", i), fmt.Sprintf("vb%d", i)
		testkit.Run(t, ns, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
		testkit.Run(t, ns, "ip", "addr", "add", fmt.Sprintf("10.50.%d.1/24", i), "dev", a)
		testkit.Run(t, ns, "ip", "link", "set", a, "up")
		testkit.Run(t, ns, "ip", "link", "set", b, "up")
	}
	createFlows(t, ns, netip.MustParseAddr("10.1.0.6"), 600)

	code, out, stderr := runCLI("inspect", "--netns", ns.Name, "--vip", "10.1.0.6:8085")
	for _, want := range []string{
		"… 490 more rules not shown (-o json lists up to 500)",
		"… 580 more flows not shown (-o json lists up to 500)",
		"flows with original destination tcp 10.1.0.6:8085, udp 10.1.0.6:8085: 600", // no --proto: the VIP's flows of both
		"… 31 more links not shown",
		"more routes not shown",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("inspect text = exit %d, lacks %q:\n%s%s", code, want, out, stderr)
		}
	}
	if n := strings.Count(out, "counter packets 0 bytes 0 accept"); n != report.MaxShown {
		t.Errorf("inspect text lists %d rules, want %d", n, report.MaxShown)
	}

	code, out, stderr = runCLI("inspect", "--netns", ns.Name, "--vip", "10.1.0.6:8085", "-o", "json")
	if code != 0 {
		t.Fatalf("inspect -o json = exit %d: %s", code, stderr)
	}
	s := decodeInspection(t, out).Snapshot
	if len(s.Rules.Rules) != 500 || s.Rules.Omitted != 10 || len(s.Conntrack.Flows) != 500 || s.Conntrack.Omitted != 100 {
		t.Errorf("inspect -o json: %d rules (%d omitted), %d flows (%d omitted); want 500 (10), 500 (100)",
			len(s.Rules.Rules), s.Rules.Omitted, len(s.Conntrack.Flows), s.Conntrack.Omitted)
	}
}

// inspect --watch on a VIP that nft DNATs (no IPVS path to mark) shows the
// window's drops by place in text, as its JSON holds them: its SYNs that
// die in ip_error with forwarding off.
func TestInspectWatchShowsDropsOfADNATVIP(t *testing.T) {
	l, vip := testkit.DNATLab(t, 1)
	done := probeLater(l, vip)
	code, out, stderr := runCLI("inspect", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "2500ms")
	<-done
	if want := "  ✗ "; code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "IP_INADDRERRORS at ip_error") {
		t.Errorf("inspect --watch on a DNAT VIP = exit %d, want a %q line naming IP_INADDRERRORS at ip_error:\n%s\n%s", code, want, out, stderr)
	}
}
