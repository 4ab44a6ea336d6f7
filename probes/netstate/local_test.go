package netstate_test

import (
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// LocalSet answers as Holds does, for single addresses and wider local
// routes alike, and says when the local table was not read.
func TestLocalSet(t *testing.T) {
	local := []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32"), netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("fd00::6/128")}
	tests := []struct {
		name      string
		local     []netip.Prefix
		addr      string
		wantLocal bool
		wantOK    bool
	}{
		{"an address of its own", local, "10.96.0.1", true, true},
		{"inside a wider local route", local, "10.9.0.77", true, true},
		{"IPv6", local, "fd00::6", true, true},
		{"not local", local, "10.96.0.2", false, true},
		{"IPv4 beside an IPv6 route", []netip.Prefix{netip.MustParsePrefix("::/0")}, "10.96.0.1", false, true},
		{"local table not read", nil, "10.96.0.1", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := netstate.Snapshot{Local: tt.local}
			a := netip.MustParseAddr(tt.addr)
			local, ok := s.LocalSet().Holds(a)
			if local != tt.wantLocal || ok != tt.wantOK {
				t.Errorf("LocalSet().Holds(%s) = %v, %v, want %v, %v", a, local, ok, tt.wantLocal, tt.wantOK)
			}
			if l, o := s.Holds(a); l != local || o != ok {
				t.Errorf("Holds(%s) = %v, %v, want LocalSet's %v, %v", a, l, o, local, ok)
			}
		})
	}
}
