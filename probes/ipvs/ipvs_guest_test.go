//go:build guest

package ipvs_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// The probe and ipvsadm, run in the same namespace, say the same thing.
func TestGuestIPVSAgreesWithIpvsadm(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 5)
	// IPVS folds its per-CPU counters every 2 s: wait until all 5 show,
	// then one more fold so nothing moves between the two reads.
	var snap ipvs.Snapshot
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var err error
		if snap, err = ipvs.Read(l.LB); err != nil {
			t.Fatal(err)
		}
		if len(snap.Services) == 1 && snap.Services[0].Stats.Conns == 5 || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(2500 * time.Millisecond)
	snap, err := ipvs.Read(l.LB)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Available || len(snap.Services) != 1 {
		t.Fatalf("Read(lb) = %+v, want one service", snap)
	}
	svc := snap.Services[0]
	if svc.Key() != "TCP "+vip.String() || svc.Scheduler != "rr" || len(svc.Reals) != 1 || svc.Reals[0].Method != ipvs.Masq {
		t.Errorf("Read(lb) service = %+v, want TCP %s rr with one masq real", svc, vip)
	}
	if svc.Stats.Conns != 5 {
		t.Errorf("Read(lb) service conns = %d, want 5", svc.Stats.Conns)
	}
	// ipvsadm -Ln --stats --exact:
	//   TCP  10.1.0.6:8085   5   30   25   1800   1500
	//     -> 10.1.0.50:8085  5   30   25   1800   1500
	out := testkit.Run(t, l.LB, "ipvsadm", "-Ln", "--stats", "--exact")
	want := map[string]ipvs.Stats{"TCP " + vip.String(): svc.Stats, "-> " + svc.Reals[0].Addr.String(): svc.Reals[0].Stats}
	seen := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 7 {
			continue
		}
		st, ok := want[f[0]+" "+f[1]]
		if !ok {
			continue
		}
		seen++
		got := fmt.Sprintf("%d %d %d %d %d", st.Conns, st.PacketsIn, st.PacketsOut, st.BytesIn, st.BytesOut)
		if strings.Join(f[2:], " ") != got {
			t.Errorf("ipvsadm says %q, probe says %s %s", line, f[0]+" "+f[1], got)
		}
	}
	if seen != 2 {
		t.Errorf("matched %d ipvsadm lines, want 2:\n%s", seen, out)
	}
	if snap.Timeouts.TCP == 0 || snap.Timeouts.UDP == 0 {
		t.Errorf("Read(lb) timeouts = %+v, want the kernel's defaults", snap.Timeouts)
	}
	tout := testkit.Run(t, l.LB, "ipvsadm", "-Ln", "--timeout")
	if wantT := fmt.Sprintf("Timeout (tcp tcpfin udp): %d %d %d", snap.Timeouts.TCP, snap.Timeouts.TCPFin, snap.Timeouts.UDP); !strings.Contains(tout, wantT) {
		t.Errorf("ipvsadm --timeout = %q, want %q", tout, wantT)
	}
}

func TestGuestConnTableAgreesWithIpvsadm(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 3)
	// Let the closes finish, so both reads see settled TIME_WAIT entries.
	var conns []ipvs.Conn
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if conns, err = ipvs.ReadConns(l.LB, nil); err != nil {
			t.Fatal(err)
		}
		settled := true
		for _, c := range conns {
			settled = settled && c.State == "TIME_WAIT"
		}
		if settled || time.Now().After(deadline) {
			break
		}
	}
	// ipvsadm -Lnc: "TCP 01:59  TIME_WAIT   10.1.0.3:41234     10.1.0.6:8085      10.1.0.50:8085"
	var fromTool, fromProbe []string
	for _, line := range strings.Split(testkit.Run(t, l.LB, "ipvsadm", "-Lnc"), "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && (f[0] == "TCP" || f[0] == "UDP") {
			fromTool = append(fromTool, strings.Join([]string{strings.ToLower(f[0]), f[2], f[3], f[4], f[5]}, " "))
		}
	}
	for _, c := range conns {
		fromProbe = append(fromProbe, strings.Join([]string{c.Proto, c.State, c.Client.String(), c.VIP.String(), c.Dest.String()}, " "))
		if c.VIP != vip || c.Dest.Addr() != l.RealIP || c.Client.Addr() != l.ClientIP || c.Expires <= 0 {
			t.Errorf("ReadConns(lb) entry = %+v, want client %s → %s → %s", c, l.ClientIP, vip, l.RealIP)
		}
	}
	sort.Strings(fromTool)
	sort.Strings(fromProbe)
	if len(conns) != 3 || strings.Join(fromTool, "\n") != strings.Join(fromProbe, "\n") {
		t.Errorf("ReadConns(lb) =\n%s\nipvsadm -Lnc =\n%s\nwant the same 3 connections", strings.Join(fromProbe, "\n"), strings.Join(fromTool, "\n"))
	}
}
