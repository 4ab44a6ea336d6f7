package drops_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// sendUDP sends one datagram from p.A's address, source port sport, to
// p.B's dport, and returns the packet B drops for want of a socket (dst:
// after DNAT, when the port is DNATed).
func sendUDP(t *testing.T, p *testkit.DropPair, sport, dport uint16, dst netip.Addr) drops.Packet {
	t.Helper()
	err := p.A.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.AddrA.AsSlice(), Port: int(sport)})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(p.AddrB, dport))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(p.AddrA, sport)
	waitConfirmed(t, p, src)
	return drops.Packet{Family: 4, Proto: unix.IPPROTO_UDP, Src: src, Dst: netip.AddrPortFrom(dst, dport)}
}

// waitConfirmed waits until p.B's conntrack holds the flow from src: the
// datagram crosses the veth after the write returns, and a drop the tracer
// reports comes after its flow was confirmed (its event sent), which a
// test asking about the drop at once would otherwise race.
func waitConfirmed(t *testing.T, p *testkit.DropPair, src netip.AddrPort) {
	t.Helper()
	d, err := conntrack.NewDumper(p.B)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		found := false
		if _, err := d.Tuples(conntrack.Filter{}, func(_ uint8, o, _ conntrack.Tuple) { found = found || o.Src == src }); err != nil {
			t.Fatal(err)
		}
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conntrack flow from %s in %s after 2 s", src, p.B)
		}
	}
}

// A drop is attributed to a load-balanced flow only when conntrack shows
// one: UDP to a closed local port without NAT is a flow conntrack knows,
// but no VIP and no real server: not attributed. The same through a DNAT
// is, to the real server the DNAT chose.
func TestAttributeOnlyLoadBalancedFlows(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	a := drops.NewAttributor(p.B, nil, 0)
	defer a.Close()
	plain := sendUDP(t, p, 5001, 7777, p.AddrB)
	dnat := sendUDP(t, p, 5002, testkit.DNATPorts+7, p.RealB)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if f := a.Attribute(ctx, plain, 0, 1); f != nil {
		t.Errorf("Attribute(UDP to closed port %s, no NAT) = %v, want nil: not a load-balanced flow", plain.Dst, f)
	}
	f := a.Attribute(ctx, dnat, 0, 1)
	if f == nil || f.VIP != netip.AddrPortFrom(p.AddrB, testkit.DNATPorts+7) || f.Real != dnat.Dst {
		t.Errorf("Attribute(UDP DNATed to %s) = %v, want VIP %s:%d via real %s", dnat.Dst, f, p.AddrB, testkit.DNATPorts+7, dnat.Dst)
	}
	if at, not := a.Counts(); at != 1 || not != 1 {
		t.Errorf("Counts() = %d attributed, %d not; want 1, 1", at, not)
	}
}

// A flow conntrack confirmed before its drop is found, even when the
// attributor's bounded cache let it go since (more flows came after it,
// since gone from conntrack): the events no longer prove it absent, so a
// dump is read before the drop is counted as not attributed.
func TestAttributeFindsEvictedFlow(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	a := drops.NewAttributor(p.B, nil, 0)
	defer a.Close()
	// 128 DNATed flows a generation (2 keys each); a dump at most every
	// 700 ms: the next one comes after the flows that evict the first are
	// gone from conntrack.
	drops.SetBounds(a, 256, 700*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	// Wait for the first dump: the next may come 700 ms after it.
	a.Attribute(ctx, drops.Packet{Family: 4, Proto: unix.IPPROTO_UDP, Src: netip.MustParseAddrPort("10.79.9.9:1"), Dst: netip.MustParseAddrPort("10.79.9.9:2")}, 0, 1)
	first := sendUDP(t, p, 5001, testkit.DNATPorts, p.RealB)
	// 400 flows more from another port: the first goes out of the cache.
	err := p.A.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.AddrA.AsSlice(), Port: 6000})
		if err != nil {
			return err
		}
		defer c.Close()
		for _, port := range testkit.Ports(testkit.DNATPorts+1, 400) {
			c.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(p.AddrB, port))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // their events read
	testkit.Run(t, p.B, "conntrack", "-D", "-p", "udp", "--orig-port-src", "6000")
	if f := a.Attribute(ctx, first, 0, 1); f == nil || f.Real != first.Dst {
		t.Errorf("Attribute(%s → %s, its flow in conntrack, out of the cache) = %v, want its flow via real %s", first.Src, first.Dst, f, first.Dst)
	}
}

// An attributor reads the tables at once, before any drop asks, and then
// finds a flow confirmed before it started.
func TestAttributeReadsTheTablesAtOnce(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	dnat := sendUDP(t, p, 5002, testkit.DNATPorts+7, p.RealB)
	a := drops.NewAttributor(p.B, nil, 0)
	defer a.Close()
	// Its first dump may take a while on a loaded machine: wait for it
	// (bounded).
	for deadline := time.Now().Add(5 * time.Second); a.Batches() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if a.Batches() == 0 {
		t.Errorf("before any drop, Batches() = 0, want the tables read")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if f := a.Attribute(ctx, dnat, 0, 1); f == nil || f.Real != dnat.Dst {
		t.Errorf("Attribute(UDP DNATed to %s, confirmed before the attributor) = %v, want its flow", dnat.Dst, f)
	}
}

// An IPVS connection table too big to read in a window is never read, nor
// a conntrack table too big to dump: the attributor says so among its
// errors and still attributes what it may — through a dump, or through the
// events of the flows confirmed after it started.
func TestAttributeBounded(t *testing.T) {
	testkit.RequireRoot(t)
	const noVS, noCT = "not read: IPVS holds 100000 connections", "not dumped: conntrack holds 100000 entries"
	tests := []struct {
		name       string
		noCT       string
		before     bool // the flow is confirmed before the attributor starts
		attributed bool
	}{
		{"IPVS unread, dumped", "", true, true},
		{"not dumped, a flow from before", noCT, true, false},
		{"not dumped, a flow confirmed after the start", noCT, false, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testkit.NewDropPair(t)
			var dnat drops.Packet
			sport := uint16(5010 + i)
			if tt.before {
				dnat = sendUDP(t, p, sport, testkit.DNATPorts+8, p.RealB)
			}
			a := drops.NewAttributorBounded(p.B, nil, noVS, tt.noCT)
			defer a.Close()
			if !tt.before {
				dnat = sendUDP(t, p, sport, testkit.DNATPorts+8, p.RealB)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			a.Prefetch()
			f := a.Attribute(ctx, dnat, 0, 1)
			if got := f != nil && f.Real == dnat.Dst; got != tt.attributed {
				t.Errorf("Attribute(UDP DNATed to %s) = %v, want attributed %v", dnat.Dst, f, tt.attributed)
			}
			errs := a.Errors()
			if errs["ipvs"] != noVS || !strings.HasPrefix(errs["conntrack"], tt.noCT) || (tt.noCT == "") != (errs["conntrack"] == "") {
				t.Errorf("Errors() = %q, want ipvs %q and conntrack %q", errs, noVS, tt.noCT)
			}
		})
	}
}

// A flow that exists when the tracer attaches — when its window opens — and
// ends in the window's first instants is known to the tracer's Namer: its
// first read of the tables is done before the attach, also when the
// services' addresses are past the kernel's filter (Select: an LB of many
// services). Here conntrack loses the flow right after the attach, and its
// client's next datagram is dropped before conntrack sees it (a raw
// prerouting rule: no new flow, no event): only that first read can name
// it.
func TestAttributeFlowEndedAsTheWindowOpened(t *testing.T) {
	testkit.RequireRoot(t)
	tests := []struct {
		name string
		cfg  func(p *testkit.DropPair) drops.Config
	}{
		{"addresses in the kernel's filter", func(p *testkit.DropPair) drops.Config {
			return drops.Config{NetnsInode: uint32(p.B.Inode), LB: p.B, Ports: []uint16{5003}}
		}},
		{"addresses past the kernel's filter", func(p *testkit.DropPair) drops.Config {
			sel := []netip.Addr{p.AddrA, p.AddrB, p.RealB}
			for i := range drops.MaxFilter {
				sel = append(sel, netip.AddrFrom4([4]byte{10, 79, 1, byte(i)}))
			}
			return drops.Config{NetnsInode: uint32(p.B.Inode), LB: p.B, Select: sel, Ports: []uint16{5003}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testkit.NewDropPair(t)
			dnat := sendUDP(t, p, 5003, testkit.DNATPorts+9, p.RealB)
			testkit.Run(t, p.B, "nft", "add chain ip f raw { type filter hook prerouting priority -300; }; add rule ip f raw udp sport 5003 drop")
			tr, err := drops.New(tt.cfg(p))
			if err != nil {
				t.Fatal(err)
			}
			// The window is open: the flow ends, and its client sends again.
			testkit.Run(t, p.B, "conntrack", "-D", "-p", "udp", "--orig-port-src", "5003")
			err = p.A.Do(func() error {
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.AddrA.AsSlice(), Port: 5003})
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(p.AddrB, testkit.DNATPorts+9))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			smp, err := tr.Watch(context.Background(), time.Now().Add(300*time.Millisecond), drops.Hooks{})
			if err != nil {
				t.Fatal(err)
			}
			vip := netip.AddrPortFrom(p.AddrB, testkit.DNATPorts+9)
			var got []string
			for _, c := range smp.Drops {
				got = append(got, fmt.Sprintf("%s %s→%s ×%d flow %v", c.ReasonName, c.Src, c.Dst, c.Count, c.Flow))
				if c.ReasonName == "NETFILTER_DROP" && (c.Flow == nil || c.Flow.VIP != vip || c.Flow.Real != dnat.Dst) {
					t.Errorf("the drop of %s → %s, its flow ended as the window opened: flow %v, want VIP %s via real %s", c.Src, c.Dst, c.Flow, vip, dnat.Dst)
				}
			}
			if smp.Attribution.Attributed != 1 || smp.Attribution.NotAttributed != 0 {
				t.Errorf("Watch(…).Attribution = %d attributed, %d not (drops %q); want 1, 0", smp.Attribution.Attributed, smp.Attribution.NotAttributed, got)
			}
		})
	}
}
