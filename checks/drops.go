package checks

import (
	"fmt"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// maxDropLines caps the evidence lines of drops.vip_flows; the rest is
// counted in one more line.
const maxDropLines = 8

// checkDrops judges what the drop tracer counted during the check's window
// (check --drops D): every drop of a selected service's flow is a failure,
// named by reason and place, with the fix the reason points to.
func checkDrops(s *probes.Snapshot, sel probes.Selector) Finding {
	if e, ok := s.Errors[probes.ProbeDrops]; ok {
		return skip("the drop tracer could not run: " + e)
	}
	if s.Drops == nil {
		return skip("drops were not traced: add --drops 5s while traffic flows")
	}
	d := s.Drops
	var total uint64
	for _, c := range d.Drops {
		total += c.Count
	}
	window := fmt.Sprintf("%d drops of the selected flows in %s in %s (%s; %d lost; %d attributed to a flow, %d not)",
		total, d.Window.Round(1e6), s.Target, d.Attach, d.Counters.Lost()+d.Counters.Missed, d.Attribution.Attributed, d.Attribution.NotAttributed)
	if d.CutShort {
		window += "; the window was cut short"
	}
	ev := []Evidence{{Fact: window, Source: "kfree_skb tracer"}}
	if sel.VIP.IsValid() && len(selected(s, sel)) == 0 && len(s.Conntrack.Backends) > 0 {
		var bs []string
		for _, b := range s.Conntrack.Backends {
			bs = append(bs, b.String())
		}
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s is not an IPVS service; traced with the backends its flows show: %s", sel.VIP, strings.Join(bs, ", ")), Source: "conntrack, " + s.Target.String()})
	}
	if d.NoReasons != "" {
		ev = append(ev, Evidence{Fact: d.NoReasons, Source: "kernel " + s.Kernel})
	}
	if total == 0 {
		f := Finding{Status: Pass, Title: "no packet of the selected flows was dropped", Evidence: ev}
		if d.Counters.Lost()+d.Counters.Missed > 0 {
			f.Status, f.Title = Warn, "no drop was seen, but the tracer lost some"
		}
		return f
	}
	groups := groupDrops(d.Drops)
	for i, g := range groups {
		if i == maxDropLines {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("… and %d more kinds of drop", len(groups)-i), Source: "kfree_skb tracer"})
			break
		}
		ev = append(ev, Evidence{Fact: dropLine(g), Source: "kfree_skb tracer"})
	}
	top := groups[0].First
	f := Finding{Status: Fail, Title: fmt.Sprintf("packets of the selected flows are dropped: %s at %s", top.ReasonName, funcName(top.Symbol)), Evidence: ev}
	f.Reason, f.Fix, f.Remedies = dropRemedy(s, top)
	return f
}

// dropGroup is the drops of one reason at one place on one path of a
// service: the flows of different clients (or client ports) fold into one.
type dropGroup = tally.Group[drops.Counted]

func dropLine(g dropGroup) string {
	c := g.First
	var b strings.Builder
	fmt.Fprintf(&b, "%d × %s at %s", g.Count, c.ReasonName, c.Symbol)
	src, dst := c.Endpoints()
	if f := c.Flow; f != nil {
		fmt.Fprintf(&b, ": %s packets of %s to VIP %s via real %s (%s), e.g. %s %s → %s", f.Direction, tally.Of(g.Members, "flow"), f.VIP, f.Real, f.Stage, proto.Name(c.Proto), src, dst)
	} else if c.Family != 0 {
		fmt.Fprintf(&b, ": %s %s → %s", proto.Name(c.Proto), src, dst)
	}
	return b.String()
}

// groupDrops folds counted drops by reason, place and service path, the
// biggest group first.
func groupDrops(cs []drops.Counted) []dropGroup {
	return tally.By(cs, func(c drops.Counted) string {
		if f := c.Flow; f != nil {
			return fmt.Sprintf("%d %s %d %s %s %s %s", c.Netns, c.ReasonName, c.Location, f.VIP, f.Real, f.Direction, f.Stage)
		}
		return fmt.Sprintf("%d %s %d %s %s", c.Netns, c.ReasonName, c.Location, c.Src, c.Dst)
	}, func(c drops.Counted) uint64 { return c.Count })
}

// funcName is the function of a symbol+offset location.
func funcName(loc string) string {
	name, _, _ := strings.Cut(loc, "+")
	return name
}

// dropRemedy says what a drop reason means on an IPVS load balancer and how
// to fix it, as far as the snapshot allows.
func dropRemedy(s *probes.Snapshot, c drops.Counted) (why string, fix []string, remedies []Remedy) {
	switch c.ReasonName {
	case "IP_INADDRERRORS", "IP_INNOROUTES":
		if v, ok := readable(s, "net.ipv4.ip_forward"); ok && v.Value == "0" {
			return "the packet had to be forwarded but net.ipv4.ip_forward=0: it died in ip_error (a reply de-NATed to the client before IPVS saw it, or a request IPVS did not take)",
				sysctlFix(s.Target, "net.ipv4.ip_forward", "1"), []Remedy{{Sysctl: "net.ipv4.ip_forward", Value: "1"}}
		}
		return "the packet's destination is neither local nor routable from here (ip_error)",
			[]string{fmt.Sprintf("%sip route get %s", s.Target.ExecPrefix(), c.Dst.Addr())}, nil
	case "NETFILTER_DROP":
		return "a packet-filter rule dropped it", []string{fmt.Sprintf("%s --vip %s   # rule hit counters", lbdoctorCmd(s, "inspect"), flowVIP(c))}, nil
	case "IP_RPFILTER":
		return "reverse-path filtering dropped it: its source is not routed back through the interface it came in on",
			[]string{fmt.Sprintf("%ssysctl -w net.ipv4.conf.all.rp_filter=2   # loose, or route the source back the same way", s.Target.ExecPrefix())}, nil
	case "NO_SOCKET":
		return "it reached the local stack and nothing listens there: IPVS did not take it (no service for this address and port?)",
			[]string{fmt.Sprintf("%sipvsadm -Ln", s.Target.ExecPrefix())}, nil
	}
	return fmt.Sprintf("the kernel dropped it with reason %s at %s", c.ReasonName, c.Symbol), nil, nil
}

func flowVIP(c drops.Counted) string {
	if c.Flow != nil {
		return c.Flow.VIP.String()
	}
	return c.Dst.String()
}
