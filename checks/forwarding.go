package checks

import (
	"fmt"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// methodKinds are the forwarding methods as keepalived's lb_kind names them.
var methodKinds = map[string]string{ipvs.Masq: "NAT", ipvs.Route: "DR", ipvs.Tunnel: "TUN"}

// methodName is a forwarding method as keepalived's lb_kind and ipvsadm's
// flag both say it: "DR (-g)".
func methodName(m string) string {
	if k, ok := methodKinds[m]; ok {
		return k + " (" + methodFlag(m) + ")"
	}
	return m
}

// ipvsadmService is the part of an ipvsadm command that names a service:
// -t/-u ADDR:PORT, or -f MARK.
func ipvsadmService(svc ipvs.Service) string {
	if svc.FWMark != 0 {
		return fmt.Sprintf("-f %d", svc.FWMark)
	}
	return proto.IpvsadmFlag(svc.Proto) + " " + svc.Addr.String()
}

// checkForwardMethod: IPVS forwards to a real by NAT (rewrites the
// destination; replies must come back through the LB), DR (rewrites only
// the MAC: the real must share a segment with the LB and hold the VIP
// itself, and answers clients directly) or a tunnel (IPIP to the real,
// which must decapsulate and hold the VIP). A real given DR or a tunnel
// where the service is built for NAT — a source-NAT rule covers the VIP,
// the service's other reals masquerade — gets packets to an address it
// does not hold and drops them: the client sees a service that
// half-works. keepalived once programmed random methods from a lowercase
// `lb_kind nat`; an `ipvsadm -a` without -m gives DR (its default).
// Weight-0 reals take no new connections and are not judged.
func checkForwardMethod(s *probes.Snapshot, sel probes.Selector) Finding {
	if why := unjudgedRoutes(s); why != "" {
		return skip(why)
	}
	svcs := selected(s, sel)
	src := "ipvs, " + s.Target.String()
	rsrc := "routes, " + s.Target.String()
	x := s.Target.ExecPrefix()
	var ev, bad []Evidence
	var fix, about []string
	first := "" // the first failing real, for the title
	judged := 0
	var unjudged []string // reals whose method rests on rules not read
	for _, svc := range svcs {
		var masq []string
		for _, r := range svc.Reals {
			if r.Method == ipvs.Masq {
				masq = append(masq, r.Addr.String())
			}
		}
		var snat []rules.Rule
		if svc.FWMark == 0 {
			snat = coveringSNAT(s, svc.Addr)
		}
		for _, r := range svc.Reals {
			if (r.Method != ipvs.Route && r.Method != ipvs.Tunnel) || r.Weight == 0 {
				continue
			}
			judged++
			name := fmt.Sprintf("real %s of %s forwards by %s", r.Addr, svc.Key(), methodName(r.Method))
			var why []string
			var mine []Evidence
			if len(masq) > 0 {
				why = append(why, "the service is built for NAT")
				mine = append(mine, Evidence{Fact: fmt.Sprintf("%s, while its other reals masquerade (NAT): %s", name, strings.Join(masq, ", ")), Source: src})
			}
			if len(snat) > 0 {
				if len(why) == 0 {
					why = append(why, "the service is built for NAT")
				}
				mine = append(mine, Evidence{Fact: fmt.Sprintf("a source-NAT rule covers %s: %s %s/%s %s", svc.Key(), snat[0].Backend, snat[0].Table, snat[0].Chain, snat[0].Spec), Source: "rules, " + s.Target.String()})
			}
			route, found := s.Net.RouteTo(r.Addr.Addr())
			switch {
			case !found:
				why = append(why, "the LB has no route to it")
				mine = append(mine, Evidence{Fact: fmt.Sprintf("%s, but no route of the LB reaches %s", name, r.Addr.Addr()), Source: rsrc})
			case r.Method == ipvs.Route && route.Gw.IsValid():
				why = append(why, "DR needs the real on a segment of the LB")
				mine = append(mine, Evidence{Fact: fmt.Sprintf("%s, but the LB reaches %s through gateway %s (route %s): DR only rewrites the MAC, so the frame goes to the gateway, which routes it back to the VIP", name, r.Addr.Addr(), route.Gw, route.Dst), Source: rsrc})
			}
			if svc.FWMark == 0 && r.Addr.Port() != svc.Addr.Port() {
				why = append(why, "DR and tunnels keep the VIP's port")
				mine = append(mine, Evidence{Fact: fmt.Sprintf("%s to port %d, but the packets keep the VIP's port %d: only NAT rewrites it", name, r.Addr.Port(), svc.Addr.Port()), Source: src})
			}
			if len(why) == 0 && len(masq) == 0 {
				// Built for NAT or not is a source-NAT rule's word when
				// no real masquerades: none found is no answer while a
				// rule backend was not read.
				if un := unreadRules(s, svc.Addr.Addr()); un != "" && svc.FWMark == 0 {
					unjudged = append(unjudged, fmt.Sprintf("%s: whether a source-NAT rule covers %s (the service built for NAT) is not known: %s", name, svc.Key(), un))
					continue
				}
			}
			if len(why) == 0 {
				how := "on " + route.Dev + ", the real's own segment"
				if r.Method == ipvs.Tunnel {
					how = fmt.Sprintf("through %s (IPIP)", orNone(route.Dev))
				}
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s %s; the real's own side (the VIP on lo or tunl0, arp_ignore) is not visible from the LB", name, how), Source: src})
				continue
			}
			if first == "" {
				first = name
			}
			bad = append(bad, Evidence{Fact: fmt.Sprintf("%s: %s", name, strings.Join(why, "; ")), Source: src})
			bad = append(bad, mine...)
			about = append(about, svc.Key())
			fix = append(fix, fmt.Sprintf("%sipvsadm -e %s -r %s -m -w %d   # NAT, as the service is built", x, ipvsadmService(svc), r.Addr, r.Weight))
		}
	}
	if judged == 0 {
		return skip("no real of the selected services forwards by DR or tunnel with weight > 0 (masquerade is judged by nat.return_path and sysctl.ip_forward)")
	}
	if len(bad) == 0 {
		if len(unjudged) > 0 {
			return Finding{Status: Skip, Reason: unjudged[0], Evidence: ev}
		}
		return Finding{Status: Pass, Title: "every DR or tunnel real can be reached that way", Evidence: ev}
	}
	n := len(fix)
	title := fmt.Sprintf("%d real(s) forward by a method that cannot work where they are", n)
	if n == 1 {
		title = first + ", which cannot work there"
	}
	return Finding{
		Status:   Fail,
		Title:    title,
		Reason:   "IPVS sends these reals the client's packet unchanged but for the MAC (DR) or inside IPIP (tunnel), addressed to the VIP: a real set up for NAT does not hold the VIP and drops it, a DR real must share a segment with the LB, and neither method rewrites the port; the clients that IPVS schedules there get no answer",
		Evidence: append(bad, ev...),
		Fix:      fix,
		about:    about,
	}
}

// unjudgedRoutes says why a check of IPVS services against the LB's
// routes cannot run: no IPVS, or routes unread. "" when it can.
func unjudgedRoutes(s *probes.Snapshot) string {
	if why := ipvsUnjudged(s); why != "" {
		return why
	}
	if e, ok := s.Errors[probes.ProbeNet]; ok {
		return "routes could not be read: " + e
	}
	return ""
}
