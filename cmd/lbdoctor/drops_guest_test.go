//go:build guest

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// The seed's stage 3 on real IPVS: MASQUERADE + vs.conntrack=1 +
// ip_forward=0. `lbdoctor drops --vip` names the reason, the place and the
// VIP flow of the dropped SYN-ACK, though no address in it is the VIP.
func TestGuestDropsStage3(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	bin := testkit.LbdoctorBinary(t)
	cmd := exec.Command(bin, "drops", "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "8s", "-o", "json")
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// -o json prints no start line: wait until the tracer program is loaded.
	for deadline := time.Now().Add(30 * time.Second); len(testkit.LoadedPrograms(drops.ProgramName(cmd.Process.Pid))) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("lbdoctor drops did not attach within 30 s")
		}
	}
	go io.Copy(&errb, stderr)
	res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second)
	if res.OK {
		t.Fatal("stage 3 connection worked; want it to fail")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("lbdoctor drops: %v\n%s", err, errb.String())
	}
	found, sum := firstDrop(t, &out, func(d report.Drop) bool { return d.Reason == "IP_INADDRERRORS" })
	if found == nil {
		t.Fatalf("no IP_INADDRERRORS drop in:\n%s\n%s", out.String(), errb.String())
	}
	f := found.Flow
	if !strings.HasPrefix(found.Location, "ip_error+") || f == nil || f.VIP != vip || f.Real.Addr() != l.RealIP ||
		!strings.Contains(f.Direction, "SYN-ACK") || !strings.Contains(f.Stage, "after SNAT reverse") || found.NetnsTag != l.LB.Name {
		t.Errorf("drop = %s, want the SYN-ACK of the VIP flow at ip_error, after SNAT reverse, in %s", report.DropLine(*found), l.LB.Name)
	}
	if sum.Type != "summary" || sum.Counters.Matched == 0 || sum.Delivered+sum.Lost != sum.Counters.Matched {
		t.Errorf("summary = %+v, want delivered + lost = matched > 0", sum)
	}
}

// A flow only IPVS knows: two-arm NAT with vs.conntrack=0 (IPVS keeps its
// connections out of conntrack) and forwarding off, so the real server's
// SYN-ACK dies in the LB before IPVS could de-NAT it. drops attributes it
// from the IPVS connection table, read in batches, and counts it.
func TestGuestDropsAttributesFromIPVS(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "0")
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	cmd := exec.Command(testkit.LbdoctorBinary(t), "drops", "--netns", l.LB.Name, "--vip", vip.String(), "--duration", "8s", "-o", "json")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); len(testkit.LoadedPrograms(drops.ProgramName(cmd.Process.Pid))) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("lbdoctor drops did not attach within 30 s")
		}
	}
	time.Sleep(time.Second) // the tracer's tables are open
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); res.OK {
		t.Fatal("the connection worked with forwarding off; want it to fail")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("lbdoctor drops: %v\n%s", err, errb.String())
	}
	found, sum := firstDrop(t, &out, func(d report.Drop) bool { return d.Flow != nil && d.Flow.Source == "ipvs" })
	if found == nil || found.Flow.VIP != vip || !strings.Contains(found.Flow.Direction, "SYN-ACK") || !strings.Contains(found.Flow.Stage, "never de-NATed by IPVS") {
		t.Fatalf("no SYN-ACK attributed from IPVS (never de-NATed) in:\n%s\n%s", out.String(), errb.String())
	}
	if sum.Attribution.Attributed == 0 || sum.Attribution.Attributed+sum.Attribution.NotAttributed != sum.Delivered {
		t.Errorf("summary attribution = %+v, delivered %d; want some attributed, attributed + not = delivered", sum.Attribution, sum.Delivered)
	}
}

// firstDrop reads `drops -o json` lines: the first drop that want accepts
// (nil if none) and the closing summary. Every drop is logged.
func firstDrop(t *testing.T, out io.Reader, want func(report.Drop) bool) (*report.Drop, report.DropsSummary) {
	t.Helper()
	var found *report.Drop
	var sum report.DropsSummary
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var typ struct{ Type string }
		json.Unmarshal(sc.Bytes(), &typ)
		switch typ.Type {
		case "drop":
			var d report.Drop
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", report.DropLine(d))
			if found == nil && want(d) {
				found = &d
			}
		case "summary":
			json.Unmarshal(sc.Bytes(), &sum)
		}
	}
	return found, sum
}
