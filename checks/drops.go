package checks

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// maxDropReasons caps the reasons drops.vip_flows lists (their fixes are
// all given), and maxDropPaths the service paths shown under each; the rest
// is counted in one more line.
const (
	maxDropReasons = 6
	maxDropPaths   = 2
)

// checkDrops judges what the drop tracer counted during the check's window
// (check --drops D): every drop of a selected service's flow is a failure,
// named by reason and place, with the fix each reason points to.
func checkDrops(s *probes.Snapshot, sel probes.Selector) Finding {
	if e, ok := s.Errors[probes.ProbeDrops]; ok {
		return skip("the drop tracer could not run: " + e)
	}
	if s.Drops == nil {
		if w := s.Window; w != nil {
			// A window ran and traced nothing: say why, not --watch 0.
			for _, k := range []string{"window", probes.LayerDrops} {
				if why, ok := w.Skipped[k]; ok {
					return skip("drops were not traced: " + why)
				}
			}
			return skip("drops were not traced in the window")
		}
		return skip("drops were not traced: the window was off (--watch 0); watch while traffic flows, e.g. --watch 5s")
	}
	d := s.Drops
	var total uint64
	for _, c := range d.Drops {
		total += c.Count
	}
	window := fmt.Sprintf("%d drops of the selected flows in %s in %s (%s; %d lost; %d attributed to a flow, %d not)",
		total, d.Window.Round(1e6), s.Target, d.Attach, d.Counters.Lost()+d.Counters.Missed, d.Attribution.Attributed, d.Attribution.NotAttributed)
	if n := d.Counters.NotItemised; n > 0 {
		window += fmt.Sprintf("; %d drops of flows not itemised: the flow map was full, they are counted by place", n)
	}
	if d.CutShort {
		window += "; the window was cut short"
	}
	ev := []Evidence{{Fact: window, Source: "kfree_skb tracer"}}
	vipOnly := ""
	if w := s.Window; w != nil {
		vipOnly = w.DropsVIPOnly
	}
	if vipOnly != "" {
		ev = append(ev, Evidence{Fact: vipOnly, Source: "conntrack, rules, " + s.Target.String()})
	}
	for _, k := range slices.Sorted(maps.Keys(d.Attribution.Errors)) {
		// A table attribution left unread: its drops stay unattributed.
		ev = append(ev, Evidence{Fact: fmt.Sprintf("drops were not attributed through the %s table: %s", k, d.Attribution.Errors[k]), Source: "kfree_skb tracer"})
	}
	if w := s.Window; w != nil && w.ProbeDrops > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%d drops of the window's own health probes (late packets of the connections they closed) are not the services' and are left out", w.ProbeDrops), Source: "kfree_skb tracer, health probe"})
	}
	ev = append(ev, ownRedirects(s)...)
	ev = append(ev, localSocketFrees(s)...)
	if addrs, ports := probes.DropFilter(sel, s.IPVS.Services); probes.WideDropFilter(addrs, ports) {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("the selected services have %d addresses and %d ports, more than the kernel's drop filter takes (%d of each): "+
			"every drop in %s was counted and the services' drops selected from them; drops not itemised by flow cannot be told apart and are not among them",
			len(addrs), len(ports), drops.MaxFilter, s.Target), Source: "kfree_skb tracer"})
	}
	if sel.VIP.IsValid() && len(selected(s, sel)) == 0 && vipOnly == "" {
		if bs := s.DNATBackends(sel); len(bs) > 0 {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("%s is not an IPVS service; traced with the backends its conntrack flows and DNAT rules show: %s", sel.VIPString(), probes.JoinBackends(bs)), Source: "conntrack, rules, " + s.Target.String()})
		}
	}
	if d.NoReasons != "" {
		ev = append(ev, Evidence{Fact: d.NoReasons, Source: "kernel " + s.Kernel})
	}
	if total == 0 {
		f := Finding{Status: Pass, Title: "no packet of the selected flows was dropped" + ownRedirectsTitle(s) + localSocketFreesTitle(s), Evidence: ev}
		switch {
		case d.Counters.Lost()+d.Counters.Missed > 0:
			f.Status, f.Title = Warn, "no drop was seen, but the tracer lost some"
		case d.CutShort:
			// A shorter window than asked for proves less: not a pass.
			f.Status, f.Title = Warn, "no drop was seen, but the window was cut short"
		case vipOnly != "":
			// Its packets after the DNAT were not traced: no pass either.
			f.Status, f.Title = Warn, "no drop was seen, but not every packet of the VIP's flows was traced (see the evidence)"
		}
		return f
	}
	reasons := groupDrops(d.Drops)
	for i, r := range reasons {
		if i == maxDropReasons {
			var rest uint64
			for _, x := range reasons[i:] {
				rest += x.Count
			}
			ev = append(ev, Evidence{Fact: fmt.Sprintf("… and %d more drops of %s", rest, tally.Of(len(reasons)-i, "more reason")), Source: "kfree_skb tracer"})
			break
		}
		ev = append(ev, Evidence{Fact: reasonLine(r), Source: "kfree_skb tracer"})
		if p := pointOf(s, r.First); p != nil && p.Cause != "" {
			ev = append(ev, Evidence{Fact: "  joined to " + p.Cause, Source: p.Source})
		}
		for j, p := range r.Paths {
			if j == maxDropPaths {
				var rest uint64
				for _, x := range r.Paths[j:] {
					rest += x.Count
				}
				ev = append(ev, Evidence{Fact: fmt.Sprintf("  … and %d drops on %s", rest, tally.Of(len(r.Paths)-j, "more path")), Source: "kfree_skb tracer"})
				break
			}
			ev = append(ev, Evidence{Fact: "  " + pathLine(p), Source: "kfree_skb tracer"})
		}
	}
	top := reasons[0].First
	title := fmt.Sprintf("packets of the selected flows are dropped: %s at %s", top.ReasonName, top.Function())
	if top.Hook != "" {
		title += " in " + top.Hook
	}
	if len(reasons) > 1 {
		title += fmt.Sprintf(" (and %s)", tally.Of(len(reasons)-1, "more reason"))
	}
	f := Finding{Status: Fail, Title: title, Evidence: ev}
	for _, c := range d.Drops {
		if c.Flow != nil {
			if k := c.Service(); !slices.Contains(f.about, k) {
				f.about = append(f.about, k)
			}
		}
	}
	// Drops whose root cause another check names (a filter rule or policy
	// joined to them: firewall.filter; a real that does not answer ARP or
	// that the LB has no route to: ipvs.real_health; …) are shown here and
	// fail there: explainDrops decides, once every finding is in.
	// Every reason with a known fix gives it, biggest first: the fix of a
	// smaller reason must not hide behind the biggest one's.
	for i, r := range reasons {
		why, fix, rem := dropRemedy(s, sel, r.First)
		switch {
		case i == 0:
			f.Reason = why
		case len(fix) > 0 || len(rem) > 0:
			f.Reason += "; " + r.First.ReasonName + ": " + why
		}
		for _, x := range fix {
			if !slices.Contains(f.Fix, x) {
				f.Fix = append(f.Fix, x)
			}
		}
		for _, x := range rem {
			if !slices.Contains(f.Remedies, x) {
				f.Remedies = append(f.Remedies, x)
			}
		}
	}
	return f
}

// dropReason is the drops of one reason at one place, whatever their flows:
// the reason, not the flow, says what is wrong. Paths splits them by the
// service path of their flow; drops not attributed to a flow are one path.
type dropReason struct {
	tally.Group[drops.Counted]
	Attributed, NotAttributed uint64 // drops
	// NotItemised is the drops of flows the tracer's flow map had no room
	// for (in NotAttributed too): counted at this place, but no flow.
	NotItemised uint64
	Paths       []dropGroup
}

// dropGroup is the drops of one reason at one place on one path of a
// service: the flows of different clients (or client ports) fold into one.
type dropGroup = tally.Group[drops.Counted]

func reasonLine(r dropReason) string {
	c := r.First
	flows := r.Members
	if r.NotItemised > 0 {
		flows-- // one row, of many flows
	}
	where := c.Symbol
	if c.Hook != "" {
		where += " in " + c.Hook // the netfilter hook, told by the caller on the stack
	}
	line := fmt.Sprintf("%d × %s at %s in %s", r.Count, c.ReasonName, where, tally.Of(flows, "flow"))
	if r.NotItemised > 0 {
		line += fmt.Sprintf(" and %d drops of flows not itemised", r.NotItemised)
	}
	switch {
	case r.NotAttributed == 0:
		line += ", every drop attributed to a load-balanced flow"
	case r.Attributed == 0:
		line += ", no drop attributed to a load-balanced flow"
	default:
		line += fmt.Sprintf(", %d drops attributed to a load-balanced flow, %d not", r.Attributed, r.NotAttributed)
	}
	return line
}

func pathLine(g dropGroup) string {
	c := g.First
	var b strings.Builder
	src, dst := c.Endpoints()
	if f := c.Flow; f != nil {
		fmt.Fprintf(&b, "%d × %s packets of %s to VIP %s via real %s (%s), e.g. %s %s → %s", g.Count, f.Direction, tally.Of(g.Members, "flow"), f.VIP, f.Real, f.Stage, proto.Name(c.Proto), src, dst)
	} else if c.NotItemised {
		fmt.Fprintf(&b, "%d × in flows not itemised (the flow map was full)", g.Count)
	} else {
		fmt.Fprintf(&b, "%d × not attributed to a load-balanced flow, %s", g.Count, tally.Of(g.Members, "flow"))
		if c.Family != 0 {
			fmt.Fprintf(&b, ", e.g. %s %s → %s", proto.Name(c.Proto), src, dst)
		}
	}
	return b.String()
}

// groupDrops folds counted drops by reason and place first, the most drops
// first, and each reason by the service path of its flows.
func groupDrops(cs []drops.Counted) []dropReason {
	reasonKey := func(c drops.Counted) string { return fmt.Sprintf("%s %d %s", c.ReasonName, c.Location, c.Hook) }
	byReason := map[string][]drops.Counted{}
	for _, c := range cs {
		k := reasonKey(c)
		byReason[k] = append(byReason[k], c)
	}
	count := func(c drops.Counted) uint64 { return c.Count }
	var out []dropReason
	for _, g := range tally.By(cs, reasonKey, count) {
		r := dropReason{Group: g}
		for _, c := range byReason[g.Key] {
			if c.Flow != nil {
				r.Attributed += c.Count
			} else {
				r.NotAttributed += c.Count
			}
			if c.NotItemised {
				r.NotItemised += c.Count
			} else if r.First.NotItemised {
				r.First = c // a fix that names an address takes it from a flow
			}
		}
		r.Paths = tally.By(byReason[g.Key], func(c drops.Counted) string {
			if f := c.Flow; f != nil {
				return fmt.Sprintf("%s %s %s %s", f.VIP, f.Real, f.Direction, f.Stage)
			}
			if c.NotItemised {
				return "not itemised"
			}
			return "" // not attributed: one path
		}, count)
		out = append(out, r)
	}
	return out
}

// dropRemedy says what a drop reason means on an IPVS load balancer and how
// to fix it, as far as the snapshot allows.
func dropRemedy(s *probes.Snapshot, sel probes.Selector, c drops.Counted) (why string, fix []string, remedies []Remedy) {
	switch c.ReasonName {
	case "IP_INADDRERRORS", "IP_INNOROUTES":
		// The switch of the packet's family: IPv6 drops these in ip6_forward.
		key := ForwardingKey(c.Dst.Addr())
		// Which packets a forwarding LB forwards: a DNAT VIP forwards its
		// requests too, IPVS only the replies de-NATed before it saw them.
		forwarded := "a reply de-NATed to the client before IPVS saw it, or a request IPVS did not take"
		if dnatTraced(s, sel) {
			forwarded = "a request DNATed to its backend, or a reply de-NATed to its client"
		}
		if v, ok := readable(s, key); ok && v.Value == "0" {
			return "the packet had to be forwarded but " + key + "=0: it died in " + c.Function() + " (" + forwarded + ")",
				nil, []Remedy{{Sysctl: key, Value: "1"}}
		}
		if key == "net.ipv4.ip_forward" {
			// IPv4 asks the switch of the interface the packet came in
			// on: the one the LB routes its source through (a real's
			// reply comes back the way the request went).
			if dev, _ := routeTo(s, c.Src.Addr()); dev != "" {
				devKey := "net.ipv4.conf." + dev + ".forwarding"
				if v, ok := readable(s, devKey); ok && v.Value == "0" {
					return "the packet had to be forwarded but it came in on " + dev + ", where " + devKey + "=0: it died in " + c.Function() + " (" + forwarded + ")",
						nil, []Remedy{{Sysctl: devKey, Value: "1"}}
				}
			}
		}
		if why, fix := noRouteFor(s, c); why != "" {
			return why, fix, nil
		}
		return "the packet's destination is neither local nor routable from here (ip_error)",
			[]string{fmt.Sprintf("%sip route get %s", s.Target.ExecPrefix(), c.Dst.Addr())}, nil
	case "NETFILTER_DROP":
		p := pointOf(s, c)
		if p != nil && (p.Rule != nil || p.Policy != nil) {
			return "a packet filter dropped it: " + p.Cause, pointFix(s, sel, p), nil
		}
		if svc, ok := noRealDrop(s, sel, c); ok {
			return "IPVS dropped it: " + svc.Key() + " has no real server of weight > 0, so IPVS answers the client with ICMP port unreachable and drops the packet (see ipvs.reals_available)", realsFix(s, []ipvs.Service{svc}), nil
		}
		if conntrackFullDrop(s, c) {
			st := s.Conntrack.Stats
			return fmt.Sprintf("conntrack dropped it in %s: its table is full (%d of %d entries, drop +%d in the window) and a new flow finds no room (see conntrack.table)", c.Hook, st.Entries, st.MaxEntries, windowFullDrops(s)), growConntrack(s), nil
		}
		hook := c.Hook
		if hook == "" {
			return "a packet-filter rule dropped it (its hook is not known: " + hookUnknown(s) + ")", ruleListings(s, ""), nil
		}
		return "a packet-filter rule dropped it in " + hook + ", and no DROP or REJECT rule nor DROP policy read there moved with it (a rule in a chain it jumps to, or in another table?)", ruleListings(s, hook), nil
	case "NEIGH_FAILED", "NEIGH_INCOMPLETE":
		if why, fix := clientNeighbour(s, c); why != "" {
			return why, fix, nil
		}
	case "IP_RPFILTER":
		return "reverse-path filtering dropped it: its source is not routed back through the interface it came in on",
			[]string{fmt.Sprintf("%ssysctl -w net.ipv4.conf.all.rp_filter=2   # loose, or route the source back the same way", s.Target.ExecPrefix())}, nil
	case "NO_SOCKET":
		if sel.VIP.IsValid() && len(selected(s, sel)) == 0 {
			// No IPVS service of the VIP: what should have taken it
			// from the local stack is a DNAT rule.
			return "it reached the local stack and nothing listens there: no DNAT rule rewrote it (none for this address and port?)", natListings(s), nil
		}
		return "it reached the local stack and nothing listens there: IPVS did not take it (no service for this address and port?)",
			[]string{fmt.Sprintf("%sipvsadm -Ln", s.Target.ExecPrefix())}, nil
	}
	return fmt.Sprintf("the kernel dropped it with reason %s at %s", c.ReasonName, c.Symbol), nil, nil
}

// noRouteFor names the cause of a forwarding drop (IP_INNOROUTES,
// IP_INADDRERRORS) when the LB's main routing table, as read, has no
// route to the dropped packet's destination, or one that leads nowhere
// (unreachable, blackhole, prohibit: no device, no gateway) — a real's
// reply to a client the LB cannot route back to — with the lookup to
// type and the route to add; "" when it has a route, or the routes were
// not read.
func noRouteFor(s *probes.Snapshot, c drops.Counted) (string, []string) {
	dst := c.Dst.Addr()
	if _, unread := s.Errors[probes.ProbeNet]; unread || c.Family == 0 || !dst.IsValid() || len(s.Net.Routes) == 0 {
		return "", nil
	}
	what := "the packet to " + dst.String()
	if f := c.Flow; f != nil && f.Direction == "reply" {
		what = fmt.Sprintf("the reply of real %s to client %s", f.Real, dst)
	}
	get := fmt.Sprintf("%sip route get %s", s.Target.ExecPrefix(), dst)
	r, no := s.Net.Unroutable(dst)
	switch {
	case !no:
		return "", nil
	case !r.Dst.IsValid():
		return fmt.Sprintf("the LB has no route to %s (no route of its main table covers it, and there is no default route): %s died in %s", dst, what, c.Function()),
			[]string{get, fmt.Sprintf("# then route %s's network through the router toward it: %sip route add PREFIX via ROUTER", dst, s.Target.ExecPrefix())}
	default:
		return fmt.Sprintf("the LB's route to %s (%s) leads nowhere (unreachable, blackhole or prohibit): %s died in %s", dst, r.Dst, what, c.Function()),
			[]string{get, fmt.Sprintf("%sip route show %s", s.Target.ExecPrefix(), r.Dst)}
	}
}

// clientNeighbour names the cause of a neighbour drop of a reply on its
// way to a client: the LB's route to the client leaves by an interface
// where the client (or the route's gateway) does not answer ARP/NDP. When
// that is not the VIP's interface, where the client's requests came in,
// a route of its own sends the replies astray, and the fix deletes it (a
// connected route, an address's own prefix, is not: it is named only).
// "" when the drop is no reply to a client or the routes were not read.
func clientNeighbour(s *probes.Snapshot, c drops.Counted) (string, []string) {
	f, dst := c.Flow, c.Dst.Addr()
	if _, unread := s.Errors[probes.ProbeNet]; unread || f == nil || f.Direction != "reply" || !dst.IsValid() {
		return "", nil
	}
	r, ok := s.Net.RouteTo(dst)
	if !ok || r.Dev == "" {
		return "", nil
	}
	pre := s.Target.ExecPrefix()
	hop, route := dst, routeText(r)
	if r.Gw.IsValid() {
		hop = r.Gw
	}
	why := fmt.Sprintf("the LB routes client %s out of %s (%s), where %s does not answer ARP/NDP (neighbour %s): the reply of real %s died in %s", dst, r.Dev, route, hop, orNone(neighbourState(s, hop, r.Dev)), f.Real, c.Function())
	fix := []string{fmt.Sprintf("%sip route get %s", pre, dst)}
	vipDev := addrLinks(s)[f.VIP.Addr()]
	if vipDev == "" || vipDev == r.Dev || vipDev == "lo" {
		return why, fix
	}
	why += fmt.Sprintf("; the client's requests came in on %s, the VIP's interface", vipDev)
	return why, append(fix, clientRouteFix(s, dst, r, route, vipDev))
}

// clientRouteFix is the fix of a route to client dst that leaves by
// another interface than vipDev, where the clients come in: the route
// deleted, so that the replies follow the others — unless it is a
// default route (to point at the router the clients come through) or the
// interface's own prefix (the address, or the client, is wrong).
func clientRouteFix(s *probes.Snapshot, dst netip.Addr, r netstate.Route, route, vipDev string) string {
	pre := s.Target.ExecPrefix()
	for _, l := range s.Net.Links {
		for _, a := range l.Addrs {
			if l.Name == r.Dev && a.Masked() == r.Dst {
				return fmt.Sprintf("# %s is %s's own segment (%s): is %s really there?", r.Dst, r.Dev, a, dst)
			}
		}
	}
	if r.Dst.Bits() == 0 {
		return fmt.Sprintf("# the default route leads out of %s: route %s back through %s, the way the clients come in: %sip route add PREFIX via ROUTER dev %s", r.Dev, dst, vipDev, pre, vipDev)
	}
	return fmt.Sprintf("%sip route del %s   # the replies then follow the routes out of %s, the way the clients come in", pre, route, vipDev)
}

// routeText is a route as `ip route` writes the part a fix names.
func routeText(r netstate.Route) string {
	t := r.Dst.String()
	if r.Gw.IsValid() {
		t += " via " + r.Gw.String()
	}
	return t + " dev " + r.Dev
}

// pointOf is the window's drop point of c's reason, function and hook.
func pointOf(s *probes.Snapshot, c drops.Counted) *probes.DropPoint {
	if s.Window == nil {
		return nil
	}
	for i, p := range s.Window.DropPoints {
		if p.Reason == c.ReasonName && p.Function == c.Function() && p.Hook == c.Hook {
			return &s.Window.DropPoints[i]
		}
	}
	return nil
}

func hookUnknown(s *probes.Snapshot) string {
	if s.Drops != nil && s.Drops.NoHooks != "" {
		return s.Drops.NoHooks
	}
	return "the stack did not show nf_hook_slow's caller"
}

// hookTables are the iptables tables whose chains of a hook can drop, the
// filter table first where it has one (the nat table never drops).
var hookTables = map[string][]string{
	"prerouting": {"raw", "mangle"}, "input": {"filter"}, "forward": {"filter"}, "output": {"filter"}, "postrouting": {"mangle"},
}

// ruleListings are the commands that list, with counters and handles, the
// rules of every backend read (of one hook's chains where the backend can
// list a chain alone): where the rule that dropped is to be found.
// natListings are the commands that list the nat rules of each rule
// backend read, where the DNAT of a VIP that IPVS does not serve lives.
func natListings(s *probes.Snapshot) []string {
	pre := s.Target.ExecPrefix()
	var out []string
	for _, b := range s.Rules.Backends {
		if !b.Read {
			continue
		}
		switch b.Name {
		case rules.Nft:
			out = append(out, pre+"nft list ruleset   # a DNAT of the VIP: a dnat rule in a chain of type nat, hook prerouting")
		default:
			out = append(out, pre+b.Name+"-save -t nat   # a DNAT of the VIP: -j DNAT in nat PREROUTING")
		}
	}
	return out
}

func ruleListings(s *probes.Snapshot, hook string) []string {
	pre := s.Target.ExecPrefix()
	var out []string
	for _, b := range s.Rules.Backends {
		if !b.Read || b.Rules == 0 && !slices.ContainsFunc(s.Rules.Chains, func(c rules.Chain) bool { return c.Backend == b.Name }) {
			continue
		}
		switch b.Name {
		case rules.Nft:
			out = append(out, pre+"nft -a list ruleset   # rules with their handles; then: nft delete rule FAMILY TABLE CHAIN handle N")
		default:
			chain := strings.ToUpper(hook)
			if chain == "" {
				out = append(out, pre+b.Name+"-save -c   # then: "+b.Name+" -t TABLE -D CHAIN RULE")
				continue
			}
			// The filter table has no PREROUTING or POSTROUTING chain: a
			// drop there is raw's or mangle's.
			for _, table := range hookTables[hook] {
				out = append(out, pre+b.Name+" -t "+table+" -nvL "+chain+" --line-numbers   # then: "+b.Name+" -t "+table+" -D "+chain+" N")
			}
		}
	}
	return out
}
