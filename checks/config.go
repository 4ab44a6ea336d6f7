package checks

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// maxLinksShown caps the links whose addresses a finding lists.
const maxLinksShown = 8

// checkVIPLocal: IPVS takes a service's packets in LOCAL_IN, so only
// packets the kernel routes to a local address ever reach it; packets to a
// VIP that is not one are forwarded or die. Locality is the local routing
// table's word (routes of type local), not a link's state: kube-proxy's
// VIPs sit on the dummy kube-ipvs0, which stays DOWN, and are local.
func checkVIPLocal(s *probes.Snapshot, sel probes.Selector) Finding {
	if why := unjudgedRoutes(s); why != "" {
		return skip(why)
	}
	svcs := selected(s, sel)
	if len(svcs) == 0 {
		return skip("no IPVS service in " + s.Target.String())
	}
	if s.Net.Local == nil {
		return skip("the local routing table was not read (a snapshot of an older lbdoctor)")
	}
	src := "local routing table, " + s.Target.String()
	var ev []Evidence
	var bad []ipvs.Service
	var marked []string
	locals := s.Net.LocalSet()
	for _, svc := range svcs {
		if svc.FWMark != 0 {
			marked = append(marked, svc.Key())
			continue
		}
		vip := svc.Addr.Addr()
		if local, _ := locals.Holds(vip); local {
			ev = withLine(ev, func() Evidence {
				return Evidence{Fact: fmt.Sprintf("VIP %s of %s is local: %s", vip, svc.Key(), holder(s, vip)), Source: src}
			})
			continue
		}
		bad = append(bad, svc)
	}
	if len(marked) > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: a firewall mark selects its packets, not an address: nothing to judge", strings.Join(marked, ", ")), Source: "ipvs, " + s.Target.String()})
	}
	if len(bad) == 0 {
		if len(ev) == len(marked) && len(marked) > 0 {
			return skip("only fwmark services are selected (" + strings.Join(marked, ", ") + "): a rule marks their packets, no VIP address to judge")
		}
		return Finding{Status: Pass, Title: "every VIP is a local address", Evidence: ev}
	}
	var f Finding
	for _, svc := range bad {
		vip := svc.Addr.Addr()
		f.Evidence = append(f.Evidence, Evidence{Fact: fmt.Sprintf("VIP %s of %s is no local address: no local route holds it", vip, svc.Key()), Source: src})
		if d, ok := s.Net.LookedUp(vip); ok {
			f.Evidence = append(f.Evidence, Evidence{Fact: "ip route get " + d.String() + ": the kernel would not deliver it to IPVS", Source: "route lookup, " + s.Target.String()})
		}
		dev := AddrDev(s, vip)
		bits := 32
		if vip.Is6() {
			bits = 128
		}
		p := netip.PrefixFrom(vip, bits).String()
		if !slices.ContainsFunc(f.Remedies, func(r Remedy) bool { return r.Addr == p }) {
			f.Fix = append(f.Fix, fmt.Sprintf("%sip addr add %s dev %s", s.Target.ExecPrefix(), p, shellquote.Quote(dev)))
			f.Remedies = append(f.Remedies, Remedy{Addr: p, Dev: dev})
		}
	}
	f.Evidence = append(f.Evidence, Evidence{Fact: "addresses: " + linkAddrs(s), Source: "links, " + s.Target.String()})
	f.Evidence = append(f.Evidence, ev...)
	f.Status = Fail
	var vips []netip.Addr
	for _, svc := range bad {
		vips = append(vips, svc.Addr.Addr())
		f.about = append(f.about, svc.Key())
	}
	// Packets to them were forwarded and died wherever: that is this.
	f.explains = explainsTo(vips)
	vip := bad[0].Addr.Addr()
	f.Title = fmt.Sprintf("VIP %s is not a local address: IPVS never sees its packets", vip)
	if len(bad) > 1 {
		f.Title = fmt.Sprintf("%d VIPs are not local addresses (%s, …): IPVS never sees their packets", len(bad), vip)
	}
	f.Reason = fmt.Sprintf("IPVS takes a service's packets in LOCAL_IN, where only packets routed to a local address go; packets to %s are forwarded or dropped instead, and on its segment nobody answers ARP for it", vip)
	return f
}

// holder says which local route holds a, and on which link when an
// address of one is a (with its state: a DOWN dummy holds it all the same).
func holder(s *probes.Snapshot, a netip.Addr) string {
	var route string
	for _, p := range s.Net.Local {
		if p.Contains(a) {
			route = "local route " + p.String()
			break
		}
	}
	for _, l := range s.Net.Links {
		for _, p := range l.Addrs {
			if p.Addr() == a {
				state := "UP"
				if !l.Up {
					state = "DOWN, local all the same"
				}
				return fmt.Sprintf("%s, on %s (%s %s)", route, l.Name, l.Type, state)
			}
		}
	}
	return route
}

// AddrDev is where a missing VIP belongs: the interface whose connected
// subnet holds it (the LB then answers ARP for it there), else a dummy
// kube-ipvs0 where kube-proxy keeps its VIPs, else lo. ipvs.vip_local's
// fix and setup put it there.
func AddrDev(s *probes.Snapshot, a netip.Addr) string {
	best := -1
	dev := ""
	for _, r := range s.Net.Routes {
		if r.Dev != "" && !r.Gw.IsValid() && r.Dst.Bits() > 0 && r.Dst.Contains(a) && r.Dst.Bits() > best {
			best, dev = r.Dst.Bits(), r.Dev
		}
	}
	if dev != "" {
		return dev
	}
	for _, l := range s.Net.Links {
		if l.Name == "kube-ipvs0" {
			return l.Name
		}
	}
	return "lo"
}

// linkAddrs lists the links' addresses: "lo 127.0.0.1/8; eth0 10.1.0.5/24".
func linkAddrs(s *probes.Snapshot) string {
	var parts []string
	for i, l := range s.Net.Links {
		if i == maxLinksShown {
			parts = append(parts, fmt.Sprintf("… and %d more links", len(s.Net.Links)-i))
			break
		}
		var as []string
		for _, p := range l.Addrs {
			as = append(as, p.String())
		}
		if len(as) == 0 {
			as = []string{"no address"}
		}
		parts = append(parts, l.Name+" "+strings.Join(as, ", "))
	}
	return strings.Join(parts, "; ")
}

// rpSource is one client source of a VIP and what the kernel said of it.
type rpSource struct {
	probes.Source
	back    *netstate.Decision // the route back to the source
	refused []string           // interfaces whose filter refuses it
	why     map[string]string  // the kernel's refusal, by interface
}

// checkRPFilter: with strict reverse-path filtering (rp_filter=1; the
// kernel uses max(all, DEV)) an interface drops a packet whose source it
// would not route back out of that same interface — a two-arm LB whose
// clients come in on one arm while the route to them leaves by another,
// or any asymmetric routing. The probes asked the kernel itself, per
// client source and filtering interface (`ip route get VIP from SRC iif
// DEV`); the window's IP_RPFILTER drops prove which sources it hit.
func checkRPFilter(s *probes.Snapshot, sel probes.Selector) Finding {
	for _, p := range []string{probes.ProbeSysctl, probes.ProbeNet} {
		if e, ok := s.Errors[p]; ok {
			return skip(p + " could not be read: " + e)
		}
	}
	if why := ipvsUnjudged(s); why != "" && !sel.VIP.IsValid() {
		return skip(why)
	}
	var v4, v6 int
	for _, svc := range selected(s, sel) {
		switch {
		case svc.FWMark != 0:
		case svc.Addr.Addr().Is4():
			v4++
		default:
			v6++
		}
	}
	if sel.VIP.IsValid() && sel.VIP.Addr().Is4() {
		v4++
	}
	switch {
	case v4 == 0 && v6 > 0:
		return skip("rp_filter is IPv4's and the selected services are IPv6")
	case v4 == 0:
		return skip("no IPv4 VIP selected in " + s.Target.String())
	}
	all, ok := readable(s, "net.ipv4.conf.all.rp_filter")
	if !ok {
		return skip("net.ipv4.conf.all.rp_filter could not be read: " + all.Error + all.Absent)
	}
	src := s.Target.String()
	// An interface whose filter was not read is neither off nor asked
	// about (probes.RPFilterInterfaces leaves it out): no pass rests on it.
	var unreadIfaces []string
	for _, l := range s.Net.Links {
		if _, _, _, ok := probes.RPFilter(s.Sysctls, l.Name); l.Up && l.Name != "lo" && !ok {
			unreadIfaces = append(unreadIfaces, l.Name)
		}
	}
	unreadWhy := "rp_filter of " + strings.Join(unreadIfaces, ", ") + " could not be read"
	ifaces := probes.RPFilterInterfaces(s)
	if len(ifaces) == 0 {
		if len(unreadIfaces) > 0 {
			return skip(unreadWhy + ": whether reverse-path filtering is on there is not known")
		}
		return Finding{Status: Pass, Title: "reverse-path filtering is off",
			Evidence: []Evidence{{Fact: "net.ipv4.conf.all.rp_filter = " + all.Value + ", and 0 on every up interface", Source: src}}}
	}
	var ev []Evidence
	for _, dev := range ifaces {
		a, d, eff, _ := probes.RPFilter(s.Sysctls, dev)
		mode := "strict"
		if eff == 2 {
			mode = "loose"
		}
		ev = append(ev, Evidence{Fact: fmt.Sprintf("rp_filter of %s is %d, %s (all=%d, %s=%d)", dev, eff, mode, a, dev, d), Source: src})
	}
	if e, ok := s.Errors[probes.ProbeRoutes]; ok {
		return skip("the routes back to the clients could not be asked: " + e)
	}
	sources, more := probes.ClientSources(s, sel)
	filtered := rpSNMP(s) // the whole window's count: it does not depend on the tracer's attach
	if filtered > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("IPReversePathFilter +%d in the window: the filter dropped packets of this namespace", filtered), Source: "snmp, " + src})
	}
	if len(sources) == 0 {
		if filtered > 0 {
			return Finding{Status: Warn, Title: fmt.Sprintf("the reverse-path filter dropped %d packets in the window, whose is unknown", filtered),
				Reason:   "IPReversePathFilter counts every packet of the namespace the filter dropped; no client source of the VIPs is known (no flow, no IPVS connection, no IP_RPFILTER drop traced) to tell whether they were theirs",
				Evidence: ev}
		}
		if unread := clientTablesUnread(s); len(unread) > 0 {
			return skip("reverse-path filtering is on and no client source of the VIPs was seen to judge: " + strings.Join(unread, "; "))
		}
		return skip("reverse-path filtering is on and no client source of the VIPs was seen (no conntrack flow or IPVS connection, no IP_RPFILTER drop in the window) to judge")
	}
	var judged []rpSource
	for _, c := range sources {
		r := rpSource{Source: c, why: map[string]string{}}
		if d, ok := s.Net.LookedUp(c.Src); ok {
			r.back = &d
		}
		for _, d := range s.Net.Lookups {
			if d.Dst == c.VIP && d.From == c.Src && d.Iif != "" && d.Error != "" {
				r.refused = append(r.refused, d.Iif)
				r.why[d.Iif] = d.Error
				if d.Errno != "" {
					r.why[d.Iif] += " (" + d.Errno + ")"
				}
			}
		}
		// The kernel's refusal is the filter's when the filter's own rule
		// says so: strict and the route back leaves elsewhere, or no route
		// back at all (which loose mode refuses too).
		r.refused = slices.DeleteFunc(r.refused, func(dev string) bool {
			_, _, eff, _ := probes.RPFilter(s.Sysctls, dev)
			switch {
			case r.back == nil:
				return true // not asked: no conclusion
			case r.back.Error != "":
				return false
			default:
				return eff != 1 || r.back.Dev == dev
			}
		})
		judged = append(judged, r)
	}
	var dropped, predicted []rpSource
	var drops uint64
	for _, r := range judged {
		switch {
		case r.Drops > 0:
			dropped = append(dropped, r)
			drops += r.Drops
		case len(r.refused) > 0 && slices.Contains(r.refused, vipDev(s, r.VIP)):
			predicted = append(predicted, r)
		}
	}
	if more > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%d more client sources not asked about (at most %d are)", more, probes.MaxRouteSources), Source: src})
	}
	switch {
	case len(dropped) > 0:
		// The packets came in on an interface that refuses them: the
		// VIP's own, where it answers ARP, when it is one of them, else
		// every one that does (aggregated drops carry no interface).
		var devs []string
		for _, r := range dropped {
			refused := r.refused
			if dev := vipDev(s, r.VIP); slices.Contains(refused, dev) {
				refused = []string{dev}
			}
			for _, d := range refused {
				if !slices.Contains(devs, d) {
					devs = append(devs, d)
				}
			}
		}
		if len(devs) == 0 { // the kernel lets them in now: every strict interface is a suspect
			for _, dev := range ifaces {
				if _, _, eff, _ := probes.RPFilter(s.Sysctls, dev); eff == 1 {
					devs = append(devs, dev)
				}
			}
		}
		title := fmt.Sprintf("the reverse-path filter dropped %d packets from %s to %s: the route back leaves by another interface", drops, dropped[0].Src, dropped[0].VIP)
		return rpFail(s, title, dropped, devs, ev)
	case len(predicted) > 0 && filtered > 0:
		// No drop traced (no tracer, or it attached late), but the filter
		// dropped packets in the window and a known client of the VIP is
		// refused on the VIP's own interface: that is where they died.
		var devs []string
		for _, r := range predicted {
			if dev := vipDev(s, r.VIP); !slices.Contains(devs, dev) {
				devs = append(devs, dev)
			}
		}
		title := fmt.Sprintf("the reverse-path filter drops %s's packets to %s on %s: the route back leaves by another interface", predicted[0].Src, predicted[0].VIP, devs[0])
		return rpFail(s, title, predicted, devs, ev)
	case len(predicted) > 0:
		r := predicted[0]
		dev := vipDev(s, r.VIP)
		key := "net.ipv4.conf." + dev + ".rp_filter"
		f := Finding{Status: Warn,
			Title:  fmt.Sprintf("packets from %s to %s arriving on %s, the VIP's interface, would be dropped by the reverse-path filter", r.Src, r.VIP, dev),
			Reason: "strict reverse-path filtering drops a packet whose source is not routed back out of the interface it came in on; no drop was seen (the flows may come in elsewhere), so this is a warning",
			Fix:    sysctlFix(s.Target, key, "2")}
		for _, r := range predicted {
			f.Evidence = append(f.Evidence, rpLines(s, r)...)
		}
		f.Evidence = append(f.Evidence, ev...)
		return f
	}
	if len(unreadIfaces) > 0 {
		return Finding{Status: Skip, Reason: unreadWhy + ": the clients were not asked about there", Evidence: ev}
	}
	fact := fmt.Sprintf("%d client source(s) asked about, none refused where it would arrive, no IP_RPFILTER drop", len(judged))
	if unread := clientTablesUnread(s); len(unread) > 0 {
		// No drop counted is no drop seen when none was traced, and the
		// clients asked about are those of the tables read.
		fact = fmt.Sprintf("%d client source(s) asked about, none refused where it would arrive; %s", len(judged), strings.Join(unread, "; "))
	}
	f := Finding{Status: Pass, Title: "the reverse-path filter lets the VIPs' clients in",
		Evidence: append(ev, Evidence{Fact: fact, Source: "route lookups, " + src})}
	return f
}

// dropsUntraced says why the window's drops were not traced ("" when they
// were): none counted is then no evidence that none happened.
func dropsUntraced(s *probes.Snapshot) string {
	if e, ok := s.Errors[probes.ProbeDrops]; ok {
		return "drops were not traced: " + e
	}
	if s.Drops != nil {
		return ""
	}
	if s.Window == nil {
		return "drops were not traced: the window was off (--watch 0)"
	}
	if why, ok := s.Window.Skipped[probes.LayerDrops]; ok {
		return "drops were not traced: " + why
	}
	return "drops were not traced in the window"
}

// clientTablesUnread says which of the tables the VIPs' client sources
// are learned from were not read: conntrack's flows, IPVS's connections,
// the window's drops.
func clientTablesUnread(s *probes.Snapshot) []string {
	var out []string
	for _, why := range []string{flowsUnread(s), connTableSkip(s), dropsUntraced(s)} {
		if why != "" {
			out = append(out, why)
		}
	}
	return out
}

// rpFail is the failure of the reverse-path filter on the clients of
// srcs, fixed by loose filtering on devs.
func rpFail(s *probes.Snapshot, title string, srcs []rpSource, devs []string, ev []Evidence) Finding {
	f := Finding{Status: Fail, explains: explainsReasons("IP_RPFILTER"), Title: title,
		Reason: "strict reverse-path filtering (rp_filter=1) drops a packet whose source is not routed back out of the interface it came in on; " +
			"the clients' packets never reach IPVS or a DNAT's backend (IP_RPFILTER, IPReversePathFilter rises)"}
	for _, r := range srcs {
		f.Evidence = append(f.Evidence, rpLines(s, r)...)
	}
	f.Evidence = append(f.Evidence, ev...)
	for _, dev := range devs {
		key := "net.ipv4.conf." + dev + ".rp_filter"
		f.Fix = append(f.Fix, sysctlFix(s.Target, key, "2")...)
		f.Remedies = append(f.Remedies, Remedy{Sysctl: key, Value: "2"})
	}
	f.Fix = append(f.Fix, "# 2 is loose: the source must be routable, by any interface; or route the clients back the way they came")
	if len(f.Remedies) == 0 {
		f.Fix = append(f.Fix, fmt.Sprintf("%sip route get %s   # add a route back to the clients", s.Target.ExecPrefix(), srcs[0].Src))
	}
	return f
}

// rpLines is the evidence of one source: its drops, the route back, and
// the interfaces whose filter refuses it.
func rpLines(s *probes.Snapshot, r rpSource) []Evidence {
	src := "route lookups, " + s.Target.String()
	var ev []Evidence
	if r.Drops > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%d × IP_RPFILTER: packets from %s to %s dropped in the window", r.Drops, r.Src, r.VIP), Source: "kfree_skb tracer"})
	}
	if r.back != nil {
		ev = append(ev, Evidence{Fact: "the route back: ip route get " + r.back.String(), Source: src})
	}
	vdev := vipDev(s, r.VIP)
	for _, dev := range r.refused {
		which := dev
		if dev == vdev {
			which += " (the VIP's interface)"
		}
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s refuses it: ip route get %s from %s iif %s: %s", which, r.VIP, r.Src, dev, r.why[dev]), Source: src})
	}
	return ev
}

// vipDev is the interface holding vip, "" when none does or it is lo or a
// dummy (no packet arrives there).
func vipDev(s *probes.Snapshot, vip netip.Addr) string {
	for _, l := range s.Net.Links {
		if l.Name == "lo" || l.Type == "dummy" {
			continue
		}
		for _, p := range l.Addrs {
			if p.Addr() == vip {
				return l.Name
			}
		}
	}
	return ""
}

// rpSNMP is how much IPReversePathFilter rose in the window.
func rpSNMP(s *probes.Snapshot) int64 {
	if s.Window == nil {
		return 0
	}
	return int64(s.Window.Deltas.SNMP["TcpExtIPReversePathFilter"])
}
