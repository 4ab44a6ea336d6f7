package checks

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/lbdoctor/lbdoctor/probes"
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
	for _, svc := range masq {
		rp := DecideReturnPath(s, svc.Addr.Addr(), addrsOf(svc))
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
	var out []netip.Addr
	for _, r := range svc.Reals {
		if r.Method == ipvs.Masq {
			out = append(out, r.Addr.Addr())
		}
	}
	return out
}
