package checks

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// ReturnPath says whether a NAT service's replies come back through the LB
// without source NAT. One piece of code serves `setup --snat auto` and the
// nat.return_path check.
type ReturnPath struct {
	NeedsSNAT bool
	OneArm    bool   // the reals share the VIP's segment: forwarded replies leave where they came in
	Dev       string // the interface that holds the VIP
	Reason    string
	Evidence  []Evidence
}

// RedirectRemedies turn off ICMP redirects on a one-arm LB (see
// net.send_redirects): they go with SNAT wherever SNAT is added one-arm.
func RedirectRemedies(dev string) []Remedy {
	return []Remedy{{Sysctl: "net.ipv4.conf.all.send_redirects", Value: "0"}, {Sysctl: "net.ipv4.conf." + dev + ".send_redirects", Value: "0"}}
}

// DecideReturnPath judges, from the LB's own routes, how the real servers
// reach the clients: a real on the VIP's own segment (one-arm) or behind a
// router answers clients directly, so its replies skip IPVS unless the LB
// also rewrites the source; a real on another segment of the LB (two-arm)
// answers through the LB when the LB is its gateway, and keeps client
// addresses.
func DecideReturnPath(s *probes.Snapshot, vip netip.Addr, reals []netip.Addr) ReturnPath {
	src := "routes, " + s.Target.String()
	vipDev := ""
	for _, l := range s.Net.Links {
		for _, a := range l.Addrs {
			if a.Addr() == vip {
				vipDev = l.Name
			}
		}
	}
	if vipDev == "" {
		return ReturnPath{NeedsSNAT: true, Reason: fmt.Sprintf("the VIP %s is not an address of %s: the return path cannot be judged, so SNAT is the safe choice", vip, s.Target),
			Evidence: []Evidence{{Fact: "no interface has " + vip.String(), Source: "addresses, " + s.Target.String()}}}
	}
	ev := []Evidence{{Fact: fmt.Sprintf("VIP %s is on %s", vip, vipDev), Source: "addresses, " + s.Target.String()}}
	var oneArm, routed, behind []netip.Addr
	for _, r := range reals {
		dev, gw := routeTo(s, r)
		switch {
		case gw.IsValid():
			routed = append(routed, r)
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is reached via gateway %s", r, gw), Source: src})
		case dev == vipDev || vipDev == "lo":
			oneArm = append(oneArm, r)
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is on %s, the VIP's segment", r, dev), Source: src})
		default:
			behind = append(behind, r)
			ev = append(ev, Evidence{Fact: fmt.Sprintf("real %s is on %s, another segment than the VIP's %s", r, dev, vipDev), Source: src})
		}
	}
	switch {
	case len(oneArm) > 0:
		return ReturnPath{NeedsSNAT: true, OneArm: true, Dev: vipDev, Reason: fmt.Sprintf("one-arm: real %s shares the VIP's segment and answers clients directly", oneArm[0]), Evidence: ev}
	case len(routed) > 0:
		return ReturnPath{NeedsSNAT: true, Reason: fmt.Sprintf("real %s is behind a router: its replies follow its own routes, not the LB", routed[0]), Evidence: ev}
	default:
		return ReturnPath{NeedsSNAT: false, Reason: "two-arm: the reals sit on another segment of the LB, which must be their gateway; client addresses are kept", Evidence: ev}
	}
}

// routeTo finds the LB's route to a (the most specific of the main table).
func routeTo(s *probes.Snapshot, a netip.Addr) (dev string, gw netip.Addr) {
	r, _ := s.Net.RouteTo(a)
	return r.Dev, r.Gw
}

func checkReturnPath(s *probes.Snapshot, sel probes.Selector) Finding {
	if e, ok := s.Errors[probes.ProbeNet]; ok {
		return skip("routes could not be read: " + e)
	}
	masq, why := masqueraded(s, sel)
	if why != "" {
		return skip(why)
	}
	var ev []Evidence
	for _, svc := range masq {
		rp := DecideReturnPath(s, svc.Addr.Addr(), addrsOf(svc))
		ev = append(ev, rp.Evidence...)
		if !rp.NeedsSNAT {
			continue
		}
		if slices.ContainsFunc(s.Rules.Rules, func(r rules.Rule) bool { return r.CoversVIP(svc.Addr) }) {
			ev = append(ev, Evidence{Fact: "a source-NAT rule covers " + svc.Key(), Source: "rules, " + s.Target.String()})
			continue
		}
		if un := unreadRules(s, svc.Addr.Addr()); un != "" {
			return skip(fmt.Sprintf("no source-NAT rule for %s among the rules read, but %s: whether its replies bypass the LB cannot be judged", svc.Key(), un))
		}
		return Finding{
			Status:   Fail,
			Title:    "replies of " + svc.Key() + " bypass the LB: no source NAT",
			Reason:   rp.Reason + "; IPVS masquerade only does DNAT, so the client receives the real server's reply from an address it never called and drops it",
			Evidence: ev,
			Fix:      []string{setupFix(s, svc)}, // after the remedies' commands
			Remedies: remedies(rp, svc),
			about:    []string{svc.Key()},
		}
	}
	return Finding{Status: Pass, Title: "replies come back through the LB", Evidence: ev}
}

// lbdoctorCmd is an lbdoctor command line aimed at the snapshot's namespace.
func lbdoctorCmd(s *probes.Snapshot, verb string) string {
	cmd := "lbdoctor " + verb
	if !s.Target.IsCurrent() {
		cmd += " --netns " + shellquote.Quote(s.Target.Spec)
	}
	return cmd
}

// setupFix is the one lbdoctor command that adds the SNAT and records it for teardown.
func setupFix(s *probes.Snapshot, svc ipvs.Service) string {
	cmd := lbdoctorCmd(s, "setup")
	cmd += fmt.Sprintf(" --proto %s --vip %s", svc.Proto, svc.Addr)
	for _, r := range svc.Reals {
		cmd += fmt.Sprintf(" --real %s,%d", r.Addr, r.Weight)
	}
	return "# or, recorded for lbdoctor teardown: " + cmd + " --snat always"
}

func remedies(rp ReturnPath, svc ipvs.Service) []Remedy {
	r := []Remedy{{SNAT: svc.Addr.String(), Proto: svc.Proto}, {Sysctl: "net.ipv4.vs.conntrack", Value: "1"}}
	if rp.OneArm {
		r = append(r, RedirectRemedies(rp.Dev)...)
	}
	return r
}
