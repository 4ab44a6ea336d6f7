package main

import (
	"context"
	"encoding/json"
	"net/netip"
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
		{"drops", "--proto", "gre"},
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
