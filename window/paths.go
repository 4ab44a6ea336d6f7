package window

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// MaxPaths caps the paths a window keeps (1,000 services × 10 reals would
// be 10,000): the paths that stop come first, the number left out is in
// Window.PathsOmitted.
const MaxPaths = probes.MaxListed

// Paths builds the path of each selected service's flows to each of its
// reals from the window's evidence: IPVS stats deltas for the request, the
// scheduling and the reply, the SNAT rule's counter, the forwarding switch
// for the route back, and the window's drops for where it stops. Pure.
func Paths(after *probes.Snapshot, w *probes.Window, sel probes.Selector) []flowpath.Path {
	b := pathBuilder{s: after, w: w, svc: map[string]probes.ServiceDelta{}, rule: map[string]uint64{},
		byFlow: map[[2]netip.AddrPort][]drops.Counted{}, byDst: map[netip.AddrPort][]drops.Counted{}, bySrc: map[netip.AddrPort][]drops.Counted{}}
	if d := after.Drops; d != nil {
		// Indexed once: 10,000 paths must not each read every drop.
		for _, c := range d.Drops {
			switch {
			case c.Flow != nil:
				k := [2]netip.AddrPort{c.Flow.VIP, c.Flow.Real}
				b.byFlow[k] = append(b.byFlow[k], c)
			case !c.NotItemised && c.Family != 0:
				b.byDst[c.Dst] = append(b.byDst[c.Dst], c)
				b.bySrc[c.Src] = append(b.bySrc[c.Src], c)
			}
		}
	}
	_, noCounters := w.Skipped["counters"]
	if !noCounters {
		for _, sd := range w.Deltas.IPVS {
			b.svc[sd.Service] = sd
		}
		for _, rd := range w.Deltas.Rules {
			b.rule[rd.Rule.Key()] = rd.Packets
		}
	}
	b.counted = !noCounters
	// A client of each service's flows to each real, the first the IPVS
	// connections, else conntrack, list: indexed once, as the drops are.
	b.clients = map[clientKey]netip.Addr{}
	for _, c := range after.IPVS.Conns {
		if k := (clientKey{c.Proto, c.VIP, c.Dest}); !b.clients[k].IsValid() {
			b.clients[k] = c.Client.Addr()
		}
	}
	b.ctClients = map[[2]netip.AddrPort]netip.Addr{}
	_, ctUnread := after.Errors[probes.ProbeConntrack]
	if !ctUnread && after.Conntrack.Partial == "" {
		// Whether a flow saw a reply tells only over every flow listed.
		b.ctReplies = map[[2]netip.AddrPort]*ctReplies{}
	}
	for _, f := range after.Conntrack.Flows {
		k := [2]netip.AddrPort{f.Orig.Dst, f.Reply.Src}
		if !b.ctClients[k].IsValid() {
			b.ctClients[k] = f.Orig.Src.Addr()
		}
		if b.ctReplies != nil {
			n := b.ctReplies[k]
			if n == nil {
				n = &ctReplies{}
				b.ctReplies[k] = n
			}
			n.flows++
			if f.HasStatus("SEEN_REPLY") {
				n.replied++
			}
		}
	}
	b.health = map[clientKey]health.Result{}
	for _, h := range w.Health {
		if k := (clientKey{h.Proto, netip.AddrPort{}, h.Real}); h.Probed() {
			b.health[k] = h
		}
	}
	b.neighbours = map[netip.AddrPort]probes.RealNeighbour{}
	for _, n := range w.Neighbours {
		b.neighbours[n.Real] = n
	}
	b.snat = map[snatKey]flowpath.Leg{}
	b.synRecv = map[clientKey]bool{}
	for _, c := range after.IPVS.ConnCounts {
		k := clientKey{c.Proto, c.VIP, c.Dest}
		only, seen := b.synRecv[k]
		b.synRecv[k] = (only || !seen) && c.State == "SYN_RECV"
	}
	if w.Capture != nil {
		b.captured = map[[2]netip.AddrPort]capture.PathLegs{}
		for _, pl := range w.Capture.Paths {
			b.captured[[2]netip.AddrPort{pl.VIP, pl.Real}] = pl
		}
	}
	// The paths kept are chosen by their stops before any is built: past
	// MaxPaths, the paths that stop first, each group in service order
	// (1,000 services × 10 reals: 500 paths built, not 10,000).
	type pick struct {
		svc   int
		real  int
		stops []flowpath.Stop
	}
	var picks []pick
	svcs := after.IPVS.Services
	for i, svc := range svcs {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		for j, r := range svc.Reals {
			picks = append(picks, pick{i, j, b.stops(svc, r)})
		}
	}
	if len(picks) > MaxPaths {
		stops := func(p pick) int { return min(len(p.stops), 1) }
		slices.SortStableFunc(picks, func(a, b pick) int { return cmp.Compare(stops(b), stops(a)) })
		w.PathsOmitted = len(picks) - MaxPaths
		picks = picks[:MaxPaths:MaxPaths]
	}
	out := make([]flowpath.Path, 0, len(picks))
	key := ""
	for i, p := range picks {
		svc := svcs[p.svc]
		if i == 0 || p.svc != picks[i-1].svc {
			key = svc.Key()
		}
		out = append(out, b.path(svc, key, svc.Reals[p.real], p.stops))
	}
	return out
}

type pathBuilder struct {
	s       *probes.Snapshot
	w       *probes.Window
	svc     map[string]probes.ServiceDelta // by service key
	rule    map[string]uint64              // packets by rule key
	counted bool                           // the counters were read twice
	// The window's drops: attributed ones by VIP and real, the others by
	// destination and by source.
	byFlow       map[[2]netip.AddrPort][]drops.Counted
	byDst, bySrc map[netip.AddrPort][]drops.Counted
	// clients and ctClients are a client of each service's flows to each
	// real, from the IPVS connections listed and from conntrack's flows
	// (by original destination and reply source).
	clients   map[clientKey]netip.Addr
	ctClients map[[2]netip.AddrPort]netip.Addr
	// synRecv is true for a service's real whose IPVS connections, at the
	// window's end, are all still waiting for the handshake to end.
	synRecv map[clientKey]bool
	snat    map[snatKey]flowpath.Leg // built once per service and route
	// captured is what a capture counted on the legs, by VIP and real
	// (nil: no capture ran).
	captured map[[2]netip.AddrPort]capture.PathLegs
	// ctReplies counts conntrack's flows by original destination and
	// reply source, and those that saw a reply (nil: conntrack was not
	// read whole, so no count tells that none did).
	ctReplies map[[2]netip.AddrPort]*ctReplies
	// health is what the probe of each real found, by protocol and real
	// (clientKey without a VIP); neighbours the reals' next hops' entries
	// at the window's end.
	health     map[clientKey]health.Result
	neighbours map[netip.AddrPort]probes.RealNeighbour
}

// ctReplies is how many conntrack flows of a service to a real there are,
// and how many of them saw a reply (SEEN_REPLY).
type ctReplies struct{ flows, replied int }

// clientKey is one service's flows to one real.
type clientKey struct {
	proto     string
	vip, dest netip.AddrPort
}

// path builds one service's path (key: svc.Key()) to one real, which
// stops where b.stops says.
func (b pathBuilder) path(svc ipvs.Service, key string, r ipvs.Real, stops []flowpath.Stop) flowpath.Path {
	real := r.Addr.String()
	p := flowpath.Path{Service: key, Real: real, Window: b.w.Elapsed}
	sd, known := b.svc[key]
	var rd probes.RealDelta
	for _, x := range sd.Reals {
		if x.Real == real {
			rd = x
		}
	}
	ipvsSrc := "IPVS stats of " + key
	leg := func(kind flowpath.LegKind, name string, n uint64, src string) flowpath.Leg {
		l := flowpath.Leg{Kind: kind, Name: name, Status: flowpath.Unknown, Source: src}
		if known {
			l.Counted, l.Packets, l.Status = true, n, flowpath.Quiet
			if n > 0 {
				l.Status = flowpath.OK
			}
		}
		return l
	}
	req := leg(flowpath.Request, "client→VIP", uint64(sd.PacketsIn), ipvsSrc)
	sched := leg(flowpath.Schedule, "IPVS→real "+shortReal(svc.Addr, r.Addr), uint64(rd.PacketsIn), "IPVS stats of real "+real)
	pl, captured := b.captured[[2]netip.AddrPort{svc.Addr, r.Addr}]
	captured = captured || b.captured != nil // a capture that saw none of these flows counted 0
	if captured {
		fromCapture(&req, pl.Legs[0])
		fromCapture(&sched, pl.Legs[1])
	}
	p.Legs = append(p.Legs, req, sched)

	if r.Method != ipvs.Masq {
		// Direct routing or tunnelling: the reply goes to the client
		// straight from the real; the LB sees none of it.
		for _, k := range []flowpath.LegKind{flowpath.SNAT, flowpath.Reply, flowpath.DeSNAT, flowpath.Route} {
			p.Legs = append(p.Legs, flowpath.Leg{Kind: k, Name: string(k), Status: flowpath.NotUsed, Note: r.Method + ": the real answers the client directly"})
		}
		return finish(p, stops)
	}

	snat := b.snatLeg(svc, r)
	p.Legs = append(p.Legs, snat)

	// Replies that reached the LB: those IPVS counted on their way back,
	// and those that died on the LB before IPVS could count them.
	var replyDrops uint64
	for _, st := range stops {
		if st.Leg == flowpath.Reply || st.Leg == flowpath.DeSNAT || st.Leg == flowpath.Route {
			replyDrops += st.Count
		}
	}
	reply := leg(flowpath.Reply, "reply real→LB", uint64(rd.PacketsOut)+replyDrops, "IPVS stats of real "+real+" (packets out)")
	if replyDrops > 0 {
		reply.Source += " and replies dropped on the LB (kfree_skb tracer)"
		if !known {
			reply.Counted, reply.Packets, reply.Status = true, replyDrops, flowpath.OK
		}
	}
	// IPVS counts as a real's packets out every packet of its connections
	// that comes back, the ICMP errors about them too: those the LB sends
	// itself when the real never answers ARP (host unreachable), or relays
	// from a router. Such packets are no reply: a layer that tells the real
	// never answered, or conntrack that none of its flows saw a reply,
	// says so instead.
	ct := b.ctReplies[[2]netip.AddrPort{svc.Addr, r.Addr}]
	switch why, src := b.silent(svc, r, stops); {
	case why != "" && (ct == nil || ct.replied == 0) && replyDrops == 0:
		reply = flowpath.Leg{Kind: flowpath.Reply, Name: "reply real→LB", Status: flowpath.Failed, Source: src, Note: "no reply: " + why}
		if rd.PacketsOut > 0 {
			reply.Note += fmt.Sprintf("; IPVS's %d packets out were ICMP errors about its flows", rd.PacketsOut)
		}
		// The requests IPVS sent it never left: that is where the path stops.
		sched := &p.Legs[len(p.Legs)-2]
		if sched.Status != flowpath.NotUsed {
			sched.Status, sched.Note = flowpath.Stopped, why
		}
	case why != "" && ct != nil && ct.replied > 0 && replyDrops == 0:
		reply.Status, reply.Counted = flowpath.Unknown, false
		reply.Note = fmt.Sprintf("%s now, but conntrack saw replies on %d of its %d flows: IPVS's %d packets out are replies and ICMP errors", why, ct.replied, ct.flows, rd.PacketsOut)
	case ct != nil && ct.flows > 0 && ct.replied == 0 && rd.PacketsOut > 0 && replyDrops == 0:
		reply.Status, reply.Counted = flowpath.Unknown, false
		reply.Note = fmt.Sprintf("conntrack saw no reply on its %d flows to the real: IPVS's %d packets out may be ICMP errors", ct.flows, rd.PacketsOut)
	case reply.Status == flowpath.OK && b.health[clientKey{svc.Proto, netip.AddrPort{}, r.Addr}].Connect == health.Refused:
		reply.Note = "RSTs: the real refuses connections"
	}
	if reply.Status == flowpath.OK && svc.Proto == "tcp" && b.synRecv[clientKey{svc.Proto, svc.Addr, r.Addr}] {
		// IPVS never saw the handshake end: what came back were SYN-ACKs.
		reply.Name = "SYN-ACK real→LB"
	}
	// IPVS counts replies in the forward hook: replies it counted were routed.
	routed := reply.Status == flowpath.OK && rd.PacketsOut > 0
	if captured && (reply.Status != flowpath.Failed || pl.Legs[2].Packets > 0) {
		fromCapture(&reply, pl.Legs[2]) // the wire is the truth of the leg
		if slices.Equal(reply.Segments, []string{"SYN-ACK"}) {
			reply.Name = "SYN-ACK real→LB" // the wire says so
		}
	}
	p.Legs = append(p.Legs, reply)

	desnat := flowpath.Leg{Kind: flowpath.DeSNAT, Name: "de-SNAT", Note: "PREROUTING", Source: "conntrack (reverses the SNAT; no counter of its own)"}
	switch {
	case snat.Status == flowpath.NotUsed || snat.Status == flowpath.Stopped:
		desnat.Status, desnat.Note = flowpath.NotUsed, ""
	case reply.Status == flowpath.OK:
		desnat.Status = flowpath.Implied
	default:
		desnat.Status = flowpath.Unknown
	}
	p.Legs = append(p.Legs, desnat)
	p.Legs = append(p.Legs, b.routeLeg(svc, r, routed))
	if captured {
		toClient := flowpath.Leg{Kind: flowpath.ToClient, Name: "→client"}
		fromCapture(&toClient, pl.Legs[3])
		p.Legs = append(p.Legs, toClient)
	}
	return finish(p, stops)
}

// fromCapture makes a leg's count the packets a capture saw on it on the
// wire, with the TCP segments seen: the truth of the leg, where the IPVS
// stats count per service and lag by their 2 s estimator.
func fromCapture(l *flowpath.Leg, c capture.LegCount) {
	l.Counted, l.Packets, l.Source, l.Segments = true, c.Packets, flowpath.SourceCapture, c.Segments
	switch {
	case c.Packets > 0:
		l.Status = flowpath.OK
	case l.Status != flowpath.Stopped && l.Status != flowpath.NotUsed:
		l.Status = flowpath.Quiet
	}
}

// finish puts the stops on the path and marks the legs they stop on.
func finish(p flowpath.Path, stops []flowpath.Stop) flowpath.Path {
	p.Stops = stops
	for _, st := range stops {
		for i := range p.Legs {
			if l := &p.Legs[i]; l.Kind == st.Leg && l.Status != flowpath.OK && l.Status != flowpath.NotUsed {
				l.Status = flowpath.Stopped
			}
		}
	}
	return p
}

// snatKey is what a service's SNAT leg depends on: its VIP, and the LB's
// route to the real (whether the real answers around the LB).
type snatKey struct {
	vip netip.AddrPort
	dev string
	gw  netip.Addr
}

// snatLeg is the source NAT a one-arm service needs on the way to the real:
// the same for every real of a service the LB routes to alike, so built
// once for them (10,000 reals: one return-path decision and one scan of
// the rules per service, not per real).
func (b pathBuilder) snatLeg(svc ipvs.Service, r ipvs.Real) flowpath.Leg {
	rt, _ := b.s.Net.RouteTo(r.Addr.Addr())
	k := snatKey{svc.Addr, rt.Dev, rt.Gw}
	if l, ok := b.snat[k]; ok {
		return l
	}
	l := b.snatLegOf(svc, r)
	b.snat[k] = l
	return l
}

func (b pathBuilder) snatLegOf(svc ipvs.Service, r ipvs.Real) flowpath.Leg {
	s := b.s
	l := flowpath.Leg{Kind: flowpath.SNAT, Name: "SNAT", Status: flowpath.Unknown}
	rp := checks.DecideReturnPath(s, svc.Addr.Addr(), []netip.Addr{r.Addr.Addr()})
	if !rp.NeedsSNAT {
		l.Status, l.Note = flowpath.NotUsed, rp.Reason
		return l
	}
	var covering []rules.Rule
	for _, x := range s.Rules.Rules {
		if x.CoversVIP(svc.Addr) {
			covering = append(covering, x)
		}
	}
	if len(covering) == 0 {
		if len(s.Rules.Unread()) > 0 || len(s.Rules.Backends) == 0 {
			l.Note = "no SNAT rule among the rules read"
			return l
		}
		l.Status, l.Note = flowpath.Stopped, "no SNAT rule covers the VIP: replies bypass the LB"
		return l
	}
	x := covering[0]
	l.Source = fmt.Sprintf("%s %s %s: %s", x.Backend, x.Table, x.Chain, x.Spec)
	hasCounter := false
	for _, x := range covering {
		if x.HasCounter {
			hasCounter = true
			l.Flows += b.rule[x.Key()]
		}
	}
	switch {
	case !hasCounter:
		l.Note = "the rule has no counter"
	case !b.counted:
		l.Note = "counters read once"
	case l.Flows > 0:
		l.Status = flowpath.OK
	default:
		l.Status, l.Note = flowpath.Quiet, "rule not hit"
		if v, ok := s.Sysctls["net.ipv4.vs.conntrack"]; ok && v.Present && v.Value == "0" {
			l.Note += ", net.ipv4.vs.conntrack=0"
		}
	}
	return l
}

// routeLeg is the reply's route to the client: forwarded, so the family's
// forwarding switch must be on; crossed when IPVS counted replies out
// (routed).
func (b pathBuilder) routeLeg(svc ipvs.Service, r ipvs.Real, routed bool) flowpath.Leg {
	s := b.s
	l := flowpath.Leg{Kind: flowpath.Route, Name: "route", Status: flowpath.Unknown}
	client := b.client(svc, r)
	who := "the client"
	if client.IsValid() {
		who = client.String()
	}
	key := "net.ipv4.ip_forward"
	if svc.Addr.Addr().Is6() && !svc.Addr.Addr().Is4In6() {
		key = "net.ipv6.conf.all.forwarding"
	}
	l.Source = key + ", " + s.Target.String()
	v, ok := s.Sysctls[key]
	switch {
	case client.IsValid() && s.Net.HasAddr(client):
		l.Note, l.Status = who+" is local", flowpath.Implied
	case !ok || !v.Present:
		l.Note = key + " not read"
	case v.Value == "0":
		l.Status, l.Note = flowpath.Stopped, who+" not local, forwarding off"
	case client.IsValid() && netRead(s) && unroutable(s, client):
		// Forwarded, the reply dies in the route lookup (IP_INNOROUTES).
		// Replies IPVS counted out were to other clients (a connection
		// from an address the LB routes back to, the window's others).
		l.Status, l.Note = flowpath.Stopped, "no route to "+who
		if routed {
			l.Note += " (other replies were routed)"
		}
	default:
		l.Note = "forwarded to " + who
		if routed {
			l.Status = flowpath.OK
		}
	}
	return l
}

// netRead reports whether the routes were read (a snapshot without them
// tells nothing of a route missing).
func netRead(s *probes.Snapshot) bool {
	_, unread := s.Errors[probes.ProbeNet]
	return !unread && len(s.Net.Routes) > 0
}

func unroutable(s *probes.Snapshot, a netip.Addr) bool {
	_, no := s.Net.Unroutable(a)
	return no
}

// client is a client address of the service's flows to the real: from the
// window's drops, the IPVS connections or conntrack, the first found.
func (b pathBuilder) client(svc ipvs.Service, r ipvs.Real) netip.Addr {
	for _, c := range b.byFlow[[2]netip.AddrPort{svc.Addr, r.Addr}] {
		return c.Flow.Client.Addr()
	}
	if c := b.clients[clientKey{svc.Proto, svc.Addr, r.Addr}]; c.IsValid() {
		return c
	}
	if c := b.ctClients[[2]netip.AddrPort{svc.Addr, r.Addr}]; c.IsValid() {
		return c
	}
	return netip.Addr{}
}

// stops are the window's drops on this service's path to this real, by
// leg, reason and function, the most first; joined drop points add the
// hook and cause. Drops attributed to a flow count on its path; drops no
// flow was found for count on every path their addresses fit.
func (b pathBuilder) stops(svc ipvs.Service, r ipvs.Real) []flowpath.Stop {
	var out []flowpath.Stop
	add := func(leg flowpath.LegKind, c drops.Counted) {
		for i := range out {
			if st := &out[i]; st.Leg == leg && st.Reason == c.ReasonName && st.Function == c.Function() && st.Hook == c.Hook {
				st.Count += c.Count
				return
			}
		}
		out = append(out, flowpath.Stop{Leg: leg, Reason: c.ReasonName, Function: c.Function(), Hook: c.Hook, Count: c.Count})
	}
	for _, c := range b.byFlow[[2]netip.AddrPort{svc.Addr, r.Addr}] {
		if l := c.Flow.Leg(); l != "" {
			add(l, c)
		}
	}
	p := proto.Number(svc.Proto)
	for _, c := range b.byDst[svc.Addr] {
		if c.Proto == p {
			add(flowpath.Request, c) // before IPVS: on the way to every real
		}
	}
	if r.Addr != svc.Addr {
		for _, c := range b.byDst[r.Addr] {
			if c.Proto == p {
				add(flowpath.Schedule, c)
			}
		}
	}
	for _, c := range b.bySrc[r.Addr] {
		if c.Proto == p && c.Dst != svc.Addr && c.Dst != r.Addr {
			add(flowpath.Reply, c)
		}
	}
	for i := range out {
		st := &out[i]
		for _, dp := range b.w.DropPoints {
			if dp.Reason == st.Reason && dp.Function == st.Function && (st.Hook == "" || dp.Hook == st.Hook) && (dp.Leg == "" || dp.Leg == side(st.Leg)) {
				st.Hook, st.Cause = dp.Hook, dp.Cause
				break
			}
		}
	}
	slices.SortStableFunc(out, func(a, b flowpath.Stop) int { return cmp.Compare(b.Count, a.Count) })
	return out
}

// side is the direction of a leg as a drop point names it (Join): Request
// for the legs to the real, Reply for those back to the client.
func side(l flowpath.LegKind) flowpath.LegKind {
	switch l {
	case flowpath.Reply, flowpath.DeSNAT, flowpath.Route, flowpath.Unmasq, flowpath.ToClient:
		return flowpath.Reply
	}
	return flowpath.Request
}

// silent says why the real sent nothing back, when a layer tells — its
// next hop never answered ARP/NDP, or the LB has no route to it — and
// where that was read; "" when none does. The health probe's connect
// tells first, then the next hop's neighbour entry at the window's end,
// then the window's NEIGH_FAILED drops of the real's flows.
func (b pathBuilder) silent(svc ipvs.Service, r ipvs.Real, stops []flowpath.Stop) (why, source string) {
	asks := func(a netip.Addr) string {
		if a.Is6() && !a.Is4In6() {
			return "NDP"
		}
		return "ARP"
	}
	noAnswer := func(hop netip.Addr) string {
		if hop.IsValid() && hop != r.Addr.Addr() {
			return fmt.Sprintf("no %s answer from %s, the gateway to %s", asks(hop), hop, r.Addr.Addr())
		}
		return fmt.Sprintf("no %s answer from %s", asks(r.Addr.Addr()), r.Addr.Addr())
	}
	where := b.s.Target.String()
	if h, ok := b.health[clientKey{svc.Proto, netip.AddrPort{}, r.Addr}]; ok {
		switch {
		case h.Route != "":
			return fmt.Sprintf("the LB has no route to %s", r.Addr.Addr()), "health probe (" + h.Route + "), " + where
		case h.NoARP():
			return noAnswer(h.NextHop), fmt.Sprintf("health probe: neighbour %s %s, %s", h.NextHop, h.Neighbour, where)
		}
	}
	if n, ok := b.neighbours[r.Addr]; ok {
		switch n.State {
		case "no route":
			return fmt.Sprintf("the LB has no route to %s", r.Addr.Addr()), "routes, " + where
		case "FAILED", "INCOMPLETE":
			return noAnswer(n.NextHop), fmt.Sprintf("neighbour %s on %s %s, %s", n.NextHop, n.Dev, n.State, where)
		}
	}
	for _, st := range stops {
		if st.Reason == "NEIGH_FAILED" && side(st.Leg) == flowpath.Request {
			return noAnswer(netip.Addr{}), "kfree_skb tracer: NEIGH_FAILED drops of its flows"
		}
	}
	return "", ""
}

// shortReal names a real as the path line shows it: the last octet when it
// shares the VIP's /24 (".40"), the port only when it is not the VIP's.
func shortReal(vip, real netip.AddrPort) string {
	a := real.Addr().String()
	if v, r := vip.Addr(), real.Addr(); v.Is4() && r.Is4() {
		vb, rb := v.As4(), r.As4()
		if vb[0] == rb[0] && vb[1] == rb[1] && vb[2] == rb[2] {
			a = fmt.Sprintf(".%d", rb[3])
		}
	}
	if real.Port() != vip.Port() {
		if strings.Contains(a, ":") {
			a = "[" + a + "]"
		}
		a += fmt.Sprintf(":%d", real.Port())
	}
	return a
}
