//go:build guest

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// The faults that come with change and with time (issue 12), each made on
// real IPVS with the operator's own commands as the public reports tell
// them: the client breaks, `check` fails the id, the finding's fix, pasted,
// makes the client work and the id pass.
func TestGuestChurn(t *testing.T) {
	t.Run("persistence to a drained real", func(t *testing.T) {
		// kubernetes/kubernetes#71809: sessionAffinity under IPVS; a pod
		// deleted (weight 0, then gone) keeps its clients.
		l, _ := testkit.FullNAT(t)
		realB := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.51"), 8086)
		a, err := lab.Serve(l.Real, ":8086")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		realA := netip.AddrPortFrom(l.RealIP, 8086)
		svc := netip.AddrPortFrom(l.VIP, 8086)
		testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", svc.String(), "-s", "rr", "-p", "300")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", svc.String(), "-r", realA.String(), "-m")
		testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "8086", "-j", "MASQUERADE")
		testkit.Sysctl(t, l.LB, "net.ipv4.vs.expire_quiescent_template", "0")
		testkit.Connect(t, l, svc, 2) // the client's template: → realA
		// The rollout: a new real, the old one drained, then gone.
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", svc.String(), "-r", realB.String(), "-m")
		serveOn(t, l, realB)
		testkit.Run(t, l.LB, "ipvsadm", "-e", "-t", svc.String(), "-r", realA.String(), "-m", "-w", "0")
		a.Close()
		if ok := clientTries(l, svc, 3); ok != 0 {
			t.Fatalf("with the old real drained and gone: %d of 3 connections answered, want none (the template pins the client)", ok)
		}
		r := staticCheck(t, l, svc)
		wantStatus(t, r, "ipvs.persistence_quiescent", "fail", realA.String())
		applyFixes(t, r, "ipvs.persistence_quiescent", l.LB, "sysctl -w")
		if ok := clientTries(l, svc, 3); ok != 3 {
			t.Errorf("after the fix: %d of 3 connections answered, want all", ok)
		}
		wantStatus(t, staticCheck(t, l, svc), "ipvs.persistence_quiescent", "pass", "")
	})

	t.Run("UDP client kept on a drained real", func(t *testing.T) {
		// kubernetes/kubernetes#71514, #76664: DNS and syslog to a UDP
		// service; the old pod's real at weight 0 keeps its clients.
		l, _ := testkit.FullNAT(t)
		svc := netip.AddrPortFrom(l.VIP, 5353)
		a := serveUDP(t, l.Real, 5353)
		realA := netip.AddrPortFrom(l.RealIP, 5353)
		realB := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.51"), 5353)
		serveUDPOn(t, l, realB)
		testkit.Run(t, l.LB, "ipvsadm", "-A", "-u", svc.String(), "-s", "rr")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-u", svc.String(), "-r", realA.String(), "-m")
		testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "5353", "-j", "MASQUERADE")
		c := newUDPClient(t, l.Client, svc)
		if !c.answered(3 * time.Second) {
			t.Fatalf("before the fault the UDP client gets no answer from %s", svc)
		}
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-u", svc.String(), "-r", realB.String(), "-m")
		testkit.Run(t, l.LB, "ipvsadm", "-e", "-u", svc.String(), "-r", realA.String(), "-m", "-w", "0")
		a.Close()
		if c.answered(2 * time.Second) {
			t.Fatalf("with its real drained and gone the UDP client still gets answers")
		}
		r := staticCheck(t, l, svc)
		wantStatus(t, r, "ipvs.stale_udp", "fail", realA.String())
		applyFixes(t, r, "ipvs.stale_udp", l.LB, "sysctl -w", "ipvsadm -d")
		if !c.answered(3 * time.Second) {
			t.Errorf("after the fix the UDP client still gets no answer")
		}
		wantStatus(t, staticCheck(t, l, svc), "ipvs.stale_udp", "pass", "")
	})

	t.Run("UDP client of a firewall-mark service kept on a drained real", func(t *testing.T) {
		// The same fault where a mangle rule marks the VIP's datagrams
		// and a firewall-mark service schedules them: its entries carry
		// the VIP, not the mark, and --vip cannot select it.
		l, _ := testkit.FullNAT(t)
		svc := netip.AddrPortFrom(l.VIP, 5354)
		a := serveUDP(t, l.Real, 5354)
		realA := netip.AddrPortFrom(l.RealIP, 5354)
		realB := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.51"), 5354)
		serveUDPOn(t, l, realB)
		testkit.Run(t, l.LB, "iptables", "-t", "mangle", "-A", "PREROUTING", "-d", l.VIP.String(), "-p", "udp", "--dport", "5354", "-j", "MARK", "--set-mark", "16")
		testkit.Run(t, l.LB, "ipvsadm", "-A", "-f", "16", "-s", "rr")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-f", "16", "-r", realA.Addr().String(), "-m")
		testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "5354", "-j", "MASQUERADE")
		c := newUDPClient(t, l.Client, svc)
		if !c.answered(3 * time.Second) {
			t.Fatalf("before the fault the UDP client gets no answer from %s", svc)
		}
		r := staticCheck(t, l, svc)
		wantStatus(t, r, "kernel.ipvs", "warn", "FWM 16")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-f", "16", "-r", realB.Addr().String(), "-m")
		testkit.Run(t, l.LB, "ipvsadm", "-e", "-f", "16", "-r", realA.Addr().String(), "-m", "-w", "0")
		a.Close()
		if c.answered(2 * time.Second) {
			t.Fatalf("with its real drained and gone the UDP client still gets answers")
		}
		whole := func() *report.Report {
			r, _ := runBinary(t, "check", "--netns", l.LB.Name, "--watch", "0", "-o", "json")
			return r
		}
		r = whole()
		wantStatus(t, r, "ipvs.stale_udp", "fail", realA.Addr().String())
		applyFixes(t, r, "ipvs.stale_udp", l.LB, "sysctl -w", "ipvsadm -d")
		if !c.answered(3 * time.Second) {
			t.Errorf("after the fix the UDP client still gets no answer")
		}
		wantStatus(t, whole(), "ipvs.stale_udp", "pass", "")
	})

	t.Run("reused port to a removed real", func(t *testing.T) {
		// kubernetes/kubernetes#81775: conn_reuse_mode=0 (as kube-proxy
		// set it for kernels before 5.9) with expire_nodest_conn=0.
		l, vip := testkit.FullNAT(t)
		realB := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.51"), 8085)
		serveOn(t, l, realB)
		testkit.Sysctl(t, l.LB, "net.ipv4.vs.conn_reuse_mode", "0")
		testkit.Sysctl(t, l.LB, "net.ipv4.vs.expire_nodest_conn", "0")
		const port = 40123
		if err := exchangeFrom(l.Client, port, vip, 3*time.Second); err != nil {
			t.Fatalf("before the fault, from port %d: %v", port, err)
		}
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", realB.String(), "-m")
		testkit.Run(t, l.LB, "ipvsadm", "-d", "-t", vip.String(), "-r", netip.AddrPortFrom(l.RealIP, 8085).String())
		if err := exchangeFrom(l.Client, port, vip, 2*time.Second); err == nil {
			t.Fatalf("the reused port %d reached %s with its old real removed, want its SYNs dropped", port, vip)
		}
		r := staticCheck(t, l, vip)
		wantStatus(t, r, "ipvs.conn_reuse", "fail", "")
		applyFixes(t, r, "ipvs.conn_reuse", l.LB, "sysctl -w")
		if err := exchangeFrom(l.Client, port, vip, 3*time.Second); err != nil {
			t.Errorf("after the fix, from port %d: %v", port, err)
		}
		wantStatus(t, staticCheck(t, l, vip), "ipvs.conn_reuse", "pass", "")
	})

	t.Run("idle connection outlives its IPVS entry", func(t *testing.T) {
		// kubernetes/kops#6889, cloudnativelabs/kube-router#521: a pooled
		// connection idle past IPVS's tcp timeout is reset.
		l, _ := testkit.FullNAT(t)
		svc := netip.AddrPortFrom(l.VIP, 8087)
		echo(t, l.Real, ":8087")
		testkit.Run(t, l.LB, "ipvsadm", "-A", "-t", svc.String(), "-s", "rr")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", svc.String(), "-r", netip.AddrPortFrom(l.RealIP, 8087).String(), "-m")
		testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "8087", "-j", "MASQUERADE")
		testkit.Run(t, l.LB, "ipvsadm", "--set", "2", "120", "300")
		conn := idleConn(t, l.Client, svc)
		time.Sleep(4 * time.Second)
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintln(conn, "ping")
		_, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err == nil {
			t.Fatalf("an idle connection past the IPVS tcp timeout still got its answer")
		}
		t.Logf("an idle connection's next segment, past the IPVS tcp timeout: %v", err)
		// While check watches: every 500 ms one more connection, idle 4 s,
		// then written to. IPVS forgot it (and its conntrack entry); the
		// segment is no SYN, so it goes to the LB's own stack: no socket.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		go func() {
			for tick := time.NewTicker(500 * time.Millisecond); ; {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					var c net.Conn
					if l.Client.Do(func() error {
						var err error
						c, err = net.DialTimeout("tcp4", svc.String(), 2*time.Second)
						return err
					}) != nil {
						return
					}
					defer c.Close()
					select {
					case <-stop:
						return
					case <-time.After(4 * time.Second):
					}
					c.SetDeadline(time.Now().Add(time.Second))
					fmt.Fprintln(c, "ping")
					bufio.NewReader(c).ReadString('\n')
				}()
			}
		}()
		// The first written-to connection writes 4.5 s after the ticker
		// starts; a 6 s window holds writes whatever check's start-up
		// took (a 3 s one ended before them on a quiet machine).
		r, _ := runBinary(t, "check", "--netns", l.LB.Name, "--vip", svc.String(), "--watch", "6s", "-o", "json")
		close(stop)
		wg.Wait()
		wantStatus(t, r, "ipvs.timeouts", "fail", "")
		// Its NO_SOCKET drops are ipvs.timeouts' evidence: drops.vip_flows
		// points at it (and fails beside it only for drops of another
		// cause, e.g. a late packet of a health probe's own connection).
		if got := failing(r); !slices.Equal(got, []string{"ipvs.timeouts"}) && !slices.Equal(got, []string{"ipvs.timeouts", "drops.vip_flows"}) {
			t.Errorf("check = failing %v, want [ipvs.timeouts], at most with drops.vip_flows:%s", got, describe(r))
		}
		if d := findingOf(*r, "drops.vip_flows"); !strings.Contains(d.Reason, "explained by ipvs.timeouts") && !slices.ContainsFunc(d.Evidence, func(e checks.Evidence) bool {
			return strings.Contains(e.Fact, "explained by ipvs.timeouts")
		}) {
			t.Errorf("drops.vip_flows = %s %q, want its NO_SOCKET drops explained by ipvs.timeouts:%s", d.Status, d.Reason, describe(r))
		}
		applyFixes(t, r, "ipvs.timeouts", l.LB, "ipvsadm --set")
		conn = idleConn(t, l.Client, svc)
		defer conn.Close()
		time.Sleep(4 * time.Second)
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(conn, "ping")
		if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
			t.Errorf("after the fix an idle connection got no answer: %v", err)
		}
		wantStatus(t, staticCheck(t, l, svc), "ipvs.timeouts", "pass", "")
	})

	t.Run("UDP flow older than its service", func(t *testing.T) {
		// kubernetes/kubernetes#48370, #31983, moby/moby#44742: a UDP
		// client that sent before the service existed keeps a flow no
		// NAT touches.
		l, _ := testkit.FullNAT(t)
		svc := netip.AddrPortFrom(l.VIP, 5354)
		serveUDP(t, l.Real, 5354)
		c := newUDPClient(t, l.Client, svc)
		time.Sleep(time.Second) // its flow is in conntrack, unanswered
		testkit.Run(t, l.LB, "ipvsadm", "-A", "-u", svc.String(), "-s", "rr")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-u", svc.String(), "-r", netip.AddrPortFrom(l.RealIP, 5354).String(), "-m")
		testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "5354", "-j", "MASQUERADE")
		if c.answered(2 * time.Second) {
			t.Fatalf("the UDP client that sent before the service gets answers: no stale flow to test")
		}
		r := staticCheck(t, l, svc)
		wantStatus(t, r, "conntrack.stale_flows", "fail", "")
		if st := statusOf(t, r, "conntrack.flow_states"); st == "pass" {
			t.Errorf("conntrack.flow_states = pass with the VIP's flow unreplied, want it not to say the flows complete:%s", describe(r))
		}
		applyFixes(t, r, "conntrack.stale_flows", l.LB, "conntrack -D")
		if !c.answered(3 * time.Second) {
			t.Errorf("after the fix the UDP client still gets no answer")
		}
		wantStatus(t, staticCheck(t, l, svc), "conntrack.stale_flows", "pass", "")
	})

	t.Run("UDP flow older than its SNAT rule", func(t *testing.T) {
		// The same reports, on a one-arm LB whose operator added the
		// MASQUERADE rule after the service: the client's flow, IPVS's but
		// never SNATed, keeps being answered around the LB.
		l, _ := testkit.FullNAT(t)
		svc := netip.AddrPortFrom(l.VIP, 5355)
		serveUDP(t, l.Real, 5355)
		testkit.Run(t, l.LB, "ipvsadm", "-A", "-u", svc.String(), "-s", "rr")
		testkit.Run(t, l.LB, "ipvsadm", "-a", "-u", svc.String(), "-r", netip.AddrPortFrom(l.RealIP, 5355).String(), "-m")
		c := newUDPClient(t, l.Client, svc)
		time.Sleep(time.Second) // its flow: IPVS's, no SNAT, unanswered
		testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "ipvs", "--vaddr", l.VIP.String(), "--vport", "5355", "-j", "MASQUERADE")
		if c.answered(2 * time.Second) {
			t.Fatalf("the UDP client that sent before the SNAT rule gets answers: no stale flow to test")
		}
		r := staticCheck(t, l, svc)
		wantStatus(t, r, "conntrack.stale_flows", "fail", "")
		applyFixes(t, r, "conntrack.stale_flows", l.LB, "conntrack -D")
		if !c.answered(3 * time.Second) {
			t.Errorf("after the fix the UDP client still gets no answer")
		}
		wantStatus(t, staticCheck(t, l, svc), "conntrack.stale_flows", "pass", "")
	})
}

// staticCheck is `check --watch 0` of one service, as JSON.
func staticCheck(t *testing.T, l *lab.Lab, svc netip.AddrPort) *report.Report {
	t.Helper()
	r, _ := runBinary(t, "check", "--netns", l.LB.Name, "--vip", svc.String(), "--watch", "0", "-o", "json")
	return r
}

// wantStatus fails the test unless the finding id has status want (and,
// when named, its title names inTitle).
func wantStatus(t *testing.T, r *report.Report, id, want, inTitle string) {
	t.Helper()
	for _, f := range r.Findings {
		if f.ID != id {
			continue
		}
		if string(f.Status) != want || !strings.Contains(f.Title, inTitle) {
			t.Fatalf("%s = %s %q, want %s naming %q:%s", id, f.Status, f.Title, want, inTitle, describe(r))
		}
		t.Logf("%s %s: %s", id, f.Status, f.Title)
		return
	}
	t.Fatalf("no finding %s", id)
}

// applyFixes runs, in order, every fix line of the finding id that starts
// with one of want (after the namespace's exec prefix), as pasted.
func applyFixes(t *testing.T, r *report.Report, id string, ns netns.Target, want ...string) {
	t.Helper()
	n := 0
	for _, f := range r.Findings {
		if f.ID != id {
			continue
		}
		for _, line := range f.Fix {
			cmd, _, _ := strings.Cut(strings.TrimPrefix(line, ns.ExecPrefix()), "#")
			if !slices.ContainsFunc(want, func(w string) bool { return strings.HasPrefix(cmd, w) }) {
				continue
			}
			args := strings.Fields(cmd)
			t.Logf("fix of %s in %s: %s", id, ns, cmd)
			testkit.Run(t, ns, args[0], args[1:]...)
			n++
		}
	}
	if n == 0 {
		t.Fatalf("%s has no fix line starting with %q", id, want)
	}
}

// serveOn adds a real server host at addr (one more on the lab's segment)
// serving the lab's TCP server on its port.
func serveOn(t *testing.T, l *lab.Lab, addr netip.AddrPort) {
	t.Helper()
	ns := realHost(t, l, addr.Addr())
	testkit.Serve(t, ns, fmt.Sprintf(":%d", addr.Port()))
}

// serveUDPOn is serveOn for the lab's UDP server.
func serveUDPOn(t *testing.T, l *lab.Lab, addr netip.AddrPort) {
	t.Helper()
	serveUDP(t, realHost(t, l, addr.Addr()), addr.Port())
}

// serveUDP runs the lab's UDP server on port in ns until the test ends
// (or its Close).
func serveUDP(t *testing.T, ns netns.Target, port uint16) *lab.UDPServer {
	t.Helper()
	srv, err := lab.ServeUDP(ns, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

var (
	realHostsMu sync.Mutex
	realHosts   = map[string]netns.Target{}
)

// realHost is the lab's extra real host with addr, made once.
func realHost(t *testing.T, l *lab.Lab, addr netip.Addr) netns.Target {
	t.Helper()
	realHostsMu.Lock()
	defer realHostsMu.Unlock()
	k := l.Prefix + addr.String()
	if ns, ok := realHosts[k]; ok {
		return ns
	}
	ns, err := l.AddReal(addr)
	if err != nil {
		t.Fatal(err)
	}
	realHosts[k] = ns
	return ns
}

// udpClient sends a datagram to its target every 200 ms from one socket
// (one source port, as a resolver or syslog client does) and keeps the
// time of the last answer.
type udpClient struct {
	mu   sync.Mutex
	last time.Time
}

func newUDPClient(t *testing.T, ns netns.Target, target netip.AddrPort) *udpClient {
	t.Helper()
	var conn *net.UDPConn
	err := ns.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(target))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &udpClient{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	go func() {
		for tick := time.NewTicker(200 * time.Millisecond); ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				conn.Write([]byte("q"))
			}
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, err := conn.Read(buf); err != nil {
				if ctx.Err() != nil {
					return
				}
				continue // ICMP errors before the service exists
			}
			c.mu.Lock()
			c.last = time.Now()
			c.mu.Unlock()
		}
	}()
	return c
}

// answered reports whether an answer arrives within d from now.
func (c *udpClient) answered(d time.Duration) bool {
	start := time.Now()
	for time.Since(start) < d {
		time.Sleep(100 * time.Millisecond)
		c.mu.Lock()
		ok := c.last.After(start)
		c.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// exchangeFrom connects from ns's local port to target and reads the
// server's line; the server closes first, so the port is free again at
// once (its TIME_WAIT is on the real's side, and in IPVS's table).
func exchangeFrom(ns netns.Target, port int, target netip.AddrPort, timeout time.Duration) error {
	return ns.Do(func() error {
		d := reuseDialer(port, timeout)
		c, err := d.Dial("tcp4", target.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		_, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
}

// echo serves, in ns, a TCP server that answers each line with it, and
// keeps the connection open.
func echo(t *testing.T, ns netns.Target, addr string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
}

// idleConn connects from ns to target and makes one exchange.
func idleConn(t *testing.T, ns netns.Target, target netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", target.String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintln(c, "hello")
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatalf("first exchange on %s: %v", target, err)
	}
	return c
}
