package checks_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
)

// A real on the LB itself (ipvsadm -a … -r LB_ADDR:PORT -m: a sorry
// server, the LB serving too) gets its connections inside the host and
// IPVS rewrites its replies back to the VIP on the way out: it needs no
// SNAT, and no forwarding. Seen in the guest: a one-arm VIP whose only real was the LB's own
// 10.1.0.5:8086 answered its client without SNAT, and nat.return_path
// failed it as "real 10.1.0.5 is on eth0, the VIP's segment", and
// sysctl.ip_forward with forwarding off.
func TestReturnPathLocalReal(t *testing.T) {
	tests := []struct {
		name   string
		reals  []string
		want   checks.Status
		wantIn string
	}{
		{"the LB's own address", []string{"10.1.0.5:8086"}, checks.Pass, "real 10.1.0.5 is a local address of the LB"},
		{"loopback", []string{"127.0.0.1:8086"}, checks.Pass, "real 127.0.0.1 is a local address of the LB"},
		{"a local real beside one on the VIP's segment", []string{"10.1.0.5:8086", "10.1.0.50:8085"}, checks.Fail, "real 10.1.0.50 is on eth0, the VIP's segment"},
		{"a real on the VIP's segment", []string{"10.1.0.50:8085"}, checks.Fail, "one-arm: real 10.1.0.50 shares the VIP's segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage1") // one-arm, no SNAT rule
			s.Net.Local = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.1.0.5/32"), netip.MustParsePrefix("10.1.0.6/32")}
			svc := &s.IPVS.Services[0]
			tmpl := svc.Reals[0]
			svc.Reals = nil
			for _, r := range tt.reals {
				real := tmpl
				real.Addr = netip.MustParseAddrPort(r)
				svc.Reals = append(svc.Reals, real)
			}
			setSysctl(s, "net.ipv4.ip_forward", "0")
			setSysctl(s, "net.ipv4.conf.eth0.forwarding", "0")
			fs := checks.Run(s, probes.Selector{})
			// Forwarding off: a local real's replies are not forwarded.
			if fw := statusOf(fs, "sysctl.ip_forward"); (fw.Status == checks.Pass) != (tt.want == checks.Pass) {
				t.Errorf("Run(%s, ip_forward=0) sysctl.ip_forward = %s %q, want pass only when every real is local", tt.name, fw.Status, fw.Title)
			}
			f := statusOf(fs, "nat.return_path")
			text := findingText(f)
			if f.Status != tt.want || !strings.Contains(text, tt.wantIn) {
				t.Errorf("Run(%s) nat.return_path = %s %q\n%s\nwant %s with %q", tt.name, f.Status, f.Title, text, tt.want, tt.wantIn)
			}
		})
	}
}
