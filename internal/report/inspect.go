package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// Inspection is what `lbdoctor inspect` prints: a snapshot and, with
// --watch, what moved during the window.
type Inspection struct {
	Schema   int              `json:"schema"`
	Snapshot *probes.Snapshot `json:"snapshot"`
	Deltas   *probes.Deltas   `json:"deltas,omitempty"`
	// Interrupted is true when SIGINT or SIGTERM cut the --watch window
	// short: the deltas (if any) cover the shorter window.
	Interrupted bool `json:"interrupted,omitempty"`
	// CutShort is the line that says so in text.
	CutShort string `json:"-"`
}

// MaxShown caps every list inspect prints as text; the rest is counted in
// one line. JSON lists up to probes.MaxListed of each, with omitted counts.
const MaxShown = 20

// InspectJSON writes an inspection as one JSON document, its long lists
// capped at probes.MaxListed with the number left out beside each.
func InspectJSON(w io.Writer, in *Inspection) error {
	out := *in
	out.Schema = Schema
	out.Snapshot = in.Snapshot.Capped(probes.MaxListed)
	return JSONDocument(w, &out)
}

// notShown prints the line that counts what a capped list left out.
func notShown(p func(string, ...any), indent string, n int, what string) {
	if n > 0 {
		hint := fmt.Sprintf("-o json lists up to %d", probes.MaxListed)
		if what == "services" || what == "real servers" {
			hint = "-o json lists them all"
		}
		p("%s… %d more %s not shown (%s)\n", indent, n, what, hint)
	}
}

// SNMPOfInterest are the counters shown without --watch: the ones that rise
// when a load balancer drops or misroutes.
var SNMPOfInterest = []string{
	"IpInAddrErrors", "IpInDiscards", "IpOutDiscards", "IpOutNoRoutes", "IpExtInNoRoutes", "IpForwDatagrams",
	"IcmpOutRedirects", "IcmpInDestUnreachs", "IcmpOutDestUnreachs",
	"TcpExtListenOverflows", "TcpExtListenDrops", "TcpRetransSegs", "TcpExtTCPSynRetrans", "TcpAttemptFails",
	"UdpInErrors", "UdpNoPorts",
}

// InspectText writes an inspection ordered along the packet's path: service
// → reals → sysctls → rules → conntrack → SNMP, then the network and kernel.
func InspectText(w io.Writer, in *Inspection) error {
	s, d := in.Snapshot.Capped(MaxShown), in.Deltas
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("lbdoctor inspect: %s (kernel %s)", s.Target, s.Kernel)
	if d != nil {
		p(", counters over %s", d.Window.Round(1e6))
	}
	p("\n")
	if in.CutShort != "" {
		p("%s\n", in.CutShort)
	}

	p("\nIPVS\n")
	switch {
	case !s.IPVS.Available:
		p("  not available: %s\n", s.IPVS.Reason)
	case len(s.IPVS.Services) == 0:
		p("  no virtual services\n")
	}
	delta := map[string]probes.ServiceDelta{}
	if d != nil {
		for _, sd := range d.IPVS {
			delta[sd.Service] = sd
		}
	}
	for i, svc := range s.IPVS.Services {
		if i == MaxShown {
			notShown(p, "  ", len(s.IPVS.Services)-i, "services")
			break
		}
		st := svc.Stats
		p("  %s %s", svc.Key(), svc.Scheduler)
		if len(svc.Flags) > 0 {
			p(" [%s]", strings.Join(svc.Flags, ","))
		}
		if sd, ok := delta[svc.Key()]; ok {
			p("  +%d conns +%d/+%d pkts in/out\n", sd.Conns, sd.PacketsIn, sd.PacketsOut)
		} else {
			p("  %d conns %d/%d pkts in/out\n", st.Conns, st.PacketsIn, st.PacketsOut)
		}
		for j, r := range svc.Reals {
			if j == MaxShown {
				notShown(p, "    ", len(svc.Reals)-j, "real servers")
				break
			}
			p("    → %-21s %-6s weight %d  active %d inactive %d", r.Addr, r.Method, r.Weight, r.ActiveConns, r.InactiveConns)
			for _, rd := range delta[svc.Key()].Reals {
				if rd.Real == r.Addr.String() {
					p("  +%d conns +%d/+%d pkts", rd.Conns, rd.PacketsIn, rd.PacketsOut)
				}
			}
			p("\n")
		}
	}
	if s.IPVS.Available {
		t := s.IPVS.Timeouts
		p("  timeouts: tcp %ds, tcpfin %ds, udp %ds\n", t.TCP, t.TCPFin, t.UDP)
		if _, unread := s.Errors[probes.ProbeIPVSConns]; unread {
			p("  connections: not read (see the probe errors below); by IPVS's counters %d\n", s.IPVS.DestConns())
		} else {
			p("  connections: %d\n", len(s.IPVS.Conns)+s.IPVS.ConnsOmitted)
		}
		for _, c := range s.IPVS.Conns {
			p("    %s %s → %s → %s %s %ds\n", strings.ToUpper(c.Proto), c.Client, c.VIP, c.Dest, c.State, c.Expires)
		}
		notShown(p, "    ", s.IPVS.ConnsOmitted, "connections")
	}

	if w := s.Window; w != nil {
		inspectWindow(p, w)
	}

	p("\nSysctls\n")
	var line []string
	for _, k := range sysctl.DefaultKeys {
		v := s.Sysctls[k]
		if v.Present {
			line = append(line, fmt.Sprintf("%s=%s", strings.TrimPrefix(strings.TrimPrefix(k, "net.ipv4."), "net.netfilter."), v.Value))
		} else {
			line = append(line, fmt.Sprintf("%s=(absent)", strings.TrimPrefix(strings.TrimPrefix(k, "net.ipv4."), "net.netfilter.")))
		}
	}
	wrap(&b, "  ", line)
	ifaces := map[string][]string{}
	for k, v := range s.Sysctls {
		rest, ok := strings.CutPrefix(k, "net.ipv4.conf.")
		if !ok || !v.Present {
			continue
		}
		i := strings.LastIndexByte(rest, '.')
		ifaces[rest[:i]] = append(ifaces[rest[:i]], rest[i+1:]+"="+v.Value)
	}
	for _, name := range sortedKeys(ifaces) {
		sort.Strings(ifaces[name])
		p("  %-8s %s\n", name+":", strings.Join(ifaces[name], " "))
	}

	p("\nRules")
	var bes []string
	for _, be := range s.Rules.Backends {
		if be.Read {
			via := ""
			if be.Tool != "" && be.Tool != be.Name {
				via = " via " + be.Tool
			}
			bes = append(bes, fmt.Sprintf("%s %d%s", be.Name, be.Rules, via))
		} else {
			bes = append(bes, fmt.Sprintf("%s unread: %s", be.Name, be.Reason))
		}
	}
	p(" (%s)\n", strings.Join(bes, ", "))
	if s.Rules.Mixed {
		p("  ! iptables-legacy and nf_tables rules are both active: each tool shows only its part\n")
	}
	moved := map[string]probes.RuleDelta{}
	if d != nil {
		for _, rd := range d.Rules {
			moved[rd.Rule.Key()] = rd
		}
	}
	for _, r := range s.Rules.Rules {
		count := fmt.Sprintf("%d pkts", r.Packets)
		if !r.HasCounter {
			count = "no counter"
		} else if d != nil {
			count = fmt.Sprintf("+%d pkts", moved[r.Key()].Packets)
		}
		var labels []string
		if r.IPVS != nil {
			labels = append(labels, "ipvs match")
		}
		if r.CtOrigDst != "" {
			labels = append(labels, "ct original dst "+r.CtOrigDst)
		}
		label := ""
		if len(labels) > 0 {
			label = "  (" + strings.Join(labels, ", ") + ")"
		}
		p("  %12s  %s %s %s: %s%s\n", count, r.Backend, r.TableName(), r.Chain, r.Spec, label)
	}
	notShown(p, "  ", s.Rules.Omitted, "rules")
	// A DROP policy drops whatever no rule accepted: shown with the rules.
	movedChain := map[string]uint64{}
	if d != nil {
		for _, cd := range d.Chains {
			movedChain[cd.Chain.Key()] = cd.Packets
		}
	}
	for _, c := range s.Rules.Chains {
		if c.Policy != "DROP" {
			continue
		}
		count := fmt.Sprintf("%d pkts", c.Packets)
		if !c.HasCounter {
			count = "no counter"
		} else if d != nil {
			count = fmt.Sprintf("+%d pkts", movedChain[c.Key()])
		}
		p("  %12s  %s %s %s: policy DROP (hook %s)\n", count, c.Backend, c.Table, c.Chain, c.Hook)
	}

	p("\nIP sets")
	switch {
	case s.IPSets.Unavailable != "":
		p(" (none: %s)\n", s.IPSets.Unavailable)
	case len(s.IPSets.Sets) == 0:
		p(" (none)\n")
	default:
		p("\n")
	}
	for _, x := range s.IPSets.Sets {
		p("  %s %s, %d entries, %d references\n", x.Name, x.Type, x.Entries, x.References)
		var ms []string
		for _, m := range x.Members {
			ms = append(ms, m.String())
		}
		wrap(&b, "    ", ms)
		notShown(p, "    ", x.Omitted, "members")
	}
	if k := s.KubeProxy; k != nil {
		p("\nkube-proxy (IPVS mode)\n")
		for _, f := range k.Facts() {
			p("  %s\n", f)
		}
	}

	ct := s.Conntrack
	st := ct.Stats
	p("\nConntrack (%d/%d entries; drop %d, early_drop %d, insert_failed %d, invalid %d)\n", st.Entries, st.MaxEntries, st.Drop, st.EarlyDrop, st.InsertFailed, st.Invalid)
	if d != nil {
		c := d.Conntrack
		p("  in the window: %+d entries, +%d inserted, +%d insert_failed, +%d drop, +%d early_drop, +%d invalid\n", c.Entries, c.Insert, c.InsertFailed, c.Drop, c.EarlyDrop, c.Invalid)
	}
	p("  flows with %s: %d\n", ct.Selector, ct.Total())
	if ct.Partial != "" {
		p("  ! %s\n", ct.Partial)
	}
	for _, f := range ct.Flows {
		p("    %s\n", f)
	}
	notShown(p, "    ", ct.Omitted, "flows")

	p("\nSNMP")
	var counters []string
	if d != nil {
		p(" (moved in the window)\n")
		for _, k := range sortedKeys(d.SNMP) {
			counters = append(counters, fmt.Sprintf("%s +%d", k, d.SNMP[k]))
		}
		if len(counters) == 0 {
			counters = []string{"nothing moved"}
		}
	} else {
		p("\n")
		for _, k := range SNMPOfInterest {
			counters = append(counters, fmt.Sprintf("%s %d", k, s.SNMP[k]))
		}
	}
	wrap(&b, "  ", counters)

	p("\nNetwork\n")
	for _, l := range s.Net.Links {
		state := "down"
		if l.Up {
			state = "up"
		}
		var addrs []string
		for _, a := range l.Addrs {
			addrs = append(addrs, a.String())
		}
		p("  %-10s %-6s %-4s %s\n", l.Name, l.Type, state, strings.Join(addrs, " "))
	}
	notShown(p, "  ", s.Net.Omitted["links"], "links")
	for _, r := range s.Net.Routes {
		via := ""
		if r.Gw.IsValid() {
			via = " via " + r.Gw.String()
		}
		p("  route %s%s dev %s\n", r.Dst, via, r.Dev)
	}
	notShown(p, "  ", s.Net.Omitted["routes"], "routes")
	for _, n := range s.Net.Neighbours {
		p("  neighbour %s %s dev %s %s\n", n.IP, n.MAC, n.Dev, n.State)
	}
	notShown(p, "  ", s.Net.Omitted["neighbours"], "neighbours")

	if f := s.Features; f != nil {
		p("\nKernel %s\n", f.Release)
		var fs []string
		for _, ft := range f.Probes {
			if ft.Available {
				fs = append(fs, "✓ "+ft.Name)
			} else {
				fs = append(fs, "✗ "+ft.Name+": "+strings.TrimPrefix(ft.Reason, "is "))
			}
		}
		for _, x := range fs {
			p("  %s\n", x)
		}
		p("  drop function %s, %d drop reasons, capabilities %s\n", f.DropFunction, f.DropReasons, strings.Join(f.Capabilities.Effective, " "))
	}
	for _, name := range sortedKeys(s.Errors) {
		p("! probe %s could not read: %s\n", name, s.Errors[name])
	}
	_, err := io.WriteString(w, Printable(b.String()))
	return err
}

// wrap prints items separated by two spaces, in lines of about 100 columns.
func wrap(b *strings.Builder, indent string, items []string) {
	line := indent
	for _, it := range items {
		if len(line) > len(indent) && len(line)+len(it) > 100 {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += "  "
		}
		line += it
	}
	if len(line) > len(indent) {
		b.WriteString(line + "\n")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// JSONDocument writes any value as one indented JSON document, byte for
// byte what json.Encoder with SetIndent("", "  ") writes. It indents the
// compact encoding itself: encoding/json's indent pass runs its full
// scanner over every byte, which cost a `drops --summary -o json` of
// 10,000 rows more than encoding them.
func JSONDocument(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	out := append(indentJSON(make([]byte, 0, 2*len(b)), b), '\n')
	_, err = w.Write(out)
	return err
}

// indentJSON appends src — compact, valid JSON as json.Marshal writes it —
// indented by two spaces per level, the way json.Indent(dst, src, "", "  ")
// does: a newline after each '{', '[' and ',', ": " after keys, and empty
// objects and arrays kept as {} and [].
func indentJSON(dst, src []byte) []byte {
	dst, _ = indentJSONFrom(dst, src, 0)
	return dst
}

// indentJSONFrom indents src, a piece of a document that starts at depth,
// and returns the depth after it: a document indented piece by piece, cut
// anywhere but inside a string or between a non-empty '{' or '[' and what
// follows, is the document indented whole.
func indentJSONFrom(dst, src []byte, depth int) ([]byte, int) {
	// A document of megabytes (a --summary flood) goes through here: runs
	// of plain bytes and whole strings are copied at once, not byte by byte.
	newline := func() {
		dst = append(dst, '\n')
		for n := 2 * depth; n > 0; n -= len(indentSpaces) {
			dst = append(dst, indentSpaces[:min(n, len(indentSpaces))]...)
		}
	}
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch c {
		case '"':
			// Copy the string whole: up to its closing quote, past escapes.
			j := i + 1
			for j < len(src) {
				k := bytes.IndexByte(src[j:], '"')
				if k < 0 {
					j = len(src)
					break
				}
				if e := bytes.IndexByte(src[j:j+k], '\\'); e >= 0 {
					j += e + 2 // an escape: the byte after it is not the end
					continue
				}
				j += k
				break
			}
			j = min(j+1, len(src))
			dst = append(dst, src[i:j]...)
			i = j - 1
		case '{', '[':
			dst = append(dst, c)
			if i+1 < len(src) && (src[i+1] == '}' || src[i+1] == ']') {
				dst = append(dst, src[i+1])
				i++
				continue
			}
			depth++
			newline()
		case '}', ']':
			depth--
			newline()
			dst = append(dst, c)
		case ',':
			dst = append(dst, c)
			newline()
		case ':':
			dst = append(dst, c, ' ')
		default:
			// A number or a literal: up to the next byte that is not one.
			j := i + 1
			for j < len(src) && !jsonSpecial[src[j]] {
				j++
			}
			dst = append(dst, src[i:j]...)
			i = j - 1
		}
	}
	return dst, depth
}

const indentSpaces = "                                                                "

// jsonSpecial marks the bytes indentJSONFrom acts on.
var jsonSpecial = [256]bool{'"': true, '{': true, '[': true, '}': true, ']': true, ',': true, ':': true}

// dropPointLine is a drop place of the window: "6 × NETFILTER_DROP at
// nft_do_chain in forward (6 flows): CAUSE".
func dropPointLine(d probes.DropPoint) string {
	line := fmt.Sprintf("%d × %s at %s", d.Count, d.Reason, d.Function)
	if d.Hook != "" {
		line += " in " + d.Hook
	}
	if d.Flows > 0 {
		line += fmt.Sprintf(" (%d flows)", d.Flows)
	}
	if d.Cause != "" {
		line += ": " + d.Cause
	}
	return line
}

// inspectWindow prints what the window saw beside the counters: the path
// of each service's flows to each real, the reals' neighbours, and every
// layer the window could not watch, with why.
func inspectWindow(p func(string, ...any), w *probes.Window) {
	p("\nPaths over the window (%s)\n", w.Elapsed.Round(1e6))
	if len(w.Paths) == 0 {
		p("  none: no IPVS service selected\n")
		// A VIP that nft or iptables DNATs has no IPVS path to mark: its
		// drops are shown by place, or nothing would say them in text.
		for i, d := range w.DropPoints {
			if i == MaxShown {
				notShown(p, "  ", len(w.DropPoints)-i, "drop places")
				break
			}
			p("  ✗ %s\n", dropPointLine(d))
		}
	}
	if w.DropsVIPOnly != "" {
		p("  ! %s\n", w.DropsVIPOnly)
	}
	for i, fp := range w.Paths {
		if i == MaxShown {
			notShown(p, "  ", len(w.Paths)-i+w.PathsOmitted, "paths")
			break
		}
		p("  %s: %s\n", fp.Service, fp)
	}
	if len(w.Paths) <= MaxShown {
		notShown(p, "  ", w.PathsOmitted, "paths")
	}
	for i, n := range w.Neighbours {
		if i == MaxShown {
			notShown(p, "  ", len(w.Neighbours)-i, "neighbours")
			break
		}
		via := ""
		if n.NextHop != n.Real.Addr() {
			via = " via " + n.NextHop.String()
		}
		p("  neighbour of real %s%s: %s\n", n.Real, via, n.State)
	}
	for _, k := range sortedKeys(w.Skipped) {
		p("  - %s not watched: %s\n", k, w.Skipped[k])
	}
}
