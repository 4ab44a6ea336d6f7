package rules

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Packet is what a check knows of a packet a rule may match; a zero field
// is not known (any client's address or port).
type Packet struct {
	Proto    string // tcp or udp
	Src, Dst netip.Addr
	SPort    uint16
	DPort    uint16
	// First: the packet opens its flow (a client's request, or the one IPVS
	// sends on to a real): its conntrack state is new, or untracked, never
	// established, related or invalid; a rule that accepts only those does
	// not spare it — and since it is dropped, no later packet of the flow
	// comes.
	First bool
	// Remote: it comes from, and goes to, other hosts: never the loopback
	// interface, so a rule on `-i lo` or `iif "lo"` does not take it.
	Remote bool
	// Invalid: conntrack sees it INVALID — a real's first reply (its
	// SYN-ACK) forwarded by an LB whose IPVS keeps its connections out of
	// conntrack (vs.conntrack=0): conntrack never saw the request it
	// answers. A state match is then decided: invalid holds, every other
	// state does not.
	Invalid bool
}

// Match is a rule's verdict on a packet.
type Match int

const (
	// NoMatch: a criterion the rule has is false for the packet.
	NoMatch Match = iota
	// Unclear: the rule has a criterion lbdoctor does not read (state,
	// marks, interfaces, sets…) or one on what the packet does not say.
	Unclear
	// Matches: every criterion of the rule holds for the packet.
	Matches
)

// MatchPacket tells whether the rule matches every packet like p: only
// addresses, protocol and ports are read; anything else makes it Unclear.
func (r Rule) MatchPacket(p Packet) Match {
	if r.Backend == Nft {
		return matchNft(r.Spec, p)
	}
	args, err := splitArgs(r.Spec)
	if err != nil || len(args) < 2 {
		return Unclear
	}
	return matchArgs(args[2:], p)
}

// SNATMatch judges, on p, the criteria of a source-NAT rule beside its VIP
// match (what CoversVIP reads: `-m ipvs` and its options, --ctorigdst,
// nft's `ct original …`): p is the request IPVS sends a real, p.Src the
// client, p.Dst and p.DPort the real. A rule that covers the VIP but only
// some clients (`-s 10.99.0.0/16`), reals or ports is NoMatch for the
// packets it leaves alone; Unclear where the matcher reads nothing
// (interfaces, marks, sets).
func (r Rule) SNATMatch(p Packet) Match {
	if r.Backend == Nft {
		return matchNft(withoutNftVIPMatch(r.Spec), p)
	}
	args, err := splitArgs(r.Spec)
	if err != nil || len(args) < 2 {
		return Unclear
	}
	var kept []string
	walkArgs(args[2:], func(a string, next func() string) bool {
		switch a {
		case "-m", "--match":
			if m := next(); m != "ipvs" {
				kept = append(kept, a, m)
			}
		case "--ipvs":
		case "--vaddr", "--vport", "--vproto", "--vdir", "--vmethod", "--vportctl", "--ctorigdst", "--ctorigdstport":
			next()
		default:
			kept = append(kept, a)
		}
		return true
	})
	// A "!" left before nothing, or before a dropped option, is dropped.
	for i := len(kept) - 1; i >= 0; i-- {
		if kept[i] == "!" && (i == len(kept)-1 || kept[i+1] == "!") {
			kept = slices.Delete(kept, i, i+1)
		}
	}
	return matchArgs(kept, p)
}

// withoutNftVIPMatch is an nft rule's words less its `ct original …`
// criteria (the VIP match); `ct protocol P` is read as `meta l4proto P`.
func withoutNftVIPMatch(spec string) string {
	w := strings.Fields(nftCounter.ReplaceAllString(spec, ""))
	var out []string
	for i := 0; i < len(w); i++ {
		if w[i] == "ct" && i+1 < len(w) {
			switch w[i+1] {
			case "original":
				// ct original [ip|ip6] daddr X, ct original proto-dst N
				i += 2
				if i < len(w) && (w[i] == "ip" || w[i] == "ip6") {
					i++
				}
				i++ // the value; the loop's i++ steps past it
				continue
			case "protocol":
				out = append(out, "meta", "l4proto")
				i++
				continue
			}
		}
		out = append(out, w[i])
	}
	return strings.Join(out, " ")
}

// matchArgs judges iptables-save words (after "-A CHAIN") on p.
func matchArgs(args []string, p Packet) Match {
	m := Matches
	neg := false // iptables-save writes a negated criterion as "! -s X"
	walkArgs(args, func(a string, next func() string) bool {
		var v Match
		switch a {
		case "!":
			neg = true
			return true
		case "-p", "--protocol":
			v = eq(next(), p.Proto)
		case "-s", "--source":
			v = inPrefix(next(), p.Src)
		case "-d", "--destination":
			v = inPrefix(next(), p.Dst)
		case "--dport", "--destination-port":
			v = portIn(next(), p.DPort)
		case "--sport", "--source-port":
			v = portIn(next(), p.SPort)
		case "-i", "--in-interface", "-o", "--out-interface":
			v = loopback(next(), p)
		case "--ctstate", "--state":
			v = ctState(strings.Split(next(), ","), p)
		case "-m", "--match":
			switch next() {
			case "tcp", "udp", "comment", "conntrack", "state":
				return true // their options are read, or are unclear, on their own
			}
			v = Unclear
		case "--comment":
			next()
			return true
		case "-j", "--jump":
			return false // the rest is the target and its own options (--reject-with …)
		default:
			v = Unclear
		}
		if neg {
			v, neg = negate(v), false
		}
		m = min(m, v)
		return m != NoMatch
	})
	return m
}

// negate is the verdict of "! criterion": what is unclear stays so.
func negate(v Match) Match {
	switch v {
	case Matches:
		return NoMatch
	case NoMatch:
		return Matches
	}
	return Unclear
}

// loopback judges an interface match: the loopback interface never carries
// a remote packet; any other name is unclear (lbdoctor does not know which
// interface a client's packet comes in on).
func loopback(name string, p Packet) Match {
	if p.Remote && strings.Trim(name, `"`) == "lo" {
		return NoMatch
	}
	return Unclear
}

// ctState judges a conntrack state match (`--ctstate RELATED,ESTABLISHED`,
// `ct state established,related`): the first packet of a flow is in none of
// established, related or invalid; any other state (new, untracked, the
// DNAT/SNAT virtual states) may be the packet's.
func ctState(states []string, p Packet) Match {
	if p.Invalid && len(states) > 0 {
		for _, st := range states {
			if strings.ToLower(strings.Trim(st, " ,")) == "invalid" {
				return Matches
			}
		}
		return NoMatch
	}
	if !p.First || len(states) == 0 {
		return Unclear
	}
	for _, st := range states {
		switch strings.ToLower(strings.Trim(st, " ,")) {
		case "established", "related", "invalid":
		default:
			return Unclear
		}
	}
	return NoMatch
}

// matchNft reads the few nft expressions a check can judge.
func matchNft(spec string, p Packet) Match {
	m := Matches
	walkArgs(strings.Fields(nftCounter.ReplaceAllString(spec, "")), func(w string, next func() string) bool {
		var v Match
		switch w {
		case "ip", "ip6":
			switch next() {
			case "saddr":
				v = inPrefix(next(), p.Src)
			case "daddr":
				v = inPrefix(next(), p.Dst)
			default:
				v = Unclear
			}
		case "tcp", "udp", "th":
			if w != "th" {
				if v = eq(w, p.Proto); v == NoMatch {
					m = NoMatch
					return false
				}
			}
			switch next() {
			case "dport":
				v = min(v, portIn(next(), p.DPort))
			case "sport":
				v = min(v, portIn(next(), p.SPort))
			default:
				v = Unclear
			}
		case "meta":
			switch next() {
			case "l4proto":
				v = eq(next(), p.Proto)
			case "iif", "iifname", "oif", "oifname":
				v = loopback(next(), p)
			default:
				v = Unclear
			}
		case "iif", "iifname", "oif", "oifname":
			v = loopback(next(), p)
		case "ct":
			if next() != "state" {
				v = Unclear
				break
			}
			// "ct state established,related", as nft lists it; a set,
			// a map or a negation ("!=") is not read.
			st := next()
			if strings.ContainsAny(st, "{}!=") {
				v = Unclear
				break
			}
			v = ctState(strings.Split(st, ","), p)
		case "icmp", "icmpv6":
			// "icmp type echo-request": a rule on ICMP's own fields
			// takes ICMP only.
			if v = eq(w, p.Proto); v == NoMatch {
				m = NoMatch
				return false
			}
			v = Unclear
		case "counter", "drop", "accept", "notrack":
			return true
		case "reject", "masquerade", "snat", "dnat":
			return false // "reject with …", "snat to …": the verdict's own words
		default:
			v = Unclear
		}
		m = min(m, v)
		return m != NoMatch
	})
	return m
}

// walkArgs calls fn with each word of args in turn and a next that takes
// the word after it (an option's value; "" past the end), until fn returns
// false: the one walk over iptables-save and nft rule words.
func walkArgs(args []string, fn func(word string, next func() string) bool) {
	for i := 0; i < len(args); i++ {
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		if !fn(args[i], next) {
			return
		}
	}
}

func eq(want, have string) Match {
	if have == "" {
		return Unclear
	}
	if strings.EqualFold(want, have) {
		return Matches
	}
	return NoMatch
}

func inPrefix(s string, a netip.Addr) Match {
	if strings.HasPrefix(s, "!") || strings.HasPrefix(s, "@") || strings.HasPrefix(s, "{") || strings.HasPrefix(s, "$") {
		return Unclear
	}
	if !a.IsValid() {
		return Unclear
	}
	if prefixContains(s, a) {
		return Matches
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return NoMatch
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return NoMatch
	}
	return Unclear
}

// portIn reads a port, or a range "A:B" (iptables) or "A-B" (nft).
func portIn(s string, port uint16) Match {
	if port == 0 {
		return Unclear
	}
	lo, hi, ok := strings.Cut(s, ":")
	if !ok {
		lo, hi, ok = strings.Cut(s, "-")
	}
	if !ok {
		hi = lo
	}
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil {
		return Unclear
	}
	if uint64(port) >= a && uint64(port) <= b {
		return Matches
	}
	return NoMatch
}

// DeleteCommand is the command that deletes the rule: `iptables-legacy -t
// filter -D INPUT …` as iptables-save printed it, or `nft delete rule ip f
// in handle 7`; nil when it cannot be named (an nft rule read without
// its handle).
func (r Rule) DeleteCommand() []string {
	if r.Backend == Nft {
		fam, table, ok := strings.Cut(r.Table, " ")
		if r.Handle == 0 || !ok {
			return nil
		}
		return []string{"nft", "delete", "rule", fam, table, r.Chain, "handle", strconv.FormatUint(r.Handle, 10)}
	}
	args, err := splitArgs(r.Spec)
	if err != nil || len(args) < 2 {
		return nil
	}
	return append([]string{Command(r.Backend, r.Family), "-t", r.Table, "-D"}, args[1:]...)
}

// AcceptCommand is the command that inserts, at the top of chain c, a rule
// that accepts packets like p (addresses, protocol, ports that are known):
// what lets them past a DROP policy without opening it to everything.
func (c Chain) AcceptCommand(p Packet) []string {
	if c.Backend == Nft {
		_, table, _ := strings.Cut(c.Table, " ")
		cmd := []string{"nft", "insert", "rule", c.Family, table, c.Chain}
		fam := "ip"
		if p.Src.Is6() || p.Dst.Is6() {
			fam = "ip6"
		}
		if p.Src.IsValid() {
			cmd = append(cmd, fam, "saddr", p.Src.String())
		}
		if p.Dst.IsValid() {
			cmd = append(cmd, fam, "daddr", p.Dst.String())
		}
		if p.Proto != "" && p.SPort != 0 {
			cmd = append(cmd, p.Proto, "sport", strconv.Itoa(int(p.SPort)))
		}
		if p.Proto != "" && p.DPort != 0 {
			cmd = append(cmd, p.Proto, "dport", strconv.Itoa(int(p.DPort)))
		}
		if p.Proto != "" && p.SPort == 0 && p.DPort == 0 {
			cmd = append(cmd, "meta", "l4proto", p.Proto)
		}
		return append(cmd, "accept")
	}
	cmd := []string{Command(c.Backend, c.Family), "-t", c.Table, "-I", c.Chain}
	if p.Src.IsValid() {
		cmd = append(cmd, "-s", p.Src.String())
	}
	if p.Dst.IsValid() {
		cmd = append(cmd, "-d", p.Dst.String())
	}
	if p.Proto != "" {
		cmd = append(cmd, "-p", p.Proto)
		if p.SPort != 0 {
			cmd = append(cmd, "--sport", strconv.Itoa(int(p.SPort)))
		}
		if p.DPort != 0 {
			cmd = append(cmd, "--dport", strconv.Itoa(int(p.DPort)))
		}
	}
	return append(cmd, "-j", "ACCEPT")
}
