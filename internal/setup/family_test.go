package setup_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// setup turns on the forwarding switch of each address family it serves:
// an IPv6 service needs net.ipv6.conf.all.forwarding, never only
// net.ipv4.ip_forward (what sysctl.ip_forward checks).
func TestStepsForwardEachFamily(t *testing.T) {
	lb := netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb"}
	snap := &probes.Snapshot{Net: netstate.Snapshot{
		Links: []netstate.Link{
			{Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.6/32"), netip.MustParsePrefix("fd00:1::6/128")}},
			{Name: "eth1", Addrs: []netip.Prefix{netip.MustParsePrefix("10.2.0.1/24"), netip.MustParsePrefix("fd00:2::1/64")}},
		},
		Routes: []netstate.Route{
			{Dst: netip.MustParsePrefix("10.2.0.0/24"), Dev: "eth1"},
			{Dst: netip.MustParsePrefix("fd00:2::/64"), Dev: "eth1"},
		},
	}}
	svc := func(vip, real string) setup.Service {
		return setup.Service{Proto: "tcp", VIP: netip.MustParseAddrPort(vip), Scheduler: "rr", SNAT: "never",
			Reals: []setup.Real{{Addr: netip.MustParseAddrPort(real), Weight: 1}}}
	}
	v4, v6 := svc("10.1.0.6:80", "10.2.0.50:80"), svc("[fd00:1::6]:80", "[fd00:2::50]:80")
	tests := []struct {
		name     string
		services []setup.Service
		want     []string
	}{
		{"IPv4", []setup.Service{v4}, []string{"net.ipv4.ip_forward=1"}},
		{"IPv6", []setup.Service{v6}, []string{"net.ipv6.conf.all.forwarding=1"}},
		{"both", []setup.Service{v4, v6}, []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps, _, err := setup.Steps(lb, setup.Spec{Services: tt.services, SNATBackend: "auto"}, snap)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range steps {
				for _, key := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
					if s.Describe() == "ip netns exec lb sysctl -w "+key {
						got = append(got, key)
					}
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Steps(%s) forwarding = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}

// A VIP no local route holds is added where ipvs.vip_local's fix puts it
// (the interface whose subnet holds it, else lo), once for the services on
// it, before IPVS's service; the return path is judged with it there (a
// one-arm LB needs SNAT because the reals share the VIP's segment, not
// because the VIP "is not an address"). A local VIP gets no step.
func TestStepsAddAVIPThatIsNotLocal(t *testing.T) {
	lb := netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb"}
	snap := &probes.Snapshot{Net: netstate.Snapshot{
		Links:  []netstate.Link{{Name: "lo", Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}}, {Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24")}}},
		Routes: []netstate.Route{{Dst: netip.MustParsePrefix("10.1.0.0/24"), Dev: "eth0"}},
		Local:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.1.0.5/32")},
	}}
	svc := func(vip string) setup.Service {
		return setup.Service{Proto: "tcp", VIP: netip.MustParseAddrPort(vip), Scheduler: "rr",
			Reals: []setup.Real{{Addr: netip.MustParseAddrPort("10.1.0.50:8085"), Weight: 1}}}
	}
	tests := []struct {
		name      string
		services  []setup.Service
		wantAddrs []string
	}{
		{"on the reals' segment", []setup.Service{svc("10.1.0.7:80")}, []string{"ip netns exec lb ip addr add 10.1.0.7/32 dev eth0"}},
		{"two ports, one address", []setup.Service{svc("10.1.0.7:80"), svc("10.1.0.7:443")}, []string{"ip netns exec lb ip addr add 10.1.0.7/32 dev eth0"}},
		{"elsewhere: lo", []setup.Service{svc("10.9.0.7:80")}, []string{"ip netns exec lb ip addr add 10.9.0.7/32 dev lo"}},
		{"already local", []setup.Service{svc("10.1.0.5:80")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps, decisions, err := setup.Steps(lb, setup.Spec{Services: tt.services, SNATBackend: "auto"}, snap)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, s := range steps {
				if strings.Contains(s.Describe(), "ip addr add") {
					got = append(got, s.Describe())
					if i > 0 {
						t.Errorf("Steps(%s): the address is step %d, want it first, before IPVS's service", tt.name, i)
					}
				}
			}
			if !slices.Equal(got, tt.wantAddrs) {
				t.Errorf("Steps(%s) addresses = %q, want %q", tt.name, got, tt.wantAddrs)
			}
			for _, d := range decisions {
				if strings.Contains(d.Reason, "is not an address") {
					t.Errorf("Steps(%s) decision for %s: %q, want the return path judged with the VIP added", tt.name, d.Service, d.Reason)
				}
			}
		})
	}
}
