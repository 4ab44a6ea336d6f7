package probes

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// Caps on the route questions of one snapshot: a flood from many clients
// must not turn a read into thousands of lookups.
const (
	MaxRouteSources   = 32 // client sources asked about, the dropped ones first
	MaxRPFilterIfaces = 16 // interfaces each source is asked on
)

// Source is a client source of a selected VIP: a flow's original source
// (conntrack, or IPVS's own connection table, which keeps clients when
// vs.conntrack=0), or the source of packets to the VIP the reverse-path
// filter dropped in the window (for a DNAT VIP, packets to its backends:
// the filter runs after the DNAT).
type Source struct {
	Src, VIP netip.Addr
	Drops    uint64 // IP_RPFILTER drops of its packets to VIP in the window
	Flows    int    // conntrack flows and IPVS connections from it to VIP (listed ones)
}

// ClientSources lists the IPv4 client sources of the selected VIPs,
// those with IP_RPFILTER drops first, at most MaxRouteSources; the second
// result says how many more there were. Reverse-path filtering is IPv4's:
// IPv6 has no rp_filter switch.
func ClientSources(s *Snapshot, sel Selector) ([]Source, int) {
	vips := map[netip.Addr]bool{}
	for _, svc := range s.IPVS.Services {
		if svc.FWMark == 0 && sel.Matches(svc.Addr, svc.Proto) {
			vips[svc.Addr.Addr()] = true
		}
	}
	if sel.VIP.IsValid() {
		vips[sel.VIP.Addr()] = true
	}
	// The reverse-path filter decides after PREROUTING's DNAT: a dropped
	// packet of a DNAT VIP carries its backend's address, not the VIP's.
	var backends map[netip.AddrPort]netip.Addr
	if bs := s.DNATBackends(sel); len(bs) > 0 {
		backends = make(map[netip.AddrPort]netip.Addr, len(bs))
		for _, b := range bs {
			backends[b.Addr] = sel.VIP.Addr()
		}
	}
	out := clientSources(s, vips, backends)
	if len(out) > MaxRouteSources {
		return out[:MaxRouteSources], len(out) - MaxRouteSources
	}
	return out, 0
}

// ClientSourcesByVIP is ClientSources of each service's VIP address alone
// (a selector of its address and port selects every source of that
// address), uncapped, from one walk of the tables: 1,000 services must
// not each walk every flow.
func ClientSourcesByVIP(s *Snapshot) map[netip.Addr][]Source {
	vips := map[netip.Addr]bool{}
	for _, svc := range s.IPVS.Services {
		if svc.FWMark == 0 {
			vips[svc.Addr.Addr()] = true
		}
	}
	by := map[netip.Addr][]Source{}
	for _, c := range clientSources(s, vips, nil) {
		by[c.VIP] = append(by[c.VIP], c)
	}
	return by
}

// clientSources is every IPv4 client source of vips, in ClientSources's
// order, uncapped. An IP_RPFILTER drop is a VIP's when it was addressed to
// it, attributed to a flow of it, or addressed to one of backends (a DNAT
// VIP's, to the VIP they serve; a backend without a port by its address).
func clientSources(s *Snapshot, vips map[netip.Addr]bool, backends map[netip.AddrPort]netip.Addr) []Source {
	var out []Source
	at := map[[2]netip.Addr]int{}
	add := func(src, vip netip.Addr, drops uint64, flows int) {
		if !src.Is4() || !vips[vip] {
			return
		}
		k := [2]netip.Addr{src, vip}
		i, ok := at[k]
		if !ok {
			i = len(out)
			at[k] = i
			out = append(out, Source{Src: src, VIP: vip})
		}
		out[i].Drops += drops
		out[i].Flows += flows
	}
	if s.Drops != nil {
		for _, c := range s.Drops.Drops {
			if c.ReasonName != "IP_RPFILTER" || c.Family != 4 {
				continue
			}
			vip := c.Dst.Addr()
			if v, ok := backends[c.Dst]; ok {
				vip = v
			} else if v, ok := backends[netip.AddrPortFrom(c.Dst.Addr(), 0)]; ok {
				vip = v
			} else if c.Flow != nil && vips[c.Flow.VIP.Addr()] {
				vip = c.Flow.VIP.Addr()
			}
			add(c.Src.Addr(), vip, c.Count, 0)
		}
	}
	for _, f := range s.Conntrack.Flows {
		add(f.Orig.Src.Addr(), f.Orig.Dst.Addr(), 0, 1)
	}
	for _, c := range s.IPVS.Conns {
		add(c.Client.Addr(), c.VIP.Addr(), 0, 1)
	}
	return out
}

// RPFilter is the reverse-path filter of one interface: the kernel uses
// the larger of conf.all.rp_filter and conf.DEV.rp_filter (0 off, 1
// strict, 2 loose). ok is false when either could not be read.
func RPFilter(sys sysctl.Snapshot, dev string) (all, iface, effective int, ok bool) {
	return ConfMax(sys, dev, "rp_filter")
}

// ConfMax reads an IPv4 per-interface setting the kernel applies as the
// larger of conf.all.KEY and conf.DEV.KEY (rp_filter, arp_ignore,
// arp_announce). ok is false when either could not be read.
func ConfMax(sys sysctl.Snapshot, dev, key string) (all, iface, effective int, ok bool) {
	read := func(key string) (int, bool) {
		v, found := sys[key]
		if !found || !v.Present {
			return 0, false
		}
		n, err := strconv.Atoi(v.Value)
		return n, err == nil
	}
	all, okAll := read("net.ipv4.conf.all." + key)
	iface, okDev := read("net.ipv4.conf." + dev + "." + key)
	return all, iface, max(all, iface), okAll && okDev
}

// RPFilterInterfaces are the up interfaces (not lo) whose reverse-path
// filter is on, at most MaxRPFilterIfaces.
func RPFilterInterfaces(s *Snapshot) []string {
	var out []string
	for _, l := range s.Net.Links {
		if !l.Up || l.Name == "lo" {
			continue
		}
		if _, _, eff, ok := RPFilter(s.Sysctls, l.Name); ok && eff > 0 {
			out = append(out, l.Name)
			if len(out) == MaxRPFilterIfaces {
				break
			}
		}
	}
	return out
}

// AskRoutes asks ns's kernel the route questions the checks judge and adds
// the answers to s.Net.Lookups (a question answered before is not asked
// again, so the window asks again only about what it added):
//   - for each selected VIP that no local route holds, where a packet to
//     it goes instead (ipvs.vip_local);
//   - where an interface filters reverse paths, for each client source of
//     the selected VIPs (ClientSources), where the route back to it leaves
//     and, on each strictly filtering interface, whether the kernel lets a
//     packet from it to its VIP in (`ip route get VIP from SRC iif DEV`:
//     the input route runs the filter) — sysctl.rp_filter;
//   - for each source of packets the reverse-path filter dropped in the
//     window (IP_RPFILTER, at most MaxRouteSources), where the route back
//     to it leaves: what made it a martian (the window's drop points).
//
// The lookups are read-only; a namespace that cannot be entered is named
// in s.Errors[ProbeRoutes].
func AskRoutes(ns netns.Target, s *Snapshot, sel Selector) {
	asked := map[netstate.Query]bool{}
	for _, d := range s.Net.Lookups {
		asked[netstate.Query{Dst: d.Dst, From: d.From, Iif: d.Iif}] = true
	}
	var qs []netstate.Query
	ask := func(q netstate.Query) {
		if !asked[q] {
			asked[q] = true
			qs = append(qs, q)
		}
	}
	locals := s.Net.LocalSet()
	for _, svc := range s.IPVS.Services {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		if local, ok := locals.Holds(svc.Addr.Addr()); ok && !local {
			ask(netstate.Query{Dst: svc.Addr.Addr()})
		}
	}
	if ifaces := RPFilterInterfaces(s); len(ifaces) > 0 {
		// Only a strict filter refuses a source that has a route back: a
		// loose one refuses only sources with none, which the route back
		// tells. Distributions that turn loose filtering on everywhere
		// cost one question per source.
		strict := slices.DeleteFunc(ifaces, func(dev string) bool {
			_, _, eff, _ := RPFilter(s.Sysctls, dev)
			return eff != 1
		})
		srcs, _ := ClientSources(s, sel)
		for _, c := range srcs {
			ask(netstate.Query{Dst: c.Src})
			for _, dev := range strict {
				ask(netstate.Query{Dst: c.VIP, From: c.Src, Iif: dev})
			}
		}
	}
	if s.Drops != nil {
		seen := map[netip.Addr]bool{}
		for _, c := range s.Drops.Drops {
			if c.ReasonName == "IP_RPFILTER" && c.Family != 0 && !seen[c.Src.Addr()] && len(seen) < MaxRouteSources {
				seen[c.Src.Addr()] = true
				ask(netstate.Query{Dst: c.Src.Addr()})
			}
		}
	}
	if len(qs) == 0 {
		return
	}
	ds, err := netstate.LookupAll(ns, qs)
	if err != nil {
		if s.Errors == nil {
			s.Errors = map[string]string{}
		}
		s.Errors[ProbeRoutes] = err.Error()
		return
	}
	s.Net.Lookups = append(s.Net.Lookups, ds...)
}
