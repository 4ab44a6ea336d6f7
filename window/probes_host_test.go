package window

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
)

// The reals lie behind a router whose link is down (its neighbour entry
// is permanent: it "answers"), so every SYN of a health probe dies in the
// LB's own qdisc (QDISC_DROP), and a connect that timed out is tried
// again. The window ends while the second connects are under way. Every
// drop the tracer counts is a probe's own packet and is left out of the
// services' drops. (Before, the port of a second connect the window cut
// short was not recorded: its SYN's drop was the services', and
// drops.vip_flows failed an LB with no traffic at all — the scale
// benchmark's "QDISC_DROP at kfree_skb_list_reason".)
func TestProbeDropsAreTheProbes(t *testing.T) {
	testkit.Tracefs(t)
	lb, router := testkit.Netns(t, "lb"), testkit.Netns(t, "rt")
	testkit.Veth(t, testkit.VethEnd{NS: lb, Name: "l1", Addrs: []string{"10.2.0.1/24"}}, testkit.VethEnd{NS: router, Name: "r0", Addrs: []string{"10.2.0.2/24"}})
	testkit.Run(t, lb, "ip", "route", "add", "10.244.0.0/16", "via", "10.2.0.2")
	testkit.Run(t, lb, "ip", "neigh", "replace", "10.2.0.2", "lladdr", "02:00:00:00:02:02", "nud", "permanent", "dev", "l1")
	testkit.Run(t, router, "ip", "link", "set", "r0", "down")
	var targets []health.Target
	var addrs []netip.Addr
	for i := range 4 {
		real := netip.MustParseAddrPort(fmt.Sprintf("10.244.0.%d:8080", i+1))
		targets = append(targets, health.Target{Service: "TCP 10.96.0.1:80", Proto: "tcp", Real: real})
		addrs = append(addrs, real.Addr())
	}
	tr, err := drops.New(drops.Config{NetnsInode: uint32(lb.Inode), LB: lb, Addrs: addrs, Ports: []uint16{8080}})
	if err != nil {
		t.Fatal(err)
	}
	// Each first connect times out at 300 ms; the window ends 150 ms
	// into the second.
	const timeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), timeout*3/2)
	defer cancel()
	hs := health.Probe(ctx, lb, targets, timeout)
	smp, err := tr.Watch(context.Background(), time.Now().Add(100*time.Millisecond), drops.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, c := range smp.Drops {
		all = append(all, fmt.Sprintf("%s %s → %s ×%d", c.ReasonName, c.Src, c.Dst, c.Count))
	}
	own, _, _ := splitOwn(smp, hs, &probes.Snapshot{})
	left := smp.Drops
	var got []string
	for _, c := range left {
		got = append(got, fmt.Sprintf("%s %s → %s ×%d", c.ReasonName, c.Src, c.Dst, c.Count))
	}
	// Two SYNs a real (its first connect, and its second), every one dropped.
	if len(left) != 0 || own < 2*uint64(len(targets)) {
		var probes []string
		for _, h := range hs {
			probes = append(probes, fmt.Sprintf("%s %s ports %d, %d (%s)", h.Real, h.Connect, h.FirstSourcePort, h.SourcePort, h.Note))
		}
		t.Errorf("splitOwn(the window's drops) = %q left, %d the probes'; want none left, at least %d the probes'\ndrops: %s\nprobes: %s",
			got, own, 2*len(targets), strings.Join(all, "; "), strings.Join(probes, "; "))
	}
}
