package probes

import (
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
