//go:build guest

package main

import (
	_ "embed"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// keepalivedConf is the director's keepalived.conf (the guest has no
// source tree: the test carries it).
//
//go:embed testdata/keepalived.conf
var keepalivedConf []byte

// findingLines is the finding id of a report (the test fails without it).
func findingLines(t *testing.T, r *report.Report, id string) (status string, lines string) {
	t.Helper()
	for _, f := range r.Findings {
		if f.ID == id {
			var b strings.Builder
			b.WriteString(f.Title + "\n")
			for _, e := range f.Evidence {
				b.WriteString(e.Fact + "\n")
			}
			for _, x := range f.Fix {
				b.WriteString("$ " + x + "\n")
			}
			return string(f.Status), b.String()
		}
	}
	t.Fatalf("report has no finding %s", id)
	return "", ""
}

// A keepalived-like director: the one-arm lab's LB programmed with ipvsadm
// exactly as testdata/keepalived.conf says (a NAT service with SNAT, a UDP
// DR service with persistence, a firewall-mark DR service). check --expect
// is clean; the operator's ipvsadm changes (a weight, a real taken out, a
// real switched to DR with -g) make ipvs.drift list each and
// ipvs.forward_method fail the DR real, which loses its clients; the
// finding's `ipvsadm -e … -m` brings them back and passes it, and drift's
// own fix lines make the kernel match the file again.
func TestGuestKeepalivedDirector(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	testkit.Run(t, l.Real, "ip", "addr", "add", "10.1.0.51/24", "dev", "eth0")
	testkit.Serve(t, l.Real, ":8085")
	testkit.Serve(t, l.Real, ":8086")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	for _, cmd := range []string{
		"-A -t 10.1.0.6:8085 -s wrr",
		"-a -t 10.1.0.6:8085 -r 10.1.0.50:8085 -m -w 2",
		"-a -t 10.1.0.6:8085 -r 10.1.0.51:8085 -m -w 1",
		"-a -t 10.1.0.6:8085 -r 10.1.0.50:8086 -m -w 1",
		"-A -u 10.1.0.6:53 -s rr -p 60",
		"-a -u 10.1.0.6:53 -r 10.1.0.50:53 -g -w 1",
		"-A -f 7 -s sh",
		"-a -f 7 -r 10.1.0.50:8085 -g -w 1",
	} {
		testkit.Run(t, l.LB, "ipvsadm", strings.Fields(cmd)...)
	}
	testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", "10.1.0.6", "--vport", "8085", "-j", "MASQUERADE")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.expire_nodest_conn", "1")
	conf := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(conf, keepalivedConf, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func() *report.Report {
		r, _ := runBinary(t, "check", "--netns", l.LB.Name, "--expect", conf, "--watch", "0", "-o", "json")
		return r
	}
	const n = 6
	if ok := clientTries(l, vip, n); ok != n {
		t.Fatalf("as the file says: %d of %d connections to %s answered, want all", ok, n, vip)
	}

	r := check()
	if got := failing(r); len(got) != 0 || statusOf(t, r, "ipvs.drift") != "pass" || statusOf(t, r, "ipvs.forward_method") != "pass" {
		t.Fatalf("check --expect on the director as the file says = failing %v, drift %s, forward_method %s; want no failure and both passing:%s",
			got, statusOf(t, r, "ipvs.drift"), statusOf(t, r, "ipvs.forward_method"), describe(r))
	}
	t.Logf("as the file says:%s", describe(r))

	// The operator's changes: a weight, a real taken out, a method (-g).
	testkit.Run(t, l.LB, "ipvsadm", "-e", "-t", "10.1.0.6:8085", "-r", "10.1.0.50:8085", "-m", "-w", "5")
	testkit.Run(t, l.LB, "ipvsadm", "-d", "-t", "10.1.0.6:8085", "-r", "10.1.0.50:8086")
	testkit.Run(t, l.LB, "ipvsadm", "-e", "-t", "10.1.0.6:8085", "-r", "10.1.0.51:8085", "-g", "-w", "1")
	if ok := clientTries(l, vip, n); ok == 0 || ok == n {
		t.Fatalf("with 10.1.0.51 as DR: %d of %d connections answered, want some but not all (wrr 5:1)", ok, n)
	}
	// Under the clients' traffic, with the window: the DR real's SYNs get
	// nothing back through IPVS (as with every DR real: replies bypass the
	// LB), which is forward_method's to name, not nat.return_path's.
	withTraffic(l, vip, func() {
		r, _ = runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--expect", conf, "-o", "json")
	})
	if got := failing(r); !slices.Equal(got, []string{"ipvs.forward_method", "ipvs.drift"}) {
		t.Fatalf("check --expect after the drift = failing %v, want [ipvs.forward_method ipvs.drift]:%s", got, describe(r))
	}
	_, drift := findingLines(t, r, "ipvs.drift")
	for _, want := range []string{
		"TCP 10.1.0.6:8085: real 10.1.0.50:8085 has weight 5 in IPVS, 2 in " + conf + ":24",
		"TCP 10.1.0.6:8085: real 10.1.0.50:8086 is missing from IPVS (" + conf + ":36)",
		"TCP 10.1.0.6:8085: real 10.1.0.51:8085 forwards by DR (-g) in IPVS, NAT (-m) in " + conf + ":30",
	} {
		if !strings.Contains(drift, want) {
			t.Errorf("ipvs.drift =\n%s\nwant it to say %q", drift, want)
		}
	}
	if strings.Count(drift, " in IPVS") != 2 || strings.Count(drift, "missing") != 1 || strings.Contains(drift, "UDP") || strings.Contains(drift, "FWM") {
		t.Errorf("ipvs.drift with --vip %s =\n%s\nwant exactly the three differences of that service", vip, drift)
	}
	_, fm := findingLines(t, r, "ipvs.forward_method")
	if !strings.Contains(fm, "real 10.1.0.51:8085 of TCP 10.1.0.6:8085 forwards by DR (-g), while its other reals masquerade (NAT): 10.1.0.50:8085") {
		t.Errorf("ipvs.forward_method =\n%s\nwant it to name the DR real beside the NAT one", fm)
	}
	t.Logf("after the drift:%s", describe(r))

	applyFix(t, r, "ipvs.forward_method", l.LB, "ipvsadm -e")
	if ok := clientTries(l, vip, n); ok != n {
		t.Errorf("after forward_method's fix: %d of %d connections answered, want all", ok, n)
	}
	r = check()
	if got := failing(r); !slices.Equal(got, []string{"ipvs.drift"}) || statusOf(t, r, "ipvs.forward_method") != "pass" {
		t.Fatalf("check after forward_method's fix = failing %v, forward_method %s; want [ipvs.drift] alone and a pass:%s", got, statusOf(t, r, "ipvs.forward_method"), describe(r))
	}
	if _, drift = findingLines(t, r, "ipvs.drift"); strings.Contains(drift, "forwards by") {
		t.Errorf("ipvs.drift after the method was fixed =\n%s\nwant no method line", drift)
	}

	// Drift's own fix lines, as printed (the comment line is the other way).
	for _, f := range r.Findings {
		if f.ID != "ipvs.drift" {
			continue
		}
		for _, line := range f.Fix {
			cmd := strings.TrimPrefix(line, l.LB.ExecPrefix())
			if strings.HasPrefix(cmd, "#") {
				continue
			}
			args := strings.Fields(cmd)
			testkit.Run(t, l.LB, args[0], args[1:]...)
		}
	}
	r = check()
	if got := failing(r); len(got) != 0 || statusOf(t, r, "ipvs.drift") != "pass" {
		t.Errorf("check after drift's fix = failing %v, drift %s; want no failure and a pass:%s", got, statusOf(t, r, "ipvs.drift"), describe(r))
	}
	if ok := clientTries(l, vip, n); ok != n {
		t.Errorf("after drift's fix: %d of %d connections answered, want all", ok, n)
	}
}
