package checks

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// maxServiceLines caps the per-service evidence lines of a finding.
const maxServiceLines = 20

// checkRealsAvailable: a service with no real server, or only weight-0
// ones, accepts SYNs it can send nowhere.
func checkRealsAvailable(s *probes.Snapshot, sel probes.Selector) Finding {
	if why := ipvsUnjudged(s); why != "" {
		return skip(why)
	}
	svcs := selected(s, sel)
	if len(svcs) == 0 {
		return skip("no IPVS service in " + s.Target.String())
	}
	var ev, good []Evidence
	var bad []string
	for _, svc := range svcs {
		up := 0
		for _, r := range svc.Reals {
			if r.Weight > 0 {
				up++
			}
		}
		e := Evidence{Fact: fmt.Sprintf("%s: %d real server(s), %d with weight > 0", svc.Key(), len(svc.Reals), up), Source: "ipvs, " + s.Target.String()}
		if up == 0 {
			bad = append(bad, svc.Key())
			ev = append(ev, e)
		} else {
			good = append(good, e)
		}
	}
	// The services without a real first; of an LB of a thousand services
	// the rest are counted, not listed.
	if room := maxServiceLines - len(ev); len(good) > room {
		ev = append(ev, good[:max(room, 0)]...)
		ev = append(ev, Evidence{Fact: fmt.Sprintf("… and %s with a real server of weight > 0", tally.Of(len(good)-max(room, 0), "more service")), Source: "ipvs, " + s.Target.String()})
	} else {
		ev = append(ev, good...)
	}
	if len(bad) == 0 {
		return Finding{Status: Pass, Title: "every service has a real server that takes connections", Evidence: ev}
	}
	return Finding{Status: Fail, Title: "no real server takes connections for " + strings.Join(bad, ", "),
		Reason:   "IPVS accepts the client's SYN for the VIP and has nowhere to send it",
		Evidence: ev,
		about:    bad,
		Fix:      realsFix(s, svcs),
		// IPVS's own drop of those SYNs is this fault, not a second one
		// for drops.vip_flows to fail on (and, fixed during the window,
		// a drop of its first read).
		explains: func(c drops.Counted) bool { _, ok := noRealDrop(s, sel, c); return ok }}
}

// maxFixLines is the most commands realsFix lists.
const maxFixLines = 10

// realsFix gives each service of svcs without a real of weight > 0 one:
// its weight-0 reals weight 1 again (ipvsadm -e, as they are), or, with
// none, the command that adds one, its address left for the operator.
// At most maxFixLines lines: a fix is typed, not scrolled.
func realsFix(s *probes.Snapshot, svcs []ipvs.Service) []string {
	var fix []string
	for _, svc := range svcs {
		if slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool { return r.Weight > 0 }) {
			continue
		}
		if len(svc.Reals) == 0 {
			port := "PORT"
			if svc.FWMark == 0 {
				port = strconv.Itoa(int(svc.Addr.Port()))
			}
			fix = append(fix, fmt.Sprintf("%sipvsadm -a %s -r REAL:%s -m -w 1   # REAL: a server of the service; -m for NAT", s.Target.ExecPrefix(), ipvsadmService(svc), port))
			continue
		}
		for _, r := range svc.Reals {
			fix = append(fix, fmt.Sprintf("%sipvsadm -e %s -r %s %s -w 1", s.Target.ExecPrefix(), ipvsadmService(svc), r.Addr, methodFlag(r.Method)))
		}
	}
	if len(fix) > maxFixLines {
		n := len(fix) - maxFixLines
		fix = append(fix[:maxFixLines], fmt.Sprintf("# … and %s like them", tally.Of(n, "more command")))
	}
	return fix
}

// noRealDrop is the selected service without a real of weight > 0 whose
// VIP drop c was addressed to, when IPVS itself dropped it: ip_vs_in finds
// no destination for a new connection, answers the client with ICMP port
// unreachable and returns NF_DROP from its LOCAL_IN hook (LOCAL_OUT for a
// client on the LB). The kernel frees the packet in nf_hook_slow itself,
// not in a rule table's function (nft_do_chain, ipt_do_table: a filter
// rule's drop, which comes before IPVS's hook), and no filter rule or
// policy moved with it. Seen on 6.1: a SYN to a service with no real is
// "NETFILTER_DROP at nf_hook_slow in input", one per SYN.
func noRealDrop(s *probes.Snapshot, sel probes.Selector, c drops.Counted) (ipvs.Service, bool) {
	if c.ReasonName != "NETFILTER_DROP" || c.Function() != "nf_hook_slow" || c.Family == 0 ||
		(c.Hook != "" && c.Hook != drops.HookInput && c.Hook != drops.HookOutput) {
		return ipvs.Service{}, false
	}
	if p := pointOf(s, c); p != nil && (p.Rule != nil || p.Policy != nil) {
		return ipvs.Service{}, false
	}
	name := proto.Name(c.Proto)
	for _, svc := range selected(s, sel) {
		if svc.FWMark != 0 || svc.Addr != c.Dst || svc.Proto != name {
			continue
		}
		if !slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool { return r.Weight > 0 }) {
			return svc, true
		}
	}
	return ipvs.Service{}, false
}

// checkConntrackTable: a full table drops new flows (IPVS's too, with
// vs.conntrack=1). The kernel's counters are per namespace and count since
// it started, and two causes raise them: a full table (early_drop, and drop
// beyond what insert failures explain) and flows that clash when they are
// confirmed (insert_failed, each also a drop): for SNAT, the source ports
// ran out. Each gets its own finding and fix; neither is "now".
func checkConntrackTable(s *probes.Snapshot, _ probes.Selector) Finding {
	if _, ok := s.Errors[probes.ProbeConntrack]; ok {
		return skip("conntrack could not be read: " + s.Errors[probes.ProbeConntrack])
	}
	st := s.Conntrack.Stats
	if st.MaxEntries == 0 {
		return skip("conntrack table size unknown (nf_conntrack not loaded)")
	}
	src := "conntrack stats, " + s.Target.String()
	full := 100 * float64(st.Entries) / float64(st.MaxEntries)
	ev := []Evidence{
		{Fact: fmt.Sprintf("%d of %d entries (%.0f%%) now", st.Entries, st.MaxEntries, full), Source: src},
		{Fact: fmt.Sprintf("drop %d, early_drop %d, insert_failed %d since the namespace's conntrack started", st.Drop, st.EarlyDrop, st.InsertFailed), Source: src},
	}
	grow := growConntrack(s)
	var fullDrops uint64 // drops that insert failures do not explain: no room
	if st.Drop > st.InsertFailed {
		fullDrops = st.Drop - st.InsertFailed
	}
	switch {
	case (fullDrops > 0 || st.EarlyDrop > 0) && s.Window != nil && windowFullDrops(s) == 0:
		// The counters never go back: a table that was full once, and
		// was grown since, would fail for as long as the namespace
		// lives. The window tells whether it drops now.
		d := s.Window.Deltas.Conntrack
		ev = append(ev, Evidence{Fact: fmt.Sprintf("drop +%d, early_drop +%d, insert_failed +%d in the window: no flow dropped for want of room now", d.Drop, d.EarlyDrop, d.InsertFailed), Source: src})
		return Finding{Status: Warn, Title: "conntrack dropped flows for a full table before the window, none during it",
			Reason: fmt.Sprintf("the counters count since the namespace started; the table is %.0f%% full now", full), Evidence: ev, Fix: grow}
	case fullDrops > 0 || st.EarlyDrop > 0:
		f := Finding{Status: Fail, Title: "conntrack has dropped flows: its table was full", Reason: fmt.Sprintf("a full table drops new connections before IPVS or NAT see them (%.0f%% full now; the counters count since the namespace started)", full), Evidence: ev, Fix: grow}
		if n := windowFullDrops(s); n > 0 {
			f.Title = "conntrack drops new flows: its table is full"
			f.Evidence = append(f.Evidence, Evidence{Fact: fmt.Sprintf("drop +%d in the window beyond insert failures: it is dropping now", n), Source: src})
			f.explains = func(c drops.Counted) bool { return conntrackFullDrop(s, c) }
		}
		return f
	case full >= 90:
		return Finding{Status: Warn, Title: "the conntrack table is over 90% full", Reason: "new flows are dropped once it is full", Evidence: ev, Fix: grow}
	case st.InsertFailed > 0:
		return Finding{Status: Warn, Title: fmt.Sprintf("conntrack dropped %d new flows that clashed with existing ones, not for a full table (%.0f%% full)", st.InsertFailed, full),
			Reason:   "insert_failed counts new flows dropped when confirmed because their tuple was taken: two flows racing, or SNAT that ran out of source ports for one destination (about 64,000 flows per source address, port and real server); the counters count since the namespace started",
			Evidence: ev,
			Fix: []string{fmt.Sprintf("%sconntrack -S   # run twice: insert_failed that keeps rising is happening now", s.Target.ExecPrefix()),
				"# SNAT port exhaustion: give the SNAT rule more source addresses or a wider port range, or spread the flows over more real servers"}}
	}
	return Finding{Status: Pass, Title: "the conntrack table has room and no drops", Evidence: ev}
}

// checkMixedBackends: x_tables and nf_tables rules both run; each tool
// shows only its part, which hides rules from whoever debugs with one.
func checkMixedBackends(s *probes.Snapshot, _ probes.Selector) Finding {
	empty := map[string]bool{} // read, and holds no rule
	var ev []Evidence
	for _, b := range s.Rules.Backends {
		if b.Read {
			empty[b.Name] = b.Rules == 0
			src := s.Target.String()
			if b.Tool != "" {
				src = b.Tool + ", " + src
			}
			ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: %d rule(s)", b.Name, b.Rules), Source: src})
		} else {
			ev = append(ev, Evidence{Fact: b.Name + " not read: " + b.Reason, Source: s.Target.String()})
		}
	}
	if !s.Rules.Mixed {
		// Not mixed is known only when one side is read and empty.
		if !empty[rules.IptablesLegacy] && !(empty[rules.IptablesNft] && empty[rules.Nft]) {
			if un := unreadRules(s); un != "" {
				return skip("whether rules are mixed cannot be judged: " + un)
			}
		}
		return Finding{Status: Pass, Title: "rules live in one framework", Evidence: ev}
	}
	return Finding{Status: Warn, Title: "iptables-legacy and nf_tables rules are both active",
		Reason:   "every packet crosses both, and iptables-legacy-save, iptables-nft-save and nft list each show only their own rules",
		Evidence: ev,
		Fix:      []string{s.Target.ExecPrefix() + "iptables-legacy-save   # move these rules to the backend the rest use, then flush the legacy tables"}}
}

// checkExpireNodest: with expire_nodest_conn=0, connections to a removed or
// quiesced real server linger and blackhole their packets until they time out.
func checkExpireNodest(s *probes.Snapshot, sel probes.Selector) Finding {
	if why := ipvsUnjudged(s); why != "" {
		return skip(why)
	}
	svcs := selected(s, sel)
	if len(svcs) == 0 {
		return skip("no IPVS service in " + s.Target.String())
	}
	v, ok := readable(s, "net.ipv4.vs.expire_nodest_conn")
	if !ok {
		return skip("net.ipv4.vs.expire_nodest_conn could not be read")
	}
	ev := []Evidence{{Fact: "net.ipv4.vs.expire_nodest_conn = " + v.Value, Source: s.Target.String()}}
	if v.Value != "0" {
		return Finding{Status: Pass, Title: "connections to a removed real server are expired", Evidence: ev}
	}
	return Finding{Status: Warn, Title: "connections to a removed real server are kept until they time out",
		Reason:   fmt.Sprintf("with expire_nodest_conn=0, packets of existing connections to a real that leaves are dropped for up to the IPVS timeout of their protocol (%s)", protoTimeouts(s, svcs)),
		Evidence: ev,
		Remedies: []Remedy{{Sysctl: "net.ipv4.vs.expire_nodest_conn", Value: "1"}},
		// IPVS drops them in its LOCAL_IN hook (NF_DROP): a NETFILTER_DROP
		// in input of a flow whose real is no longer one of its service's
		// is this — a client port reused within the old connection's
		// timeout, or a retransmission of it.
		explains: func(c drops.Counted) bool { return probes.RealGoneOf(s, c).IsValid() }}
}

// maxTitleVIPs caps the VIPs a title names; the evidence lists more.
const maxTitleVIPs = 3

// noReplyByVIP is c.NoReply (counted over every flow read; from the
// listed flows for a snapshot from before the probe counted them), the
// most flows first.
func noReplyByVIP(c probes.Conntrack, flows []conntrack.Flow, noReply int) []probes.FlowTally {
	byVIP := slices.Clone(c.NoReply)
	if len(byVIP) == 0 && noReply > 0 {
		at := map[probes.FlowTally]int{}
		for _, f := range flows {
			if f.HasStatus("SEEN_REPLY") {
				continue
			}
			k := probes.FlowTally{Proto: f.Proto, Dst: f.Orig.Dst}
			if _, ok := at[k]; !ok {
				at[k] = len(byVIP)
				byVIP = append(byVIP, k)
			}
			byVIP[at[k]].Count++
		}
	}
	slices.SortStableFunc(byVIP, func(a, b probes.FlowTally) int { return cmp.Compare(b.Count, a.Count) })
	return byVIP
}

func sumTallies(ts []probes.FlowTally) int {
	n := 0
	for _, t := range ts {
		n += t.Count
	}
	return n
}

// checkFlowStates reads the VIP's conntrack flows for the marks a broken
// path leaves: replies that arrive but never complete the handshake, and
// flows of any protocol no reply ever came back for (SEEN_REPLY unset: UDP
// has no TCP state to tell it).
func checkFlowStates(s *probes.Snapshot, sel probes.Selector) Finding {
	if e, ok := s.Errors[probes.ProbeConntrack]; ok {
		return skip("conntrack could not be read: " + e)
	}
	flows := s.Conntrack.Flows
	counts := s.Conntrack.Counts
	if len(counts) == 0 { // a snapshot from before the probe counted
		for _, f := range flows {
			counts = append(counts, probes.FlowCount{State: f.State, SeenReply: f.HasStatus("SEEN_REPLY"), Assured: f.HasStatus("ASSURED"), Count: 1})
		}
	}
	if len(counts) == 0 {
		switch {
		case strings.HasPrefix(s.Conntrack.Selector, "none"):
			// Not dumped (a window's first read, no VIP to dump): no
			// flow was looked for.
			return skip("the VIPs' conntrack flows were not read: " + s.Conntrack.Selector)
		case s.Conntrack.Partial != "":
			return skip("no conntrack flow to a selected VIP among those read, but conntrack was not dumped whole: " + s.Conntrack.Partial)
		}
		return skip("no conntrack flow to a selected VIP (" + s.Conntrack.Selector + ")")
	}
	// Counted over every flow the dump saw; the examples come from the
	// listed ones.
	var total, stuckReply, noReply, done int
	for _, c := range counts {
		total += c.Count
		switch {
		case c.State == "SYN_RECV" && c.SeenReply && !c.Assured:
			stuckReply += c.Count
		case !c.SeenReply: // every protocol: UDP has no TCP state
			noReply += c.Count
		case c.Assured:
			done += c.Count
		}
	}
	var exReply, exNone string
	for _, f := range flows {
		switch {
		case f.State == "SYN_RECV" && f.HasStatus("SEEN_REPLY") && !f.HasStatus("ASSURED"):
			exReply = f.String()
		case !f.HasStatus("SEEN_REPLY"):
			exNone = f.String()
		}
	}
	src := "conntrack, " + s.Target.String()
	counted := fmt.Sprintf("%d flow(s): %d assured, %d with a reply that never completed, %d with no reply", total, done, stuckReply, noReply)
	if s.Conntrack.Partial != "" {
		counted += " (" + s.Conntrack.Partial + ")"
	}
	ev := []Evidence{{Fact: counted, Source: src}}
	switch {
	case stuckReply > 0:
		if exReply != "" {
			ev = append(ev, Evidence{Fact: exReply, Source: src})
		}
		return Finding{Status: Warn, Title: strconv.Itoa(stuckReply) + " flow(s) got the real server's reply, but the handshake never completed",
			Reason:   "the reply reached this host and was dropped on its way back to the client (see sysctl.ip_forward, FORWARD rules, and lbdoctor drops); entries linger until their timeout, so a fixed path still shows them for a while",
			Evidence: ev}
	case noReply > 0:
		byVIP := noReplyByVIP(s.Conntrack, flows, noReply)
		title := strconv.Itoa(noReply) + " flow(s) never saw a reply"
		var about, named []string
		for i, t := range byVIP {
			key := strings.ToUpper(t.Proto) + " " + t.Dst.String() // as ipvs.Service.Key names it
			about = append(about, key)
			if i < maxTitleVIPs {
				named = append(named, fmt.Sprintf("%s (%d)", key, t.Count))
			}
			if i < maxServiceLines {
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: %d flow(s) with no reply", key, t.Count), Source: src})
			}
		}
		if len(named) > 0 {
			title += ": " + strings.Join(named, ", ")
			if n := len(byVIP) - len(named); n > 0 {
				title += " and " + tally.Of(n, "more VIP")
			}
		}
		if listed := min(len(byVIP), maxServiceLines); listed < len(byVIP) || sumTallies(byVIP) < noReply {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("… and %d more flow(s) with no reply to other VIPs", noReply-sumTallies(byVIP[:listed])), Source: src})
		}
		if exNone != "" {
			ev = append(ev, Evidence{Fact: exNone, Source: src})
		}
		why := "the real server did not answer, or answered around the LB (see nat.return_path), or the flows predate their service and no NAT applies to them (see conntrack.stale_flows)"
		if dnatTraced(s, sel) {
			// No IPVS service: the checks named above skip it.
			why = "the DNAT backend did not answer, or answered around the LB (its replies must come back through the LB: source NAT, or the LB as its gateway), or the flows predate the DNAT rule and no NAT applies to them"
		}
		return Finding{Status: Warn, Title: title,
			Reason:   why + "; entries linger until their timeout, so a fixed path still shows them for a while",
			Evidence: ev, about: about}
	}
	if s.Conntrack.Partial != "" {
		// A flow that never completed may be among those the dump did
		// not reach: the flows read complete, the rest were not seen.
		return Finding{Status: Skip, Reason: "conntrack was not dumped whole: " + s.Conntrack.Partial + "; every flow read completes, the rest were not seen", Evidence: ev}
	}
	return Finding{Status: Pass, Title: "the VIP's flows complete", Evidence: ev}
}

// minConntrackMax is the least table size a fix asks for: 65,536 flows
// (about 20 MB at most), the size a kernel gives a host of a few GB. A
// table of a few dozen flows, doubled, fills again with the flows that
// closed and wait to be reaped.
const minConntrackMax = 65536

// growConntrack is the fix of a full conntrack table: twice its size, and
// at least minConntrackMax.
func growConntrack(s *probes.Snapshot) []string {
	n := max(uint64(s.Conntrack.Stats.MaxEntries)*2, minConntrackMax)
	return []string{fmt.Sprintf("sysctl -w net.netfilter.nf_conntrack_max=%d   # on the host: the limit is global", n)}
}

// windowFullDrops is what conntrack dropped in the window for a full
// table: its drop beyond the insert failures (flows that clashed, each a
// drop too). 0 without a window.
func windowFullDrops(s *probes.Snapshot) uint64 {
	if s.Window == nil {
		return 0
	}
	d := s.Window.Deltas.Conntrack
	if d.Drop <= d.InsertFailed {
		return 0
	}
	return d.Drop - d.InsertFailed
}

// conntrackFullDrop says whether a drop is conntrack's own for a full
// table: nf_conntrack_in, in prerouting or output, returns NF_DROP when it
// finds no room for a new flow (NETFILTER_DROP joined to no rule or
// policy), and counts it in conntrack's drop, which moved in the window
// beyond its insert failures.
func conntrackFullDrop(s *probes.Snapshot, c drops.Counted) bool {
	if windowFullDrops(s) == 0 || c.ReasonName != "NETFILTER_DROP" || (c.Hook != "prerouting" && c.Hook != "output") {
		return false
	}
	p := pointOf(s, c)
	return p == nil || (p.Rule == nil && p.Policy == nil)
}
