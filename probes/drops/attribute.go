package drops

import (
	"fmt"
	"net/netip"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// Flow is the load-balanced connection a dropped packet belonged to.
type Flow struct {
	Client    netip.AddrPort `json:"client"`
	VIP       netip.AddrPort `json:"vip"`
	Real      netip.AddrPort `json:"real"`
	Direction string         `json:"direction"` // request or reply
	Stage     string         `json:"stage"`     // where on the NAT path the packet was
	Source    string         `json:"source"`    // conntrack or ipvs
}

func (f Flow) String() string {
	return fmt.Sprintf("%s of %s → VIP %s via real %s (%s)", f.Direction, f.Client, f.VIP, f.Real, f.Stage)
}

// Attributor maps dropped packets — whose addresses NAT may have rewritten —
// back to flows, using the conntrack and IPVS tables of the load balancer's
// namespace. It caches per tuple.
type Attributor struct {
	LB    netns.Target
	cache map[[2]netip.AddrPort]*Flow
}

// NewAttributor attributes against the tables of lb.
func NewAttributor(lb netns.Target) *Attributor {
	return &Attributor{LB: lb, cache: map[[2]netip.AddrPort]*Flow{}}
}

// Attribute returns the flow p belongs to, or nil when none is known.
func (a *Attributor) Attribute(p Packet) *Flow {
	if p.Family == 0 {
		return nil
	}
	key := [2]netip.AddrPort{p.Src, p.Dst}
	if f, ok := a.cache[key]; ok {
		return f
	}
	f := a.fromConntrack(p)
	if f == nil {
		f = a.fromIPVS(p)
	}
	a.cache[key] = f
	return f
}

func (a *Attributor) fromConntrack(p Packet) *Flow {
	flows, err := conntrack.Flows(a.LB, conntrack.Touching(p.Src.Addr(), p.Src.Port(), p.Proto)...)
	if err != nil {
		return nil
	}
	for _, fl := range flows {
		if f := MatchConntrack(p.Src, p.Dst, fl); f != nil {
			return f
		}
	}
	return nil
}

func (a *Attributor) fromIPVS(p Packet) *Flow {
	conns, err := ipvs.ReadConns(a.LB, func(c ipvs.Conn) bool {
		return c.Client == p.Src || c.Client == p.Dst || c.Dest == p.Src || c.Dest == p.Dst
	})
	if err != nil {
		return nil
	}
	for _, c := range conns {
		if f := MatchIPVS(p.Src, p.Dst, c); f != nil {
			return f
		}
	}
	return nil
}

// MatchConntrack places a packet s → d on conntrack flow fl (original o,
// reply r), or returns nil.
func MatchConntrack(s, d netip.AddrPort, fl conntrack.Flow) *Flow {
	o, r := fl.Orig, fl.Reply
	f := &Flow{Client: o.Src, VIP: o.Dst, Real: r.Src, Source: "conntrack"}
	switch {
	case s == o.Src && d == o.Dst:
		f.Direction, f.Stage = "request", "as the client sent it, before NAT"
	case s == o.Src && d == r.Src:
		f.Direction, f.Stage = "request", "after DNAT to the real server"
	case s == r.Dst && d == r.Src:
		f.Direction, f.Stage = "request", "after DNAT and SNAT"
	case s == r.Src && d == r.Dst:
		f.Direction, f.Stage = "reply", "as the real server sent it, before de-NAT"
	case s == r.Src && d == o.Src:
		f.Direction, f.Stage = "reply", "after SNAT reverse, before the VIP is restored"
	case s == o.Dst && d == o.Src:
		f.Direction, f.Stage = "reply", "after full de-NAT, back to the client"
	default:
		return nil
	}
	return f
}

// MatchIPVS places a packet s → d on an IPVS connection, or returns nil.
func MatchIPVS(s, d netip.AddrPort, c ipvs.Conn) *Flow {
	f := &Flow{Client: c.Client, VIP: c.VIP, Real: c.Dest, Source: "ipvs"}
	switch {
	case s == c.Client && d == c.VIP:
		f.Direction, f.Stage = "request", "as the client sent it, before IPVS"
	case s == c.Client && d == c.Dest:
		f.Direction, f.Stage = "request", "after IPVS DNAT to the real server"
	case s == c.Dest && d == c.Client:
		f.Direction, f.Stage = "reply", "straight from the real server, never de-NATed by IPVS"
	case s == c.VIP && d == c.Client:
		f.Direction, f.Stage = "reply", "after IPVS de-NAT, back to the client"
	default:
		return nil
	}
	return f
}
