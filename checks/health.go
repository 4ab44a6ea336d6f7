package checks

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// maxRealsNamed caps the failing reals ipvs.real_health lists with their
// evidence and fix; the rest are counted in one line.
const maxRealsNamed = 5

// Kinds of a real's ill health, as the probes found it.
const (
	sickRefuses    = "refuses connections"
	sickNoARP      = "does not answer ARP" // or NDP, or its gateway: the fact says which
	sickNoRoute    = "has no route"
	sickUnreach    = "is unreachable"
	doubtTimeout   = "did not answer in time"
	doubtConnError = "could not be connected to"
)

// sickness says what a probe result shows wrong with a real: a kind that
// fails (refuses, no ARP, no route, unreachable) or one that only warns
// (a slow answer, a local error), with the fact in words; "" when healthy.
func sickness(r health.Result) (kind, fact string, fails bool) {
	switch {
	case !r.Probed():
		return "", "", false
	case r.Route != "":
		return sickNoRoute, fmt.Sprintf("the LB has no route to %s (%s)", r.Real.Addr(), r.Route), true
	case r.NoARP():
		asks := "ARP"
		if r.NextHop.Is6() {
			asks = "neighbour solicitation"
		}
		after := "after a connect that got no answer"
		if r.Proto != "tcp" {
			after = "(the probe sends nothing to a UDP real)"
		}
		fact = fmt.Sprintf("no %s answer: neighbour %s on %s is %s %s", asks, r.NextHop, r.Dev, r.Neighbour, after)
		if r.NextHop.IsValid() && r.NextHop != r.Real.Addr() {
			fact = fmt.Sprintf("its gateway %s does not answer %s: neighbour %s on %s is %s %s", r.NextHop, asks, r.NextHop, r.Dev, r.Neighbour, after)
		}
		return sickNoARP, fact, true
	case r.Connect == health.Refused:
		return sickRefuses, fmt.Sprintf("a TCP connect from %s to %s was refused (an RST: nothing listens on port %d)", r.Source, r.Real, r.Real.Port()), true
	case r.Connect == health.Unreachable:
		return sickUnreach, fmt.Sprintf("a TCP connect from %s to %s: %s", r.Source, r.Real, r.Error), true
	case r.Connect == health.Timeout:
		fact := fmt.Sprintf("a TCP connect from %s to %s got no answer (%s), though neighbour %s is %s", r.Source, r.Real, r.Error, r.NextHop, orNone(r.Neighbour))
		if r.Note != "" {
			fact += "; " + r.Note
		}
		return doubtTimeout, fact, false
	case r.Connect == health.Error:
		return doubtConnError, fmt.Sprintf("a TCP connect from %s to %s failed on the LB: %s", r.Source, r.Real, r.Error), false
	}
	return "", "", false
}

func orNone(s string) string {
	if s == "" {
		return "(no entry)"
	}
	return s
}

// healthFact is one line saying what a healthy probe saw.
func healthFact(r health.Result) string {
	if r.Proto != "tcp" {
		return fmt.Sprintf("%s: route via %s, neighbour %s %s (%s)", r.Real, r.Dev, r.NextHop, orNone(r.Neighbour), r.Note)
	}
	line := fmt.Sprintf("%s answered a TCP connect from %s in %s (neighbour %s %s)", r.Real, r.Source, r.RTT.Round(1000), r.NextHop, orNone(r.Neighbour))
	if r.Note != "" {
		line += "; " + r.Note
	}
	return line
}

// probeResults indexes the window's probes by real.
func probeResults(s *probes.Snapshot) probeIndex {
	m := probeIndex{}
	if s.Window != nil {
		for _, r := range s.Window.Health {
			m[r.Real] = append(m[r.Real], r)
		}
	}
	return m
}

// probeIndex is the window's probes by real: at most health.MaxTargets
// of an LB's 10,000 reals were probed, so most reals are looked up without
// naming their service.
type probeIndex map[netip.AddrPort][]health.Result

// probeOf is the window's probe of one real of one service.
func probeOf(m probeIndex, svc ipvs.Service, r ipvs.Real) (health.Result, bool) {
	ps := m[r.Addr]
	if len(ps) == 0 {
		return health.Result{}, false
	}
	key := svc.Key()
	var x health.Result
	found := false
	for _, p := range ps {
		if p.Service == key {
			x, found = p, true // the last, as a map by service and real kept
		}
	}
	return x, found
}

// realWindow says what the window counted for one real: its IPVS stats
// delta and the states of its IPVS connections at the window's end.
type realWindow struct {
	delta   *probes.RealDelta
	synRecv int
	// conns are the real's connections by state (ConnCounts), said by
	// statesOf only when a line needs them: 10,000 reals are judged, a
	// few shown.
	conns []ipvs.ConnCount
	// counters is set when the connection table was not read: synRecv and
	// statesOf then come from IPVS's own per-real counters,
	// active and inactive.
	counters         string
	active, inactive int
}

// statesOf says the real's connections by state: "3 SYN_RECV, 1 CLOSE",
// or "2 active, 1 inactive" from IPVS's counters; "" for none.
func (w realWindow) statesOf() string {
	if w.counters != "" {
		if w.active+w.inactive == 0 {
			return ""
		}
		return fmt.Sprintf("%d active, %d inactive", w.active, w.inactive)
	}
	parts := make([]string, 0, len(w.conns))
	for _, c := range w.conns {
		parts = append(parts, fmt.Sprintf("%d %s", c.Count, c.State))
	}
	return strings.Join(parts, ", ")
}

// svcID is a service as a value: what its ipvs.Service.Key names.
type svcID struct {
	proto  string
	addr   netip.AddrPort
	fwmark uint32
}

func idOf(svc ipvs.Service) svcID { return svcID{svc.Proto, svc.Addr, svc.FWMark} }

// connKey is one service's connections to one real.
type connKey struct {
	proto     string
	vip, dest netip.AddrPort
}

// windowIndex is the window's evidence by service and real, indexed once
// per check: an LB of 1,000 services × 10 reals is not searched again for
// each real (that was 10,000 × 1,000 service keys formatted).
type windowIndex struct {
	s      *probes.Snapshot
	deltas map[svcID]*probes.ServiceDelta
	conns  map[connKey][]ipvs.ConnCount // ordered by state
	// unread is why the connection table was not read ("" when it was).
	unread string
}

func indexWindow(s *probes.Snapshot) *windowIndex {
	ix := &windowIndex{s: s, deltas: map[svcID]*probes.ServiceDelta{}, conns: map[connKey][]ipvs.ConnCount{}, unread: s.Errors[probes.ProbeIPVSConns]}
	if s.Window != nil && len(s.Window.Deltas.IPVS) > 0 {
		byKey := make(map[string]*probes.ServiceDelta, len(s.Window.Deltas.IPVS))
		for i := range s.Window.Deltas.IPVS {
			byKey[s.Window.Deltas.IPVS[i].Service] = &s.Window.Deltas.IPVS[i]
		}
		// Each service named once here, not once per real in of.
		for _, svc := range s.IPVS.Services {
			if sd := byKey[svc.Key()]; sd != nil {
				ix.deltas[idOf(svc)] = sd
			}
		}
	}
	// The counts come sorted by service and real (ipvs.ConnCounter): each
	// real's states are one run of them, kept as a part of the list, not
	// copied (10,000 reals); a real's later run is added to a copy.
	cc := s.IPVS.ConnCounts
	ix.conns = make(map[connKey][]ipvs.ConnCount, len(cc))
	for i := 0; i < len(cc); {
		k := connKey{cc[i].Proto, cc[i].VIP, cc[i].Dest}
		j := i + 1
		for j < len(cc) && (connKey{cc[j].Proto, cc[j].VIP, cc[j].Dest}) == k {
			j++
		}
		run := cc[i:j:j]
		if prev, ok := ix.conns[k]; ok {
			run = append(prev, run...) // prev is capped: a copy
		}
		ix.conns[k] = run
		i = j
	}
	return ix
}

// of is the window's evidence of one real: the counts of every connection
// the table held (ConnCounts), not only the listed ones; with the table
// unread, IPVS's own counters of the real (ActiveConn, InActConn).
func (ix *windowIndex) of(svc ipvs.Service, r ipvs.Real) realWindow {
	var w realWindow
	if sd := ix.deltas[idOf(svc)]; sd != nil {
		real := r.Addr.String()
		for j := range sd.Reals {
			if sd.Reals[j].Real == real {
				w.delta = &sd.Reals[j]
			}
		}
	}
	if ix.unread != "" {
		w.counters, w.active, w.inactive = ix.unread, r.ActiveConns, r.InactiveConns
		if r.ActiveConns == 0 {
			// TCP: every connection not ESTABLISHED is inactive (SYN_RECV
			// among them); none established is what a stuck handshake
			// leaves.
			w.synRecv = r.InactiveConns
		}
		return w
	}
	w.conns = ix.conns[connKey{svc.Proto, svc.Addr, r.Addr}]
	for _, c := range w.conns {
		if c.State == "SYN_RECV" {
			w.synRecv = c.Count
		}
	}
	return w
}

// facts are the window's lines about one real.
func (w realWindow) facts(s *probes.Snapshot, svc ipvs.Service, r ipvs.Real) []Evidence {
	var ev []Evidence
	if w.delta != nil {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("in the window IPVS sent %s %d new connection(s), %d packet(s) in, %d back out", r.Addr, w.delta.Conns, w.delta.PacketsIn, w.delta.PacketsOut),
			Source: "IPVS stats of " + svc.Key() + ", " + s.Target.String()})
	}
	if states := w.statesOf(); states != "" {
		src := "ip_vs_conn, " + s.Target.String()
		if w.counters != "" {
			src = "IPVS counters of the real (ActiveConn, InActConn; the connection table was not read: " + w.counters + "), " + s.Target.String()
		}
		ev = append(ev, Evidence{Fact: fmt.Sprintf("IPVS connections of %s to %s: %s", svc.Key(), r.Addr, states), Source: src})
	}
	return ev
}

// checkRealHealth: a real that refuses connections (IPVS relays its RSTs to
// clients), does not answer ARP (its address is unused or wrong) or cannot
// be routed to gets a share of the clients all the same, until it is taken
// out. Judged from the window's active probes; weight-0 reals take no new
// connections and are not judged.
func checkRealHealth(s *probes.Snapshot, sel probes.Selector) Finding {
	svcs, why := addressed(s, sel)
	if why != "" {
		return skip(why)
	}
	if s.Window == nil {
		return skip("the real servers were not probed: a static snapshot (--watch 0) has no window to probe them in")
	}
	if why, ok := s.Window.Skipped[probes.LayerHealth]; ok {
		return skip(why)
	}
	probesBy := probeResults(s)
	ix := indexWindow(s)
	src := "health probe from " + s.Target.String()
	var ev, warnEv []Evidence
	var fix []string
	var failTitles, sickSvcs, doubtSvcs []string
	var healthy, notProbed, weightZero, failing, doubtful int
	for _, svc := range svcs {
		for _, r := range svc.Reals {
			p, ok := probeOf(probesBy, svc, r)
			switch {
			case !ok:
				notProbed++
				continue
			case !p.Probed():
				notProbed++
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s of %s not probed: %s", r.Addr, svc.Key(), p.Skipped), Source: src})
				continue
			}
			kind, fact, fails := sickness(p)
			switch {
			case r.Weight == 0:
				weightZero++
				line := fmt.Sprintf("%s of %s has weight 0: it takes no new connections, so it is not judged", r.Addr, svc.Key())
				if kind != "" {
					line += " (" + fact + ")"
				}
				ev = append(ev, Evidence{Fact: line, Source: src})
			case kind == "":
				healthy++
				if healthy <= maxRealsNamed {
					ev = append(ev, Evidence{Fact: healthFact(p), Source: src})
				}
			case fails:
				failing++
				sickSvcs = append(sickSvcs, svc.Key())
				if failing > maxRealsNamed {
					continue
				}
				failTitles = append(failTitles, fmt.Sprintf("real %s of %s %s", r.Addr, svc.Key(), kind))
				ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s of %s %s: %s", r.Addr, svc.Key(), kind, fact), Source: src})
				ev = append(ev, ix.of(svc, r).facts(s, svc, r)...)
				fix = append(fix, realFix(s, svc, r, kind)...)
			default:
				doubtful++
				doubtSvcs = append(doubtSvcs, svc.Key())
				if doubtful <= maxRealsNamed {
					warnEv = append(warnEv, Evidence{Fact: fmt.Sprintf("real %s of %s %s: %s", r.Addr, svc.Key(), kind, fact), Source: src})
					warnEv = append(warnEv, ix.of(svc, r).facts(s, svc, r)...)
				}
			}
		}
	}
	if failing > maxRealsNamed {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("… and %s more that fail the same way or another", tally.Of(failing-maxRealsNamed, "real")), Source: src})
	}
	if healthy > maxRealsNamed {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("… and %s more that answered", tally.Of(healthy-maxRealsNamed, "real")), Source: src})
	}
	if n := s.Window.HealthLeftOut; n > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s not probed: a window probes at most %d (select one service with --vip)", tally.Of(n, "more real"), health.MaxTargets), Source: src})
	}
	ev = append(ev, warnEv...)
	switch {
	case failing > 0:
		title := strings.Join(failTitles, "; ")
		if failing > len(failTitles) {
			title += fmt.Sprintf(" (and %d more)", failing-len(failTitles))
		}
		sick := sickReals(s, sel)
		return Finding{Status: Fail, Title: title,
			Reason:   "IPVS keeps giving it a share of new connections (its weight is above 0): those clients get an RST, or no answer at all, until the real is fixed or taken out",
			Evidence: ev, Fix: fix, about: sickSvcs, explains: func(c drops.Counted) bool { return explainedByRealHealth(s, sel, sick, c) }}
	case doubtful > 0:
		return Finding{Status: Warn, Title: fmt.Sprintf("%s did not answer the probe cleanly", tally.Of(doubtful, "real server")),
			Reason: "a connect with a short timeout got no answer, or failed on the LB itself: an overloaded real, a firewall on the way, or a rule on the LB; a health checker with a longer timeout may still see it up", Evidence: ev, about: doubtSvcs}
	case healthy == 0:
		return Finding{Status: Skip, Reason: "no real server with weight > 0 was probed", Evidence: ev}
	}
	return Finding{Status: Pass, Title: fmt.Sprintf("every real server probed answers (%s)", tally.Of(healthy, "real")), Evidence: ev}
}

// realFix takes a sick real out of service, or restores the route to it
// where the LB's own addresses say which one is missing, and says what to
// look at on the real.
func realFix(s *probes.Snapshot, svc ipvs.Service, r ipvs.Real, kind string) []string {
	x := s.Target.ExecPrefix()
	flag := proto.IpvsadmFlag(svc.Proto)
	var fix []string
	if kind == sickNoRoute {
		if p, dev, src, ok := connectedPrefix(s, r.Addr.Addr()); ok {
			fix = append(fix, fmt.Sprintf("%sip route add %s dev %s src %s   # the route to %s's segment, from %s's address", x, p, dev, src, r.Addr.Addr(), dev))
		}
	}
	fix = append(fix,
		fmt.Sprintf("%sipvsadm -d %s %s -r %s   # take it out of %s", x, flag, svc.Addr, r.Addr, svc.Key()),
		fmt.Sprintf("# or keep it, with no new connections: %sipvsadm -e %s %s -r %s %s -w 0", x, flag, svc.Addr, r.Addr, methodFlag(r.Method)))
	switch kind {
	case sickRefuses:
		fix = append(fix, fmt.Sprintf("# then, on the real server: ss -ltn 'sport = :%d'   # start the service, or listen on %s", r.Addr.Port(), r.Addr))
	case sickNoARP:
		fix = append(fix, fmt.Sprintf("# then: is %s the real server's address? on it: ip -br addr; on the LB: %sip neigh show %s", r.Addr.Addr(), x, r.Addr.Addr()))
	case sickNoRoute, sickUnreach:
		fix = append(fix, fmt.Sprintf("# then: %sip route get %s", x, r.Addr.Addr()))
	}
	return fix
}

func methodFlag(m string) string {
	switch m {
	case ipvs.Route:
		return "-g"
	case ipvs.Tunnel:
		return "-i"
	}
	return "-m"
}

// connectedPrefix finds an address of the LB whose prefix holds a: the
// segment a route to a is missing for.
func connectedPrefix(s *probes.Snapshot, a netip.Addr) (prefix netip.Prefix, dev string, src netip.Addr, ok bool) {
	best := -1
	for _, l := range s.Net.Links {
		for _, p := range l.Addrs {
			if p.Bits() < p.Addr().BitLen() && p.Contains(a) && p.Bits() > best {
				best, prefix, dev, src, ok = p.Bits(), p.Masked(), l.Name, p.Addr(), true
			}
		}
	}
	return prefix, dev, src, ok
}

// sickReals are the reals of the selected services the window's probes
// found failing, by address, with the kind: what other checks defer to.
func sickReals(s *probes.Snapshot, sel probes.Selector) map[netip.Addr]string {
	m := map[netip.Addr]string{}
	probesBy := probeResults(s)
	for _, svc := range selected(s, sel) {
		for _, r := range svc.Reals {
			if p, ok := probeOf(probesBy, svc, r); ok && r.Weight > 0 {
				if kind, _, fails := sickness(p); fails {
					m[r.Addr.Addr()] = kind
				}
			}
		}
	}
	return m
}

// explainedByRealHealth says whether a drop is of a packet to a real that
// ipvs.real_health fails, for a reason that failure explains: a neighbour
// that never answered, or IPVS finding no route to the real. A probe's own
// SYN to such a real is one of them.
func explainedByRealHealth(s *probes.Snapshot, sel probes.Selector, sick map[netip.Addr]string, c drops.Counted) bool {
	if len(sick) == 0 {
		return false
	}
	reason, fn, dst := c.ReasonName, c.Function(), c.Dst.Addr()
	var real netip.Addr
	if c.Flow != nil {
		real = c.Flow.Real.Addr()
	}
	fits := func(kind string) bool {
		switch kind {
		case sickNoARP:
			return strings.HasPrefix(reason, "NEIGH_")
		case sickNoRoute, sickUnreach:
			return reason == "IP_OUTNOROUTES" || (strings.HasPrefix(fn, "ip_vs_") && strings.Contains(fn, "xmit"))
		}
		return false
	}
	for _, a := range []netip.Addr{real, dst} {
		if kind, ok := sick[a]; ok && fits(kind) {
			return true
		}
	}
	// Not attributed, still addressed to the VIP (IPVS drops before it
	// rewrites): explained when a real of that service has no route.
	for _, svc := range selected(s, sel) {
		if svc.Addr.Addr() != dst {
			continue
		}
		if slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool {
			k := sick[r.Addr.Addr()]
			return (k == sickNoRoute || k == sickUnreach) && fits(k)
		}) {
			return true
		}
	}
	return false
}
