//go:build guest

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// binaryBound is the most one lbdoctor run may take in the guest: a check's
// window, two reads of every layer, loading the drop tracer (the verifier
// alone takes tens of seconds on a TCG guest that shares a loaded host).
const binaryBound = 4 * time.Minute

// runBinary runs the real lbdoctor binary the Makefile put into the guest.
func runBinary(t *testing.T, args ...string) (*report.Report, int) {
	t.Helper()
	return runBinaryEnv(t, nil, args...)
}

// runBinaryEnv runs it with env added to the test's environment.
func runBinaryEnv(t *testing.T, env []string, args ...string) (*report.Report, int) {
	t.Helper()
	out, errs, code := testkit.RunLbdoctorEnv(t, env, binaryBound, args...)
	var r report.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("lbdoctor %v: output is not JSON (%v):\n%s\n%s", args, err, out, errs)
	}
	return &r, code
}

func statusOf(t *testing.T, r *report.Report, id string) string {
	t.Helper()
	for _, f := range r.Findings {
		if f.ID == id {
			return string(f.Status)
		}
	}
	t.Fatalf("report has no finding %s: %+v", id, r.Findings)
	return ""
}

func TestGuestCheckFollowsTheSysctls(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	// Static judgments (the lab's real serves nothing here: a window's
	// probe would rightly fail ipvs.real_health).
	args := []string{"check", "--watch", "0", "--netns", l.LB.Name, "-o", "json"}

	steps := []struct {
		name            string
		setup           func()
		wantCode        int
		wantIPVS        string
		wantForward     string
		wantVSConntrack string
		wantReturnPath  string
	}{
		{"forwarding off", func() {
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
			testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "0")
		}, 1, "pass", "fail", "skip", "fail"},
		{"forwarding on", func() { testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1") }, 1, "pass", "pass", "skip", "fail"},
		{"ipvs MASQUERADE rule, vs.conntrack off", func() {
			testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs",
				"--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
		}, 1, "pass", "pass", "fail", "pass"},
		{"vs.conntrack on", func() { testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "1") }, 0, "pass", "pass", "pass", "pass"},
	}
	for _, s := range steps {
		s.setup()
		r, code := runBinary(t, args...)
		got := []string{statusOf(t, r, "kernel.ipvs"), statusOf(t, r, "sysctl.ip_forward"), statusOf(t, r, "sysctl.vs_conntrack"), statusOf(t, r, "nat.return_path")}
		want := []string{s.wantIPVS, s.wantForward, s.wantVSConntrack, s.wantReturnPath}
		if code != s.wantCode || strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: lbdoctor %v = exit %d, [kernel.ipvs sysctl.ip_forward sysctl.vs_conntrack nat.return_path] %v, want exit %d, %v",
				s.name, args, code, got, s.wantCode, want)
		}
		t.Logf("%s: exit %d, verdict %s, %v", s.name, code, r.Verdict, got)
	}

	// The same question for one service, and for a service that is not there.
	r, code := runBinary(t, "check", "--watch", "0", "--netns", l.LB.Name, "--vip", vip.String(), "-o", "json")
	// (all four pass now: the -m ipvs MASQUERADE rule and vs.conntrack=1 are in place)
	if code != 0 || statusOf(t, r, "kernel.ipvs") != "pass" {
		t.Errorf("check --vip %s = exit %d, kernel.ipvs %s; want 0, pass", vip, code, statusOf(t, r, "kernel.ipvs"))
	}
	r, code = runBinary(t, "check", "--watch", "0", "--netns", l.LB.Name, "--vip", "10.1.0.7:80", "-o", "json")
	if code != 1 || statusOf(t, r, "kernel.ipvs") != "fail" {
		t.Errorf("check --vip 10.1.0.7:80 = exit %d, kernel.ipvs %s; want 1, fail", code, statusOf(t, r, "kernel.ipvs"))
	}
}

// `check --drops` on the seed's stage 3 (MASQUERADE + vs.conntrack=1 +
// ip_forward=0): while a client tries the VIP, the doctor sees the SYN-ACK
// die in ip_error, says which VIP flow it was, and gives the sysctl fix; with
// forwarding on the same window passes.
func TestGuestCheckDrops(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	check := func() *checks.Finding {
		t.Helper()
		var r *report.Report
		withTraffic(l, vip, func() { // traffic for the whole window
			r, _ = runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--drops", "3s", "-o", "json")
		})
		for i := range r.Findings {
			if r.Findings[i].ID == "drops.vip_flows" {
				return &r.Findings[i]
			}
		}
		t.Fatalf("no drops.vip_flows finding in %+v", r.Findings)
		return nil
	}
	f := check()
	ev := fmt.Sprint(f.Evidence)
	// sysctl.ip_forward fails for these drops: drops.vip_flows names
	// them, points at that cause, and warns (one fault, one failing id).
	if f.Status != "warn" || !strings.Contains(f.Title, "IP_INADDRERRORS at ip_error") || !strings.Contains(f.Title, "the cause: sysctl.ip_forward") ||
		!strings.Contains(ev, "× IP_INADDRERRORS at ip_error+") || !strings.Contains(ev, "reply packets of") ||
		!strings.Contains(ev, "to VIP "+vip.String()+" via real "+l.RealIP.String()) || !strings.Contains(strings.Join(f.Fix, "\n"), "net.ipv4.ip_forward=1") {
		t.Errorf("drops.vip_flows = %s %q\n  evidence %s\n  fix %q\nwant a warn naming IP_INADDRERRORS at ip_error, its cause sysctl.ip_forward, the replies of the VIP flow, and the ip_forward fix", f.Status, f.Title, ev, f.Fix)
	}
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	if f := check(); f.Status != "pass" {
		t.Errorf("with forwarding on, drops.vip_flows = %s %q (%s) %v, want pass", f.Status, f.Title, f.Reason, f.Evidence)
	}
}

// On a one-arm IPVS LB whose SNAT is an iptables-nft `-m ipvs` rule, the
// doctor finds the rule through whatever iptables tool the host has — here
// only `iptables-save`, the nf_tables one — and, with no rule tool at all,
// says it cannot judge the return path instead of failing it.
func TestGuestCheckReadsRulesThroughAnyTool(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "1")
	testkit.Run(t, l.LB, "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs",
		"--vaddr", l.VIP.String(), "--vport", "8085", "-j", "MASQUERADE")
	lone, none := t.TempDir(), t.TempDir()
	multi, err := exec.LookPath("xtables-nft-multi")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(multi, filepath.Join(lone, "iptables-save")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path                 string
		wantReturnPath, wantVSConn string
		wantErrors                 bool
	}{
		{"only iptables-save (nf_tables)", lone, "pass", "pass", true},
		{"no rule tool", none, "skip", "skip", true},
	}
	for _, tt := range tests {
		r, code := runBinaryEnv(t, []string{"PATH=" + tt.path}, "check", "--netns", l.LB.Name, "-o", "json")
		got := statusOf(t, r, "nat.return_path") + " " + statusOf(t, r, "sysctl.vs_conntrack")
		if want := tt.wantReturnPath + " " + tt.wantVSConn; got != want || (r.Errors["rules"] != "") != tt.wantErrors {
			t.Errorf("%s: check = exit %d, [nat.return_path sysctl.vs_conntrack] %s, errors %v; want %s and the unread backends named", tt.name, code, got, r.Errors, want)
		}
	}
}

// withTraffic runs fn while a client keeps trying vip.
func withTraffic(l *lab.Lab, vip netip.AddrPort, fn func()) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				lab.Probe(context.Background(), l.Client, vip, 500*time.Millisecond)
			}
		}
	}()
	fn()
	close(stop)
	<-done
}

// The seed's stage 3 (SNAT by an -m ipvs MASQUERADE rule, vs.conntrack=1,
// ip_forward=0) under traffic, with check's default window: the client's
// connections fail; sysctl.ip_forward and drops.vip_flows fail with the
// path of the VIP's flows, leg by leg, stopping at ip_error (text and
// findings[].path); nothing else fails. The finding's fix, pasted, makes
// the client work, the check pass and the path complete.
func TestGuestCheckPathStage3(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); res.OK {
		t.Fatalf("with ip_forward=0 the client reached %s: the fault is not in place", vip)
	}
	args := []string{"check", "--netns", l.LB.Name, "--vip", vip.String()}
	var text string
	var code int
	withTraffic(l, vip, func() { text, code = testkit.RunLbdoctor(t, args...) })
	t.Logf("check (ip_forward=0): exit %d\n%s", code, text)
	stop := regexp.MustCompile(`(?m)^    path:     TCP ` + regexp.QuoteMeta(vip.String()) + `: client→VIP ✓ [1-9]\d* · IPVS→real \.\d+ ✓ [1-9]\d* · SNAT ✓ · (SYN-ACK|reply) real→LB ✓ [1-9]\d* · de-SNAT \(PREROUTING\) · route: ` +
		regexp.QuoteMeta(l.ClientIP.String()) + ` not local, forwarding off · ✗ ip_error IP_INADDRERRORS ×[1-9]\d*`)
	if code != 1 || !stop.MatchString(text) || !strings.Contains(text, "✗ sysctl.ip_forward") {
		t.Errorf("lbdoctor %v (ip_forward=0, traffic) = exit %d:\n%s\nwant exit 1, sysctl.ip_forward failing with a path matching %s", args, code, text, stop)
	}

	var r *report.Report
	withTraffic(l, vip, func() { r, code = runBinary(t, append(args, "-o", "json")...) })
	var fix []string
	for _, f := range r.Findings {
		switch {
		case f.Status == checks.Fail && f.ID != "sysctl.ip_forward" && f.ID != "drops.vip_flows":
			t.Errorf("check -o json (ip_forward=0): %s fails too (%s), want only sysctl.ip_forward and drops.vip_flows", f.ID, f.Title)
		case f.ID == "sysctl.ip_forward":
			fix = f.Fix
			if f.Status != checks.Fail || len(f.Path) != 1 || f.Path[0].Complete() || len(f.Path[0].Stops) == 0 ||
				f.Path[0].Stops[0].Reason != "IP_INADDRERRORS" || f.Path[0].Stops[0].Function != "ip_error" || f.Path[0].Real != netip.AddrPortFrom(l.RealIP, 8085).String() {
				t.Errorf("check -o json (ip_forward=0): sysctl.ip_forward = %s, path %+v; want fail with one path to the real stopping at ip_error IP_INADDRERRORS", f.Status, f.Path)
			}
		}
	}
	if code != 1 || len(fix) == 0 {
		t.Fatalf("check -o json (ip_forward=0) = exit %d, fix %q; want exit 1 and a fix", code, fix)
	}

	// The guest's ip is busybox's (no `ip netns exec`): the fix runs in
	// the namespace it names.
	for _, line := range fix {
		cmd, ok := strings.CutPrefix(line, l.LB.ExecPrefix())
		if !ok {
			t.Fatalf("the fix %q does not run in %s", line, l.LB)
		}
		testkit.Run(t, l.LB, "sh", "-c", cmd)
	}
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
		t.Fatalf("after the fix %q the client cannot reach %s: %v", fix, vip, res.Err)
	}
	withTraffic(l, vip, func() { r, code = runBinary(t, append(args, "-o", "json")...) })
	if code != 0 || statusOf(t, r, "sysctl.ip_forward") != "pass" || statusOf(t, r, "drops.vip_flows") != "pass" {
		t.Errorf("check -o json after the fix = exit %d, sysctl.ip_forward %s, drops.vip_flows %s; want 0, pass, pass: %+v", code, statusOf(t, r, "sysctl.ip_forward"), statusOf(t, r, "drops.vip_flows"), r.Findings)
	}
	complete := regexp.MustCompile(`client→VIP ✓ [1-9]\d* · IPVS→real \.\d+ ✓ [1-9]\d* · SNAT ✓ · reply real→LB ✓ [1-9]\d* · de-SNAT \(PREROUTING\) · route: forwarded to ` + regexp.QuoteMeta(l.ClientIP.String()) + ` ✓`)
	var inspect string
	for _, f := range r.Findings {
		if len(f.Path) > 0 {
			t.Errorf("check -o json after the fix: %s (%s) carries a path %v, want none on a passing check", f.ID, f.Status, f.Path)
		}
	}
	// The complete path is in the window (inspect shows it).
	withTraffic(l, vip, func() {
		inspect, _ = testkit.RunLbdoctor(t, "inspect", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "3s")
	})
	t.Logf("inspect --watch 3s after the fix:\n%s", inspect)
	if !complete.MatchString(inspect) {
		t.Errorf("inspect --watch 3s after the fix:\n%s\nwant a complete path matching %s", inspect, complete)
	}
}
