package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// The four legs a capture on the load balancer sees of a NAT'd flow, in
// the order its packets cross them.
var LegKinds = [4]flowpath.LegKind{flowpath.Request, flowpath.ToReal, flowpath.Reply, flowpath.ToClient}

// legIndex is a leg's place in LegKinds (-1: not a captured leg).
func legIndex(k flowpath.LegKind) int {
	for i, l := range LegKinds {
		if l == k {
			return i
		}
	}
	return -1
}

// LegName is how text output names a leg: client→VIP, →real, real→, →client.
func LegName(k flowpath.LegKind) string {
	switch k {
	case flowpath.Request:
		return "client→VIP"
	case flowpath.ToReal:
		return "→real"
	case flowpath.Reply:
		return "real→"
	case flowpath.ToClient:
		return "→client"
	}
	return string(k)
}

// Header is what the leg of a packet is decided from: its tuple and, for
// TCP, its flags.
type Header struct {
	Proto    uint8
	Src, Dst netip.AddrPort
	TCPFlags uint8
}

// HeaderParser reads the IP and transport headers of Ethernet frames
// (gopacket's decoders, reused: no allocation per packet). Not safe for
// concurrent use.
type HeaderParser struct {
	eth    layers.Ethernet
	dot1q  layers.Dot1Q
	ip4    layers.IPv4
	ip6    layers.IPv6
	tcp    layers.TCP
	udp    layers.UDP
	parser *gopacket.DecodingLayerParser
	found  []gopacket.LayerType
}

// NewHeaderParser returns a parser of Ethernet frames (with or without a
// VLAN tag) carrying IPv4 or IPv6, TCP or UDP.
func NewHeaderParser() *HeaderParser {
	h := &HeaderParser{}
	h.parser = gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &h.eth, &h.dot1q, &h.ip4, &h.ip6, &h.tcp, &h.udp)
	h.parser.IgnoreUnsupported = true
	h.parser.IgnorePanic = true
	return h
}

// Parse reads frame's tuple; false when it carries no IPv4/IPv6 TCP or UDP
// header (ARP, ICMP, a fragment after the first, a frame cut short before
// its ports).
func (h *HeaderParser) Parse(frame []byte) (Header, bool) {
	h.found = h.found[:0]
	_ = h.parser.DecodeLayers(frame, &h.found) // what was decoded before an error is still good
	var hd Header
	var src, dst netip.Addr
	for _, l := range h.found {
		switch l {
		case layers.LayerTypeIPv4:
			src, _ = netip.AddrFromSlice(h.ip4.SrcIP.To4())
			dst, _ = netip.AddrFromSlice(h.ip4.DstIP.To4())
		case layers.LayerTypeIPv6:
			src, _ = netip.AddrFromSlice(h.ip6.SrcIP.To16())
			dst, _ = netip.AddrFromSlice(h.ip6.DstIP.To16())
		case layers.LayerTypeTCP:
			hd.Proto = unix.IPPROTO_TCP
			hd.Src, hd.Dst = netip.AddrPortFrom(src, uint16(h.tcp.SrcPort)), netip.AddrPortFrom(dst, uint16(h.tcp.DstPort))
			hd.TCPFlags = tcpFlags(&h.tcp)
		case layers.LayerTypeUDP:
			hd.Proto = unix.IPPROTO_UDP
			hd.Src, hd.Dst = netip.AddrPortFrom(src, uint16(h.udp.SrcPort)), netip.AddrPortFrom(dst, uint16(h.udp.DstPort))
		}
	}
	return hd, hd.Proto != 0 && src.IsValid() && dst.IsValid()
}

// tcpFlags packs the flags in the order of the header's 13th byte (FIN is
// bit 0), the order drops.TCPFlags and drops.Kind read.
func tcpFlags(t *layers.TCP) uint8 {
	var f uint8
	for i, b := range []bool{t.FIN, t.SYN, t.RST, t.PSH, t.ACK, t.URG, t.ECE, t.CWR} {
		if b {
			f |= 1 << i
		}
	}
	return f
}

// Classify places a packet on its flow's leg: f is the flow the attributor
// found for its tuple (its Direction, request or reply, and its Stage: how
// far NAT had rewritten it), dir whether the LB received or sent it.
// Received requests not yet rewritten are client→VIP; requests sent are
// LB→real; replies received are real→LB; replies sent are LB→client —
// whatever their addresses are by then. A packet whose stage contradicts
// its direction (a request leaving with the VIP still in it, a reply
// arriving already de-NATed back to the client) is on no leg of this LB:
// false.
func Classify(f *drops.Flow, dir Direction) (flowpath.LegKind, bool) {
	if f == nil {
		return "", false
	}
	leg := f.Leg()
	switch {
	case dir == In && leg == flowpath.Request:
		return flowpath.Request, true
	case dir == Out && (leg == flowpath.Schedule || leg == flowpath.SNAT):
		return flowpath.ToReal, true
	case dir == In && (leg == flowpath.Reply || leg == flowpath.Route):
		return flowpath.Reply, true
	case dir == Out && (leg == flowpath.ToClient || leg == flowpath.Route || leg == flowpath.Reply):
		// A reply leaving with the real's address (Route, Reply) was not
		// given the VIP back: it still left toward the client.
		return flowpath.ToClient, true
	}
	return "", false
}

// LegCount is what a capture saw on one leg of one flow.
type LegCount struct {
	Packets uint64 `json:"packets"`
	// Segments are the kinds of TCP segment seen (drops.Kind: SYN,
	// SYN-ACK, ACK, FIN, RST), in the order first seen.
	Segments []string  `json:"segments,omitempty"`
	First    time.Time `json:"first,omitzero"`
	Last     time.Time `json:"last,omitzero"`
}

// FlowKey names a flow by what its client sent.
type FlowKey struct {
	Proto  uint8
	Client netip.AddrPort
	VIP    netip.AddrPort
}

// FlowLegs is one flow and what was seen on each of its legs, in the order
// of LegKinds.
type FlowLegs struct {
	Proto  string         `json:"proto"`
	Client netip.AddrPort `json:"client"`
	VIP    netip.AddrPort `json:"vip"`
	Real   netip.AddrPort `json:"real"`
	Legs   [4]LegCount    `json:"-"`
}

// Stop is the first leg no packet was seen on ("" when every leg was
// seen): where the flow stops, as far as the LB can tell.
func (f *FlowLegs) Stop() flowpath.LegKind {
	for i, l := range f.Legs {
		if l.Packets == 0 {
			return LegKinds[i]
		}
	}
	return ""
}

// Leg is the count of leg k.
func (f *FlowLegs) Leg(k flowpath.LegKind) LegCount {
	if i := legIndex(k); i >= 0 {
		return f.Legs[i]
	}
	return LegCount{}
}

// String is the flow on one line, leg by leg:
// `tcp 10.1.0.3:41234 → VIP 10.1.0.6:8085 ✓ 1 SYN · →real 10.1.0.50:8085 ✓ 1 SYN · real→ ✓ 1 SYN-ACK · →client ✗`
// (✓ and the packets seen, with their TCP segments; ✗ none seen).
func (f *FlowLegs) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s → VIP %s", f.Proto, f.Client, f.VIP)
	for i, l := range f.Legs {
		switch LegKinds[i] {
		case flowpath.Request:
		case flowpath.ToReal:
			if f.Real.IsValid() {
				b.WriteString(" · →real " + f.Real.String())
			} else {
				b.WriteString(" · →real (none chosen)")
			}
		default:
			b.WriteString(" · " + LegName(LegKinds[i]))
		}
		if l.Packets == 0 {
			b.WriteString(" ✗")
			continue
		}
		fmt.Fprintf(&b, " ✓ %d", l.Packets)
		if len(l.Segments) > 0 {
			b.WriteString(" " + strings.Join(l.Segments, ","))
		}
	}
	if s := f.Stop(); s != "" {
		b.WriteString(" · stops at " + LegName(s))
	}
	return b.String()
}

// MaxFlows bounds a Table: the flows past it are counted, not listed.
const MaxFlows = 10000

// Table counts the packets of each flow by leg, in the order flows were
// first seen. Bounded: past Max flows, packets of new flows are counted in
// Unlisted. Not safe for concurrent use.
type Table struct {
	Max   int
	flows []*FlowLegs
	at    map[FlowKey]int
	// Unclaimed counts packets no flow claimed (no flow in conntrack or
	// IPVS, or on no leg of this LB); Own those of them to or from one of
	// the LB's own addresses that is not a VIP (the LB's own traffic: a
	// health checker's connects to the reals); Unlisted the packets of
	// flows past Max.
	Unclaimed, Own, Unlisted uint64
}

// NewTable returns a table of at most MaxFlows flows.
func NewTable() *Table { return &Table{Max: MaxFlows, at: map[FlowKey]int{}} }

// Add counts one packet with header h, seen at t on leg of flow f (nil:
// no flow claimed it). It returns the flow's legs (nil when unclaimed or
// unlisted).
func (t *Table) Add(f *drops.Flow, leg flowpath.LegKind, ok bool, h Header, at time.Time) *FlowLegs {
	i := legIndex(leg)
	if f == nil || !ok || i < 0 {
		t.Unclaimed++
		return nil
	}
	k := FlowKey{Proto: h.Proto, Client: f.Client, VIP: f.VIP}
	n, found := t.at[k]
	if !found {
		if len(t.flows) >= t.Max {
			t.Unlisted++
			return nil
		}
		n = len(t.flows)
		t.at[k] = n
		t.flows = append(t.flows, &FlowLegs{Proto: proto.Name(h.Proto), Client: f.Client, VIP: f.VIP, Real: f.Real})
	}
	fl := t.flows[n]
	if fl.Real != f.Real && f.Real.IsValid() {
		fl.Real = f.Real // IPVS and conntrack agree; a reused client port may not
	}
	l := &fl.Legs[i]
	l.Packets++
	if l.First.IsZero() {
		l.First = at
	}
	l.Last = at
	if h.Proto == unix.IPPROTO_TCP {
		if s := drops.Kind(h.TCPFlags); !slices.Contains(l.Segments, s) {
			l.Segments = append(l.Segments, s)
		}
	}
	return fl
}

// Flows are the flows seen, in the order first seen.
func (t *Table) Flows() []*FlowLegs { return t.flows }

// Counts sums the packets seen on each leg over every flow listed.
func (t *Table) Counts() [4]uint64 {
	var c [4]uint64
	for _, f := range t.flows {
		for i, l := range f.Legs {
			c[i] += l.Packets
		}
	}
	return c
}

// flowJSON is FlowLegs in JSON: its legs by kind, and where it stops.
type flowJSON struct {
	Proto  string         `json:"proto"`
	Client netip.AddrPort `json:"client"`
	VIP    netip.AddrPort `json:"vip"`
	Real   netip.AddrPort `json:"real"`
	Legs   []legJSON      `json:"legs"`
	Stop   string         `json:"stop,omitempty"`
}

type legJSON struct {
	Kind flowpath.LegKind `json:"kind"`
	LegCount
}

// MarshalJSON writes the flow as README's "JSON output of capture" says:
// `legs` in the order packets cross them (request, to_real, reply,
// to_client), each with its packets, TCP segments and first and last
// time seen; `stop`, the first leg with none.
func (f *FlowLegs) MarshalJSON() ([]byte, error) {
	j := flowJSON{Proto: f.Proto, Client: f.Client, VIP: f.VIP, Real: f.Real, Stop: string(f.Stop())}
	for i, l := range f.Legs {
		j.Legs = append(j.Legs, legJSON{LegKinds[i], l})
	}
	return json.Marshal(j)
}

// Joiner places captured packets on their flows' legs, joining each
// packet's tuple to its flow through the LB's conntrack and IPVS tables
// with the drop tracer's Attributor (the same bounded cache, events and
// batched reads: never a kernel round trip per packet).
type Joiner struct {
	// Local, when set, says whether an address is the LB's own and not a
	// VIP: an unclaimed packet to or from one is counted as Own too.
	Local func(netip.Addr) bool
	// VIPs, when set, are the services captured: a packet the LB receives
	// for one of them from an address not its own is the client→VIP leg
	// of a flow even when no table holds the flow — a request that dies
	// before conntrack confirms it (forwarding off, a filter drop after
	// DNAT) leaves no entry, and is still the flow that stops at →real.
	VIPs   []netip.AddrPort
	attr   *drops.Attributor
	parser *HeaderParser
	Table  *Table
	mono   int64 // CLOCK_REALTIME − CLOCK_MONOTONIC, ns
}

// joinLag is added to a packet's capture time before asking whether the
// tables were read past it: a packet is captured as it arrives, before
// conntrack confirms its flow a few microseconds later.
const joinLag = 2 * time.Millisecond

// NewJoiner joins against the tables of lb, reading only the conntrack
// flows that touch addrs (the capture's own addresses; none: all), within
// b (probes.AttributorBounds: a big LB's tables are read in part, as the
// drop tracer's are, and Unread says so). It returns once the tables were
// first read (drops.Attributor.WaitRead), so a capture opened after it
// knows every flow there was from its first instant, one that ends then
// too, as the drop tracer does from its attach; ctx ending first (Ctrl-C
// during that read) is its error.
func NewJoiner(ctx context.Context, lb netns.Target, addrs []netip.Addr, proto uint8, b drops.Bounds) (*Joiner, error) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	j := &Joiner{attr: drops.NewBoundedAttributor(lb, addrs, proto, b), parser: NewHeaderParser(), Table: NewTable(), mono: time.Now().UnixNano() - ts.Nano()}
	if err := j.attr.WaitRead(ctx); err != nil {
		j.Close()
		return nil, err
	}
	return j, nil
}

// NewServiceJoiner is NewJoiner for the captured services (VIP:port): a
// request to one that no table holds is still its flow's client→VIP leg
// (VIPs), and unclaimed packets of the LB's other addresses are its own
// (Local). capture and the window's capture both join through it, made
// before the capture opens.
func NewServiceJoiner(ctx context.Context, lb netns.Target, m Match, services []netip.AddrPort, b drops.Bounds) (*Joiner, error) {
	j, err := NewJoiner(ctx, lb, m.Addrs, m.Proto, b)
	if err != nil {
		return nil, err
	}
	vips := make([]netip.Addr, 0, len(services))
	for _, s := range services {
		vips = append(vips, s.Addr())
	}
	j.Local, _ = LocalNotVIP(lb, vips) // unread: nothing is counted as the LB's own
	j.VIPs = services
	return j, nil
}

// Close stops the table readers.
func (j *Joiner) Close() { j.attr.Close() }

// Errors names the tables that could not be read, with why.
func (j *Joiner) Errors() map[string]string { return j.attr.Failed() }

// Unread names the tables its bounds left unread, in part or whole, with
// why and what was read instead (keys ipvs, conntrack).
func (j *Joiner) Unread() map[string]string { return j.attr.Unread() }

// Join classifies p and counts it in the table. A packet whose flow is not
// known yet waits, while ctx is live, for the tables to be read past seen
// (CLOCK_MONOTONIC ns when the packet was taken from the ring, 0: its
// capture time; a packet's own timestamp may be the sender's clock).
// ok is false for a packet no flow claimed (counted as Unclaimed), or one
// past the table's bound. Not safe for concurrent use.
func (j *Joiner) Join(ctx context.Context, p Packet, seen int64) (LegOf, *FlowLegs, bool) {
	h, ok := j.parser.Parse(p.Data)
	if !ok {
		j.Table.Unclaimed++
		return LegOf{}, nil, false
	}
	family := uint8(4)
	if h.Src.Addr().Is6() {
		family = 6
	}
	at := seen
	if at == 0 {
		at = p.Time.UnixNano() - j.mono
	}
	at += int64(joinLag)
	f := j.attr.Attribute(ctx, drops.Packet{Family: family, Proto: h.Proto, Src: h.Src, Dst: h.Dst}, at, 1)
	if f == nil && p.Direction == In && slices.Contains(j.VIPs, h.Dst) && (j.Local == nil || !j.Local(h.Src.Addr())) {
		f = &drops.Flow{Client: h.Src, VIP: h.Dst, Direction: "request", Stage: "as the client sent it, before NAT", Source: "capture"}
	}
	leg, ok := Classify(f, p.Direction)
	fl := j.Table.Add(f, leg, ok, h, p.Time)
	if fl == nil {
		if (f == nil || !ok) && j.Local != nil && (j.Local(h.Src.Addr()) || j.Local(h.Dst.Addr())) {
			j.Table.Own++
		}
		return LegOf{}, nil, false
	}
	return LegOf{Client: f.Client, VIP: f.VIP, Real: f.Real, Kind: leg}, fl, true
}

// PathLegs is what a capture counted on the legs of one service's flows to
// one real server: the sum over those flows, in the order of LegKinds.
type PathLegs struct {
	Proto string         `json:"proto"`
	VIP   netip.AddrPort `json:"vip"`
	Real  netip.AddrPort `json:"real"`
	Flows int            `json:"flows"`
	// Stopped counts the flows that stopped before their last leg.
	Stopped int         `json:"stopped"`
	Legs    [4]LegCount `json:"legs"`
}

// MarshalJSON writes legs by kind, as FlowLegs does.
func (p PathLegs) MarshalJSON() ([]byte, error) {
	type plain PathLegs
	j := struct {
		plain
		Legs []legJSON `json:"legs"`
	}{plain: plain(p)}
	for i, l := range p.Legs {
		j.Legs = append(j.Legs, legJSON{LegKinds[i], l})
	}
	return json.Marshal(j)
}

// Summary is what a capture saw in a window, by service path, and what it
// could not see (never hidden).
type Summary struct {
	Paths        []PathLegs `json:"paths"`
	Packets      uint64     `json:"packets"`
	KernelDrops  uint64     `json:"kernel_drops"`  // the rings were full (PACKET_STATISTICS)
	NotProcessed uint64     `json:"not_processed"` // lbdoctor's queue was full
	Unclaimed    uint64     `json:"unclaimed"`     // no flow claimed them
	Own          uint64     `json:"own"`           // of those, the LB's own traffic (to or from its address, not a VIP)
	Unlisted     uint64     `json:"unlisted"`      // packets of flows past the table's bound
	Interfaces   []Stats    `json:"interfaces"`
	// Widened says why the kernel's filter took the ports alone (the
	// addresses selected in user space; Outside: the packets left out so).
	Widened string `json:"widened,omitempty"`
	Outside uint64 `json:"outside,omitempty"`
	// Errors are the tables the join could not read (ipvs, conntrack),
	// Unread those its bounds left unread on a big LB, with why: the
	// packets of flows only they hold are claimed by no flow.
	Errors map[string]string `json:"errors,omitempty"`
	Unread map[string]string `json:"unread,omitempty"`
}

// ByPath sums the table's flows by service path (VIP and real), in the
// order paths were first seen.
func (t *Table) ByPath() []PathLegs {
	var out []PathLegs
	at := map[[2]netip.AddrPort]int{}
	for _, f := range t.flows {
		k := [2]netip.AddrPort{f.VIP, f.Real}
		i, ok := at[k]
		if !ok {
			i = len(out)
			at[k] = i
			out = append(out, PathLegs{Proto: f.Proto, VIP: f.VIP, Real: f.Real})
		}
		p := &out[i]
		p.Flows++
		if f.Stop() != "" {
			p.Stopped++
		}
		for j, l := range f.Legs {
			pl := &p.Legs[j]
			pl.Packets += l.Packets
			for _, s := range l.Segments {
				if !slices.Contains(pl.Segments, s) {
					pl.Segments = append(pl.Segments, s)
				}
			}
			if !l.First.IsZero() && (pl.First.IsZero() || l.First.Before(pl.First)) {
				pl.First = l.First
			}
			if l.Last.After(pl.Last) {
				pl.Last = l.Last
			}
		}
	}
	return out
}

// LocalNotVIP returns whether an address is one of lb's own and not one of
// vips (Joiner.Local), from one read of its interfaces.
func LocalNotVIP(lb netns.Target, vips []netip.Addr) (func(netip.Addr) bool, error) {
	st, err := netstate.Read(lb)
	if err != nil {
		return nil, fmt.Errorf("read the addresses of %s: %w", lb, err)
	}
	own := map[netip.Addr]bool{}
	for _, l := range st.Links {
		for _, p := range l.Addrs {
			if !slices.Contains(vips, p.Addr()) {
				own[p.Addr()] = true
			}
		}
	}
	return func(a netip.Addr) bool { return own[a] }, nil
}
