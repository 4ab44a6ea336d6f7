package checks_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// With expire_nodest_conn=0 IPVS drops, in its LOCAL_IN hook, the packets
// of a connection whose real was removed (a retransmission, or a client
// port reused within the old connection's timeout): a NETFILTER_DROP in
// input of a flow to a real no longer in its service is explained by
// ipvs.expire_nodest_conn, and drops.vip_flows warns pointing at it. The
// same drop of a flow to a real still there stays unexplained: a fail.
func TestExpireNodestExplainsDrops(t *testing.T) {
	tests := []struct {
		name       string
		real       string
		expire     string // net.ipv4.vs.expire_nodest_conn
		want       checks.Status
		wantReason string
	}{
		{"flow to a removed real", "10.1.0.99:8085", "0", checks.Warn, "explained by ipvs.expire_nodest_conn"},
		{"flow to a real still in the service", "10.1.0.50:8085", "0", checks.Fail, "packet-filter rule dropped it in input"},
		// With expire_nodest_conn=1 IPVS still drops the first packet of a
		// stale connection whose conntrack entry is old: no check fails for
		// it, the removal explains it.
		{"flow to a removed real, expire_nodest_conn=1", "10.1.0.99:8085", "1", checks.Warn, "explained by the removal of real 10.1.0.99:8085"},
		{"flow to a real still in the service, expire_nodest_conn=1", "10.1.0.50:8085", "1", checks.Fail, "packet-filter rule dropped it in input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage1")
			real := netip.MustParseAddrPort(tt.real)
			vip := netip.MustParseAddrPort("10.1.0.6:8085")
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{{
				Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 1, Location: 0xffff,
					Src: netip.MustParseAddrPort("10.1.0.3:58106"), Dst: vip}, Count: 1},
				ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0xa4", Hook: "input",
				Flow: &drops.Flow{Client: netip.MustParseAddrPort("10.1.0.3:58106"), VIP: vip, Real: real, Direction: "request", Stage: "as the client sent it, before IPVS", Source: "ipvs"}}}}
			v := s.Sysctls["net.ipv4.vs.expire_nodest_conn"]
			v.Value, v.Present = tt.expire, true
			s.Sysctls["net.ipv4.vs.expire_nodest_conn"] = v
			fs := checks.Run(s, probes.Selector{})
			got := find(fs, "drops.vip_flows")
			if got.Status != tt.want || !strings.Contains(got.Reason, tt.wantReason) {
				t.Errorf("drops.vip_flows with a NETFILTER_DROP in input of a %s = %s %q, want %s with %q", tt.name, got.Status, got.Reason, tt.want, tt.wantReason)
			}
			if e, want := find(fs, "ipvs.expire_nodest_conn"), map[string]checks.Status{"0": checks.Warn, "1": checks.Pass}[tt.expire]; e.Status != want {
				t.Errorf("ipvs.expire_nodest_conn = %s, want %s (expire_nodest_conn=%s)", e.Status, want, tt.expire)
			}
		})
	}
}

// A DNS-like VIP serves TCP and UDP on one port. The UDP service's real
// .99 was removed while the TCP service keeps one at that address: IPVS's
// drop of a UDP entry to .99 is the removal's (seen in the guest failing
// drops.vip_flows as a packet filter's, with a fix listing INPUT), and a
// TCP drop to .99 is not.
func TestExpireNodestExplainsDropsByProtocol(t *testing.T) {
	tests := []struct {
		name       string
		proto      uint8
		want       checks.Status
		wantReason string
	}{
		{"UDP entry to the real the UDP service lost", 17, checks.Warn, "explained by ipvs.expire_nodest_conn"},
		{"TCP connection to the real the TCP service keeps", 6, checks.Fail, "packet-filter rule dropped it in input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage1")
			vip := netip.MustParseAddrPort("10.1.0.6:8085")
			gone := netip.MustParseAddrPort("10.1.0.99:8085")
			tcp := s.IPVS.Services[0]
			tcp.Reals = append(slices.Clone(tcp.Reals), ipvs.Real{Addr: gone, Method: ipvs.Masq, Weight: 1})
			udp := s.IPVS.Services[0]
			udp.Proto = "udp"
			s.IPVS.Services = []ipvs.Service{tcp, udp}
			client := netip.MustParseAddrPort("10.1.0.3:5454")
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{{
				Aggregate:  drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: tt.proto, Reason: 1, Location: 0xffff, Src: client, Dst: vip}, Count: 10},
				ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0xa4", Hook: "input",
				Flow: &drops.Flow{Client: client, VIP: vip, Real: gone, Direction: "request", Stage: "as the client sent it, before IPVS", Source: "ipvs"}}}}
			v := s.Sysctls["net.ipv4.vs.expire_nodest_conn"]
			v.Value, v.Present = "0", true
			s.Sysctls["net.ipv4.vs.expire_nodest_conn"] = v
			got := find(checks.Run(s, probes.Selector{}), "drops.vip_flows")
			if got.Status != tt.want || !strings.Contains(got.Reason, tt.wantReason) {
				t.Errorf("drops.vip_flows with a NETFILTER_DROP in input of a %s = %s %q, want %s with %q", tt.name, got.Status, got.Reason, tt.want, tt.wantReason)
			}
		})
	}
}
