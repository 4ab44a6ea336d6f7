package probes

import (
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// dnatTo is the destination of a DNAT rule: nft's `dnat to ADDR[:PORT]`
// (`dnat ip to …` in an inet table) and iptables' `--to-destination
// ADDR[:PORT]` ([ADDR]:PORT for IPv6).
var dnatTo = regexp.MustCompile(`(?:dnat(?: ip6?)? to|--to-destination) (\[[0-9a-fA-F:.]+\](?::\d+)?|[0-9.]+(?::\d+)?|[0-9a-fA-F:]+)`)

// dnatMap is the elements of an nft DNAT to an anonymous map, as nft
// lists it (`dnat to numgen inc mod 2 map { 0 : 10.1.0.50, 1 : 10.1.0.51
// }`, with the port after it: `…}:8080`; `dnat ip to jhash ip saddr mod 2
// map { 0 : 10.1.0.50 . 8080 }` for `dnat ip addr . port to`).
var dnatMap = regexp.MustCompile(`dnat(?: ip6?)? to .*\bmap \{ ([^}]*) \}(?::(\d+))?`)

// dport is the destination ports a rule matches: nft's `dport 80` or
// `dport { 80, 443 }`, iptables' `--dport 80` or multiport's `--dports
// 80,443`. Ranges are not parsed (the rule is then taken as any port's).
var dport = regexp.MustCompile(`(?:\bdport|--dports?) (\{[^}]*\}|[0-9,]+)(?:\s|$)`)

// ruleProto is the protocol a rule matches: nft's `tcp dport`, `udp
// sport`, `meta l4proto tcp`, iptables' `-p tcp`.
var ruleProto = regexp.MustCompile(`(?:^|\s)(?:-p |meta l4proto )?(tcp|udp)(?:\s|$)`)

// servesProto says whether a rule's protocol match, if it has one, is
// proto ("" any): a DNAT of the VIP's TCP is no backend of its UDP.
func servesProto(spec, proto string) bool {
	m := ruleProto.FindStringSubmatch(spec)
	return m == nil || proto == "" || strings.EqualFold(m[1], proto)
}

// servesPort says whether a rule's destination port match, if it has one,
// holds port: a DNAT of the VIP's port 53 is not a backend of its port 80.
// Port 0 (a VIP given without a port: every port of it) holds every port.
func servesPort(spec string, port uint16) bool {
	m := dport.FindStringSubmatch(spec)
	if m == nil || port == 0 {
		return true
	}
	for _, p := range strings.FieldsFunc(strings.Trim(m[1], "{}"), func(c rune) bool { return c == ',' || c == ' ' }) {
		if p == strconv.Itoa(int(port)) {
			return true
		}
	}
	return false
}

// singlePort is the one destination port a rule matches, 0 when it
// matches none or several: a DNAT without a port keeps the packet's.
func singlePort(spec string) uint16 {
	m := dport.FindStringSubmatch(spec)
	if m == nil {
		return 0
	}
	p, err := strconv.ParseUint(strings.TrimSpace(m[1]), 10, 16)
	if err != nil {
		return 0
	}
	return uint16(p)
}

// RuleBackends are the destinations of the DNAT rules that name the
// selected VIP's address and, when they match a destination port or a
// protocol, its port and protocol: the backends of a VIP that IPVS does not serve,
// known from the rules before any flow shows them in conntrack. A rule
// without a port keeps the VIP's; for a VIP given without a port (every
// port of it), the one port the rule matches, else port 0 (any). A rule
// of the VIP that jumps to a chain is followed (maxJumps deep), as
// kube-proxy's iptables mode builds them — KUBE-SERVICES names the VIP,
// jumps to KUBE-SVC-…, which jumps to a KUBE-SEP-… holding the DNAT —,
// leaving out a DNAT there that names another destination address.
// Ranges and maps are not followed.
func RuleBackends(rs []rules.Rule, sel Selector) []netip.AddrPort {
	out, _ := ruleDNATs(rs, sel)
	return out
}

// UnreadDNATs are the DNAT rules of the selected VIP (as RuleBackends
// finds them) whose destination is no address RuleBackends reads: a map
// (`dnat to numgen inc mod 2 map { … }`), a set, an expression. The
// backends they choose are known only from conntrack's flows.
func UnreadDNATs(rs []rules.Rule, sel Selector) []rules.Rule {
	_, unread := ruleDNATs(rs, sel)
	return unread
}

func ruleDNATs(rs []rules.Rule, sel Selector) (out []netip.AddrPort, unread []rules.Rule) {
	vip := sel.VIP.Addr().String()
	var follow func(r rules.Rule, port uint16, depth int)
	follow = func(r rules.Rule, port uint16, depth int) {
		if !servesPort(r.Spec, port) || !servesProto(r.Spec, sel.Proto) {
			return
		}
		if port == 0 {
			port = singlePort(r.Spec)
		}
		if r.Target != "DNAT" {
			if depth == maxJumps {
				return
			}
			for _, next := range rs {
				if next.Chain == r.Target && next.Backend == r.Backend && next.Table == r.Table && next.Family == r.Family && !namesOtherDst(next.Spec, vip) {
					follow(next, port, depth+1)
				}
			}
			return
		}
		var dsts []string
		if m := dnatTo.FindStringSubmatch(r.Spec); m != nil {
			dsts = []string{m[1]}
		} else if m := dnatMap.FindStringSubmatch(r.Spec); m != nil {
			// An anonymous map (numgen, jhash): nft lists its elements.
			if p, err := strconv.ParseUint(m[2], 10, 16); err == nil {
				port = uint16(p) // every element's
			}
			for _, el := range strings.Split(m[1], ",") {
				_, v, ok := strings.Cut(el, " : ")
				if !ok {
					dsts = nil
					break
				}
				v = strings.TrimSpace(v)
				if a, p, ok := strings.Cut(v, " . "); ok {
					// address . port, written as ADDR:PORT ([ADDR]:PORT).
					addr, aerr := netip.ParseAddr(a)
					n, perr := strconv.ParseUint(p, 10, 16)
					if aerr != nil || perr != nil {
						dsts = nil
						break
					}
					v = netip.AddrPortFrom(addr, uint16(n)).String()
				}
				dsts = append(dsts, v)
			}
		}
		var bs []netip.AddrPort
		for _, d := range dsts {
			b, err := netip.ParseAddrPort(d)
			if err != nil {
				a, aerr := netip.ParseAddr(strings.Trim(d, "[]"))
				if aerr != nil {
					bs = nil
					break
				}
				b = netip.AddrPortFrom(a, port)
			}
			bs = append(bs, b)
		}
		if len(bs) == 0 {
			unread = append(unread, r)
			return
		}
		for _, b := range bs {
			if !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
	}
	for _, r := range rs {
		// strings.Contains first: a big rule set (kube-proxy's) holds
		// thousands of rules with a target, few of them the VIP's.
		if r.Target == "" || !strings.Contains(r.Spec, vip) || !slices.Contains(strings.FieldsFunc(r.Spec, func(c rune) bool { return c == ' ' || c == '/' }), vip) {
			continue
		}
		follow(r, sel.VIP.Port(), 0)
	}
	return out, unread
}

// maxJumps is how many chains deep RuleBackends follows a rule of the VIP
// (kube-proxy's DNAT is two below KUBE-SERVICES).
const maxJumps = 3

// dstAddr is the destination address a rule matches: iptables' `-d
// ADDR[/LEN]`, nft's `ip daddr ADDR` or `ip6 daddr ADDR`.
var dstAddr = regexp.MustCompile(`(?:^|\s)(?:-d|daddr) ([0-9a-fA-F:.]+)`)

// namesOtherDst says whether a rule matches a destination address other
// than vip: in a chain a rule of the VIP jumps to, a DNAT of another
// address is another VIP's.
func namesOtherDst(spec, vip string) bool {
	m := dstAddr.FindStringSubmatch(spec)
	return m != nil && m[1] != vip
}

// Where a VIP's backend was learned (VIPBackend.From).
const (
	FromConntrack = "conntrack" // a flow's reply came from it (DNAT seen at work)
	FromDNATRule  = "DNAT rule" // a DNAT rule of the VIP names it (RuleBackends)
)

// VIPBackend is one backend of a VIP that IPVS does not serve, and what
// showed it: conntrack, a DNAT rule, or both (in that order).
type VIPBackend struct {
	Addr netip.AddrPort `json:"addr"`
	From []string       `json:"from"`
}

// String is "ADDR:PORT (conntrack, DNAT rule)", or "ADDR (DNAT rule)"
// for a backend of any port (port 0: a DNAT without a port of a VIP given
// without one).
func (b VIPBackend) String() string {
	a := b.Addr.String()
	if b.Addr.Port() == 0 {
		a = b.Addr.Addr().String()
	}
	return a + " (" + strings.Join(b.From, ", ") + ")"
}

// VIPBackends are the backends of a VIP that IPVS does not serve (nft or
// iptables DNAT): those its conntrack flows answered from (learned:
// Conntrack.Backends, LearnBackends) and the destinations of the DNAT
// rules of the selected VIP (RuleBackends), the one union that the drop
// tracer, capture and check's window trace. The rules name a backend
// before any flow was confirmed: a VIP that never worked (its first
// packets dropped after DNAT) is traced all the same. Conntrack's come
// first, in their order.
func VIPBackends(sel Selector, learned []netip.AddrPort, rs []rules.Rule) []VIPBackend {
	var out []VIPBackend
	add := func(a netip.AddrPort, from string) {
		for i := range out {
			if out[i].Addr == a {
				if !slices.Contains(out[i].From, from) {
					out[i].From = append(out[i].From, from)
				}
				return
			}
		}
		out = append(out, VIPBackend{Addr: a, From: []string{from}})
	}
	for _, b := range learned {
		add(b, FromConntrack)
	}
	for _, b := range RuleBackends(rs, sel) {
		add(b, FromDNATRule)
	}
	return out
}

// BackendAddrs are the backends' addresses and ports.
func BackendAddrs(bs []VIPBackend) []netip.AddrPort {
	out := make([]netip.AddrPort, len(bs))
	for i, b := range bs {
		out[i] = b.Addr
	}
	return out
}

// JoinBackends is bs as "A (conntrack), B (DNAT rule)".
func JoinBackends(bs []VIPBackend) string {
	s := make([]string, len(bs))
	for i, b := range bs {
		s[i] = b.String()
	}
	return strings.Join(s, ", ")
}

// DNATBackends are VIPBackends of s's read: its conntrack's backends and
// its rules' (none when s's VIP is an IPVS service or no VIP is selected).
// The checks and the window's tracer judge a DNAT VIP by them.
func (s *Snapshot) DNATBackends(sel Selector) []VIPBackend {
	if !sel.VIP.IsValid() || ServesVIP(sel, s.IPVS.Services) {
		return nil
	}
	return VIPBackends(sel, s.Conntrack.Backends, s.Rules.Rules)
}
