package checks

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// flowLeg is one kind of packet of a service's flows that crosses a filter
// hook before IPVS has dealt with it.
type flowLeg struct {
	hook    string
	pkt     rules.Packet
	service string
	real    netip.AddrPort // of an output or forward leg
	// dnat: a leg of a VIP that IPVS does not serve (nft or iptables
	// DNAT), real its backend: judged by the window's drops alone.
	dnat bool
}

// what names the leg's packets: "requests to tcp 10.1.0.6:8085". Said
// only when a finding names the leg: 10,000 reals make 20,000 legs.
func (l flowLeg) what() string {
	switch {
	case l.dnat && l.pkt.Src.IsValid():
		return "replies of backend " + l.real.String()
	case l.dnat:
		return "requests to " + l.service + " DNATed to backend " + l.real.String()
	}
	switch l.hook {
	case "output":
		return "requests IPVS sends to real " + l.real.String()
	case "forward":
		return "replies of real " + l.real.String()
	}
	return "requests to " + l.service
}

// why says why the leg's hook sees its packets.
func (l flowLeg) why() string {
	if l.dnat {
		if l.hook == "input" {
			return "filter INPUT runs on the packets the DNAT sends to an address of the LB"
		}
		return "filter FORWARD runs on the packets the LB forwards, after the DNAT (and its reversal for replies)"
	}
	switch l.hook {
	case "output":
		return "IPVS sends them through LOCAL_OUT, where filter OUTPUT runs"
	case "forward":
		if l.pkt.Invalid {
			// two-arm: no SNAT to undo
			return "the LB forwards them, and filter FORWARD runs before IPVS's FORWARD hook rewrites them"
		}
		return "they are forwarded after conntrack's de-SNAT, and filter FORWARD runs before IPVS's FORWARD hook"
	}
	if l.hook == "prerouting" {
		return "prerouting runs before IPVS takes them (LOCAL_IN)"
	}
	return "filter INPUT runs before IPVS takes them (LOCAL_IN)"
}

// legsOf are the packets of a service a filter rule can drop: requests in
// INPUT (before IPVS's LOCAL_IN hook takes them) and, for masquerade, the
// NAT'd requests in OUTPUT (IPVS sends them through LOCAL_OUT) and the
// reals' replies in FORWARD (routed to the client after the de-SNAT, before
// IPVS's FORWARD hook rewrites them).
func legsOf(svc ipvs.Service) []flowLeg {
	key := svc.Key()
	// Requests open their flows (a rule that accepts only established or
	// related packets does not spare them); every leg's packets come from
	// or go to other hosts, never over loopback.
	req := rules.Packet{Proto: svc.Proto, Dst: svc.Addr.Addr(), DPort: svc.Addr.Port(), First: true, Remote: true}
	legs := make([]flowLeg, 2, 2+2*len(svc.Reals))
	legs[0] = flowLeg{hook: "input", service: key, pkt: req}
	// The requests cross prerouting first (iptables' raw and mangle
	// tables, nft's prerouting chains): a drop there is as final.
	legs[1] = flowLeg{hook: "prerouting", service: key, pkt: req}
	for _, r := range svc.Reals {
		if r.Method != ipvs.Masq {
			continue
		}
		legs = append(legs,
			flowLeg{hook: "output", service: key, real: r.Addr, pkt: rules.Packet{Proto: svc.Proto, Dst: r.Addr.Addr(), DPort: r.Addr.Port(), First: true, Remote: true}},
			flowLeg{hook: "forward", service: key, real: r.Addr, pkt: rules.Packet{Proto: svc.Proto, Src: r.Addr.Addr(), SPort: r.Addr.Port(), Remote: true}})
	}
	return legs
}

// legMaker makes firewallLegs, the LB's addresses and links read once for
// every service (1,000 services on lo are judged in one pass).
type legMaker struct {
	s      *probes.Snapshot
	off    bool // vs.conntrack=0
	locals netstate.LocalSet
	links  map[netip.Addr]string
}

func newLegMaker(s *probes.Snapshot) *legMaker {
	m := &legMaker{s: s, off: vsConntrackOff(s)}
	if m.off {
		m.locals, m.links = s.Net.LocalSet(), addrLinks(s)
	}
	return m
}

// firewallLegs are legsOf(svc) as the LB's conntrack sees them: with
// vs.conntrack=0 IPVS keeps its connections out of conntrack, so where the
// reals' replies come back through the LB without source NAT (two-arm)
// their first one, the SYN-ACK, answers a request conntrack never saw:
// INVALID to it (a rule that drops INVALID packets, or a DROP policy
// behind an accept of established flows, drops it with no window to
// tell). Where source NAT is needed, the replies come back only once
// vs.conntrack is on (sysctl.vs_conntrack): not marked.
func (m *legMaker) firewallLegs(svc ipvs.Service) []flowLeg {
	legs := legsOf(svc)
	if !m.off || svc.FWMark != 0 || decideReturnPath(m.s, m.links, m.locals, svc.Addr.Addr(), addrsOf(svc)).NeedsSNAT {
		return legs
	}
	for i := range legs {
		if legs[i].hook == "forward" {
			legs[i].pkt.Invalid = true
		}
	}
	return legs
}

// dnatLegs are the legs of the flows of service (a drop's name for its
// flows to a VIP that IPVS does not serve: "TCP 10.1.0.6:8085") through
// each of its backends: the requests DNATed to it in forward (or, to an
// address of the LB, in input) and its replies in forward.
func dnatLegs(service string, backends []netip.AddrPort) []flowLeg {
	proto, _, ok := strings.Cut(service, " ")
	if proto = strings.ToLower(proto); !ok {
		proto = "" // the VIP alone: its flows' protocol is not known
	}
	var legs []flowLeg
	for _, b := range backends {
		req := rules.Packet{Proto: proto, Dst: b.Addr(), DPort: b.Port(), First: true, Remote: true}
		legs = append(legs,
			flowLeg{hook: "forward", service: service, real: b, dnat: true, pkt: req},
			flowLeg{hook: "input", service: service, real: b, dnat: true, pkt: req},
			flowLeg{hook: "forward", service: service, real: b, dnat: true, pkt: rules.Packet{Proto: proto, Src: b.Addr(), SPort: b.Port(), Remote: true}})
	}
	return legs
}

// dnatName names the flows of a selected VIP that IPVS does not serve as
// a drop's flow names them ("TCP 10.1.0.6:8085"): by the selector's
// protocol, else by that of its DNATed conntrack flows when they have one.
func dnatName(s *probes.Snapshot, sel probes.Selector) string {
	proto := sel.Proto
	if proto == "" {
		for _, f := range s.Conntrack.Flows {
			if f.Reply.Src == f.Orig.Dst {
				continue // not DNATed
			}
			if proto != "" && f.Proto != proto {
				return sel.VIPString()
			}
			proto = f.Proto
		}
	}
	if proto == "" {
		return sel.VIPString()
	}
	return strings.ToUpper(proto) + " " + sel.VIPString()
}

// dnatTraced says whether the selection is a VIP that IPVS does not serve
// whose flows the window traced through the backends its conntrack flows
// and DNAT rules show (as drops.vip_flows does): firewall.filter judges its
// drops alone.
func dnatTraced(s *probes.Snapshot, sel probes.Selector) bool {
	return sel.VIP.IsValid() && len(selected(s, sel)) == 0 && len(s.DNATBackends(sel)) > 0
}

// pointLegs are the legs of drop point p's hook of the selected flows it
// dropped: an IPVS service's, or a DNAT VIP's (dnatLegs; of p's side of
// the flow when p knows it).
func pointLegs(s *probes.Snapshot, sel probes.Selector, p *probes.DropPoint) []flowLeg {
	hook := pointHook(*p)
	var all []flowLeg
	if svcs, why := addressed(s, sel); why == "" {
		m := newLegMaker(s)
		for _, svc := range svcs {
			if len(p.Services) == 0 || slices.Contains(p.Services, svc.Key()) {
				all = append(all, m.firewallLegs(svc)...)
			}
		}
	} else if dnatTraced(s, sel) {
		// Drops no flow was attributed to (a SYN dropped before conntrack
		// confirmed its flow) are the selection's all the same: the
		// kernel traced only its addresses.
		svcs, reals := p.Services, p.Reals
		if len(svcs) == 0 {
			svcs = []string{dnatName(s, sel)}
		}
		if len(reals) == 0 {
			reals = probes.BackendAddrs(s.DNATBackends(sel))
		}
		for _, svc := range svcs {
			for _, l := range dnatLegs(svc, reals) {
				if p.Leg == "" || (p.Leg == flowpath.Reply) == l.pkt.Src.IsValid() {
					all = append(all, l)
				}
			}
		}
	}
	var out []flowLeg
	for _, l := range all {
		if l.hook == hook {
			out = append(out, l)
		}
	}
	return out
}

// dropsIn says whether the rule or policy a drop point is joined to drops
// in snapshot s: one deleted or set to ACCEPT during the window
// (DropPoint.Gone, Changed) dropped in the window's first read, not in its
// last; every other in both.
func dropsIn(s *probes.Snapshot, p *probes.DropPoint) bool {
	switch {
	case !p.Gone && !p.Changed:
		return true
	case p.Rule != nil:
		k := p.Rule.Key()
		return slices.ContainsFunc(s.Rules.Rules, func(r rules.Rule) bool { return r.Drops() && r.Key() == k })
	case p.Policy != nil:
		k := p.Policy.Key()
		return slices.ContainsFunc(s.Rules.Chains, func(c rules.Chain) bool { return c.Policy == "DROP" && c.Key() == k })
	}
	return false
}

// fixedName says how a rule or policy that dropped during the window
// stopped: "… rule "…" deleted", "… policy now ACCEPT".
func fixedName(p *probes.DropPoint) string {
	switch {
	case p.Rule != nil:
		return fmt.Sprintf("%s rule %q deleted", p.Rule.Place(), p.Rule.Spec)
	case p.Changed:
		return p.Policy.Place() + " policy now ACCEPT"
	}
	return p.Policy.Place() + " (policy DROP) deleted"
}

// filterHit is a rule or policy that drops a service's packets.
type filterHit struct {
	rule   *rules.Rule
	policy *rules.Chain
	legs   []flowLeg
	static bool   // the rule clearly matches (no window needed)
	drops  uint64 // the window's drops joined to it
	hook   string
	point  *probes.DropPoint
}

func (h *filterHit) key() string {
	if h.rule != nil {
		return "r " + h.rule.Key()
	}
	return "c " + h.policy.Key()
}

// checkFirewall: a filter rule or a chain policy drops or rejects the
// selected services' flows. Static where a rule clearly matches (addresses,
// protocol and ports only), confirmed by the window's netfilter drops joined
// to a rule or policy of their hook.
//
// A VIP that IPVS does not serve (nft or iptables DNAT), whose drops the
// window traced through its backends, is judged by those drops alone. A
// drop joined to a rule or policy that was deleted or set to ACCEPT during
// the window does not fail it: the last read passes naming the fix, and
// drops.vip_flows, judging the drops on the window's first read, warns
// that they were dropped while the fault was there.
func checkFirewall(s *probes.Snapshot, sel probes.Selector) Finding {
	svcs, why := addressed(s, sel)
	dnat := why != "" && dnatTraced(s, sel)
	if why != "" && !dnat {
		return skip(why)
	}
	read := false
	for _, b := range s.Rules.Backends {
		read = read || b.Read
	}
	if !read {
		why := "no rule backend could be read"
		if e, ok := s.Errors[probes.ProbeRules]; ok {
			why += ": " + e
		}
		return skip(why)
	}
	var hits []*filterHit
	add := func(h *filterHit, l flowLeg) {
		for _, x := range hits {
			if x.key() == h.key() {
				x.static = x.static || h.static
				if !slices.ContainsFunc(x.legs, func(y flowLeg) bool { return y == l }) {
					x.legs = append(x.legs, l)
				}
				return
			}
		}
		h.legs = []flowLeg{l}
		hits = append(hits, h)
	}
	var undecided string // a rule or policy only the window's drops judge
	m := newLegMaker(s)
	for _, svc := range svcs {
		for _, l := range m.firewallLegs(svc) {
			hs, u := staticHits(s, l)
			for _, h := range hs {
				add(h, l)
			}
			undecided = cmp.Or(undecided, u)
		}
	}
	w := s.Window
	var fixed []*probes.DropPoint // joined to a rule or policy that no longer drops
	if w != nil {
		for i := range w.DropPoints {
			p := &w.DropPoints[i]
			if !filterExplains(*p) {
				continue
			}
			if !dropsIn(s, p) {
				fixed = append(fixed, p)
				continue
			}
			h := &filterHit{rule: p.Rule, policy: p.Policy, hook: pointHook(*p), drops: p.Count, point: p}
			for _, l := range pointLegs(s, sel, p) {
				add(h, l)
			}
			for _, x := range hits { // the static hit (or another point's), confirmed
				if x != h && x.key() == h.key() {
					x.drops += p.Count
					x.point = p
				}
			}
		}
	}
	if len(hits) == 0 {
		if dnat && len(fixed) == 0 {
			return skip(why)
		}
		var addrs []netip.Addr
		if dnat {
			addrs = append(addrs, sel.VIP.Addr())
		}
		for _, svc := range svcs {
			addrs = append(addrs, svc.Addr.Addr())
		}
		// An IPv6 service's rules are ip6tables': their half unread counts.
		if un := unreadRules(s, addrs...); un != "" {
			return skip("no rule read drops the selected services' flows, but " + un)
		}
		f := Finding{Status: Pass}
		if dnat {
			f.Evidence = append(f.Evidence, Evidence{Fact: sel.VIPString() + " is not an IPVS service: its flows are judged by the window's netfilter drops alone", Source: "lbdoctor"})
		} else {
			f.Evidence = append(f.Evidence, Evidence{
				Fact:   fmt.Sprintf("no filter rule or DROP policy in input, output or forward clearly matches the flows of %s", serviceKeys(svcs)),
				Source: "rules of " + backendNames(s) + ", " + s.Target.String(),
			})
		}
		if why := dropsUntraced(s); why != "" && undecided != "" && len(fixed) == 0 {
			// The word on a rule that matches on more than addresses,
			// protocol and ports is the window's drops: none traced,
			// "nothing drops" would rest on them.
			return Finding{Status: Skip, Reason: fmt.Sprintf("%s may drop the selected services' flows, which only the window's drops tell, and %s", undecided, why), Evidence: f.Evidence}
		}
		if w == nil {
			f.Evidence = append(f.Evidence, Evidence{Fact: "static snapshot (--watch 0): a rule that matches on more than addresses, protocol and ports is judged only by the window's drops", Source: "lbdoctor"})
		}
		// Drops joined to what was fixed during the window: their fault
		// is gone, the window's first read shows it (drops.vip_flows).
		for _, p := range fixed {
			f.Evidence = append(f.Evidence, Evidence{Fact: fmt.Sprintf("%d × NETFILTER_DROP of the selected flows in %s during the window, joined to %s: fixed during the window, it drops them no more",
				p.Count, pointHook(*p), p.Cause), Source: p.Source + "; kfree_skb tracer"})
		}
		if len(fixed) > 0 {
			f.Title = "no packet filter drops the selected flows: " + fixedName(fixed[0])
			if len(fixed) > 1 {
				f.Title += fmt.Sprintf(" (and %d more)", len(fixed)-1)
			}
		}
		return f
	}
	// The drops joined to a rule or policy that drops in this read are
	// this finding's (the window's first read, judged for drops.vip_flows,
	// still has those fixed during the window).
	holds := map[*probes.DropPoint]bool{}
	// A hook where a rule or policy clearly drops the flows (static):
	// a netfilter drop there the window could join to nothing (two
	// droppers without counters, an nft policy and an nft rule) is its.
	staticHooks := map[string]bool{}
	for _, h := range hits {
		staticHooks[h.hook] = staticHooks[h.hook] || h.static
	}
	f := Finding{Status: Fail, explains: func(c drops.Counted) bool {
		p := pointOf(s, c)
		if p != nil && p.Reason == "NETFILTER_DROP" && p.Rule == nil && p.Policy == nil && staticHooks[pointHook(*p)] {
			return true
		}
		if p == nil || !filterExplains(*p) {
			return false
		}
		h, ok := holds[p]
		if !ok {
			h = dropsIn(s, p)
			holds[p] = h
		}
		return h
	}}
	var titles, statefulFix []string
	off := vsConntrackOff(s) && !dnat
	for _, h := range hits {
		f.Evidence = append(f.Evidence, Evidence{Fact: hitLine(s, h), Source: hitSource(s, h)})
		if off && stateful(s, h) {
			statefulFix = append(statefulFix, hitFix(s, h)...)
		} else {
			f.Fix = append(f.Fix, hitFix(s, h)...)
		}
		titles = append(titles, hitName(h))
		for _, l := range h.legs {
			if !slices.Contains(f.about, l.service) {
				f.about = append(f.about, l.service)
			}
		}
	}
	f.Title = "a packet filter drops the selected services' flows: " + titles[0]
	if len(titles) > 1 {
		f.Title += fmt.Sprintf(" (and %d more)", len(titles)-1)
	}
	h := hits[0]
	f.Reason = fmt.Sprintf("%s drops %s: %s", hitName(h), h.legs[0].what(), h.legs[0].why())
	if len(statefulFix) > 0 {
		// The documented use of vs.conntrack: stateful rules on the
		// packets IPVS handles. Turned on, the rule stays and passes them.
		f.Reason += "; net.ipv4.vs.conntrack = 0, so conntrack does not follow IPVS's connections: a real's replies and the clients' closing segments belong to no flow it knows and look INVALID to it"
		f.Evidence = append(f.Evidence, Evidence{Fact: "net.ipv4.vs.conntrack = 0: IPVS keeps its connections out of conntrack, which the stateful rule relies on", Source: "sysctl, " + s.Target.String()})
		f.Remedies = []Remedy{{Sysctl: "net.ipv4.vs.conntrack", Value: "1"}}
		f.Fix = append(f.Fix, "# or, keeping net.ipv4.vs.conntrack=0:")
		f.Fix = append(f.Fix, statefulFix...)
	}
	if w != nil {
		for _, p := range w.Paths {
			if slices.ContainsFunc(hits, func(h *filterHit) bool {
				return slices.ContainsFunc(h.legs, func(l flowLeg) bool { return l.service == p.Service })
			}) {
				f.Path = append(f.Path, p)
			}
		}
	}
	return f
}

// filterExplains reports whether firewall.filter names the root cause of a
// drop point: a netfilter drop in a filter hook the services' packets cross
// before IPVS deals with them, joined to a rule or policy.
func filterExplains(p probes.DropPoint) bool {
	h := pointHook(p)
	return p.Reason == "NETFILTER_DROP" && (p.Rule != nil || p.Policy != nil) && (h == "input" || h == "output" || h == "forward" || h == "prerouting")
}

// pointHook is the hook of a drop point: from the stack, else (drops seen
// before the tracer knew where nf_hook_slow is) the hook of the rule or
// policy whose counter explains them.
func pointHook(p probes.DropPoint) string {
	switch {
	case p.Hook != "":
		return p.Hook
	case p.Rule != nil:
		return p.Rule.HookOf()
	case p.Policy != nil:
		return p.Policy.Hook
	}
	return ""
}

// pointFix is the fix of a drop point joined to a rule or policy: the rule
// deleted, or the selected services' packets of its hook let past the policy.
// One that no longer drops (fixed during the window) has none.
func pointFix(s *probes.Snapshot, sel probes.Selector, p *probes.DropPoint) []string {
	if !dropsIn(s, p) {
		return nil
	}
	h := &filterHit{rule: p.Rule, policy: p.Policy, hook: pointHook(*p), legs: pointLegs(s, sel, p)}
	if h.rule == nil && len(h.legs) == 0 {
		return nil
	}
	return hitFix(s, h)
}

// dropTables are the iptables tables whose chains of a hook firewall.filter
// judges: filter's, and in prerouting (which filter has not) raw's and
// mangle's; nat never drops.
var dropTables = map[string][]string{"input": {"filter"}, "forward": {"filter"}, "output": {"filter"}, "prerouting": {"raw", "mangle"}}

// staticHits are the rules and policies of l's hook that clearly drop l's
// packets: a DROP or REJECT rule that matches them with no rule before it
// that might accept them, else a DROP policy no rule of the chain might
// spare them from. undecided names the first rule or policy that may drop
// them, which only the window's drops can tell ("" when none).
func staticHits(s *probes.Snapshot, l flowLeg) (out []*filterHit, undecided string) {
	for i := range s.Rules.Chains {
		c := &s.Rules.Chains[i]
		addr := l.pkt.Dst
		if !addr.IsValid() {
			addr = l.pkt.Src
		}
		// A chain of the other address family never sees these packets.
		if c.Hook != l.hook || (c.Backend != rules.Nft && !slices.Contains(dropTables[l.hook], c.Table)) || !c.Covers(addr) {
			continue
		}
		open := true // no rule so far might take the packet elsewhere
		var hit *filterHit
		for j := range s.Rules.Rules {
			r := &s.Rules.Rules[j]
			if !r.In(*c) {
				continue
			}
			m := r.MatchPacket(l.pkt)
			if m == rules.NoMatch {
				continue
			}
			if r.Drops() {
				if m == rules.Matches {
					hit = &filterHit{rule: r, static: true, hook: l.hook}
					break
				}
				if undecided == "" {
					undecided = fmt.Sprintf("%s rule %q", r.Place(), r.Spec)
				}
				continue // it may drop some: the window tells
			}
			if r.Target != "LOG" && r.Target != "" {
				open = false // it may accept or jump: the window tells
				break
			}
		}
		if hit == nil && open && c.Policy == "DROP" {
			hit = &filterHit{policy: c, static: true, hook: l.hook}
		} else if hit == nil && c.Policy == "DROP" && undecided == "" {
			undecided = c.Place() + " policy DROP"
		}
		if hit != nil {
			out = append(out, hit)
		}
	}
	return out, undecided
}

func hitName(h *filterHit) string {
	if h.rule != nil {
		return fmt.Sprintf("%s rule %q", h.rule.Place(), h.rule.Spec)
	}
	return fmt.Sprintf("%s policy %s", h.policy.Place(), h.policy.Policy)
}

func hitLine(s *probes.Snapshot, h *filterHit) string {
	var whats []string
	for _, l := range h.legs {
		whats = append(whats, l.what())
	}
	line := fmt.Sprintf("%s (hook %s) drops %s", hitName(h), h.hook, strings.Join(whats, ", "))
	var counted []string
	switch {
	case h.rule != nil && h.rule.HasCounter:
		counted = append(counted, fmt.Sprintf("%d packets counted", h.rule.Packets))
	case h.policy != nil && h.policy.HasCounter:
		counted = append(counted, fmt.Sprintf("%d packets counted by the policy", h.policy.Packets))
	case h.policy != nil:
		counted = append(counted, "nft keeps no policy counter")
	default:
		counted = append(counted, "the rule has no counter")
	}
	if d, ok := delta(s, h); ok {
		counted = append(counted, fmt.Sprintf("+%d in the window", d))
	}
	if h.drops > 0 {
		counted = append(counted, fmt.Sprintf("%d × NETFILTER_DROP of the selected flows in %s during the window, joined to it", h.drops, h.hook))
	} else if h.static && h.rule != nil && slices.ContainsFunc(h.legs, func(l flowLeg) bool { return l.pkt.Invalid }) && statesOf(h.rule.Spec, "invalid") {
		counted = append(counted, "conntrack sees a real's first reply INVALID: net.ipv4.vs.conntrack = 0, so it never saw the request it answers")
	} else if h.static && h.rule != nil {
		counted = append(counted, "it matches them by address, protocol and port")
	} else if h.static {
		counted = append(counted, "no rule before it takes them: each matches other addresses, protocols or ports, established or related flows only (these packets open theirs), or loopback")
	}
	return line + ": " + strings.Join(counted, "; ")
}

// delta is what the hit's counter moved in the window.
func delta(s *probes.Snapshot, h *filterHit) (uint64, bool) {
	if s.Window == nil {
		return 0, false
	}
	for _, d := range s.Window.Deltas.Rules {
		if h.rule != nil && d.Rule.Key() == h.rule.Key() {
			return d.Packets, true
		}
	}
	for _, d := range s.Window.Deltas.Chains {
		if h.policy != nil && d.Chain.Key() == h.policy.Key() {
			return d.Packets, true
		}
	}
	if (h.rule != nil && h.rule.HasCounter) || (h.policy != nil && h.policy.HasCounter) {
		return 0, true
	}
	return 0, false
}

func hitSource(s *probes.Snapshot, h *filterHit) string {
	src := "rules (" + backendOf(h) + "), " + s.Target.String()
	if h.drops > 0 {
		src += "; kfree_skb tracer"
	}
	return src
}

func backendOf(h *filterHit) string {
	if h.rule != nil {
		return h.rule.Backend
	}
	return h.policy.Backend
}

// hitFix deletes a rule, or lets the legs' packets past a DROP policy with
// an accept rule at the top of its chain (the policy stays for the rest).
func hitFix(s *probes.Snapshot, h *filterHit) []string {
	pre := s.Target.ExecPrefix()
	if h.rule != nil {
		if cmd := h.rule.DeleteCommand(); cmd != nil {
			return []string{pre + shellquote.Command(cmd)}
		}
		return []string{fmt.Sprintf("%snft -a list chain %s %s   # find the rule's handle, then: nft delete rule %s %s handle N", pre, h.rule.Table, shellquote.Quote(h.rule.Chain), h.rule.Table, shellquote.Quote(h.rule.Chain))}
	}
	var out []string
	for _, l := range h.legs {
		cmd := pre + shellquote.Command(h.policy.AcceptCommand(l.pkt))
		if !slices.Contains(out, cmd) {
			out = append(out, cmd)
		}
	}
	return out
}

func serviceKeys(svcs []ipvs.Service) string {
	var ks []string
	for _, s := range svcs {
		ks = append(ks, s.Key())
	}
	return strings.Join(ks, ", ")
}

func backendNames(s *probes.Snapshot) string {
	var ns []string
	for _, b := range s.Rules.Backends {
		if b.Read {
			ns = append(ns, b.Name)
		}
	}
	return strings.Join(ns, ", ")
}

// vsConntrackOff says whether IPVS keeps its connections out of conntrack
// (net.ipv4.vs.conntrack read as 0).
func vsConntrackOff(s *probes.Snapshot) bool {
	v, ok := readable(s, "net.ipv4.vs.conntrack")
	return ok && v.Value == "0"
}

// stateful says whether a hit drops IPVS's packets for a conntrack state
// they have only because vs.conntrack is off: a rule that drops INVALID
// packets in input (the clients' FIN and RST of a flow conntrack never
// confirmed: IPVS took its SYN) or forward (the real's SYN-ACK, a flow's
// first packet conntrack never saw the SYN of), or a forward DROP policy
// behind an accept of established flows (those replies are none). With
// vs.conntrack=1 IPVS keeps its connections in conntrack and they are
// established. A DROP policy in input drops the requests, which open
// their flows whatever vs.conntrack says: not this.
func stateful(s *probes.Snapshot, h *filterHit) bool {
	if h.rule != nil {
		return (h.hook == "input" || h.hook == "forward") && statesOf(h.rule.Spec, "invalid")
	}
	if h.policy == nil || h.hook != "forward" {
		return false
	}
	for _, r := range s.Rules.Rules {
		if r.In(*h.policy) && r.Target == "ACCEPT" && statesOf(r.Spec, "established") {
			return true
		}
	}
	return false
}

// statesOf says whether a rule's conntrack state match (iptables'
// --ctstate or --state, nft's ct state, a list or a set) names state,
// not negated.
func statesOf(spec, state string) bool {
	w := strings.Fields(strings.NewReplacer(",", " , ", "{", " { ", "}", " } ").Replace(strings.ToLower(spec)))
	for i := range w {
		var neg bool
		j := i + 1
		switch {
		case w[i] == "--ctstate" || w[i] == "--state":
			neg = i > 0 && w[i-1] == "!"
		case w[i] == "ct" && j < len(w) && w[j] == "state":
			if j++; j < len(w) && w[j] == "!=" {
				neg, j = true, j+1
			}
		default:
			continue
		}
		var list []string
		if j < len(w) && w[j] == "{" {
			for j++; j < len(w) && w[j] != "}"; j++ {
				list = append(list, w[j])
			}
		} else {
			for ; j < len(w); j += 2 {
				list = append(list, w[j])
				if j+1 >= len(w) || w[j+1] != "," {
					break
				}
			}
		}
		if !neg && slices.Contains(list, state) {
			return true
		}
	}
	return false
}
