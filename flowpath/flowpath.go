// Package flowpath is the path model of a virtual service's flows through a
// load balancer: the legs a packet crosses (client→VIP, IPVS→real, SNAT, the
// reply back to the LB, de-SNAT, the route to the client), what the layers
// counted on each leg during a window, and where the path stops. It is plain
// data: the window builds it, checks attach it to the findings it explains,
// and text, JSON, the TUI and capture draw or fill it. Nothing here reads
// the kernel.
package flowpath

import (
	"fmt"
	"strings"
	"time"
)

// LegKind names a leg in a stable way, for machines (JSON, the TUI).
type LegKind string

// The legs of a NAT'd flow, in the order a request and its reply cross them.
const (
	Request  LegKind = "request"  // client → VIP, arriving at the LB
	Schedule LegKind = "schedule" // IPVS picks a real and rewrites the destination (DNAT)
	SNAT     LegKind = "snat"     // source NAT on the way to the real (one-arm)
	ToReal   LegKind = "to_real"  // LB → real on the wire
	Reply    LegKind = "reply"    // real → LB
	DeSNAT   LegKind = "de_snat"  // conntrack reverses the SNAT (PREROUTING)
	Route    LegKind = "route"    // the reply's route to the client (local or forwarded)
	Unmasq   LegKind = "unmasq"   // IPVS rewrites the reply's source back to the VIP
	ToClient LegKind = "to_client"
)

// Status says what the window saw on a leg.
type Status string

const (
	OK      Status = "ok"       // packets were seen crossing it
	Stopped Status = "stopped"  // packets died here: the path stops
	Quiet   Status = "quiet"    // a layer that counts this leg read, and counted nothing
	Unknown Status = "unknown"  // no layer could tell (not read, or nothing counts this leg)
	NotUsed Status = "not_used" // the topology has no such leg (no SNAT on a two-arm LB)
	// Implied: no layer counts this leg, but the legs around it say it
	// was crossed (conntrack reverses a SNAT in PREROUTING without a
	// counter of its own).
	Implied Status = "implied"
	// Failed: nothing crossed the leg, as a layer tells (Note says which
	// and why), whatever its counter counted: IPVS counts the ICMP errors
	// the LB sends about a real that never answered ARP as that real's
	// packets out, and they are no reply.
	Failed Status = "failed"
)

// Leg is one hop of the path and what was counted on it.
type Leg struct {
	Kind   LegKind `json:"kind"`
	Name   string  `json:"name"` // as shown: "client→VIP", "IPVS→real 10.1.0.40:8085"
	Status Status  `json:"status"`
	// Packets is what Source counted on this leg during the window; it
	// means something only when Counted is true.
	Packets uint64 `json:"packets"`
	Counted bool   `json:"counted"`
	// Flows is what a NAT rule counted on this leg: a nat-table rule sees
	// only the first packet of each new flow, so it counts flows, not
	// packets (0 when nothing counts flows here).
	Flows  uint64 `json:"flows,omitempty"`
	Source string `json:"source,omitempty"` // the counter or table: "IPVS stats of real 10.1.0.40:8085", or SourceCapture
	// Segments are the kinds of TCP segment a capture saw on this leg
	// (SYN, SYN-ACK, ACK, FIN, RST), first seen first.
	Segments []string `json:"segments,omitempty"`
	Note     string   `json:"note,omitempty"` // why, in a few words: "10.1.0.3 not local, forwarding off"
}

// SourceCapture is the Source of a leg whose packets a capture on the
// LB's interfaces counted (check --capture): what crossed the wire.
const SourceCapture = "capture"

// Stop is a place the path's packets died: a drop point joined to what
// explains it.
type Stop struct {
	Leg      LegKind `json:"leg"`             // the leg it stops on
	Reason   string  `json:"reason"`          // kernel drop reason, e.g. IP_INADDRERRORS
	Function string  `json:"function"`        // where: ip_error, nf_hook_slow
	Hook     string  `json:"hook,omitempty"`  // netfilter hook for NETFILTER_DROP: prerouting … postrouting
	Cause    string  `json:"cause,omitempty"` // the rule, policy, neighbour or route that explains it
	Count    uint64  `json:"count"`
}

// Path is the path of one virtual service's flows to one real server.
type Path struct {
	Service string        `json:"service"` // "tcp 10.1.0.6:8085"
	Real    string        `json:"real"`    // "10.1.0.50:8085"
	Window  time.Duration `json:"window_ns"`
	Legs    []Leg         `json:"legs"`
	Stops   []Stop        `json:"stops,omitempty"` // where it stops, most drops first; none: it completes (or nothing was seen)
}

// Complete reports whether packets crossed every leg the topology has and
// nothing stopped them.
func (p Path) Complete() bool {
	if len(p.Stops) > 0 {
		return false
	}
	for _, l := range p.Legs {
		if l.Status != OK && l.Status != NotUsed && l.Status != Implied {
			return false
		}
	}
	return true
}

var marks = map[Status]string{OK: " ✓", Unknown: " ?", Failed: " ✗"}

// String is the path on one line, leg by leg, and where it stops:
// `client→VIP ✓ 13 · IPVS→real .40 ✓ 13 · SNAT ✓ · SYN-ACK real→LB ✓ 13 ·
// de-SNAT (PREROUTING) · route: 10.1.0.3 not local, forwarding off ·
// ✗ ip_error IP_INADDRERRORS ×13`.
// A leg crossed shows ✓ and its packets, one whose counter stayed still
// its 0, one no layer could tell ?, one a layer tells nothing crossed ✗
// and why; a stopped leg shows no mark of its own (the stop after it says
// ✗, or its note says why), an implied one none either.
// The route leg reads "route: note".
func (p Path) String() string {
	var parts []string
	for _, l := range p.Legs {
		if l.Status == NotUsed {
			continue
		}
		s := l.Name
		if l.Kind == Route && l.Note != "" {
			s += ": " + l.Note
		}
		s += marks[l.Status]
		if l.Counted && l.Status != Unknown && l.Status != Implied {
			s += fmt.Sprintf(" %d", l.Packets)
		}
		if l.Note != "" && l.Kind != Route {
			s += " (" + l.Note + ")"
		}
		parts = append(parts, s)
	}
	for _, st := range p.Stops {
		s := fmt.Sprintf("✗ %s %s ×%d", st.Function, st.Reason, st.Count)
		if st.Hook != "" {
			s += " in " + st.Hook
		}
		if st.Cause != "" {
			s += ": " + st.Cause
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " · ")
}

// capturedLegs are the legs a capture on the LB sees, in the order packets
// cross them, with how the story names them seen and not seen.
var capturedLegs = []struct {
	kind      LegKind
	seen, not string
}{
	{Request, "arriving from the client (leg 1)", "nothing arriving from the client (leg 1)"},
	{Schedule, "leaving toward real %s (leg 2)", "never leaving toward real %s (leg 2)"},
	{Reply, "arriving from real %s (leg 3)", "nothing arriving back from real %s (leg 3)"},
	{ToClient, "leaving toward the client (leg 4)", "never leaving toward the client (leg 4)"},
}

// CaptureStory says, from the legs a capture counted, where the path's
// packets were last seen and the leg they never reached: "SYN-ACK seen
// arriving from real .40 (leg 3), never leaving toward the client (leg
// 4)". "" when no leg was counted by a capture.
func (p Path) CaptureStory() string {
	real := p.Real
	byKind := map[LegKind]Leg{}
	for _, l := range p.Legs {
		if l.Source == SourceCapture {
			byKind[l.Kind] = l
		}
		if r, ok := strings.CutPrefix(l.Name, "IPVS→real "); ok && l.Kind == Schedule {
			real = r
		}
	}
	if len(byKind) == 0 {
		return ""
	}
	name := func(i int, seen bool) string {
		f := capturedLegs[i].not
		if seen {
			f = capturedLegs[i].seen
		}
		if strings.Contains(f, "%s") {
			return fmt.Sprintf(f, real)
		}
		return f
	}
	last := -1
	for i, c := range capturedLegs {
		l, ok := byKind[c.kind]
		if !ok {
			continue
		}
		if l.Packets == 0 {
			if last < 0 {
				return "no packet of its flows seen: " + name(i, false)
			}
			prev := byKind[capturedLegs[last].kind]
			what := "packets"
			if len(prev.Segments) > 0 {
				what = strings.Join(prev.Segments, ",")
			}
			return fmt.Sprintf("%s seen %s, %s", what, name(last, true), name(i, false))
		}
		last = i
	}
	l := byKind[capturedLegs[last].kind]
	return fmt.Sprintf("every leg seen: %d packets %s", l.Packets, name(last, true))
}
