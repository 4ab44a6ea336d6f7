package health_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/health"
)

// An LB namespace and a real namespace on one veth: a real that listens, a
// port nothing listens on, an address nobody has on the segment, an address
// the LB has no route to, and a UDP real. Each is named for what a health
// checker would see, from the LB's own address.
func TestProbe(t *testing.T) {
	lb, real := testkit.Netns(t, "lb"), testkit.Netns(t, "real")
	testkit.Veth(t, testkit.VethEnd{NS: lb, Name: "eth0", Addrs: []string{"10.77.0.1/24"}},
		testkit.VethEnd{NS: real, Name: "eth0", Addrs: []string{"10.77.0.50/24"}})
	testkit.Serve(t, real, "10.77.0.50:8085")
	ap := netip.MustParseAddrPort
	targets := []health.Target{
		{Service: "TCP 10.77.0.6:80", Proto: "tcp", Real: ap("10.77.0.50:8085")},
		{Service: "TCP 10.77.0.6:80", Proto: "tcp", Real: ap("10.77.0.50:8086")},
		{Service: "TCP 10.77.0.6:80", Proto: "tcp", Real: ap("10.77.0.99:8085")},
		{Service: "TCP 10.77.0.6:80", Proto: "tcp", Real: ap("10.78.0.50:8085")},
		{Service: "UDP 10.77.0.6:53", Proto: "udp", Real: ap("10.77.0.50:53")},
		// The same real in another service: probed once, named twice.
		{Service: "TCP 10.77.0.7:80", Proto: "tcp", Real: ap("10.77.0.50:8085")},
	}
	tests := []struct {
		name                      string
		connect, neighbour, route string
		wantRouteErr              bool
		note                      string
	}{
		{name: "listening", connect: health.OK, neighbour: "REACHABLE"},
		{name: "nothing listens", connect: health.Refused, neighbour: "REACHABLE"},
		{name: "nobody has the address", connect: health.Timeout, neighbour: "INCOMPLETE"},
		{name: "no route", connect: health.Unreachable, wantRouteErr: true},
		{name: "udp", neighbour: "REACHABLE", note: health.UDPNote},
		{name: "shared real", connect: health.OK, neighbour: "REACHABLE"},
	}
	// The UDP real sends nothing: its neighbour entry is the one a TCP
	// connect to its address left, which the probes run beside it may not
	// have made yet (failed now and then). One made before them, once the
	// fresh link carries (its first SYN may die in the qdisc before).
	err := lb.Do(func() error {
		c, err := net.DialTimeout("tcp", "10.77.0.50:8085", 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := health.Probe(context.Background(), lb, targets, 500*time.Millisecond)
	took := time.Since(start)
	if len(got) != len(targets) {
		t.Fatalf("Probe(%d targets) = %d results, want one per target", len(targets), len(got))
	}
	for i, tt := range tests {
		r := got[i]
		if r.Service != targets[i].Service || r.Real != targets[i].Real || r.Connect != tt.connect || r.Neighbour != tt.neighbour ||
			(r.Route != "") != tt.wantRouteErr || r.Note != tt.note || !r.Probed() {
			t.Errorf("Probe(%s: %s %s) = %+v, want connect %q, neighbour %q, route error %v, note %q", tt.name, targets[i].Service, targets[i].Real, r, tt.connect, tt.neighbour, tt.wantRouteErr, tt.note)
		}
		// The probe's port is known whatever the connect's outcome: a
		// late answer to it is the probe's own packet.
		if tt.connect != "" && tt.connect != health.Unreachable && r.SourcePort == 0 {
			t.Errorf("Probe(%s) source port = 0 (connect %s), want the port its connect used", tt.name, r.Connect)
		}
		if r.Route == "" && r.Source != netip.MustParseAddr("10.77.0.1") {
			t.Errorf("Probe(%s) source = %s, want the LB's 10.77.0.1", tt.name, r.Source)
		}
	}
	// Concurrent: the two that wait do it at once, bounded by the timeout.
	if took > 1500*time.Millisecond {
		t.Errorf("Probe took %s, want about one timeout (500ms): the probes run concurrently", took)
	}
}

// A window that ends stops the probes: what was not probed says so, and the
// call returns with the window. More than MaxTargets reals: only the first
// MaxTargets are probed.
func TestProbeBounded(t *testing.T) {
	lb, real := testkit.Netns(t, "lb"), testkit.Netns(t, "real")
	testkit.Veth(t, testkit.VethEnd{NS: lb, Name: "eth0", Addrs: []string{"10.77.0.1/24"}},
		testkit.VethEnd{NS: real, Name: "eth0", Addrs: []string{"10.77.0.50/24"}})
	var targets []health.Target
	for i := 0; i < health.MaxTargets+50; i++ {
		// Nobody has these: each probe waits its whole timeout.
		targets = append(targets, health.Target{Service: "TCP 10.77.0.6:80", Proto: "tcp", Real: netip.MustParseAddrPort(fmt.Sprintf("10.77.0.%d:%d", 100+i%100, 1000+i))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	got := health.Probe(ctx, lb, targets, 2*time.Second)
	took := time.Since(start)
	if len(got) != health.MaxTargets {
		t.Errorf("Probe(%d targets) = %d results, want the first %d", len(targets), len(got), health.MaxTargets)
	}
	skipped := 0
	for _, r := range got {
		if !r.Probed() {
			skipped++
		}
	}
	if took > time.Second || skipped < health.MaxTargets-16 {
		t.Errorf("Probe with a 300ms window took %s, %d of %d not probed; want it to end with the window and say which were not probed", took, skipped, len(got))
	}
}
