//go:build guest

package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// Root causes of the LB's configuration, each injected as an operator
// would: the client breaks, `check` (default window, live traffic) fails
// that id and nothing else, the finding's fix is applied (by `check --fix`
// where the snapshot alone shows the fault), and then the id passes and the
// client works.
func TestGuestConfigFaults(t *testing.T) {
	tests := []struct {
		name   string
		build  func(t *testing.T) healthyLB
		inject func(t *testing.T, h healthyLB)
		id     string
		wantIn string // in the failing finding's title, reason or evidence
		static bool   // the snapshot alone shows it: --fix repairs it without a window
	}{
		{"VIP address removed", oneArmLegacyMasq, func(t *testing.T, h healthyLB) {
			testkit.Run(t, h.lb, "ip", "addr", "del", h.vip.Addr().String()+"/32", "dev", "eth0")
		}, "ipvs.vip_local", "VIP 10.1.0.6 of TCP 10.1.0.6:8085 is no local address", true},
		{"strict rp_filter, asymmetric route", twoArmAsymmetric, func(t *testing.T, h healthyLB) {
			testkit.Run(t, h.lb, "sysctl", "-w", "net.ipv4.conf.all.rp_filter=1")
		}, "sysctl.rp_filter", "eth0 (the VIP's interface) refuses it: ip route get 10.1.0.6 from 10.1.0.3 iif eth0", false},
		{"IPv6 forwarding off", twoArmIPv6, func(t *testing.T, h healthyLB) {
			testkit.Run(t, h.lb, "sysctl", "-w", "net.ipv6.conf.all.forwarding=0")
		}, "sysctl.ip_forward", "net.ipv6.conf.all.forwarding = 0", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.build(t)
			if res := answered(h); !res.OK {
				t.Fatalf("client → %s before the fault: %v in 3 tries, want an answer (the LB is built wrong)", h.vip, res.Err)
			}
			tt.inject(t, h)
			if res := h.client(); res.OK {
				t.Fatalf("client → %s after the fault: answered, want it broken", h.vip)
			}

			r, code := checkWithTraffic(t, h)
			f := findingOf(*r, tt.id)
			text := f.Title + "\n" + f.Reason
			for _, e := range f.Evidence {
				text += "\n" + e.Fact
			}
			if fails := failing(r); code != 1 || !slices.Equal(fails, []string{tt.id}) || !strings.Contains(text, tt.wantIn) {
				t.Fatalf("check after the fault = exit %d, failing %v, want exit 1 and only %s failing with %q\n%s", code, fails, tt.id, tt.wantIn, findingsText(r))
			}
			t.Logf("the fault: %s %s\n%s", f.Status, f.Title, findingsText(r))

			// The finding's fix. A failure the snapshot alone shows is
			// repaired by --fix (its remedies, a static check); the reverse-
			// path filter's rests on the window's drops, so its fix lines
			// are run as printed.
			if tt.static {
				out, code := testkit.RunLbdoctor(t, "check", "--netns", h.lb.Name, "--watch", "0", "--fix", "--yes")
				_, after, _ := strings.Cut(out, "after --fix:")
				if code != 0 || !strings.Contains(after, "✓ "+tt.id+" ") {
					t.Fatalf("check --watch 0 --fix --yes = exit %d, want 0 and %s passing after the fix:\n%s", code, tt.id, out)
				}
			} else {
				// Each line as printed, its namespace prefix (`ip netns
				// exec NAME`, which the guest's busybox ip lacks) taken as
				// where to run the rest.
				for _, line := range f.Fix {
					if strings.HasPrefix(line, "#") {
						continue // a comment for the reader
					}
					cmd, ok := strings.CutPrefix(line, h.lb.ExecPrefix())
					if !ok {
						t.Fatalf("the fix %q does not run in %s", line, h.lb)
					}
					testkit.Run(t, h.lb, "sh", "-c", cmd)
				}
			}
			if res := answered(h); !res.OK {
				t.Fatalf("client → %s after the fix: %v in 3 tries, want an answer", h.vip, res.Err)
			}
			r, code = runBinary(t, "check", "--netns", h.lb.Name, "--watch", "0", "-o", "json")
			if st := statusOf(t, r, tt.id); code != 0 || st != "pass" || len(failing(r)) > 0 {
				t.Errorf("check after the fix = exit %d, %s %s, failing %v, want exit 0 and %s passing\n%s", code, tt.id, st, failing(r), tt.id, findingsText(r))
			}
		})
	}
}

// answered is the client's exchange, tried up to 3 times: the first one
// after a change resolves every neighbour on the way, which on a loaded
// TCG guest may take longer than one exchange's timeout.
func answered(h healthyLB) lab.ProbeResult {
	res := h.client()
	for try := 1; !res.OK && try < 3; try++ {
		res = h.client()
	}
	return res
}

// checkWithTraffic runs `check` with its default window while the client
// keeps using the VIP.
func checkWithTraffic(t *testing.T, h healthyLB) (*report.Report, int) {
	t.Helper()
	traffic := testkit.StartTraffic(t, 20*time.Millisecond, h.client)
	defer traffic.Stop()
	return runBinary(t, "check", "--netns", h.lb.Name, "-o", "json")
}

func failing(r *report.Report) []string {
	var ids []string
	for _, f := range r.Findings {
		if f.Status == checks.Fail {
			ids = append(ids, f.ID)
		}
	}
	return ids
}

// twoArmLab is a two-arm LB built by hand: VIP 10.1.0.6 on the clients'
// arm, the real behind the other with the LB as its gateway, no SNAT.
func twoArmLab(t *testing.T) (*lab.Lab, healthyLB) {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", vip.String(), "-s", "rr")
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", l.RealIP.String()+":8085", "-m")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.ip_forward=1")
	testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.vs.expire_nodest_conn=1")
	return l, healthyLB{lb: l.LB, vip: vip, client: tcpClient(l, vip)}
}

// twoArmAsymmetric is twoArmPlain with a second link between the client
// and the LB (client eth1 10.3.0.3, LB eth2 10.3.0.1) and the LB's route
// back to the client through it: the client's packets come in on eth0,
// the route to it leaves by eth2. It works while the reverse-path filter
// is off or loose (the client, multi-homed, takes its replies on eth1).
func twoArmAsymmetric(t *testing.T) healthyLB {
	l, h := twoArmLab(t)
	testkit.Veth(t, testkit.VethEnd{NS: l.Client, Name: "eth1", Addrs: []string{"10.3.0.3/24"}}, testkit.VethEnd{NS: l.LB, Name: "eth2", Addrs: []string{"10.3.0.1/24"}})
	for _, dev := range []string{"all", "eth0", "eth1"} {
		testkit.Run(t, l.Client, "sysctl", "-w", "net.ipv4.conf."+dev+".rp_filter=0")
	}
	for _, dev := range []string{"all", "eth0", "eth1", "eth2"} {
		testkit.Run(t, l.LB, "sysctl", "-w", "net.ipv4.conf."+dev+".rp_filter=0")
	}
	testkit.Run(t, l.LB, "ip", "route", "add", l.ClientIP.String()+"/32", "via", "10.3.0.3", "dev", "eth2")
	return h
}
