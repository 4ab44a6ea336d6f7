package drops

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// The cache keeps a flow under the address pairs of its packets, either way
// round (two for DNAT alone, three with SNAT, two for an IPVS connection),
// and names each packet of the flow by the first place that fits it, as a
// key per place did: the stage and direction do not depend on how the flow
// is stored.
func TestCacheNamesEveryPlace(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, real, lb := ap("10.1.0.3:41234"), ap("10.1.0.6:8085"), ap("10.1.0.50:8085"), ap("10.1.0.5:50000")
	type pkt struct {
		s, d             netip.AddrPort
		direction, stage string
	}
	tests := []struct {
		name     string
		reply    netip.AddrPort // the reply's destination: the LB's address with SNAT, else the client
		ipvs     bool           // an IPVS connection, not a conntrack flow
		wantKeys int
		packets  []pkt
	}{
		{"conntrack, DNAT and SNAT", lb, false, 3, []pkt{
			{client, vip, "request", "as the client sent it, before NAT"},
			{client, real, "request", "after DNAT to the real server"},
			{lb, real, "request", "after DNAT and SNAT"},
			{real, lb, "reply", "as the real server sent it, before de-NAT"},
			{real, client, "reply", "after SNAT reverse, before the VIP is restored"},
			{vip, client, "reply", "after full de-NAT, back to the client"},
		}},
		{"conntrack, DNAT alone", client, false, 2, []pkt{
			{client, vip, "request", "as the client sent it, before NAT"},
			{client, real, "request", "after DNAT to the real server"},
			{real, client, "reply", "as the real server sent it, before de-NAT"},
			{vip, client, "reply", "after full de-NAT, back to the client"},
		}},
		{"IPVS connection", client, true, 2, []pkt{
			{client, vip, "request", "as the client sent it, before IPVS"},
			{client, real, "request", "after IPVS DNAT to the real server"},
			{real, client, "reply", "straight from the real server, never de-NATed by IPVS"},
			{vip, client, "reply", "after IPVS de-NAT, back to the client"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Attributor{cur: map[pairKey]*cached{}, old: map[pairKey]*cached{}, maxKeys: MaxCacheKeys}
			if tt.ipvs {
				a.addConnLocked(unix.IPPROTO_TCP, ipvs.Conn{Proto: "TCP", Client: client, VIP: vip, Dest: real})
			} else {
				a.addPlacesLocked(unix.IPPROTO_TCP, conntrack.Flow{Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: tt.reply}})
			}
			if len(a.cur) != tt.wantKeys {
				t.Errorf("keys cached = %d, want %d", len(a.cur), tt.wantKeys)
			}
			for _, p := range tt.packets {
				f := a.lookupLocked(pairOf(p.s, p.d, unix.IPPROTO_TCP), p.s, p.d)
				if f == nil || f.Direction != p.direction || f.Stage != p.stage || f.Client != client || f.VIP != vip || f.Real != real {
					t.Errorf("lookup(%s → %s) = %+v, want %s %q of %s → VIP %s via %s", p.s, p.d, f, p.direction, p.stage, client, vip, real)
				}
			}
			// The same pair, another protocol; an endpoint of the flow
			// with another peer: not the flow.
			if f := a.lookupLocked(pairOf(client, vip, unix.IPPROTO_UDP), client, vip); f != nil {
				t.Errorf("lookup(udp %s → %s) = %+v, want nil", client, vip, f)
			}
			if f := a.lookupLocked(pairOf(client, lb, unix.IPPROTO_TCP), client, lb); f != nil {
				t.Errorf("lookup(%s → %s) = %+v, want nil", client, lb, f)
			}
		})
	}
}

// A pair is one key whichever way round it is written.
func TestPairOf(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name string
		s, d netip.AddrPort
	}{
		{"addresses differ", ap("10.0.0.1:80"), ap("10.0.0.2:80")},
		{"ports differ", ap("10.0.0.1:80"), ap("10.0.0.1:81")},
		{"IPv6", ap("[2001:db8::1]:80"), ap("[2001:db8::2]:5000")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a, b := pairOf(tt.s, tt.d, 6), pairOf(tt.d, tt.s, 6); a != b {
				t.Errorf("pairOf(%s, %s) = %+v, want pairOf(%s, %s) = %+v", tt.s, tt.d, a, tt.d, tt.s, b)
			}
		})
	}
	if pairOf(ap("10.0.0.1:80"), ap("10.0.0.2:80"), 6) == pairOf(ap("10.0.0.1:80"), ap("10.0.0.2:81"), 6) {
		t.Error("pairOf: two pairs of other ports are one key")
	}
}

// A client port that IPVS moves to another real in the window (its
// connection to a removed real expired as IPVS dropped its packet; the
// retransmission got a new one): the flow named is the newest, and it
// remembers the earlier real — aggregated drops of that pair may be the
// earlier flow's. The same flow read again is no replacement.
func TestCacheRemembersTheEarlierReal(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, lbAddr := ap("10.1.0.3:41001"), ap("10.1.0.6:8085"), ap("10.1.0.5:41001")
	gone, stays := ap("10.1.0.99:8085"), ap("10.1.0.50:8085")
	flowTo := func(real netip.AddrPort) conntrack.Flow {
		return conntrack.Flow{Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: lbAddr}}
	}
	tests := []struct {
		name        string
		reals       []netip.AddrPort // flows of the pair, in the order read
		ipvsLast    bool             // the last one read from IPVS, not conntrack
		wantReal    netip.AddrPort
		wantEarlier netip.AddrPort
	}{
		{"one flow", []netip.AddrPort{stays}, false, stays, netip.AddrPort{}},
		{"the same flow read twice", []netip.AddrPort{gone, gone}, false, gone, netip.AddrPort{}},
		{"moved to another real", []netip.AddrPort{gone, stays}, false, stays, gone},
		{"moved, then read again", []netip.AddrPort{gone, stays, stays}, false, stays, gone},
		{"moved, the new one read from IPVS", []netip.AddrPort{gone, stays}, true, stays, gone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Attributor{cur: map[pairKey]*cached{}, old: map[pairKey]*cached{}, maxKeys: MaxCacheKeys}
			for i, r := range tt.reals {
				if tt.ipvsLast && i == len(tt.reals)-1 {
					// IPVS yields to conntrack on a pair both hold: drop
					// the conntrack flow first, as its end does.
					clear(a.cur)
					a.cur[pairOf(client, vip, unix.IPPROTO_TCP)] = &cached{o: flowTo(tt.reals[i-1]).Orig, r: flowTo(tt.reals[i-1]).Reply, places: ipvsPlaces}
					a.addConnLocked(unix.IPPROTO_TCP, ipvs.Conn{Proto: "TCP", Client: client, VIP: vip, Dest: r})
					continue
				}
				a.addPlacesLocked(unix.IPPROTO_TCP, flowTo(r))
			}
			f := a.lookupLocked(pairOf(client, vip, unix.IPPROTO_TCP), client, vip)
			if f == nil {
				t.Fatalf("lookup(%s → %s) = nil, want a flow", client, vip)
			}
			if f.Real != tt.wantReal || f.EarlierReal != tt.wantEarlier {
				t.Errorf("lookup(%s → %s) = real %s, earlier %s; want real %s, earlier %s", client, vip, f.Real, f.EarlierReal, tt.wantReal, tt.wantEarlier)
			}
		})
	}
}
