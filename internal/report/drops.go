package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// Drop is one dropped packet as lbdoctor reports it.
type Drop struct {
	Type     string    `json:"type"` // "drop"
	Time     time.Time `json:"time,omitzero"`
	Netns    uint32    `json:"netns"`
	NetnsTag string    `json:"netns_name,omitempty"`
	Ifname   string    `json:"ifname,omitempty"`
	Reason   string    `json:"reason"`
	Location string    `json:"location"`
	Proto    string    `json:"proto,omitempty"`
	Src      string    `json:"src,omitempty"`
	Dst      string    `json:"dst,omitempty"`
	TCPFlags string    `json:"tcp_flags,omitempty"`
	// ICMP names an ICMP or ICMPv6 message, with its type and code
	// ("redirect, type 5 code 1"; drops.Packet.ICMPMessage).
	ICMP  string `json:"icmp,omitempty"`
	Len   uint32 `json:"len,omitempty"`
	Count uint64 `json:"count,omitempty"` // aggregate mode
	// NotItemised: the drops at this place of flows the aggregate map had
	// no room for (no flow fields).
	NotItemised bool            `json:"not_itemised,omitempty"`
	Stack       []string        `json:"stack,omitempty"` // --stack: kernel frames, innermost first
	Flow        *drops.Flow     `json:"flow,omitempty"`
	Raw         *drops.RawEvent `json:"raw,omitempty"`
	// ends, when Src is "", are the endpoints Src and Dst stand for, not
	// formatted yet (DropEventOf): an event's line appends them as it is
	// written, with no string made for either.
	ends endpoints
}

// endpoints are a drop's source and destination as the packet had them;
// addrOnly: written without the ports (a protocol without them); set: the
// drop has them (an IP packet).
type endpoints struct {
	src, dst      netip.AddrPort
	addrOnly, set bool
}

// appendTo appends e's source (dst false) or destination as
// drops.Packet.Endpoints formats it.
func (e *endpoints) appendTo(b []byte, dst bool) []byte {
	ap := e.src
	if dst {
		ap = e.dst
	}
	switch {
	case e.addrOnly && ap.Addr().IsValid():
		return ap.Addr().AppendTo(b)
	case e.addrOnly:
		return append(b, ap.Addr().String()...) // "invalid IP", as String says
	case ap.IsValid():
		return ap.AppendTo(b)
	}
	return append(b, ap.String()...)
}

// deferred says whether d's endpoints are ends, not Src and Dst.
func (d *Drop) deferred() bool { return d.Src == "" && d.ends.set }

// Endpoints are d's source and destination as the output writes them
// ("" when the drop has none).
func (d *Drop) Endpoints() (src, dst string) {
	if !d.deferred() {
		return d.Src, d.Dst
	}
	return string(d.ends.appendTo(nil, false)), string(d.ends.appendTo(nil, true))
}

// DropOf is the output row of a named drop; tag names its namespace.
func DropOf(c drops.Counted, tag string) Drop {
	d := Drop{Type: "drop", Netns: c.Netns, NetnsTag: tag, Location: c.Symbol, Reason: c.ReasonName, Count: c.Count, Flow: c.Flow, NotItemised: c.NotItemised}
	if c.Family != 0 {
		d.Proto = proto.Name(c.Proto)
		d.Src, d.Dst = c.Endpoints()
		d.ICMP = c.ICMPMessage()
	}
	return d
}

// DropEventOf is DropOf for one event of a flood: its source and destination
// are kept as addresses and appended to its line as it is written, not
// formatted into strings first (two allocations a drop); Endpoints gives
// them as strings. The line is byte for byte DropOf's.
func DropEventOf(c drops.Counted, tag string) Drop {
	d := Drop{Type: "drop", Netns: c.Netns, NetnsTag: tag, Location: c.Symbol, Reason: c.ReasonName, Count: c.Count, Flow: c.Flow, NotItemised: c.NotItemised}
	if c.Family != 0 {
		d.Proto = proto.Name(c.Proto)
		d.ends = endpoints{src: c.Src, dst: c.Dst, addrOnly: !proto.HasPorts(c.Proto), set: true}
		d.ICMP = c.ICMPMessage()
	}
	return d
}

// DropsSummary closes every drops output: what matched, what was shown,
// what was lost.
type DropsSummary struct {
	Type      string         `json:"type"` // "summary"
	Attach    string         `json:"attach"`
	AttachMs  float64        `json:"attach_ms"`
	Window    time.Duration  `json:"window_ns"`
	Counters  drops.Counters `json:"counters"`
	Delivered uint64         `json:"delivered"` // drops reported (events, or counted in aggregates)
	Lost      uint64         `json:"lost"`
	// NotWritten counts the event lines reported but not written: stdout
	// blocked (nobody read it) and the window, or the signal, did not wait.
	NotWritten uint64 `json:"not_written"`
	// Attribution: drops traced back to a load-balanced flow, and not.
	Attribution drops.Attribution `json:"attribution"`
	// Interrupted is true when SIGINT or SIGTERM ended the window; CutShort
	// says why a window ended before its length (a signal, the namespace
	// deleted); Length is the window asked for (0: until Ctrl-C).
	Interrupted bool          `json:"interrupted,omitempty"`
	CutShort    string        `json:"cut_short,omitempty"`
	Length      time.Duration `json:"length_ns,omitempty"`
	Aggregates  []Drop        `json:"drops,omitzero"`       // --summary: every row, [] when none
	NoReasons   string        `json:"no_reasons,omitempty"` // why drops carry no reason on this kernel
	// RawLocations says why locations are raw addresses, not symbol+offset.
	RawLocations string `json:"raw_locations,omitempty"`
	// Filter is every filter the tracer applied.
	Filter DropsFilter `json:"filter"`
	// Top caps the rows of the text summary (0: all); the rest are summed
	// up by place. JSON always has every row.
	Top int `json:"-"`
}

// DropsFilter is every filter a drops run applies, echoed on its start line
// and in its JSON summary so that an empty result can be read.
type DropsFilter struct {
	Mode  string `json:"mode"`  // events or summary
	Netns string `json:"netns"` // "every namespace", or the namespace
	// Addrs are the --host addresses; VIPAddrs those --vip added (the VIP
	// and its real servers), with the ports of both in Ports and VIPPorts.
	Addrs         []string `json:"addrs,omitempty"`
	VIPAddrs      []string `json:"vip_addrs,omitempty"`
	Ports         []uint16 `json:"ports,omitempty"`
	VIPPorts      []uint16 `json:"vip_ports,omitempty"`
	Proto         string   `json:"proto,omitempty"`
	IgnoreReasons []string `json:"ignore_reasons,omitempty"`
}

// String is the filter for the start line: "summary, netns lb, addresses …".
func (f DropsFilter) String() string {
	parts := []string{f.Mode, f.Netns}
	if len(f.Addrs) > 0 {
		parts = append(parts, "addresses "+strings.Join(f.Addrs, " "))
	}
	if len(f.VIPAddrs) > 0 {
		parts = append(parts, "addresses of the VIP and its reals "+strings.Join(f.VIPAddrs, " "))
	}
	if len(f.Ports) > 0 {
		parts = append(parts, "ports "+joinPorts(f.Ports))
	}
	if len(f.VIPPorts) > 0 {
		parts = append(parts, "ports of the VIP and its reals "+joinPorts(f.VIPPorts))
	}
	if f.Proto != "" {
		parts = append(parts, "protocol "+f.Proto)
	}
	if len(f.IgnoreReasons) > 0 {
		parts = append(parts, "ignoring "+strings.Join(f.IgnoreReasons, " "))
	}
	return strings.Join(parts, ", ")
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, " ")
}

// netnsLabel names a drop's namespace: its name, else its inode.
func netnsLabel(d Drop) string {
	if d.NetnsTag != "" {
		return "netns " + d.NetnsTag
	}
	return fmt.Sprintf("netns %d", d.Netns)
}

// DropLine renders one drop for a person.
func DropLine(d Drop) string {
	var b strings.Builder
	if !d.Time.IsZero() {
		b.WriteString(d.Time.Format("15:04:05.000000") + " ")
	}
	if d.Count > 0 {
		fmt.Fprintf(&b, "%6d × ", d.Count)
	}
	fmt.Fprintf(&b, "%s %s at %s", d.Reason, d.Location, netnsLabel(d))
	if d.Ifname != "" {
		b.WriteString(" dev " + d.Ifname)
	}
	if d.NotItemised {
		b.WriteString(": flows not itemised (the flow map was full)")
	}
	if src, dst := d.Endpoints(); src != "" {
		fmt.Fprintf(&b, ": %s %s → %s", d.Proto, src, dst)
		if d.TCPFlags != "" {
			b.WriteString(" [" + d.TCPFlags + "]")
		}
		if d.ICMP != "" {
			b.WriteString(" (" + d.ICMP + ")")
		}
	}
	if d.Len > 0 {
		fmt.Fprintf(&b, " len %d", d.Len)
	}
	if d.Flow != nil {
		b.WriteString("\n    flow: " + d.Flow.String())
	}
	for _, f := range d.Stack {
		b.WriteString("\n        " + f)
	}
	return Printable(b.String())
}

// DropsJSONLine writes one JSON object on a line.
func DropsJSONLine(w io.Writer, v any) error {
	if d, ok := v.(Drop); ok {
		if b := d.appendJSON(make([]byte, 0, 512)); b != nil {
			_, err := w.Write(append(b, '\n'))
			return err
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeRest sums up the summary rows past the cap, and the drops of flows
// not itemised, by reason, place and namespace: a flood from many ports is
// one line, not thousands.
func writeRest(b *strings.Builder, rest []*Drop, top int) {
	if len(rest) == 0 {
		return
	}
	key := func(d *Drop) string { return d.Reason + " " + d.Location + " " + netnsLabel(*d) }
	places := tally.By(rest, key, func(d *Drop) uint64 { return d.Count })
	var total, unitemised uint64
	flows := len(rest)
	perPlace := map[string]uint64{}
	for _, d := range rest {
		if d.NotItemised {
			flows--
			unitemised += d.Count
			perPlace[key(d)] += d.Count
		}
	}
	for _, p := range places {
		total += p.Count
	}
	switch {
	case unitemised == 0:
		fmt.Fprintf(b, "… %d more flows, %d drops (-o json lists every one), by place:\n", flows, total)
	case flows == 0:
		fmt.Fprintf(b, "… %d drops of flows not itemised (the flow map was full), by place:\n", unitemised)
	default:
		fmt.Fprintf(b, "… %d more flows and %d drops of flows not itemised (the flow map was full), %d drops in all (-o json lists every flow), by place:\n", flows, unitemised, total)
	}
	for i, p := range places {
		if top > 0 && i == top {
			fmt.Fprintf(b, "  … %d more places\n", len(places)-top)
			break
		}
		d := p.First
		members := p.Members
		var of []string
		if n := perPlace[p.Key]; n > 0 {
			members--
			if members > 0 {
				of = append(of, tally.Of(members, "flow"))
			}
			of = append(of, fmt.Sprintf("%d drops of flows not itemised", n))
		} else {
			of = append(of, tally.Of(members, "flow"))
		}
		fmt.Fprintf(b, "%6d × %s %s at %s (%s)\n", p.Count, d.Reason, d.Location, netnsLabel(*d), strings.Join(of, ", "))
	}
}

// DropsSummaryText writes the aggregate table and the closing lines.
func DropsSummaryText(w io.Writer, s DropsSummary) error {
	if err := DropsTable(w, s); err != nil {
		return err
	}
	return DropsClosing(w, s)
}

// DropsTable writes the --summary table (data: stdout).
func DropsTable(w io.Writer, s DropsSummary) error {
	var b strings.Builder
	if s.Aggregates != nil {
		// A flood's summary has tens of thousands of rows: they are sorted
		// and split by pointer, not copied (a Drop is ~200 bytes), which
		// made this table most of the time a --summary run took past its
		// window.
		order := make([]*Drop, len(s.Aggregates))
		for i := range s.Aggregates {
			order[i] = &s.Aggregates[i]
		}
		slices.SortFunc(order, func(x, y *Drop) int {
			if x.Count != y.Count {
				return cmp.Compare(y.Count, x.Count)
			}
			// Field by field: building one string per comparison costs more
			// than the rest of a 10,000-flow summary.
			if c := strings.Compare(x.Location, y.Location); c != 0 {
				return c
			}
			if c := strings.Compare(x.Src, y.Src); c != 0 {
				return c
			}
			return strings.Compare(x.Dst, y.Dst)
		})
		if len(order) == 0 {
			b.WriteString("no drops matched\n")
		}
		// The drops of flows not itemised are no flow: they are summed up
		// by place with the rows past the cap.
		rows := make([]*Drop, 0, len(order))
		var unitemised []*Drop
		for _, d := range order {
			if d.NotItemised {
				unitemised = append(unitemised, d)
			} else {
				rows = append(rows, d)
			}
		}
		var rest []*Drop
		if s.Top > 0 && len(rows) > s.Top {
			rows, rest = rows[:s.Top], rows[s.Top:]
		}
		rest = append(rest, unitemised...)
		for _, d := range rows {
			b.WriteString(DropLine(*d) + "\n")
		}
		writeRest(&b, rest, s.Top)
	}
	_, err := io.WriteString(w, Printable(b.String()))
	return err
}

// DropsClosing writes what matched, what was reported and what was lost, and
// why any of it is incomplete (status: stderr, in every mode).
func DropsClosing(w io.Writer, s DropsSummary) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d drops matched in %s: %d reported, %d lost (ring buffer %d, aggregate map %d); attached %s in %.0f ms\n",
		s.Counters.Matched, s.Window.Round(time.Millisecond), s.Delivered, s.Lost, s.Counters.RingLost, s.Counters.AggLost, s.Attach, s.AttachMs)
	at := s.Attribution
	fmt.Fprintf(&b, "%d attributed to a load-balanced flow, %d not (no flow in the tables, or none known by the window's end); tables read %d times\n", at.Attributed, at.NotAttributed, at.Batches)
	for _, k := range slices.Sorted(maps.Keys(at.Errors)) {
		fmt.Fprintf(&b, "! %s could not be read for attribution: %s\n", k, at.Errors[k])
	}
	if s.CutShort != "" {
		if s.Length > 0 {
			fmt.Fprintf(&b, "! cut short (%s) after %s of %s: the counts cover that much\n", s.CutShort, s.Window.Round(time.Millisecond), s.Length)
		} else if !s.Interrupted {
			fmt.Fprintf(&b, "! the window ended: %s\n", s.CutShort)
		}
	}
	if s.NotWritten > 0 {
		fmt.Fprintf(&b, "! %d of the %d drops reported were not written: the output blocked (nobody read it) and the window does not wait for it\n", s.NotWritten, s.Delivered)
	}
	if s.NoReasons != "" {
		fmt.Fprintf(&b, "! %s\n", s.NoReasons)
	}
	if s.RawLocations != "" {
		fmt.Fprintf(&b, "! %s\n", s.RawLocations)
	}
	if s.Counters.NotItemised > 0 {
		fmt.Fprintf(&b, "! %d drops of flows not itemised: the flow map was full; they are counted by place\n", s.Counters.NotItemised)
	}
	if s.Counters.Missed > 0 {
		fmt.Fprintf(&b, "! the kernel skipped the tracer %d times (a drop while it was already running on that CPU): those drops were not seen\n", s.Counters.Missed)
	}
	_, err := io.WriteString(w, Printable(b.String()))
	return err
}
