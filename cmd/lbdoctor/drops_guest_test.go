//go:build guest

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
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
	var found *report.Drop
	var sum report.DropsSummary
	sc := bufio.NewScanner(&out)
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
			if d.Reason == "IP_INADDRERRORS" && found == nil {
				found = &d
			}
		case "summary":
			json.Unmarshal(sc.Bytes(), &sum)
		}
	}
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
