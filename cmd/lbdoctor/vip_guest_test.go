//go:build guest

package main

import (
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// --vip without --proto selects the service at that address and port
// whatever its protocol: a UDP-only service is found, not reported missing
// as "no virtual service TCP …". With --proto the protocol narrows it.
func TestGuestVIPWithoutProtoFindsAUDPService(t *testing.T) {
	ns := testkit.Netns(t, "vipudp")
	testkit.Run(t, ns, "ipvsadm", "-A", "-u", "10.1.0.6:53", "-s", "rr")
	tests := []struct {
		name  string
		args  []string
		want  string // kernel.ipvs status
		title string // in its title
	}{
		{"no --proto", nil, "pass", "UDP 10.1.0.6:53"},
		{"--proto udp", []string{"--proto", "udp"}, "pass", "UDP 10.1.0.6:53"},
		{"--proto UDP", []string{"--proto", "UDP"}, "pass", "UDP 10.1.0.6:53"},
		{"--proto tcp", []string{"--proto", "tcp"}, "fail", "TCP 10.1.0.6:53"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"check", "--netns", ns.Name, "--vip", "10.1.0.6:53", "-o", "json"}, tt.args...)
			r, _ := runBinary(t, args...)
			f := r.Findings[0]
			if f.ID != "kernel.ipvs" || string(f.Status) != tt.want || !strings.Contains(f.Title, tt.title) {
				t.Errorf("lbdoctor %v: %s = %s %q, want %s naming %s", args, f.ID, f.Status, f.Title, tt.want, tt.title)
			}
		})
	}
}
