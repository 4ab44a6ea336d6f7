package checks

// The faults that come with change (a real taken out or drained, a service
// added under live traffic) and with time (idle connections IPVS forgets):
// issue 12's first two sections. Each names the public reports it comes
// from.

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// realWeights maps a service's reals to their weights.
func realWeights(svc ipvs.Service) map[netip.AddrPort]int {
	w := make(map[netip.AddrPort]int, len(svc.Reals))
	for _, r := range svc.Reals {
		w[r.Addr] = r.Weight
	}
	return w
}

// servicesWhere are the services of svcs for which keep is true.
func servicesWhere(svcs []ipvs.Service, keep func(ipvs.Service) bool) []ipvs.Service {
	var out []ipvs.Service // nil when none is kept
	for i, svc := range svcs {
		if keep(svc) {
			if out == nil {
				out = make([]ipvs.Service, 0, len(svcs)-i) // one array for 1,000 services, not a dozen
			}
			out = append(out, svc)
		}
	}
	return out
}

// connsOf are the IPVS table's counts of svc (templates or connections).
// A template carries its service's protocol, so a TCP and a UDP service on
// one VIP and port keep theirs apart; a firewall-mark service's templates
// are protocol IP with the mark as their address (0.0.0.7:0 for mark 7:
// ip_vs_sched_persist), while its connections carry the packet's own VIP,
// which IPVS does not tie to the mark.
func connsOf(s *probes.Snapshot, svc ipvs.Service, templates bool) []ipvs.ConnCount {
	var out []ipvs.ConnCount
	var marked func(ipvs.ConnCount) bool
	if svc.FWMark != 0 && !templates {
		marked = markConns(s, svc)
	}
	for _, c := range s.IPVS.ConnCounts {
		if c.Template != templates {
			continue
		}
		if svc.FWMark != 0 {
			if templates && c.VIP.Port() == 0 && c.VIP.Addr() == markAddr(svc.FWMark, c.VIP.Addr().Is6()) ||
				!templates && marked(c) {
				out = append(out, c)
			}
			continue
		}
		if c.VIP == svc.Addr && c.Proto == svc.Proto {
			out = append(out, c)
		}
	}
	return out
}

// markConns tells the connections of the firewall-mark service svc. IPVS
// gives a mark service's connections the packet's own address, port and
// protocol, not the mark: an entry that is no address-based service's is a
// mark service's — svc's when its real is one of svc's, or when svc is the
// only mark service (a real removed from it is in none).
func markConns(s *probes.Snapshot, svc ipvs.Service) func(ipvs.ConnCount) bool {
	type key struct {
		addr  netip.AddrPort
		proto string
	}
	addressed := make(map[key]bool, len(s.IPVS.Services))
	marks := 0
	for _, x := range s.IPVS.Services {
		if x.FWMark != 0 {
			marks++
		} else {
			addressed[key{x.Addr, x.Proto}] = true
		}
	}
	return func(c ipvs.ConnCount) bool {
		if addressed[key{c.VIP, c.Proto}] {
			return false
		}
		_, ours := realFor(svc, c.Dest)
		return marks == 1 || ours
	}
}

// realFor is the real of svc an entry to dest goes to: the one at dest,
// or, for a firewall-mark service, one at dest's address without a port
// (`ipvsadm -a -f 16 -r ADDR`: its entries take the packets' own port).
func realFor(svc ipvs.Service, dest netip.AddrPort) (ipvs.Real, bool) {
	for _, r := range svc.Reals {
		if r.Addr == dest || svc.FWMark != 0 && r.Addr.Port() == 0 && r.Addr.Addr() == dest.Addr() {
			return r, true
		}
	}
	return ipvs.Real{}, false
}

// realArg is a real as ipvsadm -r takes it: without a port when it has
// none (a firewall-mark service's).
func realArg(a netip.AddrPort) string {
	if a.Port() == 0 {
		return a.Addr().String()
	}
	return a.String()
}

// markAddr is the address IPVS gives a firewall-mark service's templates:
// the mark, big-endian, in the address's first four bytes.
func markAddr(mark uint32, v6 bool) netip.Addr {
	b := [4]byte{byte(mark >> 24), byte(mark >> 16), byte(mark >> 8), byte(mark)}
	if !v6 {
		return netip.AddrFrom4(b)
	}
	var a [16]byte
	copy(a[:], b[:])
	return netip.AddrFrom16(a)
}

// connTableSkip says why a check that needs the IPVS connection table
// cannot run ("" when it was read).
func connTableSkip(s *probes.Snapshot) string {
	if e, ok := s.Errors[probes.ProbeIPVSConns]; ok {
		return "the IPVS connection table was not read: " + e
	}
	return ""
}

// ipvsSkip is the reason a check of the selected IPVS services cannot run.
func ipvsSkip(s *probes.Snapshot, sel probes.Selector) (string, []ipvs.Service) {
	if why := ipvsUnjudged(s); why != "" {
		return why, nil
	}
	svcs := selected(s, sel)
	if len(svcs) == 0 {
		return "no IPVS service in " + s.Target.String(), nil
	}
	return "", svcs
}

// checkPersistenceQuiescent: a persistent service (-p) keeps a template per
// client that sends every new connection of that client to the same real.
// With expire_quiescent_template=0 a template outlives its real's weight
// going to 0: the client keeps going to the drained real (dead, in a
// rolling update) until the template expires, and since each connection
// renews it, a client that retries never leaves — nor does the drain end.
// kubernetes/kubernetes#71809 (sessionAffinity: ClientIP under IPVS),
// aledbf/kube-keepalived-vip#117.
func checkPersistenceQuiescent(s *probes.Snapshot, sel probes.Selector) Finding {
	why, svcs := ipvsSkip(s, sel)
	if why != "" {
		return skip(why)
	}
	persistent := servicesWhere(svcs, func(svc ipvs.Service) bool { return slices.Contains(svc.Flags, "persistent") })
	if len(persistent) == 0 {
		return Finding{Status: Pass, Title: "no selected service is persistent", Evidence: []Evidence{{Fact: fmt.Sprintf("%d service(s), none with ipvsadm -p", len(svcs)), Source: "ipvs, " + s.Target.String()}}}
	}
	v, ok := readable(s, "net.ipv4.vs.expire_quiescent_template")
	if !ok {
		return skip("net.ipv4.vs.expire_quiescent_template could not be read")
	}
	src := "ipvs, " + s.Target.String()
	ev := []Evidence{{Fact: "net.ipv4.vs.expire_quiescent_template = " + v.Value, Source: s.Target.String()}}
	if v.Value != "0" {
		return Finding{Status: Pass, Title: "a template to a real of weight 0 expires on its next use", Evidence: ev}
	}
	unread := connTableSkip(s)
	var pinned []string
	var drained []string
	for _, svc := range persistent {
		w := realWeights(svc)
		for _, r := range svc.Reals {
			if r.Weight == 0 {
				drained = append(drained, svc.Key()+" → "+r.Addr.String())
			}
		}
		for _, c := range connsOf(s, svc, true) {
			wt, ok := w[c.Dest]
			if svc.FWMark != 0 && c.Dest.Port() == 0 {
				// A firewall-mark template names its real without a port:
				// drained when every real at that address is.
				wt, ok = 0, false
				for _, r := range svc.Reals {
					if r.Addr.Addr() == c.Dest.Addr() {
						wt, ok = max(wt, r.Weight), true
					}
				}
			}
			if ok && wt == 0 {
				pinned = append(pinned, c.Dest.String())
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s (persistent %ds): %d client template(s) still point at %s, weight 0", svc.Key(), svc.Timeout, c.Count, c.Dest), Source: src})
			}
		}
	}
	switch {
	case len(pinned) > 0:
		return Finding{Status: Fail, Title: "persistent clients are still sent to " + strings.Join(slices.Compact(pinned), ", ") + " (weight 0)",
			Reason:   "with expire_quiescent_template=0 a persistence template outlives its real's weight going to 0: every new connection of those clients goes to the drained real until the template expires, and each connection renews it",
			Evidence: ev,
			Remedies: []Remedy{{Sysctl: "net.ipv4.vs.expire_quiescent_template", Value: "1"}},
			Fix:      []string{"# each pinned client's next connection then drops its template and is scheduled anew; keep the setting in /etc/sysctl.d to drain with weight 0 safely"}}
	case len(drained) > 0 && unread != "":
		ev = append(ev, Evidence{Fact: "reals of weight 0 in persistent services: " + strings.Join(drained, ", ") + "; their templates could not be counted: " + unread, Source: src})
		return Finding{Status: Warn, Title: "persistent services drain reals of weight 0 while templates to them are kept",
			Reason:   "with expire_quiescent_template=0 a client with a template keeps going to a real of weight 0 until the template expires",
			Evidence: ev,
			Remedies: []Remedy{{Sysctl: "net.ipv4.vs.expire_quiescent_template", Value: "1"}}}
	}
	ev = append(ev, Evidence{Fact: fmt.Sprintf("%d persistent service(s), no template to a real of weight 0", len(persistent)), Source: src})
	return Finding{Status: Pass, Title: "no persistent client is pinned to a real of weight 0", Evidence: ev}
}

// checkStaleUDP: a UDP entry lives as long as its client keeps sending from
// the same port (every datagram renews it), so a real set to weight 0
// keeps those clients for good — a DNS or syslog client behind a real
// that is gone is blackholed — and a removed real's entries drop their
// packets until they time out while expire_nodest_conn=0.
// kubernetes/kubernetes#71514, #76664.
func checkStaleUDP(s *probes.Snapshot, sel probes.Selector) Finding {
	why, svcs := ipvsSkip(s, sel)
	if why != "" {
		return skip(why)
	}
	// A firewall-mark service is UDP by what it marks: its UDP entries.
	udp := servicesWhere(svcs, func(svc ipvs.Service) bool {
		return svc.Proto == "udp" || svc.FWMark != 0 && slices.ContainsFunc(connsOf(s, svc, false), func(c ipvs.ConnCount) bool { return c.Proto == "udp" })
	})
	if len(udp) == 0 {
		if why := connTableSkip(s); why != "" && slices.ContainsFunc(svcs, func(svc ipvs.Service) bool { return svc.FWMark != 0 }) {
			return skip(why + " (a firewall-mark service is UDP by its entries)")
		}
		return Finding{Status: Pass, Title: "no selected service is UDP", Evidence: []Evidence{{Fact: fmt.Sprintf("%d service(s), none UDP (a firewall-mark service: none with a UDP entry)", len(svcs)), Source: "ipvs, " + s.Target.String()}}}
	}
	if why := connTableSkip(s); why != "" {
		return skip(why)
	}
	nodest, ok := readable(s, "net.ipv4.vs.expire_nodest_conn")
	if !ok {
		return skip("net.ipv4.vs.expire_nodest_conn could not be read")
	}
	src := "ipvs connection table, " + s.Target.String()
	ev := []Evidence{{Fact: fmt.Sprintf("net.ipv4.vs.expire_nodest_conn = %s; IPVS udp timeout %ds", nodest.Value, s.IPVS.Timeouts.UDP), Source: s.Target.String()}}
	var bad, fix []string
	for _, svc := range udp {
		for _, c := range connsOf(s, svc, false) {
			if c.Proto != "udp" {
				continue // a firewall-mark service's TCP entries
			}
			r, present := realFor(svc, c.Dest)
			switch {
			case present && r.Weight == 0:
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: %d UDP entr(ies) to %s, weight 0: its clients stay on it while they keep sending", svc.Key(), c.Count, c.Dest), Source: src})
				cmd := fmt.Sprintf("%sipvsadm -d %s -r %s", s.Target.ExecPrefix(), ipvsadmService(svc), realArg(r.Addr))
				if !slices.Contains(fix, cmd) {
					fix = append(fix, cmd)
				}
			case !present && nodest.Value == "0":
				ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: %d UDP entr(ies) to %s, no longer a real of it: their packets are dropped until the entries time out (udp %ds)", svc.Key(), c.Count, c.Dest, s.IPVS.Timeouts.UDP), Source: src})
			default:
				continue
			}
			bad = append(bad, c.Dest.String())
		}
	}
	if len(bad) == 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%d UDP service(s), no entry to a removed or weight-0 real", len(udp)), Source: src})
		return Finding{Status: Pass, Title: "no UDP client is kept on a removed or weight-0 real", Evidence: ev}
	}
	var rem []Remedy
	if nodest.Value == "0" {
		rem = []Remedy{{Sysctl: "net.ipv4.vs.expire_nodest_conn", Value: "1"}}
	}
	fix = append(fix, "# a UDP real is taken out with ipvsadm -d, not drained with weight 0 (no UDP entry ever ends while its client sends); with expire_nodest_conn=1 the next datagram of each entry to a removed real ends it and is scheduled anew")
	return Finding{Status: Fail, Title: "UDP clients are kept on " + strings.Join(slices.Compact(bad), ", ") + ", out of service",
		Reason:   "every datagram from the same client port renews its IPVS entry, so the client never reaches the other reals: blackholed while that real is gone (DNS, syslog)",
		Evidence: ev, Remedies: rem, Fix: fix}
}

// kernelAtLeast reports whether release (uname -r: "6.1.0-28-cloud-amd64")
// is at least major.minor; ok is false when it does not parse.
func kernelAtLeast(release string, major, minor int) (at, ok bool) {
	f := strings.FieldsFunc(release, func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	if len(f) < 2 {
		return false, false
	}
	ma, err1 := strconv.Atoi(f[0])
	mi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return false, false
	}
	return ma > major || ma == major && mi >= minor, true
}

// checkConnReuse judges conn_reuse_mode with expire_nodest_conn, by
// kernel: a SYN from a client port IPVS still has an entry for (TIME_WAIT,
// a busy client reusing ports) follows that entry to its real unless mode
// 1 reschedules it. Mode 0 sends reused ports to a removed real, whose SYNs
// are dropped until the old entry expires while expire_nodest_conn=0
// (kubernetes/kubernetes#81775). Mode 1 before Linux 5.9, with
// vs.conntrack=1, drops the first SYN of every reused port to make room for
// a new conntrack entry: one second of delay each
// (kubernetes/kubernetes#70747, fixed in 5.9, #93297).
func checkConnReuse(s *probes.Snapshot, sel probes.Selector) Finding {
	why, svcs := ipvsSkip(s, sel)
	if why != "" {
		return skip(why)
	}
	if !slices.ContainsFunc(svcs, func(svc ipvs.Service) bool { return svc.Proto != "udp" }) {
		return Finding{Status: Pass, Title: "no selected service is TCP or SCTP: ports are not reused", Evidence: []Evidence{{Fact: fmt.Sprintf("%d UDP service(s)", len(svcs)), Source: "ipvs, " + s.Target.String()}}}
	}
	mode, ok1 := readable(s, "net.ipv4.vs.conn_reuse_mode")
	nodest, ok2 := readable(s, "net.ipv4.vs.expire_nodest_conn")
	if !ok1 || !ok2 {
		return skip("net.ipv4.vs.conn_reuse_mode or expire_nodest_conn could not be read")
	}
	vsct, vsctOK := readable(s, "net.ipv4.vs.conntrack")
	new59, known := kernelAtLeast(s.Kernel, 5, 9)
	if !known {
		return skip(fmt.Sprintf("the kernel release %q does not parse: which conn_reuse_mode works depends on it", s.Kernel))
	}
	if mode.Value != "0" && !new59 && !vsctOK {
		// Before 5.9 mode 1 or 2 delays reused ports only with
		// vs.conntrack=1: unread, neither a pass nor a warning.
		return skip("net.ipv4.vs.conntrack could not be read (" + vsct.Error + vsct.Absent + "): before Linux 5.9 conn_reuse_mode=" + mode.Value + " delays reused ports only when it is 1")
	}
	kern := "Linux " + s.Kernel
	if new59 {
		kern += " (5.9 or later: mode 1 reschedules without delay)"
	} else {
		kern += " (before 5.9: mode 1 drops the first SYN of a reused port when vs.conntrack=1)"
	}
	ev := []Evidence{
		{Fact: fmt.Sprintf("net.ipv4.vs.conn_reuse_mode = %s, net.ipv4.vs.expire_nodest_conn = %s, net.ipv4.vs.conntrack = %s", mode.Value, nodest.Value, vsct.Value), Source: s.Target.String()},
		{Fact: kern, Source: "uname"},
	}
	switch {
	case mode.Value == "0" && nodest.Value == "0":
		f := Finding{Status: Fail, Title: "a reused client port is sent to its old real even once that real is removed",
			Reason:   "conn_reuse_mode=0 keeps a reused port on the real of its old entry (in TIME_WAIT for 2 minutes), and with expire_nodest_conn=0 IPVS drops the SYNs to a removed real until that entry expires: busy clients fail after every rollout",
			Evidence: ev}
		if new59 {
			f.Remedies = []Remedy{{Sysctl: "net.ipv4.vs.conn_reuse_mode", Value: "1"}, {Sysctl: "net.ipv4.vs.expire_nodest_conn", Value: "1"}}
		} else {
			f.Remedies = []Remedy{{Sysctl: "net.ipv4.vs.expire_nodest_conn", Value: "1"}}
			f.Fix = []string{"# keep conn_reuse_mode=0 before Linux 5.9: mode 1 delays every reused port by a second there"}
		}
		return f
	case mode.Value == "0" && new59:
		return Finding{Status: Warn, Title: "reused client ports stay on their old real (conn_reuse_mode=0, needless since Linux 5.9)",
			Reason:   "a reused port follows its old entry to a real of weight 0, and to a removed one loses its first SYN (expire_nodest_conn ends the entry, the client retransmits a second later); mode 1 reschedules it at once on this kernel",
			Evidence: ev, Remedies: []Remedy{{Sysctl: "net.ipv4.vs.conn_reuse_mode", Value: "1"}}}
	case mode.Value != "0" && !new59 && vsct.Value == "1":
		return Finding{Status: Warn, Title: "every reused client port waits a second (conn_reuse_mode=" + mode.Value + " before Linux 5.9)",
			Reason:   "before 5.9, with vs.conntrack=1, IPVS drops the first SYN of a port whose old entry it reschedules, to clear that entry's conntrack: the client retransmits after 1 s; busy clients reuse ports all the time",
			Evidence: ev, Remedies: []Remedy{{Sysctl: "net.ipv4.vs.conn_reuse_mode", Value: "0"}, {Sysctl: "net.ipv4.vs.expire_nodest_conn", Value: "1"}},
			Fix: []string{"# or move to Linux 5.9 or later and keep mode 1"}}
	}
	return Finding{Status: Pass, Title: "a reused client port is scheduled anew, without delay", Evidence: ev}
}

// checkTimeouts sets IPVS's TCP timeout beside the idle gaps a client can
// leave: a connection idle longer than the IPVS timeout loses its entry
// silently, its next segment is no SYN, so IPVS does not schedule it and
// the LB's own stack answers RST (NO_SOCKET). TCP keepalive's first probe
// comes after tcp_keepalive_time (7200 s by default) — longer than IPVS's
// 900 s — and conntrack keeps the flow for days. kubernetes/kops#6889,
// cloudnativelabs/kube-router#521, kubernetes/kubernetes#84041.
func checkTimeouts(s *probes.Snapshot, sel probes.Selector) Finding {
	why, svcs := ipvsSkip(s, sel)
	if why != "" {
		return skip(why)
	}
	t := s.IPVS.Timeouts
	if t.TCP == 0 && t.UDP == 0 {
		return skip("IPVS's timeouts could not be read (ipvsadm -L --timeout)")
	}
	sysInt := func(key string) (int, string) {
		v, ok := readable(s, key)
		if !ok {
			return 0, "unread"
		}
		n, err := strconv.Atoi(v.Value)
		if err != nil {
			return 0, v.Value
		}
		return n, v.Value + "s"
	}
	keep, keepS := sysInt("net.ipv4.tcp_keepalive_time")
	_, ctS := sysInt("net.netfilter.nf_conntrack_tcp_timeout_established")
	_, udpS := sysInt("net.netfilter.nf_conntrack_udp_timeout_stream")
	tcpSvcs := servicesWhere(svcs, func(svc ipvs.Service) bool { return svc.Proto == "tcp" })
	hasUDP := slices.ContainsFunc(svcs, func(svc ipvs.Service) bool { return svc.Proto == "udp" })
	src := "ipvsadm -L --timeout, sysctls, " + s.Target.String()
	var ev []Evidence
	if len(tcpSvcs) > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("TCP idle timeouts: IPVS established %ds · tcp_keepalive_time %s · conntrack established %s", t.TCP, keepS, ctS), Source: src})
	}
	if hasUDP {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("UDP idle timeouts: IPVS udp %ds · conntrack udp stream %s", t.UDP, udpS), Source: src})
	}
	if len(tcpSvcs) == 0 {
		return Finding{Status: Pass, Title: "no selected service is TCP: an expired UDP entry is scheduled anew", Evidence: ev}
	}
	// The window's proof: mid-stream segments of forgotten connections
	// that no socket took — a client's to the VIP (the LB's stack answers
	// RST), and a real's to the LB's SNAT address, which conntrack, its
	// entry gone with IPVS's, no longer turns back to the client.
	expired := func(c drops.Counted) bool {
		return c.ReasonName == "NO_SOCKET" && c.Proto == 6 && slices.ContainsFunc(tcpSvcs, func(svc ipvs.Service) bool {
			return svc.Addr == c.Dst || slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool { return r.Addr == c.Src })
		})
	}
	var seen uint64
	if s.Drops != nil {
		for _, c := range s.Drops.Drops {
			if expired(c) {
				seen += c.Count
			}
		}
	}
	probeBy := t.TCP - 60 // the clients' first keepalive probe, before IPVS forgets
	if t.TCP <= 120 {
		probeBy = max(t.TCP/2, 1)
	}
	fix := []string{fmt.Sprintf("%sipvsadm --set %d %d %d   # IPVS tcp timeout past the first keepalive probe; tcpfin and udp as they are", s.Target.ExecPrefix(), max(keep+60, t.TCP), t.TCPFin, t.UDP),
		fmt.Sprintf("# or have the clients probe sooner: sysctl -w net.ipv4.tcp_keepalive_time=%d on them (per network namespace) with SO_KEEPALIVE on their sockets, or keepalives in the application", probeBy)}
	if seen > 0 {
		ev = append(ev, Evidence{Fact: fmt.Sprintf("the window saw %d TCP segment(s) of the services' connections dropped for no socket (NO_SOCKET): to a VIP, a connection IPVS no longer knew, answered by the LB with RST; from a real, its answer on one", seen), Source: "kfree_skb tracer, " + s.Target.String()})
		return Finding{Status: Fail, Title: fmt.Sprintf("IPVS forgot idle TCP connections after %ds: their next segment got a RST", t.TCP),
			Reason:   "an IPVS entry expires silently after its idle timeout; the client's next segment is no SYN, IPVS does not schedule it, and the LB's own stack resets it",
			Evidence: ev, Fix: fix, explains: expired}
	}
	if keep == 0 {
		return skip("net.ipv4.tcp_keepalive_time could not be read: the idle gap IPVS's tcp timeout is judged against")
	}
	if t.TCP < keep {
		return Finding{Status: Warn, Title: fmt.Sprintf("IPVS forgets a TCP connection idle %ds, before keepalive's first probe (%ds)", t.TCP, keep),
			Reason:   "a client idle longer than the IPVS timeout (a connection pool, a database session) gets a RST on its next segment; TCP keepalive at these settings does not keep the entry alive",
			Evidence: ev, Fix: fix}
	}
	return Finding{Status: Pass, Title: "IPVS keeps idle TCP connections as long as keepalive lets them idle", Evidence: ev}
}

// checkStaleFlows: conntrack binds NAT when a flow starts. A client that
// sent to the VIP before its IPVS service existed (or while it had none)
// holds a conntrack entry nothing rewrote; one that sent before the SNAT
// rule of a one-arm service holds an entry IPVS rewrote but no SNAT; every
// datagram (or retransmitted SYN) renews it. IPVS still forwards its
// packets, but the SNAT rule never applies, so the real answers the
// client directly and the client drops the answer.
// kubernetes/kubernetes#48370, #31983, moby/moby#44742.
func checkStaleFlows(s *probes.Snapshot, sel probes.Selector) Finding {
	why, svcs := ipvsSkip(s, sel)
	if why != "" {
		return skip(why)
	}
	if e, ok := s.Errors[probes.ProbeConntrack]; ok {
		return skip("conntrack could not be read: " + e)
	}
	if strings.HasPrefix(s.Conntrack.Selector, "none") {
		return skip("the VIPs' conntrack flows were not read: " + s.Conntrack.Selector)
	}
	src := "conntrack, " + s.Target.String()
	var ev []Evidence
	var fix, stale []string
	var unjudged []string // flows whose staleness rests on a layer not read
	example := func(svc ipvs.Service, match func(conntrack.Flow) bool) (clients []netip.Addr) {
		shown := false
		for _, f := range s.Conntrack.Flows {
			if f.Proto != svc.Proto || f.Orig.Dst != svc.Addr || f.HasStatus("SEEN_REPLY") || !match(f) {
				continue
			}
			if !shown {
				ev = append(ev, Evidence{Fact: f.String(), Source: src})
				shown = true
			}
			if c := f.Orig.Src.Addr(); !slices.Contains(clients, c) {
				clients = append(clients, c)
			}
		}
		return clients
	}
	tally := func(l []probes.FlowTally, svc ipvs.Service) int {
		for _, u := range l {
			if u.Proto == svc.Proto && u.Dst == svc.Addr {
				return u.Count
			}
		}
		return 0
	}
	masq := servicesWhere(svcs, func(svc ipvs.Service) bool {
		// A masquerade service's flows are rewritten by IPVS (vs.conntrack=1)
		// or not tracked (0); a direct-routing one's are never rewritten.
		return svc.FWMark == 0 && len(svc.Reals) > 0 && !slices.ContainsFunc(svc.Reals, func(r ipvs.Real) bool { return r.Method != ipvs.Masq })
	})
	for _, svc := range masq {
		if n := tally(s.Conntrack.Untouched, svc); n > 0 {
			stale = append(stale, svc.Key())
			ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: %d flow(s) no NAT rewrote and nothing answered (reply tuple = the original reversed, [UNREPLIED]): they predate the service", svc.Key(), n), Source: src})
			example(svc, func(f conntrack.Flow) bool { return f.Reply.Src == svc.Addr })
			fix = append(fix, fmt.Sprintf("%sconntrack -D -p %s --orig-dst %s --orig-port-dst %d --reply-src %s   # only flows nothing rewrote: a flow IPVS took has its real as reply source",
				s.Target.ExecPrefix(), svc.Proto, svc.Addr.Addr(), svc.Addr.Port(), svc.Addr.Addr()))
		}
		n := tally(s.Conntrack.NotSNATed, svc)
		if n == 0 {
			continue
		}
		covered := slices.ContainsFunc(s.Rules.Rules, func(r rules.Rule) bool { return r.CoversVIP(svc.Addr) })
		if e, bad := s.Errors[probes.ProbeNet]; bad {
			// Whether SNAT is due (one-arm) is the routes' word: these
			// flows are neither stale nor fine without them.
			unjudged = append(unjudged, fmt.Sprintf("%s: %d flow(s) IPVS rewrote but no SNAT, whose SNAT is due or not by the routes, which could not be read (%s)", svc.Key(), n, e))
			continue
		}
		if !DecideReturnPath(s, svc.Addr.Addr(), addrsOf(svc)).NeedsSNAT {
			continue // no SNAT is due (two-arm)
		}
		if !covered {
			if un := unreadRules(s, svc.Addr.Addr()); un != "" {
				unjudged = append(unjudged, fmt.Sprintf("%s: %d flow(s) IPVS rewrote but no SNAT, and no source-NAT rule among the rules read, but %s", svc.Key(), n, un))
			}
			continue // none is there: nat.return_path's to judge
		}
		if snatMissesAll(s, svc) {
			// The rule covers the VIP but not these clients (narrowed to
			// other sources or reals): they did not start before it, and
			// deleting them changes nothing. nat.return_path names it.
			continue
		}
		stale = append(stale, svc.Key())
		ev = append(ev, Evidence{Fact: fmt.Sprintf("%s: %d flow(s) IPVS rewrote but no SNAT, and nothing answered, while a source-NAT rule covers the VIP: they predate the rule", svc.Key(), n), Source: src})
		clients := example(svc, func(f conntrack.Flow) bool { return f.Reply.Src != svc.Addr })
		for i, c := range clients {
			if i == 8 {
				fix = append(fix, fmt.Sprintf("# … and %d more clients: the same with each one's address (conntrack -L -p %s --orig-dst %s lists them)", len(clients)-i, svc.Proto, svc.Addr.Addr()))
				break
			}
			fix = append(fix, fmt.Sprintf("%sconntrack -D -p %s --orig-dst %s --orig-port-dst %d --reply-dst %s   # this client's flows without SNAT (a SNATed flow's replies go to the LB)",
				s.Target.ExecPrefix(), svc.Proto, svc.Addr.Addr(), svc.Addr.Port(), c))
		}
	}
	if len(masq) == 0 {
		return Finding{Status: Pass, Title: "no selected masquerade service: flows to the others are not rewritten", Evidence: []Evidence{{Fact: fmt.Sprintf("%d service(s), none masquerade", len(svcs)), Source: "ipvs, " + s.Target.String()}}}
	}
	if len(stale) == 0 {
		if len(unjudged) > 0 {
			return Finding{Status: Skip, Reason: unjudged[0], Evidence: []Evidence{{Fact: strings.Join(unjudged, "; "), Source: src}}}
		}
		fact := fmt.Sprintf("%d masquerade service(s): every unanswered flow to them was rewritten as their rules say", len(masq))
		if s.Conntrack.Partial != "" {
			// A stale flow may be among those the dump did not reach.
			fact += " (" + s.Conntrack.Partial + ")"
			return Finding{Status: Skip, Reason: "conntrack was not dumped whole: " + s.Conntrack.Partial + "; none of the flows read predates its service, the rest were not seen",
				Evidence: []Evidence{{Fact: fact, Source: src}}}
		}
		return Finding{Status: Pass, Title: "no VIP flow predates its service", Evidence: []Evidence{{Fact: fact, Source: src}}}
	}
	stale = slices.Compact(stale)
	fix = append(fix, "# after adding a service or its SNAT rule, delete the VIP's flows that started before (as kube-proxy does for UDP services); the client's next packet then starts a flow the rules apply to")
	f := Finding{Status: Fail, Title: "flows to " + strings.Join(stale, ", ") + " predate the service or its SNAT rule: the rules never apply to them",
		Reason:   "conntrack binds NAT when a flow starts: a client that sent to the VIP before the service (or its SNAT rule) existed keeps that flow, renewed by each packet; IPVS forwards it without SNAT, so the real answers the client directly and the answer is dropped",
		Evidence: ev, Fix: fix, about: stale}
	if !slices.ContainsFunc(stale, func(k string) bool { return !strings.HasPrefix(k, "TCP ") }) {
		// An unanswered TCP flow is a connection attempt that never got a
		// SYN-ACK: it ends when its client gives up (its next connect takes
		// a new port, which the rules apply to). Right after a correct
		// fix the attempts already under way are such flows: not a fault
		// of now. A UDP client keeps its port and its flow for ever.
		f.Status = Warn
		f.Reason += "; these are TCP connection attempts: each fails, and they end within the SYN_SENT timeout (net.netfilter.nf_conntrack_tcp_timeout_syn_sent, 120 s by default) once their clients give up"
	}
	return f
}

// protoTimeouts names the IPVS idle timeouts of the selected services'
// protocols: "tcp 900s, udp 300s".
func protoTimeouts(s *probes.Snapshot, svcs []ipvs.Service) string {
	var out []string
	add := func(p string, n int) {
		x := p + " " + strconv.Itoa(n) + "s"
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	for _, svc := range svcs {
		switch svc.Proto {
		case "udp":
			add("udp", s.IPVS.Timeouts.UDP)
		case "tcp":
			add("tcp", s.IPVS.Timeouts.TCP)
		}
	}
	if len(out) == 0 {
		add("tcp", s.IPVS.Timeouts.TCP)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// snatMissesAll reports whether every client of svc's listed flows that IPVS
// rewrote and nothing source-NATed or answered is one the rules that cover
// its VIP do not match (snatMissed): flows the rule never applied to because
// of what it matches, not because they predate it.
func snatMissesAll(s *probes.Snapshot, svc ipvs.Service) bool {
	var clients []netip.Addr
	for _, f := range s.Conntrack.Flows {
		if f.Proto == svc.Proto && f.Orig.Dst == svc.Addr && !f.HasStatus("SEEN_REPLY") && f.Reply.Src != svc.Addr && f.Reply.Dst.Addr() == f.Orig.Src.Addr() && !slices.Contains(clients, f.Orig.Src.Addr()) {
			clients = append(clients, f.Orig.Src.Addr())
		}
	}
	judged := min(len(clients), probes.MaxRouteSources) // what snatMissed looks at
	return judged > 0 && len(snatMissed(svc, coveringSNAT(s, svc.Addr), clients)) == judged
}
