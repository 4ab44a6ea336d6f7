package capture_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/capture"
)

// A flow made just before the capture opens is joined to its leg from the
// packet's first instant, with no time left to wait for the tables: the
// joiner has read them before it returned (as the drop tracer has before
// its attach). A flow that ends in the capture's first instants is known
// only from that read.
func TestJoinerKnowsFlowsFromBefore(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	client := netip.AddrPortFrom(p.AddrA, 5003)
	vip := netip.AddrPortFrom(p.AddrB, testkit.DNATPorts+9)
	real := netip.AddrPortFrom(p.RealB, vip.Port())
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

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := capture.NewServiceJoiner(ctx, p.B, capture.Match{Addrs: []netip.Addr{p.AddrB, p.RealB}}, []netip.AddrPort{vip})
	if err != nil {
		t.Fatalf("NewServiceJoiner: %v", err)
	}
	defer j.Close()
	// The real's answer as it leaves for the client, de-DNATed: only the
	// flow's table claims it.
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	data := frame(t, &layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: vip.Addr().AsSlice(), DstIP: client.Addr().AsSlice()},
		&layers.UDP{SrcPort: layers.UDPPort(vip.Port()), DstPort: layers.UDPPort(client.Port())})
	done, stop := context.WithCancel(context.Background())
	stop() // the capture is over: nothing may wait for the tables
	leg, _, ok := j.Join(done, capture.Packet{Time: time.Now(), Direction: capture.Out, Data: data}, 0)
	if !ok || leg.Kind != flowpath.ToClient || leg.VIP != vip || leg.Real != real {
		t.Errorf("Join(%s → %s, at once) = %+v, %v; want the leg %s of %s → %s via %s", vip, client, leg, ok, flowpath.ToClient, client, vip, real)
	}
}
