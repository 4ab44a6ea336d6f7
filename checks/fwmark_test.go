package checks_test

import (
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// A keepalived director's `virtual_server fwmark 7` with NAT reals: IPVS
// gives the service no address (the mark rule holds it), so its return
// path has no VIP segment to be judged by — seen failing a healthy
// two-arm director in the guest with "the VIP invalid IP is not an
// address" and a fix `lbdoctor setup --vip invalid AddrPort`.
func TestReturnPathFirewallMark(t *testing.T) {
	fwm := ipvs.Service{Proto: "fwmark", FWMark: 7, Scheduler: "rr",
		Reals: []ipvs.Real{{Addr: ap("10.2.0.50:8085"), Method: ipvs.Masq, Weight: 1}}}
	tests := []struct {
		name    string
		fixture string
		alone   bool
		want    checks.Status
		has     []string
	}{
		{name: "two-arm, beside a TCP service", fixture: "two-arm", want: checks.Pass, has: []string{"FWM 7: a firewall mark selects its packets, not an address"}},
		{name: "two-arm, alone", fixture: "two-arm", alone: true, want: checks.Skip},
		{name: "one-arm without SNAT, beside a TCP service", fixture: "seed-stage1", want: checks.Fail, has: []string{"replies of TCP 10.1.0.6:8085 bypass the LB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, tt.fixture)
			if tt.alone {
				s.IPVS.Services = nil
			}
			s.IPVS.Services = append(s.IPVS.Services, fwm)
			fs := checks.Run(s, probes.Selector{})
			judged(t, fs, "nat.return_path", tt.name, tt.want, tt.has)
			if f := find(fs, "nat.return_path"); tt.want == checks.Fail && f.Title != "replies of TCP 10.1.0.6:8085 bypass the LB: no source NAT" {
				t.Errorf("nat.return_path(%s) title = %q, want the TCP service's", tt.name, f.Title)
			}
		})
	}
}
