package rules

import (
	"strconv"
	"strings"
)

// SetMatch is an `-m set --match-set NAME FLAGS` match of an iptables rule.
type SetMatch struct {
	Name    string
	Flags   string // dst,dst (address and port), dst,dst,src, dst …
	Negated bool   // `! --match-set`
}

// MarkMatch is an `-m mark --mark VALUE[/MASK]` match.
type MarkMatch struct {
	Value, Mask uint32
	Negated     bool
}

// Words is what an iptables rule reads besides its target: its matches
// on sets and marks, whether it has any other criterion, and the mark its
// MARK target sets. Native nft rules have none of them (Other is true).
type Words struct {
	Sets  []SetMatch
	Marks []MarkMatch
	// Other is true when the rule has a criterion other than a set, a
	// mark or a comment (addresses, interfaces, protocol, state…).
	Other bool
	// SetsMark is the MARK target's --set-xmark/--set-mark/--or-mark
	// (Mask: the bits it writes); nil for another target.
	SetsMark *MarkMatch
}

// ReadWords reads the set and mark words of an iptables rule.
func (r Rule) ReadWords() Words {
	var w Words
	if r.Backend == Nft {
		w.Other = true
		return w
	}
	args, err := splitArgs(r.Spec)
	if err != nil || len(args) < 2 {
		w.Other = true
		return w
	}
	negate, target := false, false
	walkArgs(args[2:], func(a string, next func() string) bool {
		switch a {
		case "!":
			negate = true
			return true
		case "-j", "--jump", "-g", "--goto":
			target = next() == "MARK"
		case "-m", "--match":
			switch next() {
			case "set", "mark", "comment":
			default:
				w.Other = true
			}
		case "--comment":
			next()
		case "--match-set":
			w.Sets = append(w.Sets, SetMatch{Name: next(), Flags: next(), Negated: negate})
		case "--mark":
			if m, ok := parseMark(next()); ok {
				m.Negated = negate
				w.Marks = append(w.Marks, m)
			} else {
				w.Other = true
			}
		case "--set-xmark", "--set-mark", "--or-mark":
			if m, ok := parseMark(next()); ok && target {
				if a == "--or-mark" {
					m.Mask = m.Value
				}
				w.SetsMark = &m
			}
		case "--random-fully", "--random", "--to-ports", "--to-source", "--to-destination":
			// a target's own options
		default:
			if !target {
				w.Other = true
			}
		}
		negate = false
		return true
	})
	return w
}

// parseMark reads VALUE[/MASK] in hex or decimal (iptables-save writes
// 0x4000/0x4000); no mask means every bit.
func parseMark(s string) (MarkMatch, bool) {
	v, m, hasMask := strings.Cut(s, "/")
	val, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return MarkMatch{}, false
	}
	mask := uint64(0xffffffff)
	if hasMask {
		if mask, err = strconv.ParseUint(m, 0, 32); err != nil {
			return MarkMatch{}, false
		}
	}
	return MarkMatch{Value: uint32(val), Mask: uint32(mask)}, true
}

// Satisfies reports whether a packet whose mark had the bits set by a MARK
// target set matches m (not negated): every bit m tests is written by set
// and written as m wants it.
func (m MarkMatch) Satisfies(set MarkMatch) bool {
	return m.Mask&set.Mask == m.Mask && set.Value&m.Mask == m.Value&m.Mask
}

// WritesMark reports whether the rule sets the packet mark mark, as IPVS's
// firewall-mark services compare it (the whole mark): an iptables MARK
// target whose written bits are mark's (--set-mark, --set-xmark,
// --or-mark), or a native nft rule's `meta mark set VALUE`.
func (r Rule) WritesMark(mark uint32) bool {
	if r.Backend != Nft {
		set := r.ReadWords().SetsMark
		return set != nil && set.Mask != 0 && set.Value&set.Mask == mark&set.Mask
	}
	found, prev := false, ""
	walkArgs(strings.Fields(r.Spec), func(w string, next func() string) bool {
		// "ct mark set" marks the flow, not the packet IPVS reads.
		if w != "mark" || prev == "ct" {
			prev = w
			return true
		}
		if prev = next(); prev != "set" {
			return true
		}
		v, err := strconv.ParseUint(next(), 0, 32)
		found = err == nil && uint32(v) == mark
		return false
	})
	return found
}
