package main

import (
	"errors"
	"net/netip"
	"testing"
)

// One --vip parser for every verb: what it takes and what it refuses.
func TestParseVIP(t *testing.T) {
	tests := []struct {
		in       string
		needPort bool
		want     string // "" = refused with a usage error
	}{
		{"10.1.0.6:8085", true, "10.1.0.6:8085"},
		{"10.1.0.6", false, "10.1.0.6:0"},
		{"10.1.0.6", true, ""},
		{"10.1.0.6:0", true, ""},
		{"10.1.0.6:0", false, ""}, // port 0 is not "any port": leave the port out for that
		{"[fd00::6]:8085", true, "[fd00::6]:8085"},
		{"fd00::6", false, "[fd00::6]:0"},
		{"[fd00::6]", false, "[fd00::6]:0"},
		{"fd00::6:8085", true, ""}, // an IPv6 address, not ADDR:PORT
		{"[::ffff:10.1.0.6]:80", true, "10.1.0.6:80"},
		{"0.0.0.0:80", true, ""},
		{"[::]:80", true, ""},
		{"::", false, ""},
		{"224.0.0.1:80", true, ""},
		{"[ff02::1]:80", true, ""},
		{"255.255.255.255:80", true, ""},
		{"[fe80::1%eth0]:80", true, ""},
		{"10.1.0.6:65536", true, ""},
		{"lb.example:80", true, ""},
	}
	for _, tt := range tests {
		got, err := parseVIP(tt.in, tt.needPort)
		switch {
		case tt.want == "" && !errors.Is(err, errUsage):
			t.Errorf("parseVIP(%q, %v) = %v, %v; want a usage error", tt.in, tt.needPort, got, err)
		case tt.want != "" && (err != nil || got != netip.MustParseAddrPort(tt.want)):
			t.Errorf("parseVIP(%q, %v) = %v, %v; want %s", tt.in, tt.needPort, got, err, tt.want)
		}
	}
}

// --proto of check and inspect: left out, the service at the VIP whatever
// its protocol; any case is read.
func TestSelectorProto(t *testing.T) {
	for _, tt := range []struct{ proto, want string }{{"", ""}, {"tcp", "tcp"}, {"UDP", "udp"}} {
		sel, err := selector("10.1.0.6:53", tt.proto, true)
		if err != nil || sel.Proto != tt.want {
			t.Errorf("selector(10.1.0.6:53, %q) = %+v, %v; want proto %q", tt.proto, sel, err, tt.want)
		}
	}
	udp := netip.MustParseAddrPort("10.1.0.6:53")
	if sel, _ := selector("10.1.0.6:53", "", true); !sel.Matches(udp, "udp") || !sel.Matches(udp, "tcp") {
		t.Errorf("selector without --proto does not match both protocols of %s", udp)
	}
	if sel, _ := selector("10.1.0.6:53", "tcp", true); sel.Matches(udp, "udp") {
		t.Errorf("selector --proto tcp matches udp %s", udp)
	}
}
