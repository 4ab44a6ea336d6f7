package checks

// kube-proxy's IPVS mode, judged by its own design (pkg/proxy/ipvs): every
// service address on the dummy kube-ipvs0; source NAT by packet mark — a
// rule in nat KUBE-SERVICES (or KUBE-NODE-PORT, …) selects the service by
// an ipset (KUBE-CLUSTER-IP holds ADDR,PROTO:PORT; KUBE-NODE-PORT-TCP the
// ports) and jumps to KUBE-MARK-MASQ, which sets 0x4000; KUBE-POSTROUTING,
// from nat POSTROUTING, masquerades what carries it — and the hairpin of a
// pod that calls its own service masqueraded through ipset KUBE-LOOP-BACK
// (ENDPOINT,PROTO:PORT,ENDPOINT).

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipset"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// natRules are the rules of one iptables backend's nat table that can see
// packets of a's family, in the order the backend runs them.
func natRules(s *probes.Snapshot, backend string, a netip.Addr) []rules.Rule {
	var out []rules.Rule
	for _, r := range s.Rules.Rules {
		if r.Backend == backend && r.Table == "nat" && r.Covers(a) {
			out = append(out, r)
		}
	}
	return out
}

// iptablesBackends are the iptables backends that hold rules (kube-proxy
// writes through iptables, never native nft, in IPVS mode).
func iptablesBackends(s *probes.Snapshot) []string {
	var out []string
	for _, r := range s.Rules.Rules {
		if r.Backend != rules.Nft && !slices.Contains(out, r.Backend) {
			out = append(out, r.Backend)
		}
	}
	return out
}

// reaches reports whether a packet that starts in chain from can reach
// chain to through the jumps of nat.
func reaches(nat []rules.Rule, from, to string) bool {
	seen := map[string]bool{from: true}
	for queue := []string{from}; len(queue) > 0; queue = queue[1:] {
		if queue[0] == to {
			return true
		}
		for _, r := range nat {
			if r.Chain == queue[0] && strings.HasPrefix(r.Target, "KUBE-") && !seen[r.Target] {
				seen[r.Target] = true
				queue = append(queue, r.Target)
			}
		}
	}
	return false
}

// inSet reports whether the ipset name holds m, with the fact that says so.
func inSet(s *probes.Snapshot, name string, m ipset.Member) (bool, string) {
	x, ok := s.IPSets.Set(name)
	if !ok {
		return false, "no ipset " + name
	}
	if has, _ := x.Has(m); has {
		return true, fmt.Sprintf("ipset %s holds %s", name, m)
	}
	return false, fmt.Sprintf("ipset %s (%s, %d entries) does not hold %s", name, x.Type, x.Entries, m)
}

// kubeSNAT tells whether kube-proxy's source NAT by mark covers svc, with
// the facts it rests on (from the first backend where it does; else the
// facts of what is missing, from each backend).
func kubeSNAT(s *probes.Snapshot, svc ipvs.Service) ([]Evidence, bool) {
	vip := svc.Addr
	var missing []Evidence
	for _, be := range iptablesBackends(s) {
		src := fmt.Sprintf("%s table nat, %s", be, s.Target)
		nat := natRules(s, be, vip.Addr())
		note := func(f string) { missing = append(missing, Evidence{Fact: f, Source: src}) }
		if !reaches(nat, "POSTROUTING", "KUBE-POSTROUTING") {
			note("nat POSTROUTING does not jump to KUBE-POSTROUTING")
			continue
		}
		// The masquerade of marked packets: `-m mark --mark M -j
		// MASQUERADE`, or (kube-proxy ≥ 1.19) `-m mark ! --mark M -j
		// RETURN` then an unconditional MASQUERADE.
		var mark *rules.MarkMatch
		var masq rules.Rule
		var unless *rules.MarkMatch
		for _, r := range nat {
			if r.Chain != "KUBE-POSTROUTING" {
				continue
			}
			w := r.ReadWords()
			if len(w.Sets) > 0 || w.Other || len(w.Marks) > 1 {
				continue
			}
			switch {
			case r.Target == "RETURN" && len(w.Marks) == 1 && w.Marks[0].Negated:
				m := w.Marks[0]
				m.Negated = false
				unless = &m
			case r.Target == "MASQUERADE" && len(w.Marks) == 1 && !w.Marks[0].Negated:
				mark, masq = &w.Marks[0], r
			case r.Target == "MASQUERADE" && len(w.Marks) == 0 && unless != nil:
				mark, masq = unless, r
			}
			if mark != nil {
				break
			}
		}
		if mark == nil {
			note("KUBE-POSTROUTING masquerades no marked packet")
			continue
		}
		markStr := fmt.Sprintf("%#x/%#x", mark.Value, mark.Mask)
		var marker *rules.Rule
		for _, r := range nat {
			if w := r.ReadWords(); r.Chain == "KUBE-MARK-MASQ" && r.Target == "MARK" && w.SetsMark != nil && mark.Satisfies(*w.SetsMark) {
				marker = &r
				break
			}
		}
		if marker == nil {
			note("KUBE-MARK-MASQ does not set mark " + markStr)
			continue
		}
		// The path that sends the service's packets to KUBE-MARK-MASQ,
		// walked from nat PREROUTING: selected by its address and port
		// (KUBE-CLUSTER-IP, KUBE-EXTERNAL-IP, KUBE-LOAD-BALANCER, …) or,
		// for a node port, its port alone.
		w := markWalk{s: s, nat: nat, svc: svc, note: note}
		w.chain("PREROUTING", nil, 0)
		selects := w.selects
		if len(selects) == 0 {
			note(fmt.Sprintf("no rule reached from nat PREROUTING sends %s to KUBE-MARK-MASQ", svc.Key()))
			continue
		}
		return []Evidence{
			{Fact: "kube-proxy marks " + svc.Key() + " for masquerade: " + strings.Join(selects, "; "), Source: src},
			{Fact: fmt.Sprintf("KUBE-MARK-MASQ sets mark %s: %s", markStr, marker.Spec), Source: src},
			{Fact: fmt.Sprintf("nat POSTROUTING → KUBE-POSTROUTING masquerades packets marked %s: %s (%d packets)", markStr, masq.Spec, masq.Packets), Source: src},
		}, true
	}
	return missing, false
}

// markWalk follows nat's jumps from a hook for one service, the way its
// packets go, to the rules that send them to KUBE-MARK-MASQ.
type markWalk struct {
	s       *probes.Snapshot
	nat     []rules.Rule
	svc     ipvs.Service
	note    func(string)
	selects []string // the path to each KUBE-MARK-MASQ the service reaches
}

// chain walks the rules of chain in order; path holds the facts of the
// set matches that selected the service on the way (nil: none yet).
func (w *markWalk) chain(chain string, path []string, depth int) {
	if depth > 8 {
		return // kube-proxy's chains nest three deep
	}
	vip := w.svc.Addr
	for _, r := range w.nat {
		if r.Chain != chain || !strings.HasPrefix(r.Target, "KUBE-") && r.Target != "RETURN" && r.Target != "ACCEPT" {
			continue
		}
		if r.MatchPacket(rules.Packet{Proto: w.svc.Proto, Dst: vip.Addr(), DPort: vip.Port()}) == rules.NoMatch {
			continue
		}
		sets, applies := w.sets(r)
		if !applies {
			continue
		}
		here := path
		if len(sets) > 0 {
			here = append(slices.Clip(path), fmt.Sprintf("%s %s (%d packets), and %s", r.Chain, r.Spec, r.Packets, strings.Join(sets, ", ")))
		}
		switch {
		case r.Target == "RETURN" || r.Target == "ACCEPT":
			if len(sets) > 0 {
				return // e.g. a node port of externalTrafficPolicy Local: never marked
			}
		case r.Target == "KUBE-MARK-MASQ":
			if len(here) > 0 {
				w.selects = append(w.selects, strings.Join(here, " → "))
			}
		default:
			w.chain(r.Target, here, depth+1)
		}
	}
}

// sets reads the set matches of r for the service: the facts of those that
// hold it, and whether every one does (a set that does not hold it, or
// one on what is not known of its packets, stops the rule).
func (w *markWalk) sets(r rules.Rule) ([]string, bool) {
	vip := w.svc.Addr
	var facts []string
	for _, m := range r.ReadWords().Sets {
		var want ipset.Member
		switch {
		case m.Negated:
			return nil, false
		case m.Flags == "dst,dst":
			want = ipset.Member{IP: vip.Addr(), Proto: w.svc.Proto, Port: vip.Port()}
		case m.Flags == "dst":
			x, _ := w.s.IPSets.Set(m.Name)
			if !strings.Contains(x.Type, ":port") || strings.Contains(x.Type, "ip") {
				return nil, false // only bitmap:port, the node ports, is read by port
			}
			want = ipset.Member{Port: vip.Port()}
		default:
			return nil, false // a source: not known of every client
		}
		ok, fact := inSet(w.s, m.Name, want)
		if !ok {
			if r.Target == "KUBE-MARK-MASQ" {
				w.note(fact)
			}
			return nil, false
		}
		facts = append(facts, fact)
	}
	return facts, true
}

// kubeClusterLocal tells whether svc is a ClusterIP of a kube-proxy that
// masquerades no ClusterIP traffic (run without --cluster-cidr and
// --masquerade-all): by its design a ClusterIP's clients are then this
// node's pods and the node itself, and replies to them come back through
// this node from any endpoint, so its endpoints need no source NAT.
func kubeClusterLocal(s *probes.Snapshot, svc ipvs.Service) (Evidence, bool) {
	if s.KubeProxy == nil || s.KubeProxy.Dummy == "" {
		return Evidence{}, false
	}
	set := "KUBE-CLUSTER-IP"
	if svc.Addr.Addr().Is6() {
		set = "KUBE-6-CLUSTER-IP" // kube-proxy's IPv6 sets
	}
	if ok, _ := inSet(s, set, ipset.Member{IP: svc.Addr.Addr(), Proto: svc.Proto, Port: svc.Addr.Port()}); !ok {
		return Evidence{}, false
	}
	for _, r := range s.Rules.Rules {
		if r.Table == "nat" && r.Target == "KUBE-MARK-MASQ" && slices.ContainsFunc(r.ReadWords().Sets, func(m rules.SetMatch) bool { return m.Name == set }) {
			return Evidence{}, false // ClusterIPs are masqueraded for some clients: judged by that
		}
	}
	return Evidence{Fact: fmt.Sprintf("%s is a ClusterIP (ipset %s) and kube-proxy masquerades no ClusterIP traffic (no KUBE-MARK-MASQ rule on %s: run without --cluster-cidr and --masquerade-all): "+
		"its clients are this node's pods and the node itself, whose replies come back through this node from any endpoint", svc.Key(), set, set), Source: "rules and ipsets, " + s.Target.String()}, true
}

// ipsetsUnread says, on a kube-proxy node whose ipsets could not be read,
// why ("" when they were, or the node is none): its source NAT and
// loop-back masquerade rest on them.
func ipsetsUnread(s *probes.Snapshot) string {
	if e, ok := s.Errors[probes.ProbeIPSet]; ok && s.KubeProxy != nil {
		return "the ipsets kube-proxy's rules match could not be read (" + e + ")"
	}
	return ""
}

// kubeMasqRules are kube-proxy's masquerade rules in KUBE-POSTROUTING:
// like `-m ipvs` rules, they see IPVS connections only through conntrack
// (net.ipv4.vs.conntrack=1, which kube-proxy sets for this reason).
func kubeMasqRules(s *probes.Snapshot, sel probes.Selector) []rules.Rule {
	if s.KubeProxy == nil {
		return nil
	}
	var out []rules.Rule
	for _, r := range s.Rules.Rules {
		if r.Backend != rules.Nft && r.Table == "nat" && r.Chain == "KUBE-POSTROUTING" && r.Target == "MASQUERADE" &&
			(!sel.VIP.IsValid() || r.Covers(sel.VIP.Addr())) {
			out = append(out, r)
		}
	}
	return out
}

// loopBackMasq tells whether a MASQUERADE reached from nat POSTROUTING
// covers the hairpin of real (its own client) by an ipset of
// ENDPOINT,PROTO:PORT,ENDPOINT (kube-proxy's KUBE-LOOP-BACK), with the
// facts it found.
func loopBackMasq(s *probes.Snapshot, svc ipvs.Service, real netip.AddrPort) ([]Evidence, bool) {
	var facts []Evidence
	want := ipset.Member{IP: real.Addr(), Proto: svc.Proto, Port: real.Port(), IP2: real.Addr()}
	for _, be := range iptablesBackends(s) {
		src := fmt.Sprintf("%s table nat, %s", be, s.Target)
		nat := natRules(s, be, real.Addr())
		for _, r := range nat {
			if r.Target != "MASQUERADE" || !reaches(nat, "POSTROUTING", r.Chain) {
				continue
			}
			for _, m := range r.ReadWords().Sets {
				if m.Negated || m.Flags != "dst,dst,src" {
					continue
				}
				ok, fact := inSet(s, m.Name, want)
				facts = append(facts, Evidence{Fact: fmt.Sprintf("%s %s (%d packets): %s", r.Chain, r.Spec, r.Packets, fact), Source: src})
				if ok {
					return facts, true
				}
			}
		}
	}
	return facts, false
}

// hairpin is a real seen as a client of its own service.
type hairpin struct {
	svc   ipvs.Service
	real  netip.AddrPort
	conns []ipvs.Conn
	flows int // conntrack flows of it
	snat  int // … that were source-NATed
}

// hairpins finds, in the IPVS connection table and the VIP's conntrack
// flows, the connections IPVS scheduled from a real to itself.
func hairpins(s *probes.Snapshot, svcs []ipvs.Service) []hairpin {
	// A hairpin's client is the real itself: the connections and flows
	// are indexed by their client once, not walked again for each real
	// (10,000 reals × the listed tables took seconds of a slow LB).
	conns := map[netip.Addr][]int{}
	for i, c := range s.IPVS.Conns {
		conns[c.Client.Addr()] = append(conns[c.Client.Addr()], i)
	}
	flows := map[netip.Addr][]int{}
	for i, f := range s.Conntrack.Flows {
		flows[f.Orig.Src.Addr()] = append(flows[f.Orig.Src.Addr()], i)
	}
	var out []hairpin
	for _, svc := range svcs {
		for _, r := range svc.Reals {
			if r.Method != ipvs.Masq {
				continue
			}
			h := hairpin{svc: svc, real: r.Addr}
			for _, i := range conns[r.Addr.Addr()] {
				if c := s.IPVS.Conns[i]; c.VIP == svc.Addr && c.Proto == svc.Proto && c.Dest == r.Addr {
					h.conns = append(h.conns, c)
				}
			}
			for _, i := range flows[r.Addr.Addr()] {
				if f := s.Conntrack.Flows[i]; f.Proto == svc.Proto && f.Orig.Dst == svc.Addr && f.Reply.Src == r.Addr {
					h.flows++
					if f.Reply.Dst.Addr() != f.Orig.Src.Addr() {
						h.snat++
					}
				}
			}
			if len(h.conns) > 0 || h.flows > 0 {
				out = append(out, h)
			}
		}
	}
	return out
}

// checkHairpin judges a real that is a client of its own service (a pod
// calling its service): IPVS may schedule it to itself, and then only
// source NAT makes it work — without it the real receives its own address
// as the source, answers itself directly, and its client socket, which
// called the VIP, never sees a reply from the VIP.
func checkHairpin(s *probes.Snapshot, sel probes.Selector) Finding {
	masq, why := masqueraded(s, sel)
	if why != "" {
		return skip(why)
	}
	src := "IPVS connections, " + s.Target.String()
	var ev []Evidence
	var broken []hairpin
	var brokenFacts []Evidence
	for _, h := range hairpins(s, masq) {
		facts := []Evidence{{Fact: fmt.Sprintf("real %s of %s is its own client: %d IPVS connections from it scheduled to it, %d conntrack flows (%d source-NATed)", h.real, h.svc.Key(), len(h.conns), h.flows, h.snat), Source: src}}
		for i, c := range h.conns {
			if i == 3 {
				facts = append(facts, Evidence{Fact: fmt.Sprintf("… %d more such connections", len(h.conns)-i), Source: src})
				break
			}
			facts = append(facts, Evidence{Fact: fmt.Sprintf("%s %s → %s → %s %s", strings.ToUpper(c.Proto), c.Client, c.VIP, c.Dest, c.State), Source: src})
		}
		lb, masqueraded := loopBackMasq(s, h.svc, h.real)
		covered := slices.ContainsFunc(s.Rules.Rules, func(r rules.Rule) bool { return r.CoversVIP(h.svc.Addr) })
		snatFact := Evidence{Fact: "its flows are source-NATed: the real answers the LB", Source: "conntrack, " + s.Target.String()}
		switch {
		case masqueraded:
			ev = append(append(ev, facts...), lb...)
			if h.snat > 0 {
				ev = append(ev, snatFact)
			}
			continue
		case covered:
			ev = append(ev, facts...)
			ev = append(ev, Evidence{Fact: "a source-NAT rule covers every IPVS connection of " + h.svc.Key(), Source: "rules, " + s.Target.String()})
			continue
		case h.snat > 0: // by a rule lbdoctor does not read as one (nft, marks)
			ev = append(append(ev, facts...), snatFact)
			continue
		}
		broken = append(broken, h)
		brokenFacts = append(brokenFacts, facts...)
		brokenFacts = append(brokenFacts, lb...)
	}
	if len(broken) > 0 {
		if un := cmp.Or(unreadRules(s, broken[0].real.Addr()), ipsetsUnread(s)); un != "" {
			return skip(fmt.Sprintf("real %s of %s is its own client and no masquerade for it was found among the rules read, but %s", broken[0].real, broken[0].svc.Key(), un))
		}
		h := broken[0]
		if s.KubeProxy == nil {
			brokenFacts = append(brokenFacts, Evidence{Fact: "no source-NAT rule covers " + h.svc.Key(), Source: "rules, " + s.Target.String()})
		}
		var about []string
		for _, b := range broken {
			about = append(about, b.svc.Key())
		}
		reason := "IPVS scheduled the real's own connections to the VIP back to the real; without source NAT it receives its own address as the source, " +
			"answers itself directly instead of through the LB, and its client, which called the VIP, never gets a reply from the VIP"
		if s.KubeProxy != nil {
			reason += " (kube-proxy masquerades this hairpin through ipset KUBE-LOOP-BACK in KUBE-POSTROUTING, rebuilt when kube-proxy restarts)"
		}
		f := Finding{
			Status:   Fail,
			Title:    fmt.Sprintf("real %s is a client of its own service %s, and nothing masquerades it", h.real, h.svc.Key()),
			Reason:   reason,
			Evidence: append(ev, brokenFacts...),
			about:    about,
		}
		switch {
		case s.KubeProxy != nil:
			// kube-proxy rewrites its chains and sets on every sync: a
			// rule or member lbdoctor added there would be its, unrecorded,
			// and gone at the next sync.
			f.Fix = hairpinFix(s, h)
			f.FixByHand = "kube-proxy owns KUBE-LOOP-BACK and KUBE-POSTROUTING and rebuilds them; lbdoctor changes nothing kube-proxy manages"
		case h.real.Addr().Is4():
			// The same masquerade setup adds for a service, narrowed to the
			// real's connections to itself: applied, recorded and torn down
			// as setup's are.
			f.Remedies = []Remedy{{SNAT: h.svc.Addr.String(), Proto: h.svc.Proto, Real: h.real.Addr().String()}}
			if v, ok := readable(s, "net.ipv4.vs.conntrack"); ok && v.Value == "0" {
				// An -m ipvs match sees IPVS connections only through conntrack.
				f.Remedies = append(f.Remedies, Remedy{Sysctl: "net.ipv4.vs.conntrack", Value: "1"})
			}
		default:
			f.Fix = []string{hairpinRule(s, h.svc.Addr, h.real.Addr())}
			f.FixByHand = "setup and --fix build IPv4 source NAT only"
		}
		return f
	}
	// No hairpin seen. On a kube-proxy node every local endpoint may
	// call its own service at any time: kube-proxy puts each in
	// KUBE-LOOP-BACK for that, so one missing is a hairpin that will fail.
	if s.KubeProxy != nil {
		var gaps []string
		for _, svc := range masq {
			if s.KubeProxy.IsProbeService(svc.Addr, svc.Proto) {
				continue
			}
			if slices.ContainsFunc(s.Rules.Rules, func(r rules.Rule) bool { return r.CoversVIP(svc.Addr) }) {
				continue
			}
			for _, r := range svc.Reals {
				if dev, gw := routeTo(s, r.Addr.Addr()); r.Method != ipvs.Masq || gw.IsValid() || dev == "" {
					continue // a pod of another node: it reaches the VIP through its own node
				}
				if facts, ok := loopBackMasq(s, svc, r.Addr); !ok {
					gaps = append(gaps, fmt.Sprintf("%s of %s", r.Addr, svc.Key()))
					ev = append(ev, facts...)
				}
			}
		}
		if len(gaps) > 0 {
			if un := cmp.Or(unreadRules(s), ipsetsUnread(s)); un != "" {
				return skip("local endpoints without a loop-back masquerade among the rules read, but " + un)
			}
			return Finding{
				Status: Warn,
				Title:  "a local endpoint calling its own service would get no reply: " + firstOf(gaps, 3),
				Reason: "kube-proxy masquerades a pod that IPVS schedules to itself through ipset KUBE-LOOP-BACK (ENDPOINT,PROTO:PORT,ENDPOINT) and a MASQUERADE in KUBE-POSTROUTING; " +
					"these endpoints on this node are not covered, so the first time one calls its own service and is scheduled to itself it hangs (none did in this snapshot)",
				Evidence: append(ev, Evidence{Fact: "kube-proxy node: " + strings.Join(s.KubeProxy.Facts(), "; "), Source: s.Target.String()}),
				Fix:      []string{kubeRestart},
			}
		}
	}
	// No hairpin seen is a pass only when a table that would show one
	// was read: the IPVS connections, or the VIPs' conntrack flows.
	if unread := hairpinTablesUnread(s); len(unread) == 2 {
		return Finding{Status: Skip, Reason: "no hairpin can be seen: " + strings.Join(unread, "; "), Evidence: ev}
	} else if len(unread) == 1 {
		ev = append(ev, Evidence{Fact: unread[0] + ": judged by the other table alone", Source: s.Target.String()})
	}
	if len(ev) == 0 {
		ev = append(ev, Evidence{Fact: "no real server was seen as a client of its own service", Source: src})
	}
	return Finding{Status: Pass, Title: "no real server's own connections to its service go unmasqueraded", Evidence: ev}
}

// hairpinTablesUnread says which of the tables a hairpin shows in were
// not seen whole: the IPVS connection table (unread, too big to read, or
// listed in part), the VIPs' conntrack flows (unread, not dumped, dumped
// or listed in part, or without IPVS's rewrite: vs.conntrack not 1).
func hairpinTablesUnread(s *probes.Snapshot) []string {
	var out []string
	switch why := connTableSkip(s); {
	case why != "":
		out = append(out, why)
	case s.IPVS.ConnsOmitted > 0:
		out = append(out, fmt.Sprintf("%d IPVS connections past the %d listed were not looked at", s.IPVS.ConnsOmitted, len(s.IPVS.Conns)))
	}
	vsct, _ := readable(s, "net.ipv4.vs.conntrack")
	switch e, ok := s.Errors[probes.ProbeConntrack]; {
	case ok:
		out = append(out, "conntrack could not be read: "+e)
	case strings.HasPrefix(s.Conntrack.Selector, "none"):
		out = append(out, "the VIPs' conntrack flows were not read: "+s.Conntrack.Selector)
	case s.Conntrack.Partial != "":
		out = append(out, "conntrack was not dumped whole: "+s.Conntrack.Partial)
	case s.Conntrack.Omitted > 0:
		out = append(out, fmt.Sprintf("%d conntrack flows past the %d listed were not looked at", s.Conntrack.Omitted, len(s.Conntrack.Flows)))
	case vsct.Value != "1":
		// conntrack holds IPVS's rewrite (the real as reply source) only
		// with vs.conntrack=1.
		out = append(out, "conntrack shows IPVS connections only with net.ipv4.vs.conntrack=1 (it is "+cmp.Or(vsct.Value, "unread")+")")
	}
	return out
}

// hairpinTool is the iptables command that writes a hairpin's masquerade
// for real: the backend the namespace's rules use, of real's family.
func hairpinTool(s *probes.Snapshot, real netip.Addr) string {
	tool := "iptables"
	if be := iptablesBackends(s); len(be) > 0 {
		tool = rules.Command(be[0], "ip")
	}
	if real.Is6() && !real.Is4In6() {
		tool = rules.Command(strings.Replace(tool, "ip6tables", "iptables", 1), "ip6")
	}
	return tool
}

// hairpinRule is the command that masquerades the IPVS connections of a
// real to itself through vip, outside kube-proxy.
func hairpinRule(s *probes.Snapshot, vip netip.AddrPort, real netip.Addr) string {
	return fmt.Sprintf("%s%s -t nat -A POSTROUTING -m ipvs --vaddr %s --vport %d -s %s -d %s -j MASQUERADE",
		s.Target.ExecPrefix(), hairpinTool(s, real), vip.Addr(), vip.Port(), real, real)
}

// hairpinFix is what masquerades a real's connections to itself on a
// kube-proxy node: its own loop-back set and rule (restarting kube-proxy
// rebuilds both).
func hairpinFix(s *probes.Snapshot, h hairpin) []string {
	pre := s.Target.ExecPrefix()
	tool := hairpinTool(s, h.real.Addr())
	var fix []string
	member := ipset.Member{IP: h.real.Addr(), Proto: h.svc.Proto, Port: h.real.Port(), IP2: h.real.Addr()}
	if ok, _ := inSet(s, "KUBE-LOOP-BACK", member); !ok {
		if _, exists := s.IPSets.Set("KUBE-LOOP-BACK"); !exists {
			fix = append(fix, pre+"ipset create KUBE-LOOP-BACK hash:ip,port,ip")
		}
		fix = append(fix, pre+"ipset add KUBE-LOOP-BACK "+member.String())
	}
	nat := natRules(s, strings.TrimSuffix(tool, "6"), h.real.Addr())
	hasRule := slices.ContainsFunc(nat, func(r rules.Rule) bool {
		return r.Target == "MASQUERADE" && slices.ContainsFunc(r.ReadWords().Sets, func(m rules.SetMatch) bool {
			return m.Name == "KUBE-LOOP-BACK" && m.Flags == "dst,dst,src" && !m.Negated
		})
	})
	if !hasRule {
		fix = append(fix, pre+tool+" -t nat -I KUBE-POSTROUTING 1 -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE")
	}
	return append(fix, kubeRestart)
}

// checkARPStrict judges the ARP of VIPs held on a dummy link (kube-proxy's
// kube-ipvs0): Linux answers ARP for any of its addresses on any interface
// (arp_ignore=0) and may announce them as a source elsewhere
// (arp_announce<2), so a VIP inside a LAN's subnet on a dummy link is
// claimed on that LAN by this node — by every node, where kube-proxy puts
// the same load-balancer address on each (MetalLB's L2 mode, keepalived).
// kube-proxy's --ipvs-strict-arp sets arp_ignore=1 and arp_announce=2.
func checkARPStrict(s *probes.Snapshot, sel probes.Selector) Finding {
	svcs, why := addressed(s, sel)
	if why != "" {
		return skip(why)
	}
	if e, ok := s.Errors[probes.ProbeNet]; ok {
		return skip("interfaces could not be read: " + e)
	}
	var ev []Evidence
	var risky []string
	var remedies []Remedy
	onDummy := 0
	seen := map[netip.Addr]bool{}
	src := "addresses and sysctls, " + s.Target.String()
	for _, svc := range svcs {
		vip := svc.Addr.Addr()
		if !vip.Is4() || seen[vip] {
			continue // ARP is IPv4's
		}
		seen[vip] = true
		holder := ""
		for _, l := range s.Net.Links {
			if l.Type == "dummy" && slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr() == vip }) {
				holder = l.Name
			}
		}
		if holder == "" {
			continue
		}
		onDummy++
		for _, l := range s.Net.Links {
			if l.Name == holder || l.Type == "loopback" || l.Name == "lo" || !l.Up {
				continue
			}
			for _, p := range l.Addrs {
				if !p.Contains(vip) || p.Bits() == 32 {
					continue
				}
				_, _, ignore, ok1 := probes.ConfMax(s.Sysctls, l.Name, "arp_ignore")
				_, _, announce, ok2 := probes.ConfMax(s.Sysctls, l.Name, "arp_announce")
				if !ok1 || !ok2 {
					return skip("arp_ignore / arp_announce of " + l.Name + " could not be read")
				}
				fact := fmt.Sprintf("VIP %s is on dummy %s and inside %s's subnet %s: arp_ignore=%d, arp_announce=%d there (the larger of all and %s)", vip, holder, l.Name, p.Masked(), ignore, announce, l.Name)
				ev = append(ev, Evidence{Fact: fact, Source: src})
				if ignore < 1 || announce < 2 {
					risky = append(risky, fmt.Sprintf("%s on %s", vip, l.Name))
					if ignore < 1 {
						remedies = appendRemedy(remedies, Remedy{Sysctl: "net.ipv4.conf.all.arp_ignore", Value: "1"})
					}
					if announce < 2 {
						remedies = appendRemedy(remedies, Remedy{Sysctl: "net.ipv4.conf.all.arp_announce", Value: "2"})
					}
				}
			}
		}
	}
	if onDummy == 0 {
		return skip("no selected IPv4 VIP is held on a dummy link")
	}
	if len(risky) > 0 {
		return Finding{
			Status: Warn,
			Title:  "this node answers ARP for VIPs it holds on a dummy link: " + strings.Join(risky, ", "),
			Reason: "with arp_ignore=0 Linux answers ARP for any of its addresses on any interface, and with arp_announce<2 it may use them as ARP sources: " +
				"the LAN sees this node claim the VIP; where every node holds it (kube-proxy puts each load-balancer address on every node's kube-ipvs0), " +
				"the nodes fight over it and the announcer (MetalLB L2, keepalived) loses its traffic (kube-proxy's --ipvs-strict-arp sets arp_ignore=1, arp_announce=2)",
			Evidence: ev,
			Remedies: remedies,
		}
	}
	if len(ev) == 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%d VIP(s) on a dummy link, none inside a subnet of another interface: no LAN asks for them by ARP", onDummy), Source: src})
	}
	return Finding{Status: Pass, Title: "VIPs on a dummy link are not claimed by ARP on a LAN", Evidence: ev}
}

// kubeRebuild is the fix that restores what kube-proxy built, on its
// node: it rebuilds its rules and sets when it starts.
func kubeRebuild(s *probes.Snapshot) []string {
	if s.KubeProxy == nil {
		return nil
	}
	return []string{kubeRestart}
}

const kubeRestart = "kubectl -n kube-system rollout restart daemonset kube-proxy  # kube-proxy rebuilds its KUBE-* rules and ipsets at start"

// firstOf lists the first n items and counts the rest.
func firstOf(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}

func appendRemedy(rs []Remedy, r Remedy) []Remedy {
	if slices.Contains(rs, r) {
		return rs
	}
	return append(rs, r)
}
