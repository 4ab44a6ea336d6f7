package drops_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// A tracer kept across windows (WatchFrom): each window counts the drops
// since the last one's read, and a filter changed in place (SetFilter)
// takes effect at once — also for a flow each CPU turned away last under
// the old filter (what it remembers is dropped when the filter changes) —
// and back again, with no load in between.
func TestWatchFromAndSetFilter(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "setf")
	testkit.Run(t, ns, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport { 9, 10 } drop")
	cfg := func(port uint16) drops.Config {
		return drops.Config{NetnsInode: uint32(ns.Inode), LB: ns, Ports: []uint16{port}}
	}
	tr, err := drops.New(cfg(9))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	id, err := tr.ProgramID()
	if err != nil {
		t.Fatal(err)
	}
	base := tr.NewBaseline()
	// One flow to each port for the whole test: the one to 10 is what a
	// CPU turned away last under the first filter.
	socks := map[uint16]*net.UDPConn{}
	err = ns.Do(func() error {
		for _, port := range []uint16{9, 10} {
			c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
			if err != nil {
				return err
			}
			t.Cleanup(func() { c.Close() })
			socks[port] = c
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	send := func(t *testing.T, port uint16, n int) {
		for range n {
			if _, err := socks[port].Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name   string
		filter uint16 // the port traced in this window (set before it)
		to9    int    // datagrams sent to port 9, then to port 10, in turn
		to10   int
	}{
		{"port 9 traced", 9, 3, 4},
		{"port 10 traced: set in place, the rejected flow judged again", 10, 5, 6},
		{"port 9 again", 9, 2, 7},
		{"the same filter: a window of nothing sent", 9, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tr.SetFilter(cfg(tt.filter)); err != nil {
				t.Fatalf("SetFilter(port %d) = %v", tt.filter, err)
			}
			send(t, 9, tt.to9)
			send(t, 10, tt.to10)
			smp, err := tr.WatchFrom(context.Background(), time.Now(), drops.Hooks{}, base)
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint16]int{9: tt.to9, 10: tt.to10}[tt.filter]
			var got int
			for _, d := range smp.Drops {
				if d.Dst.Port() != tt.filter {
					t.Errorf("window traced port %d: drop %+v of another port", tt.filter, d.Aggregate)
				}
				got += int(d.Count)
			}
			if got != want || smp.Counters.Matched != uint64(want) {
				t.Errorf("window traced port %d = %d drops (matched %d), want %d", tt.filter, got, smp.Counters.Matched, want)
			}
		})
	}
	if now, err := tr.ProgramID(); err != nil || now != id {
		t.Errorf("ProgramID() after the filters = %d, %v; want %d, the same program", now, err, id)
	}
}

// A kept tracer's flow map only grows: once half full, the flows idle for
// a window are pruned at its read, so that later windows itemise their
// flows again instead of counting them by place for good; every count
// stays exact.
func TestWatchFromPrunesIdleFlows(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "prune")
	testkit.Run(t, ns, "nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in udp dport 9 drop")
	const size = 8
	tr, err := drops.New(drops.Config{NetnsInode: uint32(ns.Inode), LB: ns, Ports: []uint16{9}, FlowMapSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	base := tr.NewBaseline()
	// flows sends one datagram from each of n new sockets: n new flows.
	flows := func(t *testing.T, n int) {
		err := ns.Do(func() error {
			for range n {
				c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
				if err != nil {
					return err
				}
				c.Write([]byte("x"))
				c.Close()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		flows int
		// Some new flows by place (the map full; how many depends on the
		// CPUs' last-flow slots), or none.
		wantNotItemised bool
	}{
		{"the map fills", size, false},
		{"full: new flows counted by place; the idle ones pruned at the read", size, true},
		{"room again: new flows itemised", size / 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flows(t, tt.flows)
			smp, err := tr.WatchFrom(context.Background(), time.Now(), drops.Hooks{}, base)
			if err != nil {
				t.Fatal(err)
			}
			c := smp.Counters
			if c.Matched != uint64(tt.flows) || (c.NotItemised > 0) != tt.wantNotItemised || c.AggLost != 0 {
				t.Errorf("window of %d new flows = %+v, want %d matched, some not itemised %v, none lost", tt.flows, c, tt.flows, tt.wantNotItemised)
			}
		})
	}
}
