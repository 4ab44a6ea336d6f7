package capture_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// A flow made just before the capture opens is joined to its leg from the
// packet's first instant, with no time left to wait for the tables: the
// joiner has read them before it returned (as the drop tracer has before
// its attach). A flow that ends in the capture's first instants is known
// only from that read.
func TestJoinerKnowsFlowsFromBefore(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	client, vip, real := confirmedFlow(t, p)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := capture.NewServiceJoiner(ctx, p.B, capture.Match{Addrs: []netip.Addr{p.AddrB, p.RealB}}, []netip.AddrPort{vip}, drops.Bounds{})
	if err != nil {
		t.Fatalf("NewServiceJoiner: %v", err)
	}
	defer j.Close()
	leg, ok := joinReply(t, j, client, vip)
	if !ok || leg.Kind != flowpath.ToClient || leg.VIP != vip || leg.Real != real {
		t.Errorf("Join(%s → %s, at once) = %+v, %v; want the leg %s of %s → %s via %s", vip, client, leg, ok, flowpath.ToClient, client, vip, real)
	}
}

// A capture on an LB whose conntrack holds more entries than a window
// reads (a real table: 10,100 flows more than the flow joined) is joined
// within the drop tracer's bounds, from the same rule
// (probes.AttributorBounds): conntrack is not dumped whole. The flows of
// the captured VIP are still dumped, filtered in the kernel, so a flow from
// before the capture is joined; with more VIPs than filtered dumps, none is
// dumped and only flows confirmed later are known. Both say so.
func TestJoinerBoundedConntrack(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	client, vip, real := confirmedFlow(t, p)
	// Closed ports of B, below the DNATed ones: one plain flow each.
	p.Flood(t, testkit.Ports(5100, probes.MaxFlowsRead+100), 0)
	stats, err := conntrack.ReadStats(p.B)
	if err != nil || stats.Entries <= probes.MaxFlowsRead {
		t.Fatalf("conntrack in %s: %d entries (%v), want over %d", p.B, stats.Entries, err, probes.MaxFlowsRead)
	}
	vipSvc := ipvs.Service{Proto: "udp", Addr: vip}
	many := []ipvs.Service{vipSvc}
	for i := range 4 {
		many = append(many, ipvs.Service{Proto: "udp", Addr: netip.AddrPortFrom(p.AddrB, uint16(30000+i))})
	}
	tests := []struct {
		name     string
		sel      probes.Selector
		svcs     []ipvs.Service
		joined   bool
		wantSaid string
	}{
		{"the captured VIP's flows dumped", probes.Selector{VIP: vip, Proto: "udp"}, []ipvs.Service{vipSvc}, true,
			fmt.Sprintf("only the flows to udp %s are dumped (filtered in the kernel)", vip)},
		{"more VIPs than filtered dumps: events alone", probes.Selector{}, many, false,
			"only the flows conntrack confirms from then on are known"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := probes.AttributorBounds(&probes.Snapshot{Conntrack: probes.Conntrack{Stats: stats}}, tt.sel, tt.svcs)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			j, err := capture.NewServiceJoiner(ctx, p.B, capture.Match{Addrs: []netip.Addr{p.AddrB, p.RealB}}, []netip.AddrPort{vip}, b)
			if err != nil {
				t.Fatalf("NewServiceJoiner: %v", err)
			}
			defer j.Close()
			t.Logf("the joiner's first read of %d conntrack entries: %s", stats.Entries, time.Since(start).Round(time.Millisecond))
			leg, ok := joinReply(t, j, client, vip)
			if got := ok && leg.Kind == flowpath.ToClient && leg.Real == real; got != tt.joined {
				t.Errorf("Join(%s → %s, a flow from before) = %+v, %v; want joined to %s via %s: %v", vip, client, leg, ok, flowpath.ToClient, real, tt.joined)
			}
			said := j.Unread()["conntrack"]
			want := fmt.Sprintf("conntrack not dumped whole: %d entries, over %d", stats.Entries, probes.MaxFlowsRead)
			if !strings.HasPrefix(said, want) || !strings.Contains(said, tt.wantSaid) || len(j.Errors()) != 0 {
				t.Errorf("Unread()[conntrack] = %q, Errors() = %q; want %q … %q, no error", said, j.Errors(), want, tt.wantSaid)
			}
		})
	}
}

// confirmedFlow makes a UDP flow from A to a DNATed port of B, confirmed
// by B's conntrack when it returns: client → vip, DNATed to real.
func confirmedFlow(t *testing.T, p *testkit.DropPair) (client, vip, real netip.AddrPort) {
	t.Helper()
	client = netip.AddrPortFrom(p.AddrA, 5003)
	vip = netip.AddrPortFrom(p.AddrB, testkit.DNATPorts+9)
	real = netip.AddrPortFrom(p.RealB, vip.Port())
	// The real answers with a port unreachable (nothing listens): once
	// the client reads it, B's conntrack has confirmed the flow.
	err := p.A.Do(func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(client), net.UDPAddrFromAddrPort(vip))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 16)); !errors.Is(err, unix.ECONNREFUSED) {
			return fmt.Errorf("read the real's answer: %v, want %w", err, unix.ECONNREFUSED)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return client, vip, real
}

// joinReply joins the real's answer as it leaves for client, de-DNATed
// (only the flow's table claims it), with no time left to wait for the
// tables: the capture is over.
func joinReply(t *testing.T, j *capture.Joiner, client, vip netip.AddrPort) (capture.LegOf, bool) {
	t.Helper()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	data := frame(t, &layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: vip.Addr().AsSlice(), DstIP: client.Addr().AsSlice()},
		&layers.UDP{SrcPort: layers.UDPPort(vip.Port()), DstPort: layers.UDPPort(client.Port())})
	done, stop := context.WithCancel(context.Background())
	stop()
	leg, _, ok := j.Join(done, capture.Packet{Time: time.Now(), Direction: capture.Out, Data: data}, 0)
	return leg, ok
}
