//go:build guest

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// On real IPVS, `lbdoctor inspect` (the binary) shows the service, its
// real, the IPVS connections, the -m ipvs rule and the SNATed flows, and
// --watch counts what traffic in the window did to IPVS's counters.
func TestGuestInspectFullNAT(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 3)
	bin, err := exec.LookPath("lbdoctor")
	if err != nil {
		t.Fatal("no lbdoctor binary in the guest: run guest tests with `make guest-test`")
	}
	run := func(args ...string) []byte {
		var out, errb bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("lbdoctor %v: %v\n%s", args, err, errb.String())
		}
		return out.Bytes()
	}
	var in report.Inspection
	if err := json.Unmarshal(run("inspect", "--netns", l.LB.Name, "--vip", vip.String(), "-o", "json"), &in); err != nil {
		t.Fatal(err)
	}
	s := in.Snapshot
	if len(s.IPVS.Services) != 1 || len(s.IPVS.Conns) != 3 || len(s.Conntrack.Flows) != 3 {
		t.Fatalf("inspect: %d services, %d IPVS conns, %d flows; want 1, 3, 3", len(s.IPVS.Services), len(s.IPVS.Conns), len(s.Conntrack.Flows))
	}
	for _, f := range s.Conntrack.Flows {
		if !f.HasStatus("SRC_NAT") || f.Reply.Dst.Addr() != l.LBIP {
			t.Errorf("inspect flow %s: want SNAT to the LB", f)
		}
	}
	if !s.Features.Available("ipvs") || s.Sysctls["net.ipv4.vs.conntrack"].Value != "1" {
		t.Errorf("inspect: ipvs feature %v, vs.conntrack %+v", s.Features.Available("ipvs"), s.Sysctls["net.ipv4.vs.conntrack"])
	}

	// Traffic through the whole window, however long the first read takes.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
				lab.Probe(context.Background(), l.Client, vip, 2*time.Second)
			}
		}
	}()
	if err := json.Unmarshal(run("inspect", "--netns", l.LB.Name, "--watch", "6s", "-o", "json"), &in); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	if d := in.Deltas; d == nil || len(d.IPVS) != 1 || d.IPVS[0].Conns == 0 || d.IPVS[0].Reals[0].Conns != d.IPVS[0].Conns {
		t.Errorf("inspect --watch 6s IPVS deltas = %+v, want new conns on the service, all on its one real", in.Deltas)
	}
	text := string(run("inspect", "--netns", l.LB.Name))
	for _, want := range []string{"TCP " + vip.String() + " rr", "→ " + l.RealIP.String() + ":8085", "masq", "-m ipvs --vaddr " + l.VIP.String(), "ipvs match", "SRC_NAT"} {
		if !strings.Contains(text, want) {
			t.Errorf("inspect text lacks %q:\n%s", want, text)
		}
	}
	t.Logf("\n%s", text)
}
