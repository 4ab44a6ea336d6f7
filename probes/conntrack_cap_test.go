package probes

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// A conntrack dump stops after its most flows, counting those and saying
// so; one within the bound is read whole. Real flows in a real namespace:
// one UDP datagram to each of 6 closed ports of B (answered by an ICMP
// error; conntrack confirms the flow all the same).
func TestReadConntrackBounded(t *testing.T) {
	testkit.RequireRoot(t)
	p := testkit.NewDropPair(t)
	p.Flood(t, []uint16{7001, 7002, 7003, 7004, 7005, 7006}, 10*time.Millisecond)
	// Services: many VIPs (one dump of the whole table, matched here), and
	// one (dumps filtered by the kernel).
	many := []ipvs.Service{}
	for _, port := range []uint16{7001, 7002, 7003, 7004, 7005, 7006} {
		many = append(many, ipvs.Service{Proto: "udp", Addr: netip.AddrPortFrom(p.AddrB, port)})
	}
	tests := []struct {
		name        string
		sel         Selector
		svcs        []ipvs.Service
		max         int
		wantTotal   int
		wantPartial string // contained; "" for a whole read
	}{
		{"every VIP, within the bound", Selector{}, many, 100, 6, ""},
		{"every VIP, over it", Selector{}, many, 4, 4, "the dump stopped after 4 flows"},
		{"one address, within the bound", Selector{VIP: netip.AddrPortFrom(p.AddrB, 0)}, nil, 100, 6, ""},
		{"one address, over it", Selector{VIP: netip.AddrPortFrom(p.AddrB, 0)}, nil, 2, 2, "the dump stopped after 2 flows"},
	}
	for _, tt := range tests {
		c, err := readConntrack(p.B, tt.sel, tt.svcs, false, tt.max)
		if err != nil || c.Total() != tt.wantTotal || (tt.wantPartial == "") != (c.Partial == "") || !strings.Contains(c.Partial, tt.wantPartial) {
			t.Errorf("readConntrack(%s, at most %d) = %d flows, partial %q, error %v; want %d, partial %q", tt.name, tt.max, c.Total(), c.Partial, err, tt.wantTotal, tt.wantPartial)
		}
	}
}
