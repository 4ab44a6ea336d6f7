package checks

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// checkSendRedirects: a one-arm LB forwards replies out of the interface
// they came in on, so with send_redirects on it tells the real server, by
// ICMP redirect, to send to the client directly — around the LB.
func checkSendRedirects(s *probes.Snapshot, sel probes.Selector) Finding {
	masq, why := masqueraded(s, sel)
	if why != "" {
		return skip(why)
	}
	// send_redirects and ip_forward are IPv4's: an IPv6 service's
	// redirects are not governed by them.
	masq = slices.DeleteFunc(masq, func(svc ipvs.Service) bool { return ForwardingKey(svc.Addr.Addr()) != "net.ipv4.ip_forward" })
	if len(masq) == 0 {
		return skip("no IPv4 masquerade service: net.ipv4 send_redirects govern IPv4 only")
	}
	if e, ok := s.Errors[probes.ProbeNet]; ok {
		return skip("routes could not be read, so a one-arm service cannot be told: " + e)
	}
	v, ok := readable(s, "net.ipv4.ip_forward")
	if !ok {
		return skip("net.ipv4.ip_forward could not be read: " + v.Error + v.Absent)
	}
	if v.Value == "0" {
		return skip("forwarding is off: nothing is redirected")
	}
	links, locals := addrLinks(s), s.Net.LocalSet()
	for _, svc := range masq {
		rp := decideReturnPath(s, links, locals, svc.Addr.Addr(), addrsOf(svc))
		if !rp.OneArm {
			continue
		}
		dev := rp.Dev
		all, okAll := readable(s, "net.ipv4.conf.all.send_redirects")
		per, okDev := readable(s, "net.ipv4.conf."+dev+".send_redirects")
		if !okAll || !okDev {
			return skip("send_redirects of " + dev + " could not be read")
		}
		if all.Value == "0" && per.Value == "0" {
			return Finding{Status: Pass, Title: "no ICMP redirects from the one-arm LB",
				Evidence: []Evidence{{Fact: fmt.Sprintf("send_redirects all=0 %s=0", dev), Source: s.Target.String()}}}
		}
		ev := []Evidence{
			{Fact: fmt.Sprintf("net.ipv4.conf.all.send_redirects = %s, net.ipv4.conf.%s.send_redirects = %s", all.Value, dev, per.Value), Source: s.Target.String()},
			{Fact: rp.Reason, Source: "routes, " + s.Target.String()},
			{Fact: fmt.Sprintf("IcmpOutRedirects = %d", s.SNMP["IcmpOutRedirects"]), Source: "snmp, " + s.Target.String()},
		}
		if e, ok := s.Errors[probes.ProbeSNMP]; ok {
			ev[2].Fact = "IcmpOutRedirects not read: " + e
		}
		return Finding{
			Status:   Warn,
			Title:    "the one-arm LB sends ICMP redirects to its real servers",
			Reason:   "forwarded replies leave " + dev + ", the interface they came in on, so the kernel redirects the real server to the client directly; a real server that obeys bypasses the LB",
			Evidence: ev,
			Remedies: RedirectRemedies(dev),
		}
	}
	return skip("no one-arm service: replies do not leave the interface they came in on")
}

func addrsOf(svc ipvs.Service) []netip.Addr {
	out := make([]netip.Addr, 0, len(svc.Reals))
	for _, r := range svc.Reals {
		if r.Method == ipvs.Masq {
			out = append(out, r.Addr.Addr())
		}
	}
	return out
}

// ownRedirects are drops.vip_flows' evidence lines for the window's drops
// of the LB's own ICMP redirects (probes.Window.OwnRedirects), one per
// destination and place: counted and shown, never judged as the flows'
// drops. A dropped redirect reached no one, and the packet it was about
// was forwarded: it costs the flows nothing. (The redirects that are not
// dropped are net.send_redirects' concern: a host that obeys one sends
// around the LB.)
func ownRedirects(s *probes.Snapshot) []Evidence {
	if s.Window == nil || len(s.Window.OwnRedirects) == 0 {
		return nil
	}
	groups := tally.By(s.Window.OwnRedirects, func(c drops.Counted) string {
		return fmt.Sprintf("%s %s %s %s", c.Dst.Addr(), c.ReasonName, c.Symbol, c.Hook)
	}, func(c drops.Counted) uint64 { return c.Count })
	var ev []Evidence
	for _, g := range groups {
		c := g.First
		to := c.Dst.Addr().String()
		if isBackend(s, c.Dst.Addr()) {
			to = "real " + to
		}
		where := c.ReasonName + " at " + c.Symbol
		if c.Hook != "" {
			where += " in " + c.Hook
		}
		why := "no packet of the flows, but the LB telling the sender of one it forwarded back out of the interface it came in on of a shorter way; dropped, it reached no one"
		if c.ReasonName == "NETFILTER_DROP" && c.Hook == drops.HookOutput {
			// Measured on 6.1 and 6.18: with a nat table in the namespace
			// every redirect the LB sends dies here (on 6.18 also about a
			// flow it does not translate; conntrack's drop and invalid
			// counters stay 0); with none, they leave.
			why += ": netfilter's NAT hook drops the LB's redirects in output (nf_nat_icmp_reply_translation)"
		}
		stop := "IPv6 has no switch to stop them" // ip6_forward sends them whenever it forwards back out
		if c.Family == 4 {
			dev := "DEV"
			if d, _ := routeTo(s, c.Dst.Addr()); d != "" {
				dev = d
			}
			stop = "set net.ipv4.conf.all.send_redirects=0 and net.ipv4.conf." + dev + ".send_redirects=0 to stop them"
		}
		ev = append(ev, Evidence{
			Fact: fmt.Sprintf("%d of the LB's own ICMP redirects to %s were dropped: %s (harmless: %s); %s",
				g.Count, to, where, why, stop),
			Source: "kfree_skb tracer",
		})
	}
	return ev
}

// ownRedirectsTitle says in drops.vip_flows' title, which text output
// shows alone for a pass, that the LB's own redirects were dropped.
func ownRedirectsTitle(s *probes.Snapshot) string {
	if s.Window == nil {
		return ""
	}
	return countedTitle(s.Window.OwnRedirects, " (%d of the LB's own ICMP redirects were: harmless, send_redirects is on)")
}

// countedTitle is format with the drops cs count, "" when they count none.
func countedTitle(cs []drops.Counted, format string) string {
	var n uint64
	for _, c := range cs {
		n += c.Count
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(format, n)
}

// isBackend reports whether a is a real server of an IPVS service or a
// backend conntrack showed for a VIP IPVS does not serve.
func isBackend(s *probes.Snapshot, a netip.Addr) bool {
	for _, b := range s.Conntrack.Backends {
		if b.Addr() == a {
			return true
		}
	}
	for _, svc := range s.IPVS.Services {
		for _, r := range svc.Reals {
			if r.Addr.Addr() == a {
				return true
			}
		}
	}
	return false
}

// localSocketFrees are drops.vip_flows' evidence lines for the packets the
// LB's own sockets let go (probes.Window.LocalSocketFrees), one per local
// destination and place: shown, never judged as the flows' drops.
func localSocketFrees(s *probes.Snapshot) []Evidence {
	if s.Window == nil || len(s.Window.LocalSocketFrees) == 0 {
		return nil
	}
	groups := tally.By(s.Window.LocalSocketFrees, func(c drops.Counted) string {
		return c.Dst.String() + " " + c.Symbol
	}, func(c drops.Counted) uint64 { return c.Count })
	var ev []Evidence
	for _, g := range groups {
		c := g.First
		to := "the LB's own socket " + c.Dst.String()
		if isBackend(s, c.Dst.Addr()) {
			to = "local real " + c.Dst.String()
		}
		ev = append(ev, Evidence{
			Fact: fmt.Sprintf("%d packets delivered to %s were let go there with no reason named (NOT_SPECIFIED at %s: a receive queue purged unread at close, a late segment to a closed connection): "+
				"not lost on the path (a remote real does the same out of the tracer's view) and left out", g.Count, to, c.Symbol),
			Source: "kfree_skb tracer, local routes (ip route show table local)",
		})
	}
	return ev
}

// localSocketFreesTitle says in drops.vip_flows' title, which text output
// shows alone for a pass, that local sockets let packets go.
func localSocketFreesTitle(s *probes.Snapshot) string {
	if s.Window == nil {
		return ""
	}
	return countedTitle(s.Window.LocalSocketFrees, " (%d packets were let go by the LB's own sockets: delivered, not lost)")
}
