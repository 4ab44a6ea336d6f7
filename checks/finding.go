// Package checks judges a probes.Snapshot and returns findings: pure
// functions, no I/O, testable from fixtures. Each finding carries a stable
// dotted id, a status, the evidence it rests on and the exact fix.
package checks

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/flowpath"

	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// Status of a finding.
type Status string

const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip" // always with a Reason
)

// Evidence is one fact and where it was read.
type Evidence struct {
	Fact   string `json:"fact"`
	Source string `json:"source"`
}

func (e Evidence) String() string { return fmt.Sprintf("%s (%s)", e.Fact, e.Source) }

// Finding is the verdict of one check.
type Finding struct {
	ID       string     `json:"id"`
	Status   Status     `json:"status"`
	Title    string     `json:"title"`
	Reason   string     `json:"reason,omitempty"` // why it was skipped, or the failure in one line
	Evidence []Evidence `json:"evidence"`
	Fix      []string   `json:"fix,omitempty"` // commands, in order
	// Remedies are the fix as data, for `check --fix` to apply through the
	// transactional engine.
	Remedies []Remedy `json:"remedies,omitempty"`
	// FixByHand says why `check --fix` does not apply this failing
	// finding's fix, when it has one to print but no remedy.
	FixByHand string `json:"fix_by_hand,omitempty"`
	// Path is the causal chain of a failing finding: the paths of the
	// services' flows it is about, leg by leg, and where they stop (from
	// the window; none for a static snapshot).
	Path []flowpath.Path `json:"path,omitempty"`
	// Services names the services a finding that did not pass is about
	// (ipvs.Service.Key: "TCP 10.1.0.6:8085", "FWM 16"; a VIP that IPVS
	// does not serve, by its flows' protocol and address), sorted, when
	// they are some of the selected services; absent when it is about
	// every selected one (or about none in particular). Run sets it from
	// about: `lbdoctor serve` labels a per-service series with each.
	Services []string `json:"services,omitempty"`
	// about names the services (ipvs.Service.Key) a finding is about,
	// when it knows: their paths explain it. Empty: every selected one.
	about []string
	// explains says whether this finding, when it fails, is the cause of
	// a drop drops.vip_flows counted: drops.vip_flows then points at it
	// instead of failing beside it (see explainDrops). nil: of none.
	explains func(drops.Counted) bool
}

// Remedy is one change that fixes a finding.
type Remedy struct {
	Sysctl string `json:"sysctl,omitempty"` // set this key …
	Value  string `json:"value,omitempty"`  // … to this value
	SNAT   string `json:"snat,omitempty"`   // add source NAT for this VIP (ADDR:PORT)
	Proto  string `json:"proto,omitempty"`  // … of this protocol
	// Real narrows SNAT to the connections of this real server (ADDR) to
	// itself through the VIP: a hairpin (nat.hairpin).
	Real string `json:"real,omitempty"`
	Addr string `json:"addr,omitempty"` // add this address (ADDR/BITS) …
	Dev  string `json:"dev,omitempty"`  // … to this interface
}

// Check is one entry of the catalog.
type Check struct {
	ID    string
	Title string
	Run   func(*probes.Snapshot, probes.Selector) Finding
	// Asked, when set, says whether the user asked for the check (e.g.
	// ipvs.drift by check --expect): one not asked for is left out.
	Asked func(*probes.Snapshot) bool
	// Explains says whether the check's failure can name the cause of a
	// drop drops.vip_flows counted (Finding.explains): such checks alone
	// are run again on the window's first read, for a drop the last read
	// explains not (healedCause). A check not marked explains no drop
	// on either read (run drops its Finding.explains): the two reads are
	// judged alike, and a mark forgotten shows in every test of that
	// drop.
	Explains bool
}

// Catalog lists every check in the order they are shown.
var Catalog = []Check{
	{ID: "kernel.ipvs", Title: "IPVS is usable", Run: checkIPVS},
	{ID: "ipvs.vip_local", Title: "every VIP is a local address", Run: checkVIPLocal, Explains: true},
	{ID: "sysctl.ip_forward", Title: "IP forwarding is on for masquerade services", Run: checkIPForward, Explains: true},
	{ID: "sysctl.rp_filter", Title: "the reverse-path filter lets the VIPs' clients in", Run: checkRPFilter, Explains: true},
	{ID: "sysctl.vs_conntrack", Title: "IPVS connections are in conntrack where rules need them", Run: checkVSConntrack},
	{ID: "nat.return_path", Title: "replies of masquerade services come back through the LB", Run: checkReturnPath, Explains: true},
	{ID: "nat.hairpin", Title: "a real server that calls its own service is masqueraded", Run: checkHairpin},
	{ID: "net.arp_strict", Title: "VIPs on a dummy link are not claimed by ARP on a LAN", Run: checkARPStrict},
	{ID: "net.send_redirects", Title: "a one-arm LB sends no ICMP redirects", Run: checkSendRedirects},
	{ID: "ipvs.reals_available", Title: "every service has a real server that takes connections", Run: checkRealsAvailable, Explains: true},
	{ID: "ipvs.real_health", Title: "every real server answers from the LB", Run: checkRealHealth, Explains: true},
	{ID: "ipvs.forward_method", Title: "every real's forwarding method can work where it is", Run: checkForwardMethod},
	{ID: "ipvs.drift", Title: "IPVS runs what the --expect file says", Run: checkDrift, Asked: driftAsked},
	{ID: "ipvs.expire_nodest_conn", Title: "connections to a removed real server are expired", Run: checkExpireNodest, Explains: true},
	// Faults that come with change and with time (checks/churn.go).
	{ID: "ipvs.persistence_quiescent", Title: "no persistent client is pinned to a real of weight 0", Run: checkPersistenceQuiescent},
	{ID: "ipvs.stale_udp", Title: "no UDP client is kept on a removed or weight-0 real", Run: checkStaleUDP},
	{ID: "ipvs.conn_reuse", Title: "a reused client port is scheduled anew, without delay", Run: checkConnReuse},
	{ID: "ipvs.timeouts", Title: "IPVS keeps idle TCP connections as long as keepalive lets them idle", Run: checkTimeouts, Explains: true},
	{ID: "conntrack.stale_flows", Title: "no VIP flow predates its service", Run: checkStaleFlows},
	{ID: "conntrack.table", Title: "the conntrack table has room and no drops", Run: checkConntrackTable, Explains: true},
	{ID: "conntrack.flow_states", Title: "whether the VIP's flows complete", Run: checkFlowStates},
	{ID: "firewall.filter", Title: "no packet filter drops the services' flows", Run: checkFirewall, Explains: true},
	{ID: "rules.mixed_backends", Title: "rules live in one framework", Run: checkMixedBackends},
	{ID: "drops.vip_flows", Title: "no packet of the selected flows is dropped", Run: checkDrops},
}

// MaxFindingPaths caps the paths a failing finding carries: the ones
// that stop first.
const MaxFindingPaths = 4

// Run runs the catalog against a snapshot.
func Run(s *probes.Snapshot, sel probes.Selector) []Finding {
	out := make([]Finding, 0, len(Catalog))
	for _, c := range Catalog {
		if c.Asked != nil && !c.Asked(s) {
			continue
		}
		f := c.run(s, sel)
		if f.Evidence == nil {
			f.Evidence = []Evidence{}
		}
		f.Evidence = capEvidence(f.Evidence)
		if len(f.Remedies) > 0 {
			// The commands are the remedies', said one way: what --fix
			// applies is what the text tells a person to type.
			// A check that also wrote the same command keeps it once.
			fix := RemedyFix(s, f.Remedies)
			for _, x := range f.Fix {
				if !slices.Contains(fix, x) {
					fix = append(fix, x)
				}
			}
			f.Fix = fix
		}
		if f.Status != Pass {
			f.Services = servicesOf(s, sel, f.about)
		}
		if f.Status == Fail {
			f.Path = pathsOf(s, f.about)
			f.Evidence = append(f.Evidence, captureEvidence(s, f.Path)...)
		}
		out = append(out, f)
	}
	explainDrops(s, sel, out)
	return out
}

// run runs one check: its finding with its id and title, explaining
// drops only when the check is marked so.
func (c Check) run(s *probes.Snapshot, sel probes.Selector) Finding {
	f := c.Run(s, sel)
	f.ID = c.ID
	if f.Title == "" {
		f.Title = c.Title
	}
	if !c.Explains {
		f.explains = nil
	}
	return f
}

// servicesOf is about as Finding.Services shows it: sorted, nil when it
// names every selected service (the finding is about the selection, whose
// own series serve has: a per-service one beside it would be the same
// fault twice, and page twice).
func servicesOf(s *probes.Snapshot, sel probes.Selector, about []string) []string {
	if len(about) == 0 {
		return nil
	}
	names := slices.Compact(slices.Sorted(slices.Values(about)))
	// A set: a finding about each of 1,000 services is judged against each.
	in := make(map[string]bool, len(names))
	for _, n := range names {
		in[n] = true
	}
	if all := selectedKeys(s, sel); len(all) > 0 && !slices.ContainsFunc(all, func(k string) bool { return !in[k] }) {
		return nil
	}
	return names
}

// selectedKeys names the selected services as Finding.Services does: the
// selected IPVS services; for a --vip IPVS does not serve (nft or iptables
// DNAT), its address and port in the selected protocol, or in TCP and UDP
// when none is; none when the selection is every port of such an address
// (its services are whatever flows it has: no finding can be known to be
// about all of them).
func selectedKeys(s *probes.Snapshot, sel probes.Selector) []string {
	var keys []string
	for _, svc := range selected(s, sel) {
		keys = append(keys, svc.Key())
	}
	if len(keys) > 0 || !sel.VIP.IsValid() || sel.VIP.Port() == 0 {
		return keys
	}
	for _, p := range []string{"tcp", "udp"} {
		if sel.Proto == "" || sel.Proto == p {
			keys = append(keys, ipvs.Service{Proto: p, Addr: sel.VIP}.Key())
		}
	}
	return keys
}

// FindingServices names the services f is about (ipvs.Service.Key): its
// Services, or every selected service when it names none (check --fix
// records its changes as made for them).
func FindingServices(s *probes.Snapshot, sel probes.Selector, f Finding) []string {
	if len(f.Services) > 0 {
		return f.Services
	}
	return selectedKeys(s, sel)
}

// captureEvidence says, for each path a capture counted (check
// --capture), where its packets were last seen on the wire and the leg
// they never reached.
func captureEvidence(s *probes.Snapshot, paths []flowpath.Path) []Evidence {
	var out []Evidence
	if s.Window == nil || s.Window.Capture == nil || len(paths) == 0 {
		return nil
	}
	const src = "capture on the LB's interfaces (AF_PACKET)"
	c := s.Window.Capture
	var ifaces []string
	for _, st := range c.Interfaces {
		ifaces = append(ifaces, st.Interface)
	}
	// What the capture could not see is said beside what it saw.
	out = append(out, Evidence{Fact: fmt.Sprintf("captured %d packets on %s: %d lost in the kernel's rings, %d not processed, %d claimed by no flow (%d of them the LB's own, e.g. the health probes)",
		c.Packets, strings.Join(ifaces, ", "), c.KernelDrops, c.NotProcessed, c.Unclaimed, c.Own), Source: src})
	if c.Widened != "" {
		out = append(out, Evidence{Fact: fmt.Sprintf("%s: %d packets of those ports to or from no selected address were left out", c.Widened, c.Outside), Source: src})
	}
	for _, p := range paths {
		if story := p.CaptureStory(); story != "" {
			out = append(out, Evidence{Fact: fmt.Sprintf("%s → %s: %s", p.Service, p.Real, story), Source: src})
		}
	}
	return out
}

// pathsOf picks the window's paths that explain a failing finding about
// services (every service when none is named): the paths that stop, or,
// when none does, all of them; at most MaxFindingPaths.
func pathsOf(s *probes.Snapshot, services []string) []flowpath.Path {
	if s.Window == nil {
		return nil
	}
	var all, stopping []flowpath.Path
	for _, p := range s.Window.Paths {
		if len(services) > 0 && !slices.Contains(services, p.Service) {
			continue
		}
		all = append(all, p)
		if !p.Complete() {
			stopping = append(stopping, p)
		}
	}
	if len(stopping) > 0 {
		all = stopping
	}
	// The paths traffic took first: on an LB of many services, those of
	// the services no client used in the window stop too (nothing came),
	// and must not crowd out the one whose packets died.
	var busy, idle []flowpath.Path
	for _, p := range all {
		if carried(p) {
			busy = append(busy, p)
		} else {
			idle = append(idle, p)
		}
	}
	all = append(busy, idle...)
	if len(all) > MaxFindingPaths {
		all = all[:MaxFindingPaths:MaxFindingPaths]
	}
	return all
}

// carried reports whether any leg of p counted a packet in the window.
func carried(p flowpath.Path) bool {
	return slices.ContainsFunc(p.Legs, func(l flowpath.Leg) bool { return l.Counted && l.Packets > 0 })
}

// explainDrops is the one place that decides which finding explains the
// drops drops.vip_flows counted: a drop whose cause a failing finding
// names (its explains) is that finding's evidence. When every drop is
// explained so, drops.vip_flows warns, pointing at the root causes, instead
// of failing beside them: one fault, one failing id. When some are, its
// evidence says how many and by what.
//
// A drop no finding of the last read explains is judged on the window's
// first read (Window.First), only then (no second run of the checks when
// every drop is explained or none happened): one a finding failing there
// explains, whose check passes now, was dropped while a fault since fixed
// was there; drops.vip_flows warns with it rather than fail right after
// the fix.
func explainDrops(s *probes.Snapshot, sel probes.Selector, fs []Finding) {
	i := slices.IndexFunc(fs, func(f Finding) bool { return f.ID == "drops.vip_flows" })
	if i < 0 || fs[i].Status != Fail || s.Drops == nil {
		return
	}
	var causes []string
	var explained, total, healedDrops uint64
	gone := map[netip.AddrPort]string{} // a removed real's cause, made once
	var before []Finding                // the first read's findings, run once when needed
	var healed []Evidence
	for _, c := range s.Drops.Drops {
		total += c.Count
		// A warning may explain a drop too (ipvs.expire_nodest_conn: IPVS
		// drops packets of connections to a removed real); failures first.
		j := slices.IndexFunc(fs, func(f Finding) bool { return f.Status == Fail && f.explains != nil && f.explains(c) })
		if j < 0 {
			j = slices.IndexFunc(fs, func(f Finding) bool { return f.Status == Warn && f.explains != nil && f.explains(c) })
		}
		var cause string
		if j >= 0 {
			cause = fs[j].ID
		} else if r := probes.RealGoneOf(s, c); r.IsValid() {
			// IPVS's own drop of a stale connection's packet after its
			// real was removed (a retransmission, a reused client port):
			// no check fails for it when expire_nodest_conn=1, yet it is
			// explained, by the removal.
			if cause = gone[r]; cause == "" {
				cause = "the removal of real " + r.String() + " (IPVS drops its connections' packets)"
				gone[r] = cause
			}
		} else if id, h, ok := healedCause(s, sel, fs, &before, c); ok {
			cause = id + " (fixed during the window)"
			healedDrops += c.Count
			if !slices.Contains(healed, h) {
				healed = append(healed, h)
			}
		} else {
			continue // a drop no finding explains: drops.vip_flows is its only word
		}
		explained += c.Count
		if !slices.Contains(causes, cause) {
			causes = append(causes, cause)
		}
	}
	d := &fs[i]
	d.Evidence = append(d.Evidence, healed...)
	switch {
	case explained == 0:
	case explained < total:
		d.Evidence = append(d.Evidence, Evidence{Fact: fmt.Sprintf("%d of these %d drops are explained by %s; nothing explains the rest", explained, total, strings.Join(causes, ", ")), Source: "kfree_skb tracer, the findings"})
	default:
		d.Status = Warn
		d.Reason = "explained by " + strings.Join(causes, ", ") + ": " + d.Reason
		d.Title += " — the cause: " + strings.Join(causes, ", ")
		if healedDrops == total {
			// Every cause is already fixed: the commands the last read
			// suggests for these drops (list INPUT's rules, ip route
			// get) would send the operator after a fault that is gone.
			d.Fix, d.Remedies = nil, nil
		}
	}
}

// healedCause says whether drop c is explained by a finding failing on the
// window's first read whose check passes on the last (fs): the fault was
// fixed during the window. The first read's findings are run once, into
// *before, the first time a drop needs them: those of the checks that can
// explain a drop (Check.Explains) and pass on the last read alone, as
// they are, for their status, title and explains — the rest of the
// catalog would cost as much again as the last read's run (1,000
// services: most of the checks' time) and judge nothing here.
func healedCause(s *probes.Snapshot, sel probes.Selector, fs []Finding, before *[]Finding, c drops.Counted) (string, Evidence, bool) {
	if s.Window == nil || s.Window.First == nil {
		return "", Evidence{}, false
	}
	if *before == nil {
		// The first read judged with the window's evidence (its drop
		// points join a drop to its rule) but without its drops: its own
		// drops.vip_flows must not judge them again.
		first := *s.Window.First
		w := *s.Window
		w.First = nil
		first.Window, first.Drops = &w, nil
		*before = []Finding{}
		for _, ch := range Catalog {
			// Only a check that passes now can have been fixed.
			now := slices.IndexFunc(fs, func(n Finding) bool { return n.ID == ch.ID })
			if ch.Explains && now >= 0 && fs[now].Status == Pass && (ch.Asked == nil || ch.Asked(&first)) {
				*before = append(*before, ch.run(&first, sel))
			}
		}
	}
	for _, f := range *before {
		if f.Status != Fail || f.explains == nil || !f.explains(c) {
			continue
		}
		j := slices.IndexFunc(fs, func(n Finding) bool { return n.ID == f.ID })
		if j < 0 || fs[j].Status != Pass {
			continue
		}
		return f.ID, Evidence{Fact: fmt.Sprintf("dropped while %s (%s); fixed during the window (now %s)", f.ID, f.Title, fs[j].Title),
			Source: "kfree_skb tracer, the findings of the window's first and last reads"}, true
	}
	return "", Evidence{}, false
}

// explainsReasons explains the drops of these kernel drop reasons
// (IP_RPFILTER) or drop functions (ip6_forward).
func explainsReasons(names ...string) func(drops.Counted) bool {
	return func(c drops.Counted) bool {
		return slices.Contains(names, c.ReasonName) || slices.Contains(names, c.Function())
	}
}

// explainsTo explains any drop of a packet to one of these addresses.
func explainsTo(addrs []netip.Addr) func(drops.Counted) bool {
	return func(c drops.Counted) bool { return c.Family != 0 && slices.Contains(addrs, c.Dst.Addr()) }
}

// MaxEvidence caps a finding's evidence lines: on an LB of 1,000 services
// a line per service would bury the one that matters. The lines left out
// are counted in the last one.
const MaxEvidence = 24

// withLines appends n lines of evidence to ev, formatting them (lines)
// only when capEvidence may show one: it shows the first MaxEvidence-1
// lines of a longer list, so a line appended at MaxEvidence or past it is
// counted in the last line shown, never read, and goes in as notShown.
// A finding's lines are only ever appended, or put after others, never
// taken out: a line past MaxEvidence stays past it. A check that writes a
// line per service or real (1,000 services: thousands of lines) formats
// the first few.
func withLines(ev []Evidence, n int, lines func() []Evidence) []Evidence {
	if len(ev) < MaxEvidence {
		return append(ev, lines()...)
	}
	for range n {
		ev = append(ev, notShown)
	}
	return ev
}

// withLine is withLines of one line.
func withLine(ev []Evidence, line func() Evidence) []Evidence {
	if len(ev) < MaxEvidence {
		return append(ev, line())
	}
	return append(ev, notShown)
}

// notShown stands for a line capEvidence cuts (see withLines).
var notShown = Evidence{}

func capEvidence(ev []Evidence) []Evidence {
	if len(ev) <= MaxEvidence {
		return ev
	}
	out := ev[: MaxEvidence-1 : MaxEvidence-1]
	return append(out, Evidence{Fact: fmt.Sprintf("… and %d more lines of evidence like these (lbdoctor inspect lists every service)", len(ev)-len(out)), Source: "lbdoctor"})
}

func skip(reason string) Finding { return Finding{Status: Skip, Reason: reason} }

// Verdict is the worst status among findings: fail, warn, else pass.
func Verdict(fs []Finding) Status {
	v := Pass
	for _, f := range fs {
		switch {
		case f.Status == Fail:
			return Fail
		case f.Status == Warn:
			v = Warn
		}
	}
	return v
}

// RemedyFix is the commands that apply remedies by hand, in order: the one
// place a remedy becomes text.
func RemedyFix(s *probes.Snapshot, rs []Remedy) []string {
	var out []string
	add := func(l ...string) {
		for _, x := range l {
			if !slices.Contains(out, x) {
				out = append(out, x)
			}
		}
	}
	for _, r := range rs {
		switch {
		case r.SNAT != "" && r.Real != "":
			vip, err1 := netip.ParseAddrPort(r.SNAT)
			real, err2 := netip.ParseAddr(r.Real)
			if err1 == nil && err2 == nil {
				add(hairpinRule(s, vip, real))
			}
		case r.SNAT != "":
			vip, err := netip.ParseAddrPort(r.SNAT)
			if err != nil {
				continue
			}
			tool := "iptables"
			if vip.Addr().Is6() && !vip.Addr().Is4In6() {
				tool = "ip6tables"
			}
			add(fmt.Sprintf("%s%s -t nat -A POSTROUTING -m ipvs --vaddr %s --vport %d -j MASQUERADE", s.Target.ExecPrefix(), tool, vip.Addr(), vip.Port()))
		case r.Sysctl != "":
			add(sysctlFix(s.Target, r.Sysctl, r.Value)...)
		}
	}
	return out
}
