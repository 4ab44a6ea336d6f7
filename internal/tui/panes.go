package tui

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/charmbracelet/x/ansi"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// tone is how a piece of text is shown: in colour when the terminal has
// it, and always with its own mark (✓, ✗, !), so that it reads without.
type tone int

const (
	plain tone = iota
	good
	bad
	warn
	dim
	head
	raw // already rendered (the prompt): shown as it is
)

// span is a piece of a line in one tone.
type span struct {
	text string
	tone tone
}

// line is a row of spans.
type line []span

func (l line) String() string {
	var b strings.Builder
	for _, s := range l {
		b.WriteString(s.text)
	}
	return b.String()
}

func text(s string, t tone) line { return line{{s, t}} }

// row is one selectable row of a lower pane: what it shows, and what
// enter opens (a finding, a drop point; else the row's own text).
type row struct {
	line    line
	finding *checks.Finding
	point   *probes.DropPoint
}

var statusMark = map[checks.Status]span{
	checks.Fail: {"✗", bad}, checks.Warn: {"!", warn}, checks.Pass: {"✓", good}, checks.Skip: {"-", dim},
}

// rows are pane p's rows, filtered, as refresh last built them.
func (m Model) rows(p Pane) []row { return m.rowsOf[p] }

// refresh rebuilds the panes' rows and the Path pane's lines from the
// model's data: once per message that changes them, not per screen or key
// (a busy LB lists a thousand flows).
func (m *Model) refresh(panes ...Pane) {
	if len(panes) == 0 {
		panes = []Pane{Findings, Drops, Flows, Reals, Rules}
		m.paths = m.pathLines()
	}
	for _, p := range panes {
		m.rowsOf[p] = m.buildRows(p)
	}
}

// buildRows are pane p's rows, filtered. Pure: it reads the model's data only.
func (m Model) buildRows(p Pane) []row {
	var out []row
	switch p {
	case Findings:
		out = m.findingRows()
	case Drops:
		out = m.dropRows()
	case Flows:
		out = m.flowRows()
	case Reals:
		out = m.realRows()
	case Rules:
		out = m.ruleRows()
	}
	if m.filter == "" {
		return out
	}
	f, inverse := m.filter, false
	if rest, ok := strings.CutPrefix(f, "!"); ok {
		f, inverse = rest, true
	}
	f = strings.ToLower(f)
	var kept []row
	for _, r := range out {
		if strings.Contains(strings.ToLower(r.line.String()), f) != inverse {
			kept = append(kept, r)
		}
	}
	return kept
}

// paneHeader is the lines above a pane's rows that never scroll away: the
// drops' lost and missed counts, the flow tables' totals.
func (m Model) paneHeader(p Pane) []line {
	switch p {
	case Findings:
		if len(m.findings) == 0 {
			return nil
		}
		r := map[checks.Status]int{}
		for _, f := range m.findings {
			r[f.Status]++
		}
		return []line{{{fmt.Sprintf("verdict %s: ", checks.Verdict(m.findings)), plain},
			{fmt.Sprintf("%d fail", r[checks.Fail]), toneIf(r[checks.Fail] > 0, bad)},
			{fmt.Sprintf(", %d warn", r[checks.Warn]), toneIf(r[checks.Warn] > 0, warn)},
			{fmt.Sprintf(", %d pass, %d skipped", r[checks.Pass], r[checks.Skip]), plain}}}
	case Drops:
		return m.dropHeader()
	case Flows:
		if m.snap == nil {
			return nil
		}
		s := m.snap
		return []line{text(fmt.Sprintf("IPVS %d connection(s) (%d listed), conntrack %d flow(s) of %s (%d listed)",
			len(s.IPVS.Conns)+s.IPVS.ConnsOmitted, len(s.IPVS.Conns), s.Conntrack.Total(), orAll(s.Conntrack.Selector), len(s.Conntrack.Flows)), dim)}
	case Reals:
		if m.snap != nil && m.snap.Window != nil && m.snap.Window.HealthLeftOut > 0 {
			return []line{text(fmt.Sprintf("%d real(s) not probed (at most %d a window)", m.snap.Window.HealthLeftOut, health.MaxTargets), warn)}
		}
	case Rules:
		if m.snap != nil && m.snap.Window != nil {
			return []line{text(fmt.Sprintf("rules and policies whose counters moved in the last window (%s)", round(m.snap.Window.Deltas.Window)), dim)}
		}
	}
	return nil
}

func toneIf(b bool, t tone) tone {
	if b {
		return t
	}
	return plain
}

func orAll(s string) string {
	if s == "" {
		return "every VIP"
	}
	return s
}

func (m Model) findingRows() []row {
	var out []row
	for _, st := range []checks.Status{checks.Fail, checks.Warn, checks.Pass, checks.Skip} {
		for i := range m.findings {
			f := &m.findings[i]
			if f.Status != st {
				continue
			}
			out = append(out, row{line: line{statusMark[f.Status], {" " + pad(f.ID, 22) + " " + f.Title, plain}}, finding: f})
		}
	}
	return out
}

// pad fills s with spaces to n cells.
func pad(s string, n int) string {
	return s + strings.Repeat(" ", max(0, n-ansi.StringWidth(s)))
}

// dropHeader always says what the tracer could not count in detail: the
// running window's counts so far, and the last window's.
func (m Model) dropHeader() []line {
	if m.snap == nil && m.frame == nil {
		return nil
	}
	if m.snap != nil && m.snap.Window != nil {
		if why, ok := m.snap.Window.Skipped[probes.LayerDrops]; ok && (m.frame == nil || m.frame.Drops == nil) {
			return []line{text("drops not traced: "+why, warn)}
		}
	}
	var out []line
	counts := func(c drops.Counters) span {
		return span{fmt.Sprintf(" · lost %d · missed %d · not itemised %d", c.Lost(), c.Missed, c.NotItemised), toneIf(c.Lost()+c.Missed > 0, warn)}
	}
	if m.frame != nil && m.frame.Drops != nil {
		c := *m.frame.Drops
		out = append(out, line{{fmt.Sprintf("now:         %d matched", c.Matched), plain}, counts(c)})
	}
	if m.snap != nil && m.snap.Drops != nil {
		d := m.snap.Drops
		out = append(out, line{{fmt.Sprintf("last window: %d matched in %s", d.Counters.Matched, round(d.Window)), plain}, counts(d.Counters),
			{fmt.Sprintf(" · %d attributed, %d not", d.Attribution.Attributed, d.Attribution.NotAttributed), plain}})
	}
	return out
}

// dropWindow is what the last window's drops were counted over: from the
// tracer's attach (the sample's window), else the window's.
func (m Model) dropWindow() time.Duration {
	if m.snap == nil {
		return 0
	}
	if m.snap.Drops != nil && m.snap.Drops.Window > 0 {
		return m.snap.Drops.Window
	}
	if m.snap.Window != nil {
		return m.snap.Window.Elapsed
	}
	return 0
}

func (m Model) dropRows() []row {
	if m.snap == nil || m.snap.Window == nil {
		return nil
	}
	w := m.snap.Window
	var out []row
	for i := range w.DropPoints {
		p := &w.DropPoints[i]
		l := line{{"✗ ", bad}, {fmt.Sprintf("%-8s %s at %s", rate(p.Count, m.dropWindow()), p.Reason, p.Function), bad}}
		if p.Hook != "" {
			l = append(l, span{" in " + p.Hook, plain})
		}
		l = append(l, span{fmt.Sprintf(" · %d flow(s), %d attributed", p.Flows, p.Attributed), plain})
		if p.Cause != "" {
			l = append(l, span{" — " + p.Cause, plain})
		}
		out = append(out, row{line: l, point: p})
	}
	if len(out) == 0 && m.snap.Drops != nil {
		out = append(out, row{line: text("✓ no drop of the selected flows in the last window", good)})
	}
	return out
}

func (m Model) flowRows() []row {
	if m.snap == nil {
		return nil
	}
	s := m.snap
	var out []row
	for _, c := range s.IPVS.ConnCounts {
		out = append(out, row{line: text(fmt.Sprintf("IPVS %s %s → %s %s: %d", strings.ToUpper(c.Proto), c.VIP, c.Dest, c.State, c.Count), plain)})
	}
	for _, c := range s.Conntrack.Counts {
		st := c.State
		if st == "" {
			st = "(no state)"
		}
		t := plain
		if !c.SeenReply {
			t = warn
		}
		out = append(out, row{line: text(fmt.Sprintf("conntrack %s, reply %s, assured %s: %d", st, yesNo(c.SeenReply), yesNo(c.Assured), c.Count), t)})
	}
	for _, c := range s.IPVS.Conns {
		out = append(out, row{line: text(fmt.Sprintf("ipvs %s %s → %s → %s %s %ds", c.Proto, c.Client, c.VIP, c.Dest, c.State, c.Expires), plain)})
	}
	for _, f := range s.Conntrack.Flows {
		t := plain
		if !f.HasStatus("SEEN_REPLY") {
			t = warn
		}
		out = append(out, row{line: text("ct "+f.String(), t)})
	}
	return out
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (m Model) realRows() []row {
	if m.snap == nil {
		return nil
	}
	s := m.snap
	deltas, elapsed := m.ipvsDeltas()
	var hs []health.Result
	if s.Window != nil {
		hs = s.Window.Health
	}
	var out []row
	for _, svc := range s.IPVS.Services {
		if svc.FWMark == 0 && !m.target.Sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		out = append(out, row{line: text(fmt.Sprintf("%s %s, %d real(s)", svc.Key(), svc.Scheduler, len(svc.Reals)), head)})
		sd := deltas[svc.Key()]
		for _, r := range svc.Reals {
			var rd probes.RealDelta
			for _, x := range sd.Reals {
				if x.Real == r.Addr.String() {
					rd = x
				}
			}
			// The health first: on an 80-column screen it must not be
			// the part cut off.
			l := line{{fmt.Sprintf("  %-15s ", r.Addr), plain}, healthSpan(svc, r, hs),
				{fmt.Sprintf("  w%d act %d inact %d  in %s out %s  %s", r.Weight, r.ActiveConns, r.InactiveConns,
					rate(uint64(rd.PacketsIn), elapsed), rate(uint64(rd.PacketsOut), elapsed), r.Method), plain}}
			out = append(out, row{line: l})
		}
	}
	return out
}

// ipvsDeltas are the newest IPVS deltas: the running window's frame when
// it has one, else the last window's.
func (m Model) ipvsDeltas() (map[string]probes.ServiceDelta, time.Duration) {
	out := map[string]probes.ServiceDelta{}
	var ds []probes.ServiceDelta
	var elapsed time.Duration
	switch {
	case m.frame != nil && m.frame.Elapsed > 0:
		ds, elapsed = m.frame.Deltas.IPVS, m.frame.Elapsed
	case m.snap != nil && m.snap.Window != nil:
		ds, elapsed = m.snap.Window.Deltas.IPVS, m.snap.Window.Deltas.Window
	}
	for _, d := range ds {
		out[d.Service] = d
	}
	return out, elapsed
}

func healthSpan(svc ipvs.Service, r ipvs.Real, hs []health.Result) span {
	for _, h := range hs {
		if h.Service != svc.Key() || h.Real != r.Addr {
			continue
		}
		switch {
		case h.Skipped != "":
			return span{"? " + h.Skipped, dim}
		case h.Route != "":
			return span{"✗ no route: " + h.Route, bad}
		case h.Connect == "ok":
			return span{fmt.Sprintf("✓ connect %s", h.RTT.Round(10*time.Microsecond)), good}
		case h.Connect == "refused":
			return span{"✗ refused (nothing listens)", bad}
		case h.Neighbour == "FAILED" || h.Neighbour == "INCOMPLETE":
			return span{"✗ neighbour " + h.Neighbour, bad}
		case h.Connect != "":
			return span{"! connect " + h.Connect, warn}
		case h.Note != "":
			return span{"neighbour " + orNone(h.Neighbour) + " (" + h.Note + ")", dim}
		}
	}
	return span{"health not probed", dim}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (m Model) ruleRows() []row {
	if m.snap == nil || m.snap.Window == nil {
		return nil
	}
	d := m.snap.Window.Deltas
	var out []row
	for _, c := range d.Chains {
		t := plain
		if c.Chain.Policy == "DROP" {
			t = bad
		}
		out = append(out, row{line: text(fmt.Sprintf("+%-7d %-8s policy %s of %s (%s)", c.Packets, rate(c.Packets, d.Window), c.Chain.Policy, c.Chain.Place(), c.Chain.Hook), t)})
	}
	for _, r := range d.Rules {
		t := plain
		if r.Rule.Drops() {
			t = bad
		}
		out = append(out, row{line: text(fmt.Sprintf("+%-7d %-8s %s: %s", r.Packets, rate(r.Packets, d.Window), r.Rule.Place(), r.Rule.Spec), t)})
	}
	return out
}

// rate is n over d, per second, short: "12/s", "0.5/s".
func rate(n uint64, d time.Duration) string {
	if d <= 0 {
		return fmt.Sprintf("×%d", n)
	}
	r := float64(n) / d.Seconds()
	switch {
	case n == 0:
		return "0/s"
	case r < 10:
		return fmt.Sprintf("%.1f/s", r)
	default:
		return fmt.Sprintf("%.0f/s", r)
	}
}

func round(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }

// pathLines draw the Path pane: each selected service's path to each
// real, stopped ones first, legs with their rates and a ✗ where packets
// die with the reason, the function, the hook and the cause. With no IPVS
// path (a DNAT VIP, a kernel without IPVS), the window's drop points are
// the marks.
func (m Model) pathLines() []line {
	if m.snap == nil {
		if m.lastErr != "" {
			return []line{text("✗ "+m.lastErr, bad)}
		}
		if m.opened {
			return []line{text("watching… the first window ends in "+round(m.opt.Length), dim)}
		}
		return []line{text("reading the namespace…", dim)}
	}
	w := m.snap.Window
	if w == nil {
		return []line{text("no window: a static snapshot", dim)}
	}
	var out []line
	paths := slices.Clone(w.Paths)
	slices.SortStableFunc(paths, func(a, b flowpath.Path) int { return cmp.Compare(min(len(b.Stops), 1), min(len(a.Stops), 1)) })
	for _, p := range paths {
		out = append(out, text(p.Service+" → "+p.Real, head))
		var legs line
		for _, l := range p.Legs {
			if l.Status == flowpath.NotUsed {
				continue
			}
			if len(legs) > 0 {
				legs = append(legs, span{" · ", dim})
			}
			legs = append(legs, legSpan(l, p.Window))
		}
		out = append(out, append(line{{"  ", plain}}, legs...))
		for _, st := range p.Stops {
			cause := st.Cause
			if cause == "" {
				for _, l := range p.Legs {
					if l.Kind == st.Leg && l.Note != "" {
						cause = l.Note
					}
				}
			}
			out = append(out, stopLine(st.Function, st.Reason, st.Hook, rate(st.Count, m.dropWindow()), m.why(st.Reason, st.Function, cause)))
		}
	}
	if w.PathsOmitted > 0 {
		out = append(out, text(fmt.Sprintf("… %d more path(s) not shown", w.PathsOmitted), dim))
	}
	if len(paths) == 0 {
		why := "no IPVS service selected"
		if s, ok := w.Skipped["window"]; ok {
			why = s
		}
		if !m.snap.IPVS.Available {
			why = "no IPVS: " + m.snap.IPVS.Reason
		}
		out = append(out, text(describeTarget(m.target)+": "+why, dim))
		for _, p := range w.DropPoints {
			out = append(out, stopLine(p.Function, p.Reason, p.Hook, rate(p.Count, m.dropWindow()), m.why(p.Reason, p.Function, p.Cause)))
		}
		if len(w.DropPoints) == 0 && m.snap.Drops != nil {
			out = append(out, text("  ✓ no drop of the selected flows", good))
		}
	}
	return out
}

func stopLine(function, reason, hook, rate, cause string) line {
	s := fmt.Sprintf("  ✗ %s %s %s", function, reason, rate)
	if hook != "" {
		s += " in " + hook
	}
	if cause != "" {
		s += " — " + cause
	}
	return text(s, bad)
}

// why is the cause of drops of a reason at a function: the one joined to
// them, else the reason drops.vip_flows gives for them.
func (m Model) why(reason, function, cause string) string {
	if cause != "" {
		return cause
	}
	for _, f := range m.findings {
		if f.ID == "drops.vip_flows" && (f.Status == checks.Fail || f.Status == checks.Warn) && strings.Contains(f.Title, reason) {
			return f.Reason
		}
	}
	return ""
}

func legSpan(l flowpath.Leg, d time.Duration) span {
	s := l.Name
	if l.Kind == flowpath.Route && l.Note != "" {
		s += ": " + l.Note
	}
	switch l.Status {
	case flowpath.OK:
		s += " ✓"
		if l.Counted {
			s += " " + rate(l.Packets, d)
		}
		return span{s, good}
	case flowpath.Stopped, flowpath.Failed:
		if l.Note != "" && l.Kind != flowpath.Route {
			s += " (" + l.Note + ")"
		}
		return span{s + " ✗", bad}
	case flowpath.Quiet:
		return span{s + " 0/s", warn}
	case flowpath.Unknown:
		return span{s + " ?", dim}
	}
	if l.Note != "" && l.Kind != flowpath.Route {
		s += " (" + l.Note + ")"
	}
	return span{s, plain}
}

// details are what enter opens on a row: a finding's reason, evidence,
// causal chain and fix commands; a drop point's place, cause and flows.
func (m Model) details(p Pane, r row) (string, []line) {
	switch {
	case r.finding != nil:
		f := r.finding
		out := []line{{statusMark[f.Status], {" " + f.ID + " — " + f.Title, head}}}
		if f.Reason != "" {
			out = append(out, nil, text("why", head), text("  "+f.Reason, plain))
		}
		if len(f.Fix) > 0 {
			out = append(out, nil, text("fix (copy and run; the TUI changes nothing)", head))
			for _, x := range f.Fix {
				out = append(out, text("  "+x, good))
			}
		}
		if len(f.Path) > 0 {
			out = append(out, nil, text("causal chain", head))
			for _, pa := range f.Path {
				out = append(out, text("  "+pa.Service+" → "+pa.Real+": "+pa.String(), plain))
			}
		}
		if len(f.Evidence) > 0 {
			out = append(out, nil, text("evidence", head))
			for _, e := range f.Evidence {
				out = append(out, text("  "+e.String(), plain))
			}
		}
		return f.ID, out
	case r.point != nil:
		d := r.point
		out := []line{text(fmt.Sprintf("✗ %d × %s at %s", d.Count, d.Reason, d.Function), bad)}
		if d.Hook != "" {
			out = append(out, text("  hook: "+d.Hook, plain))
		}
		if d.Leg != "" {
			out = append(out, text("  leg: "+string(d.Leg), plain))
		}
		if c := m.why(d.Reason, d.Function, d.Cause); c != "" {
			out = append(out, text("  cause: "+c, plain))
		}
		if d.Source != "" {
			out = append(out, text("  read in: "+d.Source, dim))
		}
		// What dropped and was fixed during the window counted nothing
		// lbdoctor can show: say what became of it instead.
		moved := fmt.Sprintf("+%d", d.Delta)
		switch {
		case d.Gone:
			moved = "deleted during the window"
		case d.Changed:
			moved = "set to ACCEPT during the window"
		}
		if d.Rule != nil {
			out = append(out, text(fmt.Sprintf("  rule: %s: %s (%s)", d.Rule.Place(), d.Rule.Spec, moved), plain))
		}
		if d.Policy != nil {
			out = append(out, text(fmt.Sprintf("  policy: %s of %s (%s)", d.Policy.Policy, d.Policy.Place(), moved), plain))
		}
		out = append(out, text(fmt.Sprintf("  %d flow(s), %d drop(s) attributed to a load-balanced flow", d.Flows, d.Attributed), plain))
		if len(d.Services) > 0 {
			out = append(out, text("  services: "+strings.Join(d.Services, ", "), plain))
		}
		for _, e := range d.Examples {
			out = append(out, text("  e.g. "+e, plain))
		}
		return d.Reason + " at " + d.Function, out
	}
	return p.String(), []line{r.line}
}

// statusLines are the status line: the namespace, the kernel, the
// refresh, what is traced, and what could not be read and why (help shows
// the whole of it: unavailable).
func (m Model) statusLines() []line {
	first := describeTarget(m.target)
	if m.snap != nil && m.snap.Kernel != "" {
		first += " · kernel " + m.snap.Kernel
	}
	first += fmt.Sprintf(" · %s windows, #%d", round(m.opt.Length), m.windows)
	l1 := text(first, dim)
	if m.paused {
		l1 = line{{describeTarget(m.target) + " · PAUSED: the panes hold window #" + fmt.Sprint(m.windows) + " (p resumes)", warn}}
	}
	second := line{{"traced: " + m.traced(), dim}}
	if u := m.unavailable(); len(u) > 0 {
		second = append(second, span{" · unavailable: " + strings.Join(u, "; "), warn})
	} else if m.snap != nil {
		second = append(second, span{" · every layer was read", dim})
	}
	return []line{l1, second}
}

// traced says what the windows watch.
func (m Model) traced() string {
	drops := "drops"
	probe := ", reals probed"
	if m.snap != nil {
		if d := m.snap.Drops; d != nil {
			// Lost and missed drops are said on every pane, not only
			// in Drops: the running window's when it has counted.
			c := d.Counters
			if m.frame != nil && m.frame.Drops != nil {
				c = *m.frame.Drops
			}
			drops = fmt.Sprintf("drops (%s; lost %d, missed %d)", d.Attach, c.Lost(), c.Missed)
		}
		if w := m.snap.Window; w != nil {
			if _, ok := w.Skipped["window"]; ok {
				return "nothing (see unavailable)"
			}
			if _, ok := w.Skipped[probes.LayerDrops]; ok {
				drops = "counters (no drops)"
			}
			if _, ok := w.Skipped[probes.LayerHealth]; ok {
				probe = ""
			}
		}
	}
	return drops + probe
}

// unavailable is what could not be read or watched, and why.
func (m Model) unavailable() []string {
	var out []string
	if m.lastErr != "" && m.snap != nil {
		out = append(out, "last window: "+m.lastErr)
	}
	if m.snap == nil {
		return out
	}
	if !m.snap.IPVS.Available && m.snap.IPVS.Reason != "" {
		out = append(out, "ipvs: "+m.snap.IPVS.Reason)
	}
	var skipped map[string]string
	if w := m.snap.Window; w != nil {
		skipped = w.Skipped
		for _, k := range sortedKeys(w.Skipped) {
			out = append(out, k+": "+w.Skipped[k])
		}
	}
	for _, k := range sortedKeys(m.snap.Errors) {
		if _, ok := skipped[k]; !ok { // said once
			out = append(out, k+": "+m.snap.Errors[k])
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
