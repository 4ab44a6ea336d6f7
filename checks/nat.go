package checks

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/internal/tally"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

func checkIPVS(s *probes.Snapshot, sel probes.Selector) Finding {
	src := "ipvs, " + s.Target.String()
	if e, ok := s.Errors[probes.ProbeIPVS]; ok {
		return skip("IPVS could not be read: " + e)
	}
	if !s.IPVS.Available {
		if f, ok := dnatNotIPVS(s, sel); ok {
			f.Reason = "IPVS is not available here (" + s.IPVS.Reason + "); " + f.Reason
			f.Evidence = append(f.Evidence, Evidence{Fact: "no IPVS generic netlink family", Source: "genetlink, kernel " + s.Kernel})
			return f
		}
		if un := dnatUnread(s, sel); un != "" {
			return Finding{Status: Skip, Title: "IPVS is not available",
				Reason:   "IPVS is not available here (" + s.IPVS.Reason + "), but whether nft or iptables DNATs " + sel.VIPString() + " instead is not known: " + un,
				Evidence: []Evidence{{Fact: "no IPVS generic netlink family", Source: "genetlink, kernel " + s.Kernel}}}
		}
		return Finding{
			Status: Fail, Title: "IPVS is not available",
			Reason:   s.IPVS.Reason,
			Evidence: []Evidence{{Fact: "no IPVS generic netlink family", Source: "genetlink, kernel " + s.Kernel}},
			Fix:      ipvsFix(s.IPVS.Reason),
		}
	}
	svcs := selected(s, sel)
	if !sel.VIP.IsValid() {
		return Finding{Status: Pass, Title: fmt.Sprintf("IPVS is available: %d virtual service(s)", len(svcs)),
			Evidence: []Evidence{{Fact: fmt.Sprintf("%d virtual service(s)", len(svcs)), Source: src}}}
	}
	if len(svcs) == 0 {
		if marks, ev := markServed(s, sel); len(marks) > 0 {
			// It exists: adding a service for the address would be a
			// second one beside it. A --vip selects by address, which a
			// firewall-mark service has none of.
			return Finding{Status: Warn, Title: fmt.Sprintf("no address-based virtual service %s: %s serves it by firewall mark", selectorKey(sel), strings.Join(marks, ", ")),
				Reason:   "--vip selects services by their address, which a firewall-mark service has none of: the checks of this selection watch no service; lbdoctor check without --vip judges " + strings.Join(marks, ", "),
				Evidence: append(ev, Evidence{Fact: fmt.Sprintf("%d other virtual service(s)", len(s.IPVS.Services)), Source: src})}
		}
		if f, ok := dnatNotIPVS(s, sel); ok {
			f.Evidence = append(f.Evidence, Evidence{Fact: fmt.Sprintf("%d other virtual service(s)", len(s.IPVS.Services)), Source: src})
			return f
		}
		if un := dnatUnread(s, sel); un != "" {
			// An ipvsadm -A for a VIP that a firewall mark serves, or nft
			// or iptables DNATs, would be a second service beside it.
			return Finding{Status: Skip, Title: "no virtual service " + selectorKey(sel),
				Reason:   "IPVS has no service " + selectorKey(sel) + ", but whether a firewall mark service serves it or nft or iptables DNATs it is not known: " + un,
				Evidence: []Evidence{{Fact: fmt.Sprintf("%d other virtual service(s)", len(s.IPVS.Services)), Source: src}}}
		}
		return Finding{Status: Fail, Title: "no virtual service " + selectorKey(sel),
			Reason:   "IPVS has no service " + selectorKey(sel),
			Evidence: []Evidence{{Fact: fmt.Sprintf("%d other virtual service(s)", len(s.IPVS.Services)), Source: src}},
			Fix:      []string{fmt.Sprintf("%sipvsadm -A %s %s -s rr", s.Target.ExecPrefix(), proto.IpvsadmFlag(sel.Proto), vipToAdd(sel.VIP))}}
	}
	return Finding{Status: Pass, Title: "IPVS is available: " + svcs[0].Key(),
		Evidence: []Evidence{{Fact: fmt.Sprintf("%s, %d real server(s)", svcs[0].Key(), len(svcs[0].Reals)), Source: src}}}
}

// dnatNotIPVS is kernel.ipvs for a --vip that IPVS does not serve and that
// nft or iptables DNATs (its DNAT rules or conntrack flows name backends):
// a skip, not a failure — an `ipvsadm -A` for it would sit behind the DNAT
// in PREROUTING and never see a packet, and the window traces its flows
// through those backends all the same. ok is false for any other VIP.
func dnatNotIPVS(s *probes.Snapshot, sel probes.Selector) (Finding, bool) {
	bs := s.DNATBackends(sel)
	if len(bs) == 0 {
		return Finding{}, false
	}
	named := probes.JoinBackends(bs[:min(len(bs), 4)])
	if len(bs) > 4 {
		named += fmt.Sprintf(" and %d more", len(bs)-4)
	}
	// The subject of a sentence: "10.1.0.6:80", not selectorKey's "at …".
	name := sel.VIPString()
	if sel.Proto != "" {
		name = strings.ToUpper(sel.Proto) + " " + name
	}
	return Finding{Status: Skip, Title: name + " is no IPVS service: it is DNATed to " + named,
		Reason:   "the IPVS checks do not apply to a VIP that nft or iptables DNATs; the window traces its flows through its backends (drops.vip_flows, firewall.filter, sysctl.rp_filter)",
		Evidence: []Evidence{{Fact: "backends of " + sel.VIPString() + ": " + probes.JoinBackends(bs), Source: "conntrack, rules, " + s.Target.String()}}}, true
}

// dnatUnread says which layers that would show the --vip served otherwise
// than by an address-based IPVS service were not read ("" when all were,
// or no --vip is selected): the rules (a DNAT rule, a rule setting a mark
// service's mark), conntrack (its DNATed flows), the IPVS connection table
// (a mark service's entries to it).
func dnatUnread(s *probes.Snapshot, sel probes.Selector) string {
	if !sel.VIP.IsValid() {
		return ""
	}
	var un []string
	if x := unreadRules(s, sel.VIP.Addr()); x != "" {
		un = append(un, x)
	}
	if e, ok := s.Errors[probes.ProbeConntrack]; ok {
		un = append(un, "conntrack could not be read ("+e+")")
	}
	if why := connTableSkip(s); why != "" && slices.ContainsFunc(s.IPVS.Services, func(svc ipvs.Service) bool { return svc.FWMark != 0 }) {
		un = append(un, why)
	}
	return strings.Join(un, "; ")
}

// markServed names the firewall-mark services (FWM 16) that serve the
// selected VIP, with why it is known: a rule that names its address sets
// their mark on its packets, or IPVS holds entries to it that no
// address-based service has (a mark service's carry the packets' own
// address).
func markServed(s *probes.Snapshot, sel probes.Selector) ([]string, []Evidence) {
	var keys []string
	var ev []Evidence
	vip := sel.VIP
	pkt := rules.Packet{Proto: sel.Proto, Dst: vip.Addr(), DPort: vip.Port()}
	for _, svc := range s.IPVS.Services {
		if svc.FWMark == 0 {
			continue
		}
		n := len(ev)
		for _, r := range s.Rules.Rules {
			if r.Covers(vip.Addr()) && strings.Contains(r.Spec, vip.Addr().String()) && r.WritesMark(svc.FWMark) && r.MatchPacket(pkt) != rules.NoMatch {
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s %s %s sets mark %d (%s) on packets to %s: %s", r.Backend, r.TableName(), r.Chain, svc.FWMark, svc.Key(), vip.Addr(), r.Spec), Source: "rules, " + s.Target.String()})
			}
		}
		conns := 0
		for _, c := range connsOf(s, svc, false) {
			if sel.Matches(c.VIP, c.Proto) {
				conns += c.Count
			}
		}
		if conns > 0 {
			ev = append(ev, Evidence{Fact: fmt.Sprintf("%s holds %d IPVS entr(ies) to %s, which no address-based service has", svc.Key(), conns, sel.VIPString()), Source: "ipvs connection table, " + s.Target.String()})
		}
		if len(ev) > n {
			keys = append(keys, svc.Key())
		}
	}
	return keys, ev
}

// vipToAdd is the VIP of an `ipvsadm -A` to type: a selection of every
// port of an address (serve --vip ADDR) leaves the port to the reader.
func vipToAdd(vip netip.AddrPort) string {
	if vip.Port() == 0 {
		return strings.TrimSuffix(vip.String(), "0") + "PORT"
	}
	return vip.String()
}

func ipvsFix(reason string) []string {
	if strings.Contains(reason, "modprobe ip_vs") {
		return []string{"modprobe ip_vs"}
	}
	return []string{"boot a kernel built with CONFIG_IP_VS (for example Debian's linux-image-amd64 or linux-image-cloud-amd64)"}
}

// checkIPForward judges every forwarding switch the replies of the
// selected masquerade services cross, for each address family they use.
// IPv4 asks the interface a packet came in on (net.ipv4.conf.DEV.forwarding;
// net.ipv4.ip_forward is conf.all.forwarding, which sets every interface
// when written): a reply is forwarded when the interface it arrives on —
// the one the LB routes to its real server through — forwards. IPv6 asks
// net.ipv6.conf.all.forwarding alone.
func checkIPForward(s *probes.Snapshot, sel probes.Selector) Finding {
	masq, why := masqueraded(s, sel)
	if why != "" {
		return skip(why)
	}
	// A real on the LB itself answers through IPVS inside the host: its
	// replies are never forwarded, whatever the switches say.
	var forwarded []ipvs.Service
	locals := s.Net.LocalSet()
	for _, svc := range masq {
		if slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool { here, _ := locals.Holds(r.Addr.Addr()); return !here }) {
			forwarded = append(forwarded, svc)
		}
	}
	if len(forwarded) == 0 {
		return Finding{Status: Pass, Title: "nothing is forwarded: every masquerade real is a local address of the LB",
			Evidence: []Evidence{{Fact: serviceLine(masq[0]), Source: "ipvs, local routing table, " + s.Target.String()}}}
	}
	masq = forwarded
	// Each address family has its own switch: an IPv6 service's replies
	// cross net.ipv6.conf.all.forwarding, never net.ipv4.ip_forward.
	needs := map[string][]Evidence{}
	var keys []string
	for _, svc := range masq {
		key := ForwardingKey(svc.Addr.Addr())
		if _, ok := needs[key]; !ok {
			keys = append(keys, key)
		}
		needs[key] = withLine(needs[key], func() Evidence { return Evidence{Fact: serviceLine(svc), Source: "ipvs, " + s.Target.String()} })
	}
	slices.Sort(keys) // net.ipv4 first
	var pass Finding
	for _, key := range keys {
		req := requirement{
			key:       key,
			passTitle: "IP forwarding is on for masquerade services",
			failTitle: "IP forwarding is off while IPVS masquerades",
			why:       "replies from the real servers must be forwarded by this host; with " + key + "=0 they are dropped (reason IP_INADDRERRORS, IpInAddrErrors rises)",
		}
		var f Finding
		if key == "net.ipv4.ip_forward" {
			f = ipv4Forwarding(s, req, masq, needs[key])
		} else {
			f = sysctlMustBeOn(s, req, needs[key])
		}
		if f.Status != Pass {
			if f.Status == Fail {
				// ip_error (IPv4) and ip6_forward (IPv6) drop what was not
				// forwarded, counted as IP_INADDRERRORS.
				f.explains = explainsReasons("IP_INADDRERRORS", "ip6_forward")
			}
			return f
		}
		pass.Status, pass.Title = f.Status, f.Title
		pass.Evidence = append(pass.Evidence, f.Evidence...)
	}
	return pass
}

// replyDev is an interface the replies of a service's real servers arrive
// on: the one the LB routes to the real through.
type replyDev struct {
	dev   string
	reals []netip.Addr
	seen  map[netip.Addr]bool // reals listed
}

// maxRealsListed caps the reals a line names; the rest are counted.
const maxRealsListed = 8

// realsOf names the reals of d for a line: the first maxRealsListed, and
// how many more (10,000 reals on one line would be no evidence).
func (d replyDev) realsOf() string {
	names := make([]string, 0, min(len(d.reals), maxRealsListed))
	for _, a := range d.reals[:min(len(d.reals), maxRealsListed)] {
		names = append(names, a.String())
	}
	if len(d.reals) <= maxRealsListed {
		return strings.Join(names, ", ")
	}
	return strings.Join(names, ", ") + fmt.Sprintf(" and %s", tally.Of(len(d.reals)-maxRealsListed, "more real"))
}

// replyDevs lists, in order, the interfaces the replies of the IPv4
// services' reals arrive on, as far as the main table tells.
func replyDevs(s *probes.Snapshot, svcs []ipvs.Service) []replyDev {
	var out []replyDev
	for _, svc := range svcs {
		if ForwardingKey(svc.Addr.Addr()) != "net.ipv4.ip_forward" {
			continue
		}
		for _, r := range addrsOf(svc) {
			dev, _ := routeTo(s, r)
			if dev == "" {
				continue
			}
			i := slices.IndexFunc(out, func(d replyDev) bool { return d.dev == dev })
			if i < 0 {
				i = len(out)
				out = append(out, replyDev{dev: dev, seen: map[netip.Addr]bool{}})
			}
			if !out[i].seen[r] {
				out[i].seen[r] = true
				out[i].reals = append(out[i].reals, r)
			}
		}
	}
	return out
}

// ipv4Forwarding judges IPv4 forwarding by the switch the kernel asks:
// that of each interface the replies arrive on. net.ipv4.ip_forward=0
// fails as it always did unless every such interface forwards all the
// same (turned on one by one after it); ip_forward=1 with one of them
// turned off fails naming it.
func ipv4Forwarding(s *probes.Snapshot, req requirement, svcs []ipvs.Service, needs []Evidence) Finding {
	all, ok := readable(s, req.key)
	if !ok {
		return skip(req.key + " could not be read: " + all.Error + all.Absent)
	}
	src := s.Target.String()
	ev := []Evidence{{Fact: req.key + " = " + all.Value, Source: src}}
	devs := replyDevs(s, svcs)
	var off []replyDev
	known := len(devs) > 0
	// unknown says why the replies' interfaces, or their switches, were
	// not read: then only every interface's switch can decide.
	var unknown, unreadDevs []string
	if e, ok := s.Errors[probes.ProbeNet]; ok {
		unknown = append(unknown, "the routes to the reals could not be read ("+e+")")
	}
	for _, d := range devs {
		key := "net.ipv4.conf." + d.dev + ".forwarding"
		v, ok := readable(s, key)
		if !ok {
			known = false
			unknown = append(unknown, key+" could not be read ("+v.Error+v.Absent+")")
			unreadDevs = append(unreadDevs, d.dev)
			continue
		}
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s = %s (the replies of %s arrive on %s)", key, v.Value, d.realsOf(), d.dev), Source: src})
		if v.Value == "0" {
			off = append(off, d)
		}
	}
	ev = append(ev, needs...)
	if len(unknown) > 0 && len(off) == 0 {
		// Every interface forwards, or none does (ip_forward=0 as it was
		// written): either decides whatever interface the replies take.
		on, offAll, unread := ifaceForwarding(s)
		for _, dev := range unreadDevs { // one the sysctl probe never listed
			if !slices.Contains(unread, dev) {
				unread = append(unread, dev)
			}
		}
		switch {
		case len(unread) == 0 && len(offAll) == 0 && len(on) > 0:
			ev[0].Fact += "; every interface forwards (" + strings.Join(on, ", ") + "): the kernel asks the interface a packet came in on"
			return Finding{Status: Pass, Title: req.passTitle, Evidence: ev}
		case all.Value == "0" && len(unread) == 0 && len(on) == 0:
			// ip_forward=0 turned off every interface: it fails below.
		default:
			return Finding{Status: Skip, Reason: "which interface the real servers' replies arrive on, or whether it forwards, is not known: " + strings.Join(unknown, "; ") +
				"; not every interface forwards alike (off: " + cmp.Or(strings.Join(offAll, ", "), "none") + "; not read: " + cmp.Or(strings.Join(unread, ", "), "none") + ")", Evidence: ev}
		}
	}
	switch {
	case all.Value == "0" && (!known || len(off) > 0):
		return Finding{Status: Fail, Title: req.failTitle, Reason: req.why, Evidence: ev, Fix: sysctlFix(s.Target, req.key, "1"),
			Remedies: []Remedy{{Sysctl: req.key, Value: "1"}}}
	case len(off) > 0:
		f := Finding{Status: Fail,
			Title:    fmt.Sprintf("forwarding is off on %s, where the real servers' replies arrive", off[0].dev),
			Reason:   fmt.Sprintf("IPv4 forwards a packet when the interface it came in on forwards: with net.ipv4.conf.%s.forwarding=0 the replies of %s are not forwarded to the clients (reason IP_INADDRERRORS, IpInAddrErrors rises), whatever net.ipv4.ip_forward says", off[0].dev, off[0].realsOf()),
			Evidence: ev}
		for _, d := range off {
			key := "net.ipv4.conf." + d.dev + ".forwarding"
			f.Fix = append(f.Fix, sysctlFix(s.Target, key, "1")...)
			f.Remedies = append(f.Remedies, Remedy{Sysctl: key, Value: "1"})
		}
		return f
	case all.Value == "0":
		ev[0].Fact += ", but every interface the replies arrive on forwards: the kernel asks the interface a packet came in on"
	}
	return Finding{Status: Pass, Title: req.passTitle, Evidence: ev}
}

// ifaceForwarding sorts the interfaces the sysctl probe listed (not lo,
// all or default) by their net.ipv4.conf.DEV.forwarding: on, off, or not
// read.
func ifaceForwarding(s *probes.Snapshot) (on, off, unread []string) {
	for _, key := range slices.Sorted(maps.Keys(s.Sysctls)) {
		dev, v4 := strings.CutPrefix(key, "net.ipv4.conf.")
		dev, leaf := strings.CutSuffix(dev, ".forwarding")
		if !v4 || !leaf || dev == "all" || dev == "default" || dev == "lo" {
			continue
		}
		switch v, ok := readable(s, key); {
		case !ok:
			unread = append(unread, dev)
		case v.Value == "0":
			off = append(off, dev)
		default:
			on = append(on, dev)
		}
	}
	return on, off, unread
}

// ForwardingKey is the sysctl that lets the LB forward packets of addr's
// family: net.ipv4.ip_forward, or for IPv6 net.ipv6.conf.all.forwarding
// (IPv6 has no other forwarding switch: the per-interface ones only choose
// host or router behaviour).
func ForwardingKey(addr netip.Addr) string {
	if addr.Is6() && !addr.Is4In6() {
		return "net.ipv6.conf.all.forwarding"
	}
	return "net.ipv4.ip_forward"
}

func checkVSConntrack(s *probes.Snapshot, sel probes.Selector) Finding {
	if why := ipvsUnjudged(s); why != "" {
		return skip(why)
	}
	deps := conntrackDependentRules(s, sel)
	if len(deps) == 0 {
		// A dependent rule found is enough to judge; none found is only
		// a conclusion when every backend was read.
		var addrs []netip.Addr
		for _, svc := range selected(s, sel) {
			addrs = append(addrs, svc.Addr.Addr())
		}
		if un := unreadRules(s, addrs...); un != "" {
			return skip("no rule read depends on IPVS connections being in conntrack, but " + un)
		}
		return skip("no rule depends on IPVS connections being in conntrack")
	}
	var needs []Evidence
	for _, r := range deps {
		needs = append(needs, Evidence{
			Fact:   fmt.Sprintf("%s (%d packets)", r.Spec, r.Packets),
			Source: fmt.Sprintf("%s table %s, %s", r.Backend, r.TableName(), s.Target),
		})
	}
	return sysctlMustBeOn(s, requirement{
		key:       "net.ipv4.vs.conntrack",
		passTitle: "IPVS connections are in conntrack for the rules that need them",
		failTitle: "rules need IPVS connections in conntrack, but net.ipv4.vs.conntrack=0",
		why:       "with vs.conntrack=0 netfilter never sees IPVS connections: these rules are never hit and no SNAT happens",
	}, needs)
}

// requirement is a boolean sysctl that something in the snapshot needs on.
type requirement struct {
	key                  string
	passTitle, failTitle string
	why                  string // what breaks while it is off
}

// sysctlMustBeOn judges a requirement, with the things that need it as evidence.
func sysctlMustBeOn(s *probes.Snapshot, req requirement, needs []Evidence) Finding {
	v, ok := readable(s, req.key)
	if !ok {
		return skip(req.key + " could not be read: " + v.Error + v.Absent)
	}
	ev := append([]Evidence{{Fact: req.key + " = " + v.Value, Source: s.Target.String()}}, needs...)
	if v.Value != "0" {
		return Finding{Status: Pass, Title: req.passTitle, Evidence: ev}
	}
	return Finding{Status: Fail, Title: req.failTitle, Reason: req.why, Evidence: ev, Remedies: []Remedy{{Sysctl: req.key, Value: "1"}}}
}

// unreadRules says which rule backends could not be read, or "" when every
// one was: a conclusion from the absence of a rule needs them all. With an
// IPv6 address among about, a backend whose IPv6 half (ip6tables) was not
// read counts as unread too.
func unreadRules(s *probes.Snapshot, about ...netip.Addr) string {
	var names []string
	for _, b := range s.Rules.Unread() {
		names = append(names, fmt.Sprintf("%s could not be read (%s)", b.Name, b.Reason))
	}
	if slices.ContainsFunc(about, func(a netip.Addr) bool { return ForwardingKey(a) != "net.ipv4.ip_forward" }) {
		for _, b := range s.Rules.Backends {
			if b.Read && b.IPv6Unread != "" {
				names = append(names, fmt.Sprintf("the IPv6 rules of %s could not be read (%s)", b.Name, b.IPv6Unread))
			}
		}
	}
	if len(names) == 0 && len(s.Rules.Backends) == 0 {
		if e, ok := s.Errors[probes.ProbeRules]; ok {
			return "rules could not be read: " + e
		}
	}
	return strings.Join(names, "; ")
}

// conntrackDependentRules are rules that only work when IPVS connections go
// through conntrack: any `-m ipvs` match, source NAT keyed on the VIP
// as conntrack's original destination, and kube-proxy's masquerades.
func conntrackDependentRules(s *probes.Snapshot, sel probes.Selector) []rules.Rule {
	var out []rules.Rule
	for _, r := range s.Rules.Rules {
		if sel.VIP.IsValid() && !r.Covers(sel.VIP.Addr()) {
			continue // an iptables rule never sees an IPv6 service's packets, nor ip6tables an IPv4 one's
		}
		switch {
		case r.IPVS != nil && !r.IPVS.Negated:
			if sel.VIP.IsValid() && !r.IPVS.MatchesVIP(sel.VIP.Addr(), sel.VIP.Port()) {
				continue
			}
			out = append(out, r)
		case r.IsSourceNAT() && r.CtOrigDst != "":
			if sel.VIP.IsValid() && r.CtOrigDst != sel.VIP.Addr().String() {
				continue
			}
			out = append(out, r)
		}
	}
	return append(out, kubeMasqRules(s, sel)...)
}

// selected returns the services sel selects. kube-proxy's probe virtual
// server is no user's service: left out unless --vip names it.
func selected(s *probes.Snapshot, sel probes.Selector) []ipvs.Service {
	if !sel.VIP.IsValid() && (s.KubeProxy == nil || !s.KubeProxy.ProbeService) {
		return s.IPVS.Services
	}
	var out []ipvs.Service
	for _, svc := range s.IPVS.Services {
		if !sel.VIP.IsValid() && s.KubeProxy.IsProbeService(svc.Addr, svc.Proto) {
			continue
		}
		if sel.Matches(svc.Addr, svc.Proto) {
			out = append(out, svc)
		}
	}
	return out
}

// addressed returns the selected services that have an address (not
// fwmark ones), or why a check about them cannot run.
func addressed(s *probes.Snapshot, sel probes.Selector) ([]ipvs.Service, string) {
	if why := ipvsUnjudged(s); why != "" {
		return nil, why
	}
	svcs := servicesWhere(selected(s, sel), func(svc ipvs.Service) bool { return svc.FWMark == 0 })
	if len(svcs) == 0 {
		return nil, "no IPVS service selected in " + s.Target.String()
	}
	return svcs, ""
}

// masqueraded returns the selected masquerade services, or why a check
// about them cannot run.
func masqueraded(s *probes.Snapshot, sel probes.Selector) ([]ipvs.Service, string) {
	if why := ipvsUnjudged(s); why != "" {
		return nil, why
	}
	masq := masqServices(selected(s, sel))
	if len(masq) == 0 {
		return nil, "no IPVS masquerade (NAT) service in " + s.Target.String()
	}
	return masq, ""
}

func masqServices(svcs []ipvs.Service) []ipvs.Service {
	return servicesWhere(svcs, func(svc ipvs.Service) bool {
		return slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool { return r.Method == ipvs.Masq })
	})
}

func serviceLine(svc ipvs.Service) string {
	reals := make([]string, 0, len(svc.Reals))
	for _, r := range svc.Reals {
		reals = append(reals, fmt.Sprintf("%s %s", r.Addr, r.Method))
	}
	return fmt.Sprintf("%s → %s", svc.Key(), strings.Join(reals, ", "))
}

// readable is the value of a sysctl key that was read, and whether it
// was: a key the probe could not read (its Error), found absent, or read
// as empty is no value to judge — "" is neither on nor off.
func readable(s *probes.Snapshot, key string) (sysctl.Value, bool) {
	v, ok := s.Sysctls[key]
	if !ok {
		if e, bad := s.Errors[probes.ProbeSysctl]; bad {
			return sysctl.Value{Key: key, Error: e}, false
		}
		return sysctl.Value{Key: key, Absent: "not read"}, false
	}
	if v.Present && v.Value == "" {
		v.Absent = "read as empty"
		return v, false
	}
	return v, v.Present
}

// ipvsUnjudged says why the selected IPVS services cannot be judged: IPVS
// could not be read (its services are then none, or those listed before
// the read failed: a conclusion about them would rest on a layer not
// read), or the kernel has none. "" when IPVS was read.
func ipvsUnjudged(s *probes.Snapshot) string {
	if e, ok := s.Errors[probes.ProbeIPVS]; ok {
		return "IPVS could not be read: " + e
	}
	if !s.IPVS.Available {
		return "IPVS is not available (see kernel.ipvs)"
	}
	return ""
}

// sysctlFix sets a key now and, in the host's own namespace, across reboots
// (sysctl.d does not apply to other namespaces: whatever creates them must).
func sysctlFix(t netns.Target, key, value string) []string {
	fix := []string{t.ExecPrefix() + sysctl.Command(key, value)}
	if t.IsCurrent() {
		fix = append(fix, "echo "+shellquote.Quote(sysctl.Arg(key)+" = "+value)+" >> /etc/sysctl.d/90-lbdoctor.conf  # keep it across reboots")
	}
	return fix
}

// selectorKey names the selected service: "TCP 10.1.0.6:8085", or
// "at 10.1.0.6:8085 (any protocol)" when no --proto narrowed it.
func selectorKey(sel probes.Selector) string {
	if sel.Proto == "" {
		return "at " + sel.VIPString() + " (any protocol)"
	}
	return strings.ToUpper(sel.Proto) + " " + sel.VIPString()
}
