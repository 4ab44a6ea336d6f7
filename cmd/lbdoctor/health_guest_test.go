//go:build guest

package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// clientTries connects n times from the lab's client to vip and returns how
// many were answered (each waits up to 2 s: the guest emulates its CPU).
func clientTries(l *lab.Lab, vip netip.AddrPort, n int) int {
	ok := 0
	for i := 0; i < n; i++ {
		if lab.Probe(context.Background(), l.Client, vip, 2*time.Second).OK {
			ok++
		}
	}
	return ok
}

// describe is a report's findings, one line each, for a failure message.
func describe(r *report.Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "\n  %s %s: %s %s", f.Status, f.ID, f.Title, f.Reason)
		if f.Status == "fail" || f.Status == "warn" {
			for _, e := range f.Evidence {
				fmt.Fprintf(&b, "\n      %s (%s)", e.Fact, e.Source)
			}
			for _, x := range f.Fix {
				fmt.Fprintf(&b, "\n      $ %s", x)
			}
		}
	}
	return b.String()
}

// applyFix runs the first line of a finding's fix that starts with want
// (after the namespace's exec prefix), in ns, as the operator would paste it.
func applyFix(t *testing.T, r *report.Report, id string, ns netns.Target, want string) {
	t.Helper()
	for _, f := range r.Findings {
		if f.ID != id {
			continue
		}
		for _, line := range f.Fix {
			cmd, _, _ := strings.Cut(strings.TrimPrefix(line, ns.ExecPrefix()), "#")
			if !strings.HasPrefix(cmd, want) {
				continue
			}
			args := strings.Fields(cmd)
			t.Logf("fix of %s in %s: %s", id, ns, cmd)
			testkit.Run(t, ns, args[0], args[1:]...)
			return
		}
		t.Fatalf("%s has no fix line %q…: %q", id, want, f.Fix)
	}
	t.Fatalf("no finding %s", id)
}

// Each fault an operator can make of a real server: check under client
// traffic fails ipvs.real_health and nothing else, naming the real and the
// service, its path telling what came back from the real (a real that
// never answers ARP sent no reply: IPVS counts the ICMP host-unreachable
// errors the LB sends about its flows as its packets out, once shown as
// "SYN-ACK real→LB ✓ 31"; a real that refuses answered with RSTs; one
// the LB has no route to was never reached); the finding's own fix makes
// the client work and the id pass.
func TestGuestRealHealth(t *testing.T) {
	tests := []struct {
		name    string
		topo    lab.Topology
		inject  func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string // returns the sick real
		partial bool                                                      // one real of two: some connections still work
		fixWith string                                                    // the fix line to apply
		path    func(t *testing.T, p flowpath.Path)                       // judges the sick real's path
	}{
		{name: "nothing listens", topo: lab.OneArm, partial: true, fixWith: "ipvsadm -d",
			inject: func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string {
				sick := netip.AddrPortFrom(l.RealIP, 8086).String()
				testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", sick, "-m")
				return sick
			},
			path: func(t *testing.T, p flowpath.Path) {
				wantLeg(t, p, flowpath.Schedule, flowpath.OK, "")
				wantLeg(t, p, flowpath.Reply, flowpath.OK, "RSTs: the real refuses connections")
			}},
		{name: "nobody has the address", topo: lab.OneArm, partial: true, fixWith: "ipvsadm -d",
			inject: func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string {
				sick := "10.1.0.99:8085"
				testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", sick, "-m")
				return sick
			},
			path: func(t *testing.T, p flowpath.Path) {
				wantLeg(t, p, flowpath.Schedule, flowpath.Stopped, "no ARP answer from 10.1.0.99")
				wantLeg(t, p, flowpath.Reply, flowpath.Failed, "no reply: no ARP answer from 10.1.0.99")
				if l := legOf(p, flowpath.Route); l.Status == flowpath.OK {
					t.Errorf("route leg %s, want it not crossed: no reply came", l.Status)
				}
				if s := p.String(); strings.Contains(s, "SYN-ACK") || !strings.Contains(s, "reply real→LB ✗ (no reply: no ARP answer from 10.1.0.99") {
					t.Errorf("path = %q, want no SYN-ACK and \"reply real→LB ✗ (no reply: no ARP answer from 10.1.0.99…\"", s)
				}
			}},
		{name: "no route", topo: lab.TwoArm, fixWith: "ip route add",
			inject: func(t *testing.T, l *lab.Lab, vip netip.AddrPort) string {
				testkit.Run(t, l.LB, "ip", "route", "del", "10.2.0.0/24", "dev", "eth1")
				return netip.AddrPortFrom(l.RealIP, 8085).String()
			},
			path: func(t *testing.T, p flowpath.Path) {
				wantLeg(t, p, flowpath.Schedule, flowpath.Stopped, "the LB has no route to 10.2.0.50")
				wantLeg(t, p, flowpath.Reply, flowpath.Failed, "no reply: the LB has no route to 10.2.0.50")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l *lab.Lab
			var vip netip.AddrPort
			if tt.topo == lab.OneArm {
				l, vip = testkit.FullNAT(t)
			} else {
				l = testkit.Lab(t, lab.TwoArm)
				testkit.Serve(t, l.Real, ":8085")
				vip = netip.AddrPortFrom(l.VIP, 8085)
				testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
				testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
			}
			const n = 8
			if ok := clientTries(l, vip, n); ok != n {
				t.Fatalf("before the fault: %d of %d connections to %s answered, want all", ok, n, vip)
			}
			sick := tt.inject(t, l, vip)
			ok := clientTries(l, vip, n)
			if (tt.partial && (ok == 0 || ok == n)) || (!tt.partial && ok != 0) {
				t.Fatalf("with the fault: %d of %d connections answered, want %s", ok, n, map[bool]string{true: "some but not all", false: "none"}[tt.partial])
			}
			r, _ := checkUnderTraffic(t, l, vip)
			if got := failing(r); !slices.Equal(got, []string{"ipvs.real_health"}) {
				t.Fatalf("check with %s = failing %v, want [ipvs.real_health] alone:%s", tt.name, got, describe(r))
			}
			for _, f := range r.Findings {
				if f.ID == "ipvs.real_health" && (!strings.Contains(f.Title, sick) || !strings.Contains(f.Title, vip.String())) {
					t.Errorf("ipvs.real_health title %q, want it to name the real %s and the service %s", f.Title, sick, vip)
				}
			}
			if p, ok := pathTo(r, sick); !ok {
				t.Errorf("check has no path to %s", sick)
			} else {
				t.Logf("path to %s: %s", sick, p)
				tt.path(t, p)
			}
			t.Logf("with the fault:%s", describe(r))
			applyFix(t, r, "ipvs.real_health", l.LB, tt.fixWith)
			if tt.fixWith == "ipvsadm -d" && statusOf(t, r, "ipvs.expire_nodest_conn") == "warn" {
				// The report also warns that connections already given to a
				// removed real linger (expire_nodest_conn=0: IPVS drops their
				// packets until they time out, so a client port reused in
				// that time gets no answer); an operator taking a real out
				// applies that fix too.
				applyFix(t, r, "ipvs.expire_nodest_conn", l.LB, "sysctl -w")
			}
			if ok := clientTries(l, vip, n); ok != n {
				t.Errorf("after the fix: %d of %d connections answered, want all", ok, n)
			}
			r, _ = checkUnderTraffic(t, l, vip)
			if got := failing(r); len(got) != 0 || statusOf(t, r, "ipvs.real_health") != "pass" {
				t.Errorf("check after the fix = failing %v, ipvs.real_health %s; want no failure and a pass:%s", got, statusOf(t, r, "ipvs.real_health"), describe(r))
			}
		})
	}
}

// A two-arm real whose default gateway is not the LB: the SYNs reach it,
// it answers the LB's own probe, its replies to clients go elsewhere.
// Nothing static shows it; the window does, as nat.return_path, and the
// fix on the real (the LB as its gateway) brings the client back.
func TestGuestReturnPathGateway(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	testkit.IPVSMasq(t, l.LB, vip, netip.AddrPortFrom(l.RealIP, 8085))
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	const n = 6
	if ok := clientTries(l, vip, n); ok != n {
		t.Fatalf("before the fault: %d of %d connections answered, want all", ok, n)
	}
	testkit.Run(t, l.Real, "ip", "route", "replace", "default", "via", "10.2.0.254")
	if ok := clientTries(l, vip, n); ok != 0 {
		t.Fatalf("with the real's gateway elsewhere: %d of %d connections answered, want none", ok, n)
	}
	r, _ := runBinary(t, "check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "0", "-o", "json")
	if got := statusOf(t, r, "nat.return_path"); got != "pass" {
		t.Errorf("static check = nat.return_path %s, want pass: the LB's routes look right, only the window shows the fault", got)
	}
	r, _ = checkUnderTraffic(t, l, vip)
	if got := failing(r); !slices.Equal(got, []string{"nat.return_path"}) {
		t.Fatalf("check = failing %v, want [nat.return_path] alone:%s", got, describe(r))
	}
	t.Logf("with the fault:%s", describe(r))
	applyFix(t, r, "nat.return_path", l.Real, "ip route replace default via "+l.RealGateway.String())
	if ok := clientTries(l, vip, n); ok != n {
		t.Errorf("after the fix: %d of %d connections answered, want all", ok, n)
	}
	r, _ = checkUnderTraffic(t, l, vip)
	if got := failing(r); len(got) != 0 || statusOf(t, r, "nat.return_path") != "pass" {
		t.Errorf("check after the fix = failing %v, nat.return_path %s; want no failure and a pass:%s", got, statusOf(t, r, "nat.return_path"), describe(r))
	}
}

// A real taken out (`ipvsadm -d`) while clients have connections to it,
// then expire_nodest_conn=1 set, as an operator applying check's warning
// after the removal does (set before, the removal would flush them): IPVS
// still drops the first packet of each such connection whose conntrack
// entry is old (a retransmission, a client port reused), and the client
// gets in on the next. check must name that drop as IPVS's own, caused by
// the removal — drops.vip_flows warns, pointing at it — and fail nothing
// (was a failing drops.vip_flows: "NETFILTER_DROP in input, no rule moved",
// seen once in TestGuestRealHealth).
func TestGuestRealRemovedStaleConnections(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.expire_nodest_conn", "0")
	const gone = "10.1.0.99:8085" // nobody has it: its SYNs die unanswered
	realOK := netip.AddrPortFrom(l.RealIP, 8085).String()
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", gone, "-m")
	testkit.Run(t, l.LB, "ipvsadm", "-e", "-t", vip.String(), "-r", realOK, "-m", "-w", "0")
	// Connections given to the real that will go: a SYN each, from a port
	// the client reuses later, given up on at once.
	ports := []int{41001, 41002, 41003, 41004}
	for _, p := range ports {
		if err := dialFrom(l.Client, p, vip, 300*time.Millisecond); err == nil {
			t.Fatalf("a connection from port %d reached %s while %s was its only real with weight", p, vip, gone)
		}
	}
	before := testkit.Run(t, l.LB, "ipvsadm", "-Lnc") + testkit.Run(t, l.LB, "conntrack", "-L")
	testkit.Run(t, l.LB, "ipvsadm", "-d", "-t", vip.String(), "-r", gone)
	testkit.Run(t, l.LB, "ipvsadm", "-e", "-t", vip.String(), "-r", realOK, "-m", "-w", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.expire_nodest_conn", "1")

	// The clients come back from the same ports once the window is open.
	opened := make(chan struct{})
	var stderr bytes.Buffer
	// Text output: "watching…" on stderr says when the window opened.
	cmd := exec.Command(testkit.LbdoctorBinary(t), "check", "--netns", l.LB.Name, "--vip", vip.String(), "--watch", "4s")
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &lineWatcher{w: &stderr, word: "watching", seen: opened}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-opened:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("check never opened its window:\n%s", stderr.String())
	}
	// At once: the window opens once the attributor has read the tables,
	// so the stale flows IPVS expires as it drops their packets are known.
	for _, p := range ports {
		// Its first SYN is IPVS's drop; the retransmission a second later
		// gets a new connection to the real that stays.
		start := time.Now()
		if err := dialFrom(l.Client, p, vip, 3*time.Second); err != nil {
			t.Errorf("after the removal, the client from port %d: %v, want it in on its retransmission", p, err)
		}
		t.Logf("port %d connected in %s", p, time.Since(start).Round(time.Millisecond))
	}
	err := cmd.Wait()
	out := stdout.String()
	var warn string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "✗ ") { // a failing finding (a path's ✗ marks where packets died)
			t.Errorf("check after a real's removal fails: %s", line)
		}
		if strings.Contains(line, " drops.vip_flows ") {
			warn = line
		}
	}
	if !strings.HasPrefix(warn, "! ") || !strings.Contains(warn, "the removal of real "+gone) || !strings.Contains(out, "joined to IPVS itself (ip_vs_in)") {
		t.Errorf("drops.vip_flows line = %q, want a warning naming the removal of real %s, its drops joined to IPVS itself", warn, gone)
	}
	if err != nil {
		t.Errorf("check after a real's removal: %v, want exit 0", err)
	}
	if t.Failed() {
		t.Logf("before the removal:\n%s", before)
		t.Logf("check:\n%s\n%s", out, stderr.String())
	}
}

// reuseDialer dials from local port port (SO_REUSEADDR: the port of a
// connection given up on is taken again, as a client reusing it).
func reuseDialer(port int, timeout time.Duration) net.Dialer {
	return net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: port},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
			return cmp.Or(err, serr)
		}}
}

// dialFrom connects from ns's client port to vip (SO_REUSEADDR: the port
// of a connection given up on is taken again, as a client reusing it).
func dialFrom(ns netns.Target, port int, vip netip.AddrPort, timeout time.Duration) error {
	return ns.Do(func() error {
		d := reuseDialer(port, timeout)
		c, err := d.Dial("tcp4", vip.String())
		if err == nil {
			c.Close()
		}
		return err
	})
}

// lineWatcher passes what is written on to w and closes seen once a line
// with word was written.
type lineWatcher struct {
	w    io.Writer
	word string
	seen chan struct{}
	once sync.Once
	buf  []byte
}

func (l *lineWatcher) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	if bytes.Contains(l.buf, []byte(l.word)) {
		l.once.Do(func() { close(l.seen) })
	}
	return l.w.Write(p)
}
