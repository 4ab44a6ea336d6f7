package checks

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// ReturnPath says whether a NAT service's replies come back through the LB
// without source NAT. One piece of code serves `setup --snat auto` and the
// nat.return_path check.
type ReturnPath struct {
	NeedsSNAT bool
	OneArm    bool   // the reals share the VIP's segment: forwarded replies leave where they came in
	Dev       string // the interface that holds the VIP
	Reason    string
	// What the decision rests on, for Evidence: formatted on demand (a
	// line per real; setup and the window's paths read none of them).
	s      *probes.Snapshot
	vip    netip.Addr
	vipDev string // "": no interface has the VIP
	reals  []realRoute
}

// realRoute is the LB's route to one real.
type realRoute struct {
	addr, gw netip.Addr
	dev      string
	local    bool // an address of the LB itself
}

// Lines is the number of lines Evidence gives.
func (rp ReturnPath) Lines() int {
	if rp.vipDev == "" {
		return 1
	}
	return 1 + len(rp.reals)
}

// Evidence is what the decision rests on: where the VIP is, and each
// real's route.
func (rp ReturnPath) Evidence() []Evidence {
	s := rp.s
	if rp.vipDev == "" {
		return []Evidence{{Fact: "no interface has " + rp.vip.String(), Source: "addresses, " + s.Target.String()}}
	}
	src := "routes, " + s.Target.String()
	ev := []Evidence{{Fact: fmt.Sprintf("VIP %s is on %s", rp.vip, rp.vipDev), Source: "addresses, " + s.Target.String()}}
	for _, r := range rp.reals {
		switch {
		case r.local:
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is a local address of the LB: its replies leave through IPVS on the LB itself", r.addr), Source: "local routing table, " + s.Target.String()})
		case r.gw.IsValid():
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is reached via gateway %s", r.addr, r.gw), Source: src})
		case r.dev == rp.vipDev || rp.vipDev == "lo":
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is on %s, the VIP's segment", r.addr, r.dev), Source: src})
		default:
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is on %s, another segment than the VIP's %s", r.addr, r.dev, rp.vipDev), Source: src})
		}
	}
	return ev
}

// RedirectRemedies turn off ICMP redirects on a one-arm LB (see
// net.send_redirects): they go with SNAT wherever SNAT is added one-arm.
func RedirectRemedies(dev string) []Remedy {
	return []Remedy{{Sysctl: "net.ipv4.conf.all.send_redirects", Value: "0"}, {Sysctl: "net.ipv4.conf." + dev + ".send_redirects", Value: "0"}}
}

// DecideReturnPath judges, from the LB's own routes, how the real servers
// reach the clients: a real on the VIP's own segment (one-arm) or behind a
// router answers clients directly, so its replies skip IPVS unless the LB
// also rewrites the source; a real on another segment of the LB (two-arm)
// answers through the LB when the LB is its gateway, and keeps client
// addresses.
func DecideReturnPath(s *probes.Snapshot, vip netip.Addr, reals []netip.Addr) ReturnPath {
	locals := s.Net.LocalSet()
	return decideReturnPath(s, nil, locals, vip, reals)
}

// addrLinks names, by address, the link that holds it (the last that
// does): DecideReturnPath's question of many VIPs (1,000 on lo) answered
// without a walk of every address for each.
func addrLinks(s *probes.Snapshot) map[netip.Addr]string {
	m := map[netip.Addr]string{}
	for _, l := range s.Net.Links {
		for _, a := range l.Addrs {
			m[a.Addr()] = l.Name
		}
	}
	return m
}

// decideReturnPath is DecideReturnPath, the VIP's link found in links
// (addrLinks) when it is not nil, the LB's own addresses in locals.
func decideReturnPath(s *probes.Snapshot, links map[netip.Addr]string, locals netstate.LocalSet, vip netip.Addr, reals []netip.Addr) ReturnPath {
	vipDev := ""
	if links != nil {
		vipDev = links[vip]
	} else {
		for _, l := range s.Net.Links {
			for _, a := range l.Addrs {
				if a.Addr() == vip {
					vipDev = l.Name
				}
			}
		}
	}
	if vipDev == "" {
		return ReturnPath{NeedsSNAT: true, Reason: fmt.Sprintf("the VIP %s is not an address of %s: the return path cannot be judged, so SNAT is the safe choice", vip, s.Target), s: s, vip: vip}
	}
	rp := ReturnPath{s: s, vip: vip, vipDev: vipDev, reals: make([]realRoute, 0, len(reals))}
	var oneArm, routed netip.Addr
	remote := false
	for _, r := range reals {
		dev, gw := routeTo(s, r)
		here, _ := locals.Holds(r)
		rp.reals = append(rp.reals, realRoute{addr: r, gw: gw, dev: dev, local: here})
		remote = remote || !here
		switch {
		case here:
			// A real on the LB itself (a sorry server, the LB serving
			// too): IPVS hands it the connection inside the host and
			// rewrites its replies back to the VIP in LOCAL_OUT. They
			// never cross a segment: no SNAT, no gateway to judge.
		case gw.IsValid():
			if !routed.IsValid() {
				routed = r
			}
		case dev == vipDev || vipDev == "lo":
			if !oneArm.IsValid() {
				oneArm = r
			}
		}
	}
	switch {
	case oneArm.IsValid():
		rp.NeedsSNAT, rp.OneArm, rp.Dev, rp.Reason = true, true, vipDev, fmt.Sprintf("one-arm: real %s shares the VIP's segment and answers clients directly", oneArm)
	case routed.IsValid():
		rp.NeedsSNAT, rp.Reason = true, fmt.Sprintf("real %s is behind a router: its replies follow its own routes, not the LB", routed)
	case !remote && len(reals) > 0:
		rp.Reason = "every real is a local address of the LB: IPVS rewrites their replies on the LB itself; client addresses are kept"
	default:
		rp.Reason = "two-arm: the reals sit on another segment of the LB, which must be their gateway; client addresses are kept"
	}
	return rp
}

// routeTo finds the LB's route to a (the most specific of the main table).
func routeTo(s *probes.Snapshot, a netip.Addr) (dev string, gw netip.Addr) {
	r, _ := s.Net.RouteTo(a)
	return r.Dev, r.Gw
}

func checkReturnPath(s *probes.Snapshot, sel probes.Selector) Finding {
	if e, ok := s.Errors[probes.ProbeNet]; ok {
		return skip("routes could not be read: " + e)
	}
	masq, why := masqueraded(s, sel)
	if why != "" {
		return skip(why)
	}
	var ev []Evidence
	var warn *Finding
	ix, probesBy := indexWindow(s), probeResults(s)
	clients, locals, links := probes.ClientSourcesByVIP(s), s.Net.LocalSet(), addrLinks(s)
	judged, notLocal := 0, 0
	for _, svc := range masq {
		if svc.FWMark != 0 {
			// The return path hangs on the VIP's segment, and a mark has
			// none: the address is in the rule that sets the mark.
			ev = append(ev, Evidence{Fact: svc.Key() + ": a firewall mark selects its packets, not an address: its return path is not judged", Source: "ipvs, " + s.Target.String()})
			continue
		}
		if local, ok := locals.Holds(svc.Addr.Addr()); ok && !local {
			// IPVS never takes its packets (ipvs.vip_local names that):
			// judging its segment would ask for SNAT a two-arm LB does
			// not want.
			ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: VIP %s is not a local address, so IPVS never sees its packets (see ipvs.vip_local): its return path is judged once it is", svc.Key(), svc.Addr.Addr()), Source: "local routing table, " + s.Target.String()})
			notLocal++
			continue
		}
		judged++
		if f := routeBackViaReal(s, svc, clients[svc.Addr.Addr()]); f != nil {
			f.Evidence = append(ev, f.Evidence...)
			return *f
		}
		if f := routeBackUnanswered(s, svc, clients[svc.Addr.Addr()], links[svc.Addr.Addr()]); f != nil {
			f.Evidence = append(ev, f.Evidence...)
			return *f
		}
		rp := decideReturnPath(s, links, locals, svc.Addr.Addr(), addrsOf(svc))
		ev = withLines(ev, rp.Lines(), rp.Evidence)
		var snat []rules.Rule
		if rp.NeedsSNAT {
			snat = coveringSNAT(s, svc.Addr)
			var kube []Evidence
			if len(snat) == 0 && s.KubeProxy != nil {
				// kube-proxy's design: source NAT by mark, the service
				// selected through an ipset.
				var covered bool
				if kube, covered = kubeSNAT(s, svc); covered {
					ev = append(ev, kube...)
					snat = append(snat, kubeMasqRules(s, probes.Selector{VIP: svc.Addr})...)
				} else if local, ok := kubeClusterLocal(s, svc); ok {
					ev = append(ev, local)
					rp.NeedsSNAT = false
				}
			}
			if len(snat) == 0 && rp.NeedsSNAT {
				ev = append(ev, kube...) // what of kube-proxy's design is missing
				if un := cmp.Or(unreadRules(s, svc.Addr.Addr()), ipsetsUnread(s)); un != "" {
					return skip(fmt.Sprintf("no source-NAT rule for %s among the rules read, but %s: whether its replies bypass the LB cannot be judged", svc.Key(), un))
				}
				return Finding{
					Status:   Fail,
					Title:    "replies of " + svc.Key() + " bypass the LB: no source NAT",
					Reason:   rp.Reason + "; IPVS masquerade only does DNAT, so the client receives the real server's reply from an address it never called and drops it",
					Evidence: ev,
					Fix:      append([]string{setupFix(s, svc)}, kubeRebuild(s)...), // after the remedies' commands
					Remedies: remedies(s, rp, svc),
					about:    []string{svc.Key()},
				}
			}
			if len(snat) > 0 {
				var srcs []netip.Addr
				for _, c := range clients[svc.Addr.Addr()] {
					if local, ok := locals.Holds(c.Src); !ok || !local { // the LB's own connects need none
						srcs = append(srcs, c.Src)
					}
				}
				if missed := snatMissed(svc, snat, srcs); len(missed) > 0 {
					// Covered, but not for these clients: a rule narrowed to
					// other sources or reals (-s, -d) leaves them to
					// IPVS's DNAT alone.
					ev = append(ev, snatNarrowed(s, snat, missed)...)
					return Finding{
						Status:   Fail,
						Title:    fmt.Sprintf("replies of %s to %s bypass the LB: the source-NAT rule for its VIP does not match them", svc.Key(), tally.Of(len(missed), "client")),
						Reason:   rp.Reason + "; the source-NAT rule that covers the VIP is narrowed to other clients or reals, so IPVS's DNAT alone applies to these clients' connections and the real answers them directly from an address they never called",
						Evidence: ev,
						Fix:      append([]string{setupFix(s, svc)}, kubeRebuild(s)...),
						Remedies: remedies(s, rp, svc),
						about:    []string{svc.Key()},
					}
				}
				ev = append(ev, Evidence{Fact: "a source-NAT rule covers " + svc.Key(), Source: "rules, " + s.Target.String()})
			}
		}
		var untracked []rules.Rule
		if rp.NeedsSNAT && len(snat) > 0 {
			var sure []rules.Rule
			if sure, untracked = untrackingRules(s, svc); len(sure) > 0 {
				f := untrackedFinding(s, svc, rp, sure)
				f.Evidence = append(ev, f.Evidence...)
				return f
			}
		}
		f, wev := returnPathWindow(s, ix, probesBy, svc, rp, snat, untracked)
		ev = append(ev, wev...)
		switch {
		case f == nil:
		case f.Status == Fail:
			f.Evidence = append(ev, f.Evidence...)
			return *f
		case warn == nil:
			warn = f
		}
	}
	if warn != nil {
		warn.Evidence = append(ev, warn.Evidence...)
		return *warn
	}
	if judged == 0 && notLocal > 0 {
		return skip("no selected masquerade service's VIP is a local address (see ipvs.vip_local): IPVS takes none of their packets, so where their replies would go is not judged yet")
	}
	if judged == 0 {
		return skip("only firewall-mark masquerade services are selected: a mark has no VIP whose segment the return path could be judged by")
	}
	if a, b := flowsUnread(s), connTableSkip(s); a != "" && b != "" {
		// The clients routed back via a real are learned from these.
		ev = append(ev, Evidence{Fact: "no client's route back was judged: " + a + "; " + b, Source: s.Target.String()})
	}
	return Finding{Status: Pass, Title: "replies come back through the LB", Evidence: ev}
}

// answeringStates are neighbour states of a next hop that has answered.
var answeringStates = []string{"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}

// returnPathWindow judges the window's evidence for one masquerade TCP
// service: a real that IPVS sent SYNs to (packets in, connections stuck in
// SYN_RECV) and that sent nothing back through IPVS (no packet out), while
// the LB itself reaches it (the probe connected, or its neighbour entry
// answered), answers clients around the LB. Whatever else explains the
// silence is left to the check that names it: a sick real
// (ipvs.real_health), replies that reach the LB and die there (forwarding
// off, a drop the tracer saw, a reply conntrack saw), SNAT that needs
// vs.conntrack. Without the drop tracer it only warns: replies dying at the
// LB could not be told apart.
//
// untracked are rules that may take the service's requests out of
// conntrack (untrackingRules' maybe): one that counted packets in the
// window is named as the cause instead of the source-NAT rule.
func returnPathWindow(s *probes.Snapshot, ix *windowIndex, probesBy probeIndex, svc ipvs.Service, rp ReturnPath, snat []rules.Rule, untracked []rules.Rule) (*Finding, []Evidence) {
	if s.Window == nil || svc.Proto != "tcp" {
		// UDP: a service may never answer (syslog, statsd); no packet
		// out proves nothing.
		return nil, nil
	}
	src := s.Target.String()
	var ev []Evidence
	for _, r := range svc.Reals {
		if r.Method != ipvs.Masq {
			// A DR or tunnel real's replies never cross IPVS, working or
			// not: ipvs.forward_method judges where it can work.
			continue
		}
		w := ix.of(svc, r)
		if w.delta == nil || w.delta.PacketsIn < 2 || w.delta.PacketsOut > 0 || w.synRecv == 0 {
			continue
		}
		stuck := fmt.Sprintf("in the window IPVS sent %s %d packet(s) of %s and got none back; %d of its IPVS connections are in SYN_RECV", r.Addr, w.delta.PacketsIn, svc.Key(), w.synRecv)
		from := "IPVS stats and ip_vs_conn, "
		if w.counters != "" {
			stuck = fmt.Sprintf("in the window IPVS sent %s %d packet(s) of %s and got none back; none of its IPVS connections is established (%d inactive: SYN_RECV among them)", r.Addr, w.delta.PacketsIn, svc.Key(), w.synRecv)
			from = "IPVS stats and counters (the connection table was not read: " + w.counters + "), "
		}
		ev = append(ev, Evidence{Fact: stuck, Source: from + src})
		// Does the LB itself reach the real?
		p, probed := probeOf(probesBy, svc, r)
		var reaches string
		if probed && p.Probed() {
			if kind, fact, _ := sickness(p); kind != "" {
				ev = append(ev, Evidence{Fact: fmt.Sprintf("the real itself %s (%s): see ipvs.real_health", kind, fact), Source: "health probe, " + src})
				continue
			}
			if p.Connect == health.OK {
				reaches = fmt.Sprintf("the LB itself reaches %s: a TCP connect from %s was answered in %s", r.Addr, p.Source, p.RTT.Round(1000))
			}
		}
		if reaches == "" {
			dev, gw := routeTo(s, r.Addr.Addr())
			hop := r.Addr.Addr()
			if gw.IsValid() {
				hop = gw
			}
			state := neighbourState(s, hop, dev)
			if !slices.Contains(answeringStates, state) {
				ev = append(ev, Evidence{Fact: fmt.Sprintf("whether %s answers the LB at all is not known (no probe; neighbour %s is %s)", r.Addr, hop, orNone(state)), Source: "neighbours, " + src})
				continue
			}
			reaches = fmt.Sprintf("the LB reaches %s on the link: neighbour %s on %s is %s", r.Addr, hop, dev, state)
		}
		// The replies may reach the LB and die there: the check that
		// names that cause fails, not this one.
		// Each cause ruled out must have been read: one unread may be
		// the cause, and this is no conclusion then.
		if v, ok := readable(s, "net.ipv4.ip_forward"); r.Addr.Addr().Is4() && (!ok || v.Value == "0") {
			if !ok {
				ev = append(ev, Evidence{Fact: "net.ipv4.ip_forward could not be read (" + v.Error + v.Absent + "): whether replies that reach the LB die there is not known", Source: src})
				continue
			}
			ev = append(ev, Evidence{Fact: "net.ipv4.ip_forward = 0: replies that reach the LB die there (see sysctl.ip_forward)", Source: src})
			continue
		}
		if len(snat) > 0 {
			if v, ok := readable(s, "net.ipv4.vs.conntrack"); !ok {
				ev = append(ev, Evidence{Fact: "net.ipv4.vs.conntrack could not be read (" + v.Error + v.Absent + "): whether the source-NAT rule sees IPVS connections is not known", Source: src})
				continue
			} else if v.Value == "0" {
				ev = append(ev, Evidence{Fact: "the source-NAT rule needs IPVS connections in conntrack and net.ipv4.vs.conntrack = 0 (see sysctl.vs_conntrack)", Source: src})
				continue
			}
		}
		if n := dropsOfReal(s, r.Addr); n > 0 {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("%d packet(s) of flows to %s died on the LB (see drops.vip_flows)", n, r.Addr), Source: "kfree_skb tracer, " + src})
			continue
		}
		if n := repliedNotCompleted(s); n > 0 {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("conntrack saw replies of %d flow(s) of the VIP that never completed: replies reach the LB (see conntrack.flow_states, drops.vip_flows)", n), Source: "conntrack, " + src})
			continue
		} else if why := flowsUnread(s); why != "" {
			ev = append(ev, Evidence{Fact: why + ": whether replies reach the LB is not known", Source: "conntrack, " + src})
			continue
		}
		ev = append(ev, Evidence{Fact: reaches, Source: "health probe, " + src})
		var hit []rules.Rule
		for _, u := range untracked {
			if !u.HasCounter || ruleDelta(s, u) > 0 {
				hit = append(hit, u)
			}
		}
		if len(hit) > 0 {
			f := untrackedFinding(s, svc, rp, hit)
			f.Evidence = append(ev, f.Evidence...)
			return &f, nil
		}
		for _, rule := range snat {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("source-NAT rule %q counted %d packet(s) in the window", rule.Spec, ruleDelta(s, rule)), Source: fmt.Sprintf("%s table %s, %s", rule.Backend, rule.Table, src)})
		}
		f := &Finding{Status: Fail,
			Title:    fmt.Sprintf("replies of %s from real %s do not come back through the LB", svc.Key(), r.Addr),
			Reason:   fmt.Sprintf("the SYNs reach real %s and it answers the LB itself, but none of its replies came back through IPVS in the window: %s", r.Addr, aroundWhy(s, r, rp, snat)),
			Remedies: remedies(s, rp, svc),
		}
		if e, ok := s.Errors[probes.ProbeDrops]; ok || s.Drops == nil {
			if !ok {
				e = "drops were not traced"
			}
			f.Status = Warn
			f.Reason += fmt.Sprintf("; whether replies reach the LB and die there cannot be told without the drop tracer (%s)", e)
		} else {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("no packet of flows to %s died on the LB", r.Addr), Source: "kfree_skb tracer, " + src})
		}
		// The remedies' commands (source NAT: the replies come back
		// whatever the real's routes) come first; then the other way.
		if gw, ok := lbOnSegment(s, r, rp, snat); ok {
			f.Fix = append(f.Fix, fmt.Sprintf("# or, on the real server %s, make the LB its gateway (client addresses are kept):", r.Addr.Addr()), "ip route replace default via "+gw.String())
		}
		f.Fix = append(f.Fix, setupFix(s, svc))
		f.about = []string{svc.Key()}
		f.Evidence = ev
		return f, nil
	}
	return nil, ev
}

// aroundWhy says which way a real's replies go instead, as far as the LB's
// routes and rules tell.
func aroundWhy(s *probes.Snapshot, r ipvs.Real, rp ReturnPath, snat []rules.Rule) string {
	if len(snat) > 0 {
		return "the source-NAT rule that covers the service did not rewrite them, so the real answers the clients directly"
	}
	if _, gw := routeTo(s, r.Addr.Addr()); gw.IsValid() {
		return fmt.Sprintf("it is behind the router %s and its replies follow its own routes", gw)
	}
	if gw, ok := lbOnSegment(s, r, rp, snat); ok {
		return fmt.Sprintf("its default gateway is not the LB (%s on its segment), so it answers clients another way", gw)
	}
	return "its replies to clients take another way"
}

// lbOnSegment is the LB's address on a real's segment when the real sits
// on a segment of the LB without SNAT (two-arm): the gateway it needs.
func lbOnSegment(s *probes.Snapshot, r ipvs.Real, rp ReturnPath, snat []rules.Rule) (netip.Addr, bool) {
	if rp.NeedsSNAT || len(snat) > 0 {
		return netip.Addr{}, false
	}
	if _, gw := routeTo(s, r.Addr.Addr()); gw.IsValid() {
		return netip.Addr{}, false
	}
	_, _, src, ok := connectedPrefix(s, r.Addr.Addr())
	return src, ok
}

// neighbourState is the snapshot's neighbour entry of ip (on dev, when known).
func neighbourState(s *probes.Snapshot, ip netip.Addr, dev string) string {
	for _, n := range s.Net.Neighbours {
		if n.IP == ip && (dev == "" || n.Dev == dev) {
			return n.State
		}
	}
	return ""
}

// dropsOfReal counts the window's drops of packets from or to a real (its
// flows, or the real's address on the packet).
func dropsOfReal(s *probes.Snapshot, real netip.AddrPort) uint64 {
	if s.Drops == nil {
		return 0
	}
	var n uint64
	for _, c := range s.Drops.Drops {
		if (c.Flow != nil && c.Flow.Real == real) || c.Src.Addr() == real.Addr() || c.Dst.Addr() == real.Addr() {
			n += c.Count
		}
	}
	return n
}

// flowsUnread says why the VIPs' conntrack flows were not counted ("" when
// they were, whole): unread, or not dumped.
func flowsUnread(s *probes.Snapshot) string {
	if e, ok := s.Errors[probes.ProbeConntrack]; ok {
		return "conntrack could not be read: " + e
	}
	if strings.HasPrefix(s.Conntrack.Selector, "none") {
		return "the VIPs' conntrack flows were not read: " + s.Conntrack.Selector
	}
	return ""
}

// repliedNotCompleted counts the VIP flows conntrack saw a reply of that
// never completed the handshake: replies that reached the LB.
func repliedNotCompleted(s *probes.Snapshot) int {
	n := 0
	for _, c := range s.Conntrack.Counts {
		if c.State == "SYN_RECV" && c.SeenReply && !c.Assured {
			n += c.Count
		}
	}
	return n
}

// ruleDelta is what a rule counted in the window.
func ruleDelta(s *probes.Snapshot, r rules.Rule) uint64 {
	for _, d := range s.Window.Deltas.Rules {
		if d.Rule.Key() == r.Key() {
			return d.Packets
		}
	}
	return 0
}

// lbdoctorCmd is an lbdoctor command line aimed at the snapshot's namespace.
func lbdoctorCmd(s *probes.Snapshot, verb string) string {
	cmd := "lbdoctor " + verb
	if !s.Target.IsCurrent() {
		cmd += " --netns " + shellquote.Quote(s.Target.Spec)
	}
	return cmd
}

// setupFix is the one lbdoctor command that adds the SNAT and records it for teardown.
func setupFix(s *probes.Snapshot, svc ipvs.Service) string {
	cmd := lbdoctorCmd(s, "setup")
	cmd += fmt.Sprintf(" --proto %s --vip %s", svc.Proto, svc.Addr)
	for _, r := range svc.Reals {
		cmd += fmt.Sprintf(" --real %s,%d", r.Addr, r.Weight)
	}
	return "# or, recorded for lbdoctor teardown: " + cmd + " --snat always"
}

// remedies are the source NAT a one-arm service needs: the rule, the
// vs.conntrack its -m ipvs match needs (unless already on), and the
// redirects it stops.
func remedies(s *probes.Snapshot, rp ReturnPath, svc ipvs.Service) []Remedy {
	r := []Remedy{{SNAT: svc.Addr.String(), Proto: svc.Proto}}
	if v, ok := readable(s, "net.ipv4.vs.conntrack"); !ok || v.Value != "1" {
		r = append(r, Remedy{Sysctl: "net.ipv4.vs.conntrack", Value: "1"})
	}
	if rp.OneArm {
		r = append(r, RedirectRemedies(rp.Dev)...)
	}
	return r
}

// routeBackViaReal fails a masquerade service whose clients the LB routes
// back through one of its own real servers: whatever way the real answers
// (to the LB, SNAT or not), IPVS rewrites the reply and the LB forwards it
// to the client's next hop — the real again, which does not take it to
// the client. Judged from the main table's route to each known client
// source (conntrack flows, IPVS connections, the window's IP_RPFILTER
// drops: srcs, the VIP's probes.ClientSourcesByVIP), the first
// probes.MaxRouteSources.
func routeBackViaReal(s *probes.Snapshot, svc ipvs.Service, srcs []probes.Source) *Finding {
	reals := addrsOf(svc)
	for _, c := range srcs[:min(len(srcs), probes.MaxRouteSources)] {
		r, ok := s.Net.RouteTo(c.Src)
		if !ok || !r.Gw.IsValid() || !slices.Contains(reals, r.Gw) {
			continue
		}
		route := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gw, r.Dev)
		fix := fmt.Sprintf("%sip route del %s   # then route the clients back the way they came, through a router, not a real server", s.Target.ExecPrefix(), route)
		if r.Dst.Bits() == 0 {
			fix = fmt.Sprintf("# the default route (%s) leads to a real server: point it at the router the clients come through", route)
		}
		return &Finding{
			Status: Fail,
			Title:  fmt.Sprintf("replies of %s to client %s are routed back to real %s", svc.Key(), c.Src, r.Gw),
			Reason: fmt.Sprintf("the LB routes client %s via %s, a real server of %s: IPVS rewrites the real's reply to come from the VIP and the LB forwards it to that next hop, the real again, which never takes it to the client", c.Src, r.Gw, svc.Key()),
			Evidence: []Evidence{
				{Fact: fmt.Sprintf("client %s of %s (%d flow(s) and connection(s))", c.Src, svc.Key(), c.Flows), Source: "conntrack and ip_vs_conn, " + s.Target.String()},
				{Fact: fmt.Sprintf("route to %s: %s", c.Src, route), Source: "routes, " + s.Target.String()},
			},
			Fix:   []string{fix},
			about: []string{svc.Key()},
		}
	}
	return nil
}

// snatMissed are the clients (of srcs, at most probes.MaxRouteSources)
// that every rule of snat leaves without source NAT on the way to every
// real of svc: rules narrowed to other sources or reals (rules.SNATMatch
// says NoMatch for each). A rule the matcher cannot read (an interface, a
// mark) misses no one.
func snatMissed(svc ipvs.Service, snat []rules.Rule, srcs []netip.Addr) []netip.Addr {
	var missed []netip.Addr
	for _, c := range srcs[:min(len(srcs), probes.MaxRouteSources)] {
		hit := slices.ContainsFunc(snat, func(r rules.Rule) bool {
			return slices.ContainsFunc(svc.Reals, func(real ipvs.Real) bool {
				return r.SNATMatch(rules.Packet{Proto: svc.Proto, Src: c, Dst: real.Addr.Addr(), DPort: real.Addr.Port(), First: true, Remote: true}) != rules.NoMatch
			})
		})
		if !hit && !slices.Contains(missed, c) {
			missed = append(missed, c)
		}
	}
	return missed
}

// coveringSNAT are the source-NAT rules that cover vip's IPVS connections
// (rules.Rule.CoversVIP), in the order the rules were read.
func coveringSNAT(s *probes.Snapshot, vip netip.AddrPort) []rules.Rule {
	var out []rules.Rule
	for _, r := range s.Rules.Rules {
		if r.CoversVIP(vip) {
			out = append(out, r)
		}
	}
	return out
}

// snatNarrowed is the evidence of snatMissed: the rules, and the clients
// they leave out (the first 8).
func snatNarrowed(s *probes.Snapshot, snat []rules.Rule, missed []netip.Addr) []Evidence {
	var ev []Evidence
	for _, r := range snat {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("source-NAT rule %q covers the VIP but matches other clients or reals", r.Spec), Source: fmt.Sprintf("%s table %s, %s", r.Backend, r.TableName(), s.Target)})
	}
	named := make([]string, 0, 8)
	for _, c := range missed[:min(len(missed), 8)] {
		named = append(named, c.String())
	}
	fact := "clients it does not match: " + strings.Join(named, ", ")
	if len(missed) > len(named) {
		fact += fmt.Sprintf(" and %d more", len(missed)-len(named))
	}
	return append(ev, Evidence{Fact: fact + " (their conntrack flows and IPVS connections)", Source: "conntrack, ipvs, " + s.Target.String()})
}

// untrackingRules are the rules that take a service's requests out of
// conntrack before conntrack sees them (iptables' raw PREROUTING, an nft
// prerouting chain of priority below -200): NAT works on conntrack's
// flows, so no source-NAT rule ever applies to a flow conntrack never
// tracked — `-m ipvs`, `ct original` and kube-proxy's mark alike — and a
// one-arm real answers the clients directly. sure: the rule matches every
// request (addresses, protocol, port); maybe: it may match some (a set, an
// interface, a source) or its chain's priority was not read, which the
// window judges by its counter.
func untrackingRules(s *probes.Snapshot, svc ipvs.Service) (sure, maybe []rules.Rule) {
	req := rules.Packet{Proto: svc.Proto, Dst: svc.Addr.Addr(), DPort: svc.Addr.Port(), First: true, Remote: true}
	for _, r := range s.Rules.Rules {
		if !r.Untracks() || r.HookOf() != "prerouting" || !r.Covers(svc.Addr.Addr()) {
			continue
		}
		before, known := r.BeforeConntrack(s.Rules.Chains)
		if known && !before {
			continue // conntrack has tracked the packet already: notrack does nothing
		}
		switch m := r.MatchPacket(req); {
		case m == rules.NoMatch:
		case m == rules.Matches && known:
			sure = append(sure, r)
		default:
			maybe = append(maybe, r)
		}
	}
	return sure, maybe
}

// untrackedFinding fails a service whose requests untrack rules take out
// of conntrack, naming them; the fix deletes them. --fix does not: the rule
// is the user's, and may be there for other flows.
func untrackedFinding(s *probes.Snapshot, svc ipvs.Service, rp ReturnPath, untrack []rules.Rule) Finding {
	src := s.Target.String()
	var ev []Evidence
	var fix []string
	for _, r := range untrack {
		counted := "no counter"
		if r.HasCounter {
			counted = fmt.Sprintf("%d packet(s) counted", r.Packets)
			if s.Window != nil {
				counted += fmt.Sprintf(", +%d in the window", ruleDelta(s, r))
			}
		}
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s rule %q (hook prerouting, before conntrack) untracks requests to %s: %s", r.Place(), r.Spec, svc.Key(), counted), Source: "rules (" + r.Backend + "), " + src})
		if cmd := r.DeleteCommand(); cmd != nil {
			fix = append(fix, s.Target.ExecPrefix()+shellquote.Command(cmd))
		} else {
			fix = append(fix, fmt.Sprintf("%snft -a list chain %s %s   # find the rule's handle, then: nft delete rule %s %s handle N", s.Target.ExecPrefix(), r.Table, shellquote.Quote(r.Chain), r.Table, shellquote.Quote(r.Chain)))
		}
	}
	fix = append(fix, "# or narrow the rule so that it leaves "+svc.Key()+" alone")
	return Finding{
		Status:    Fail,
		Title:     fmt.Sprintf("requests to %s are untracked: no source NAT applies to them", svc.Key()),
		Reason:    fmt.Sprintf("%s rule %q takes them out of conntrack before it sees them; NAT works on conntrack's flows, so the source-NAT rule that covers the service never rewrites its replies (%s)", untrack[0].Place(), untrack[0].Spec, rp.Reason),
		Evidence:  ev,
		Fix:       fix,
		FixByHand: "the rule is not lbdoctor's: it may be there for other flows",
		about:     []string{svc.Key()},
	}
}

// routeBackUnanswered fails a masquerade service whose known client (its
// conntrack flows, IPVS connections, the window's IP_RPFILTER drops: srcs,
// the first probes.MaxRouteSources) the LB routes back out of another
// interface than vipDev, the VIP's, where the clients' requests come in —
// and where the next hop (the client, or the route's gateway) does not
// answer ARP/NDP (neighbour INCOMPLETE or FAILED): IPVS rewrites the
// real's replies and they die there, waiting for it. Judged from the
// neighbour table, not from the drops: the kernel drops what waited only
// when a resolution gives up (about 3 s), which a window may not see; the
// window's NEIGH_* drops of replies to that client are this finding's. A
// VIP on lo or a dummy link says not where clients come in: not judged.
func routeBackUnanswered(s *probes.Snapshot, svc ipvs.Service, srcs []probes.Source, vipDev string) *Finding {
	if vipDev == "" || vipDev == "lo" || linkType(s, vipDev) == "dummy" {
		return nil
	}
	for _, c := range srcs[:min(len(srcs), probes.MaxRouteSources)] {
		r, ok := s.Net.RouteTo(c.Src)
		if !ok || r.Dev == "" || r.Dev == vipDev {
			continue
		}
		hop := c.Src
		if r.Gw.IsValid() {
			hop = r.Gw
		}
		state := neighbourState(s, hop, r.Dev)
		if state != "INCOMPLETE" && state != "FAILED" {
			continue
		}
		src, route, client := s.Target.String(), routeText(r), c.Src
		return &Finding{
			Status: Fail,
			Title:  fmt.Sprintf("replies of %s to client %s leave by %s, where %s does not answer", svc.Key(), c.Src, r.Dev, hop),
			Reason: fmt.Sprintf("the LB routes client %s out of %s (%s), not %s, the VIP's interface its requests come in on, and %s does not answer ARP/NDP there: IPVS rewrites the real's replies and they die waiting for it (NEIGH_FAILED)", c.Src, r.Dev, route, vipDev, hop),
			Evidence: []Evidence{
				{Fact: fmt.Sprintf("client %s of %s (%d flow(s) and connection(s))", c.Src, svc.Key(), c.Flows), Source: "conntrack and ip_vs_conn, " + src},
				{Fact: fmt.Sprintf("route to %s: %s; VIP %s is on %s", c.Src, route, svc.Addr.Addr(), vipDev), Source: "routes, " + src},
				{Fact: fmt.Sprintf("neighbour %s on %s is %s: it does not answer ARP/NDP", hop, r.Dev, state), Source: "neighbours, " + src},
			},
			Fix:   []string{fmt.Sprintf("%sip route get %s", s.Target.ExecPrefix(), c.Src), clientRouteFix(s, c.Src, r, route, vipDev)},
			about: []string{svc.Key()},
			explains: func(d drops.Counted) bool {
				return strings.HasPrefix(d.ReasonName, "NEIGH_") && d.Dst.Addr() == client
			},
		}
	}
	return nil
}

// linkType is the type of the namespace's link dev ("dummy", "veth", …).
func linkType(s *probes.Snapshot, dev string) string {
	for _, l := range s.Net.Links {
		if l.Name == dev {
			return l.Type
		}
	}
	return ""
}
