package window

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// maxExamples is how many flows a drop point names as examples.
const maxExamples = 3

// Join groups the window's drops by kind and place and joins each group to
// what explains it: a NETFILTER_DROP to its hook and to the rule or chain
// policy whose counter moved by as much, a NEIGH_FAILED to the neighbour
// that never answered, an IP_RPFILTER to the interface and route.
// Pure: it reads only the snapshots and the window.
func Join(before, after *probes.Snapshot, w *probes.Window) []probes.DropPoint {
	if after == nil || after.Drops == nil {
		return nil
	}
	type key struct{ reason, function, hook string }
	idx := map[key]int{}
	var out []probes.DropPoint
	flows := map[key]map[string]bool{}
	for _, c := range after.Drops.Drops {
		k := key{c.ReasonName, funcOf(c.Symbol), c.Hook}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, probes.DropPoint{Reason: k.reason, Function: k.function, Hook: k.hook})
			flows[k] = map[string]bool{}
		}
		p := &out[i]
		p.Count += c.Count
		if r := probes.RealGoneOf(after, c); r.IsValid() {
			p.RealGoneDrops += c.Count
			g := probes.GoneReal{Real: r, Service: c.Service()}
			if !slices.Contains(p.RealsGone, g) {
				p.RealsGone = append(p.RealsGone, g)
			}
		}
		if c.Flow != nil {
			p.Attributed += c.Count
			flows[k][c.Flow.Client.String()+" "+c.Flow.VIP.String()] = true
			svc := c.Service()
			if !slices.Contains(p.Services, svc) {
				p.Services = append(p.Services, svc)
			}
			if r := c.Flow.Real; r.IsValid() && len(p.Reals) < probes.MaxPointReals && !slices.Contains(p.Reals, r) {
				p.Reals = append(p.Reals, r)
			}
			leg := flowpath.Request
			if c.Flow.Direction == "reply" {
				leg = flowpath.Reply
			}
			switch {
			case p.Leg == "":
				p.Leg = leg
			case p.Leg != leg:
				p.Leg = "mixed"
			}
		}
		if c.Family != 0 && len(p.Examples) < maxExamples {
			src, dst := c.Endpoints()
			p.Examples = append(p.Examples, fmt.Sprintf("%s %s → %s", proto.Name(c.Proto), src, dst))
		}
	}
	for k, i := range idx {
		out[i].Flows = len(flows[k])
		if out[i].Leg == "mixed" {
			out[i].Leg = ""
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	var filters *filterCandidates // read once, for the first netfilter drop
	for i := range out {
		p := &out[i]
		switch p.Reason {
		case "NETFILTER_DROP":
			if filters == nil {
				filters = candidatesOf(before, after, w)
			}
			joinFilter(p, after, filters)
			joinRealGone(p, after)
		case "NEIGH_FAILED", "NEIGH_QUEUEFULL", "NEIGH_DEAD":
			joinNeighbour(p, after, w)
		case "IP_RPFILTER":
			joinRPFilter(p, after, w)
		}
	}
	return out
}

// joinRealGone joins a netfilter drop in input to IPVS itself when its
// flows went to reals no longer in their services and no rule's counter
// took it: IPVS drops the packets of a connection whose real was removed
// (see probes.RealGoneOf). A rule whose counter moved keeps the
// drops it counted; a guess at a rule without a counter gives way when every
// drop is IPVS's.
func joinRealGone(p *probes.DropPoint, after *probes.Snapshot) {
	if p.RealGoneDrops == 0 || (p.Rule != nil || p.Policy != nil) && !(p.Uncounted && p.RealGoneDrops == p.Count) {
		return
	}
	p.Rule, p.Policy, p.Delta, p.Uncounted, p.Gone, p.Changed = nil, nil, 0, false, false, false
	gone := make([]string, len(p.RealsGone))
	for i, g := range p.RealsGone {
		gone[i] = g.Real.String() + ", no longer a real of " + g.Service
	}
	p.Cause = fmt.Sprintf("IPVS itself (ip_vs_in): %d of these drops are of connections to %s; "+
		"IPVS drops a packet of a connection whose real was removed (each one while net.ipv4.vs.expire_nodest_conn=0; "+
		"with 1, the first of a connection whose conntrack entry is old, e.g. a retransmission or a reused client port)",
		p.RealGoneDrops, strings.Join(gone, "; "))
	p.Source = "IPVS services, " + after.Target.String()
}

// funcOf is the function of a symbol+offset location.
func funcOf(loc string) string {
	name, _, _ := strings.Cut(loc, "+")
	return name
}

// candidate is a rule or policy that drops at a hook, and what it counted.
type candidate struct {
	rule    *rules.Rule
	policy  *rules.Chain
	delta   uint64
	counted bool // it keeps a counter (a native nft rule may not)
	hookSet bool // its hook is known (a rule in a user chain's is not)
	// gone: it dropped at the window's start and was deleted before its
	// end (the rule, or the policy's chain); changed: the policy was DROP at
	// the start and is ACCEPT at the end. Either counts as uncounted: what
	// it dropped in the window is unknown (see probes.DropPoint.Gone).
	gone, changed bool
}

// filterCandidates are the rules and policies that dropped at some time in
// the window, read once for every netfilter drop point: those of the last
// read, and those of the first read that the last no longer has (deleted)
// or no longer drops with (a policy set to ACCEPT).
type filterCandidates struct {
	now, healed []candidate
}

// candidatesOf reads the window's drop candidates from both reads. A rule
// is the same rule in both when its key is (nft handles are not part of
// it: a rule deleted and added again is still there, its counter counted
// from 0); a rule or chain missing from the last read is gone only when
// its backend (and family, for ip6tables) was read there whole.
func candidatesOf(before, after *probes.Snapshot, w *probes.Window) *filterCandidates {
	moved := map[string]uint64{}
	if w != nil {
		for _, d := range w.Deltas.Rules {
			moved["r "+d.Rule.Key()] = d.Packets
		}
		for _, d := range w.Deltas.Chains {
			moved["c "+d.Chain.Key()] = d.Packets
		}
	}
	fc := &filterCandidates{}
	keys := map[string]bool{} // of the dropping rules: a rule's key holds its target
	for i, r := range after.Rules.Rules {
		if r.Drops() {
			k := r.Key()
			keys[k] = true
			fc.now = append(fc.now, candidate{rule: &after.Rules.Rules[i], delta: moved["r "+k], counted: r.HasCounter, hookSet: r.HookOf() != ""})
		}
	}
	chains := map[string]*rules.Chain{}
	for i, c := range after.Rules.Chains {
		chains[c.Key()] = &after.Rules.Chains[i]
		if c.Policy == "DROP" {
			fc.now = append(fc.now, candidate{policy: &after.Rules.Chains[i], delta: moved["c "+c.Key()], counted: c.HasCounter, hookSet: true})
		}
	}
	if before == nil {
		return fc
	}
	for i, r := range before.Rules.Rules {
		if r.Drops() && after.Rules.Omitted == 0 && !keys[r.Key()] && readWhole(after, r.Backend, r.Family) {
			fc.healed = append(fc.healed, candidate{rule: &before.Rules.Rules[i], hookSet: r.HookOf() != "", gone: true})
		}
	}
	for i, c := range before.Rules.Chains {
		if c.Policy != "DROP" {
			continue
		}
		switch now, ok := chains[c.Key()]; {
		case ok && now.Policy != "DROP":
			fc.healed = append(fc.healed, candidate{policy: &before.Rules.Chains[i], hookSet: true, changed: true})
		case !ok && readWhole(after, c.Backend, c.Family):
			fc.healed = append(fc.healed, candidate{policy: &before.Rules.Chains[i], hookSet: true, gone: true})
		}
	}
	return fc
}

// readWhole says whether a snapshot read a backend's rules of a family
// (an ip6tables half may be left unread): a rule it lacks is not there.
func readWhole(s *probes.Snapshot, backend, family string) bool {
	for _, b := range s.Rules.Backends {
		if b.Name == backend {
			return b.Read && (family != "ip6" || backend == rules.Nft || b.IPv6Unread == "")
		}
	}
	return false
}

// joinFilter joins a netfilter drop to the DROP or REJECT rule, or DROP
// policy, of its hook whose counter moved in the window by as much as the
// drops (or best explains them: the least that covers them, else the most);
// a drop that no counter explains is joined to the one rule or policy that
// keeps none: of the last read, or of the first one that was deleted or set
// to ACCEPT during the window (fixed then), said as such.
func joinFilter(p *probes.DropPoint, after *probes.Snapshot, fc *filterCandidates) {
	var cs []candidate
	for _, set := range [][]candidate{fc.now, fc.healed} {
		for _, c := range set {
			h := ""
			if c.rule != nil {
				h = c.rule.HookOf()
			} else {
				h = c.policy.Hook
			}
			if p.Hook != "" && h != "" && h != p.Hook {
				continue
			}
			cs = append(cs, c)
		}
	}
	best := bestCandidate(cs, p.Count)
	if best == nil {
		if p.Hook != "" {
			p.Cause = "no DROP or REJECT rule nor DROP policy in " + p.Hook + " was read"
			if len(after.Rules.Unread()) > 0 {
				p.Cause += " (a rule backend could not be read)"
			}
			p.Source = "rules, " + after.Target.String()
		}
		return
	}
	p.Rule, p.Policy, p.Delta, p.Uncounted, p.Gone, p.Changed = best.rule, best.policy, best.delta, !best.counted, best.gone, best.changed
	p.Cause = DescribeCandidate(*p)
	p.Source = "rule counters over the window, " + after.Target.String()
	if best.gone || best.changed {
		p.Source = "rules of the window's first and last reads, " + after.Target.String()
	}
}

// bestCandidate picks what explains n drops: a counter that moved by
// exactly n; else the least that moved by more (the rule also matched other
// traffic); else the one that moved most; else, when none moved, the one
// rule or policy without a counter at a known hook. Ties go to the first
// read (rules before policies, in their order): a rule runs before its
// chain's policy.
func bestCandidate(cs []candidate, n uint64) *candidate {
	var exact, over, under, uncounted *candidate
	nUncounted := 0
	for i := range cs {
		c := &cs[i]
		switch {
		case !c.counted:
			if c.hookSet {
				nUncounted++
				if uncounted == nil {
					uncounted = c
				}
			}
		case c.delta == 0:
		case c.delta == n:
			if exact == nil {
				exact = c
			}
		case c.delta > n:
			if over == nil || c.delta < over.delta {
				over = c
			}
		default:
			if under == nil || c.delta > under.delta {
				under = c
			}
		}
	}
	for _, c := range []*candidate{exact, over, under} {
		if c != nil {
			return c
		}
	}
	if nUncounted == 1 {
		return uncounted
	}
	return nil
}

// DescribeCandidate says in words which rule or policy a drop point is
// joined to, and what its counter showed.
func DescribeCandidate(p probes.DropPoint) string {
	r, c := p.Rule, p.Policy
	var s string
	if r != nil {
		s = fmt.Sprintf("%s rule %q", r.Place(), r.Spec)
		if r.Handle != 0 {
			s += " (handle " + strconv.FormatUint(r.Handle, 10) + ")"
		}
	} else {
		s = fmt.Sprintf("%s policy %s", c.Place(), c.Policy)
	}
	const notCounted = "what it dropped in the window is not counted, and no rule or policy there at the window's end counted these drops"
	switch {
	case p.Gone && r != nil:
		return s + " (deleted during the window: " + notCounted + ")"
	case p.Gone:
		return s + " (its chain deleted during the window: " + notCounted + ")"
	case p.Changed:
		return s + " (set to ACCEPT during the window, which starts a policy's counter again from 0: " + notCounted + ")"
	case p.Uncounted && c != nil:
		return s + " (nft keeps no policy counter: the only DROP in this hook)"
	case p.Uncounted:
		return s + " (no counter: the only DROP or REJECT in this hook)"
	}
	return s + fmt.Sprintf(", +%d packets in the window", p.Delta)
}

// joinNeighbour joins a neighbour drop to the neighbour entry of the reals
// (or the packets' destinations) that is FAILED or INCOMPLETE, or to what
// the active probe of a real found.
func joinNeighbour(p *probes.DropPoint, after *probes.Snapshot, w *probes.Window) {
	want := map[netip.Addr]bool{}
	for _, c := range after.Drops.Drops {
		if c.ReasonName != p.Reason {
			continue
		}
		if c.Flow != nil {
			want[c.Flow.Real.Addr()] = true
		}
		if c.Family != 0 {
			want[c.Dst.Addr()] = true
		}
	}
	if w != nil {
		for _, h := range w.Health {
			if (h.Neighbour == "FAILED" || h.Neighbour == "INCOMPLETE") && (want[h.Real.Addr()] || want[h.NextHop]) {
				p.Cause = fmt.Sprintf("next hop %s of real %s on %s is %s: it does not answer ARP/NDP", h.NextHop, h.Real, h.Dev, h.Neighbour)
				p.Source = "active probe of the real, " + after.Target.String()
				return
			}
		}
	}
	for _, n := range after.Net.Neighbours {
		if (n.State == "FAILED" || n.State == "INCOMPLETE") && want[n.IP] {
			p.Cause = fmt.Sprintf("neighbour %s on %s is %s: it does not answer ARP/NDP", n.IP, n.Dev, n.State)
			p.Source = "neighbour table, " + after.Target.String()
			return
		}
	}
}

// joinRPFilter joins a reverse-path drop to the route back to its source
// (looked up after the window) and the strict rp_filter of the interfaces.
func joinRPFilter(p *probes.DropPoint, after *probes.Snapshot, w *probes.Window) {
	src := map[netip.Addr]bool{}
	for _, c := range after.Drops.Drops {
		if c.ReasonName == p.Reason && c.Family != 0 {
			src[c.Src.Addr()] = true
		}
	}
	var strict []string
	for k := range after.Sysctls {
		dev, ok := strings.CutPrefix(k, "net.ipv4.conf.")
		if !ok || !strings.HasSuffix(dev, ".rp_filter") {
			continue
		}
		dev = strings.TrimSuffix(dev, ".rp_filter")
		if dev == "all" || dev == "default" {
			continue
		}
		if _, _, eff, ok := probes.RPFilter(after.Sysctls, dev); ok && eff == 1 {
			strict = append(strict, dev)
		}
	}
	sort.Strings(strict)
	var route string
	if w != nil {
		for _, d := range w.RoutesBack {
			if src[d.Dst] {
				route = fmt.Sprintf("the route back to %s leaves via %s", d.Dst, d.Dev)
				if d.Gw.IsValid() {
					route += " (gateway " + d.Gw.String() + ")"
				}
				break
			}
		}
	}
	var parts []string
	if route != "" {
		parts = append(parts, route)
	}
	if len(strict) > 0 {
		parts = append(parts, "strict rp_filter (1) on "+strings.Join(strict, ", "))
	}
	if len(parts) > 0 {
		p.Cause = strings.Join(parts, "; ") + ": a packet from that source arriving on another interface is a martian"
		p.Source = "routes and sysctls, " + after.Target.String()
	}
}
