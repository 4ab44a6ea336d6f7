//go:build guest

package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// The seed's stages on real IPVS, as `lbdoctor capture` sees them on the
// LB, each packet attributed to the VIP's flow through the IPVS table or
// conntrack: stage 1 (no SNAT) — the SYN leaves for the real with the
// client's source and the reply goes straight to the client, never back
// through the LB: the flow stops at real→; stage 3 (MASQUERADE,
// vs.conntrack=1, ip_forward=0) — the SYN-ACK arrives from the real and
// never leaves toward the client: the flow stops at →client.
func TestGuestCapture(t *testing.T) {
	tests := []struct {
		name     string
		build    func(t *testing.T) (*lab.Lab, netip.AddrPort)
		wantStop flowpath.LegKind
		wantLegs [4]bool // packets seen on request, to_real, reply, to_client
	}{
		{"stage 1, no SNAT: the reply never comes back through the LB", func(t *testing.T) (*lab.Lab, netip.AddrPort) {
			l := testkit.Lab(t, lab.OneArm)
			testkit.Serve(t, l.Real, ":8085")
			vip := netip.AddrPortFrom(l.VIP, 8085)
			testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
			testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "0")
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
			return l, vip
		}, flowpath.Reply, [4]bool{true, true, false, false}},
		{"stage 3, forwarding off: the SYN-ACK arrives and never leaves", func(t *testing.T) (*lab.Lab, netip.AddrPort) {
			l, vip := testkit.FullNAT(t)
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
			return l, vip
		}, flowpath.ToClient, [4]bool{true, true, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, vip := tt.build(t)
			wait := startCapture(t, "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "4s")
			if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); res.OK {
				t.Fatalf("the client reached %s: the fault is not in place", vip)
			}
			doc, stderr, code := wait(false)
			t.Logf("capture: exit %d, %+v\n%s", code, doc, stderr)
			if code != 0 || len(doc.Flows) != 1 {
				t.Fatalf("capture = exit %d, %d flows (%+v); want 0 and the probe's flow", code, len(doc.Flows), doc.Flows)
			}
			f := doc.Flows[0]
			real := netip.AddrPortFrom(l.RealIP, 8085).String()
			if f.VIP != vip.String() || f.Real != real || f.Stop != tt.wantStop {
				t.Errorf("flow %s → %s via %s stops at %q; want VIP %s via real %s stopping at %q", f.Client, f.VIP, f.Real, f.Stop, vip, real, tt.wantStop)
			}
			for i, leg := range f.Legs {
				if (leg.Packets > 0) != tt.wantLegs[i] {
					t.Errorf("leg %s: %d packets (%v), want some: %v", leg.Kind, leg.Packets, leg.Segments, tt.wantLegs[i])
				}
			}
			if doc.KernelDrops != 0 || doc.NotProcessed != 0 {
				t.Errorf("capture: kernel drops %d, not processed %d; want 0, 0", doc.KernelDrops, doc.NotProcessed)
			}
		})
	}
}

// check --capture on the seed's stage 3 under traffic: the path's legs are
// the packets seen on the wire, and sysctl.ip_forward's evidence says where
// the flows stop: "SYN-ACK seen arriving from real .50 (leg 3), never
// leaving toward the client (leg 4)".
func TestGuestCaptureCheck(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	args := []string{"check", "--netns", l.LB.Name, "--vip", vip.String(), "--capture"}
	var text string
	var code int
	withTraffic(l, vip, func() { text, code = testkit.RunLbdoctor(t, args...) })
	t.Logf("check --capture (ip_forward=0): exit %d\n%s", code, text)
	story := "SYN-ACK seen arriving from real .50 (leg 3), never leaving toward the client (leg 4)"
	if code != 1 || !strings.Contains(text, story) || !strings.Contains(text, "· →client 0") {
		t.Errorf("lbdoctor %v = exit %d; want 1, the evidence %q and a path with \"→client 0\"", args, code, story)
	}
	r, code := runBinary(t, append(args, "-o", "json")...)
	found := false
	for _, f := range r.Findings {
		if f.ID != "sysctl.ip_forward" || len(f.Path) == 0 {
			continue
		}
		found = true
		var reply, toClient *flowpath.Leg
		for i, leg := range f.Path[0].Legs {
			switch leg.Kind {
			case flowpath.Reply:
				reply = &f.Path[0].Legs[i]
			case flowpath.ToClient:
				toClient = &f.Path[0].Legs[i]
			}
		}
		if reply == nil || toClient == nil || reply.Source != flowpath.SourceCapture || reply.Packets == 0 || toClient.Packets != 0 || toClient.Source != flowpath.SourceCapture {
			t.Errorf("check --capture -o json: sysctl.ip_forward path %+v; want the reply leg counted by the capture (> 0) and →client 0", f.Path[0].Legs)
		}
	}
	if code != 1 || !found {
		t.Errorf("check --capture -o json = exit %d, sysctl.ip_forward with a path: %v; want 1, true", code, found)
	}

	// Every service of an LB with more addresses than the kernel's filter
	// compares (150 more services × 10 reals: 1,650 addresses, ~6,600
	// instructions past its 4,096): the capture is made all the same, its
	// kernel filter on the ports alone, and still sees where the flows stop.
	var more strings.Builder
	for i := 0; i < 150; i++ {
		fmt.Fprintf(&more, "-A -t 10.96.%d.%d:80 -s rr\n", i/250, i%250+1)
		for r := 0; r < 10; r++ {
			fmt.Fprintf(&more, "-a -t 10.96.%d.%d:80 -r 10.97.%d.%d:80 -m -w 1\n", i/250, i%250+1, i%250, r+1)
		}
	}
	testkit.RunStdin(t, l.LB, more.String(), "ipvsadm", "-R")
	all := []string{"check", "--netns", l.LB.Name, "--capture", "--no-probe"}
	withTraffic(l, vip, func() { text, code = testkit.RunLbdoctor(t, all...) })
	t.Logf("check --capture of 151 services: exit %d\n%s", code, text)
	if code != 1 || !strings.Contains(text, "the kernel's filter takes the ports alone") || !strings.Contains(text, story) || strings.Contains(text, "probe capture could not read") {
		t.Errorf("lbdoctor %v = exit %d; want 1, the capture made with its filter on the ports alone (said in the evidence), no capture error, and %q", all, code, story)
	}
}
