package probes

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// The IPVS connection table is read only while IPVS's own per-real
// counters say it is small: its cost grows with the square of its size.
func TestConnTableUnread(t *testing.T) {
	// svc has a real per pair: its active and inactive connections.
	svc := func(reals ...[2]int) ipvs.Service {
		s := ipvs.Service{Proto: "tcp"}
		for _, r := range reals {
			s.Reals = append(s.Reals, ipvs.Real{ActiveConns: r[0], InactiveConns: r[1]})
		}
		return s
	}
	tests := []struct {
		name string
		svcs []ipvs.Service
		want string // contained; "" reads the table
	}{
		{"no service", nil, ""},
		{"small", []ipvs.Service{svc([2]int{3, 4}, [2]int{0, 2}), svc([2]int{5, 0})}, ""},
		{"at the limit", []ipvs.Service{svc([2]int{300, 300}), svc([2]int{0, 400})}, ""},
		{"one over", []ipvs.Service{svc([2]int{300, 300}), svc([2]int{1, 400})}, "not read: IPVS holds 1001 connections (its reals' ActiveConn + InActConn), over 1000"},
	}
	for _, tt := range tests {
		got := connTableUnread(ipvs.Snapshot{Available: true, Services: tt.svcs}, 1000)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("connTableUnread(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// The drop tracer's attributor and a capture's joiner leave the same tables
// unread, by one rule: IPVS's table past its counters' limit, a whole
// conntrack dump past its entries' limit — then only the flows to a few
// selected VIPs are dumped (filtered in the kernel), none for many.
func TestAttributorBounds(t *testing.T) {
	vip := netip.MustParseAddrPort("10.1.0.6:8085")
	big := ipvs.Snapshot{Available: true, Services: []ipvs.Service{{Proto: "tcp", Addr: vip, Reals: []ipvs.Real{{ActiveConns: 900, InactiveConns: 200}}}}}
	var many []ipvs.Service
	for i := range maxFilteredDumps + 1 {
		many = append(many, ipvs.Service{Proto: "tcp", Addr: netip.AddrPortFrom(vip.Addr(), uint16(80+i))})
	}
	tests := []struct {
		name      string
		v         ipvs.Snapshot
		entries   uint32
		sel       Selector
		svcs      []ipvs.Service
		wantVS    string // contained; "" reads the table
		wantCT    string // contained; "" dumps it whole
		wantDumps int
	}{
		{"small tables", ipvs.Snapshot{Available: true}, 1000, Selector{VIP: vip}, nil, "", "", 0},
		{"IPVS over", big, 1000, Selector{VIP: vip}, nil, "IPVS connection table not read: 1100 connections (its reals' ActiveConn + InActConn), over 1000", "", 0},
		{"conntrack at its limit", ipvs.Snapshot{}, 1000, Selector{VIP: vip}, nil, "", "", 0},
		{"conntrack over, one VIP and protocol", ipvs.Snapshot{}, 1001, Selector{VIP: vip, Proto: "tcp"}, nil, "", "conntrack not dumped whole: 1001 entries, over 1000", 1},
		{"conntrack over, one VIP of any protocol", ipvs.Snapshot{}, 1001, Selector{VIP: vip}, nil, "", "conntrack not dumped whole: 1001 entries, over 1000", 2},
		{"conntrack over, more VIPs than filtered dumps", ipvs.Snapshot{}, 1001, Selector{}, many, "", "conntrack not dumped whole", 0},
	}
	for _, tt := range tests {
		b := attributorBounds(tt.v, tt.entries, tt.sel, tt.svcs, 1000, 1000)
		if (tt.wantVS == "") != (b.NoIPVSTable == "") || !strings.Contains(b.NoIPVSTable, tt.wantVS) ||
			(tt.wantCT == "") != (b.NoConntrackDump == "") || !strings.Contains(b.NoConntrackDump, tt.wantCT) || len(b.DumpTo) != tt.wantDumps {
			t.Errorf("attributorBounds(%s) = ipvs %q, conntrack %q, %d filtered dumps; want %q, %q, %d", tt.name, b.NoIPVSTable, b.NoConntrackDump, len(b.DumpTo), tt.wantVS, tt.wantCT, tt.wantDumps)
		}
	}
}
