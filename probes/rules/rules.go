// Package rules reads the packet-filter rules of a network namespace that can
// touch load-balanced traffic, with their hit counters, from the iptables
// backends (legacy and nft) and labels what matters to IPVS NAT: `-m ipvs`
// matches, SNAT/MASQUERADE, DNAT, and drops.
package rules

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Backends, as their save tools are named.
const (
	IptablesLegacy = "iptables-legacy"
	IptablesNft    = "iptables-nft"
)

// Snapshot is every rule read in one namespace.
type Snapshot struct {
	Backends []Backend `json:"backends"`
	Rules    []Rule    `json:"rules"`
	// Mixed is true when x_tables (iptables-legacy) and nf_tables
	// (iptables-nft, nft) both hold rules: both run on every packet, and
	// each tool shows only its own part.
	Mixed bool `json:"mixed"`
}

// Backend says whether a rule source could be read.
type Backend struct {
	Name   string `json:"name"`
	Read   bool   `json:"read"`
	Rules  int    `json:"rules"`
	Reason string `json:"reason,omitempty"` // why it was not read
}

// Rule is one rule with its counters and what lbdoctor recognised in it.
type Rule struct {
	Backend string `json:"backend"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Spec    string `json:"spec"`           // as iptables-save prints it, without counters
	Hook    string `json:"hook,omitempty"` // nft base chains: prerouting, input, forward, output, postrouting
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// HasCounter is false for a native nft rule without a `counter`
	// expression: its Packets stay 0 whatever it matches.
	HasCounter bool   `json:"has_counter"`
	Target     string `json:"target,omitempty"`
	// IPVS is set for a rule with an `-m ipvs` match.
	IPVS *IPVSMatch `json:"ipvs,omitempty"`
	// CtOrigDst is the --ctorigdst of a conntrack match (the VIP before DNAT).
	CtOrigDst string `json:"ct_orig_dst,omitempty"`
}

// IPVSMatch is what an `-m ipvs` match selects.
type IPVSMatch struct {
	Negated bool   `json:"negated,omitempty"` // `! --ipvs`
	Ipvs    bool   `json:"ipvs,omitempty"`    // --ipvs: any IPVS connection
	VAddr   string `json:"vaddr,omitempty"`   // --vaddr ADDR[/MASK]
	VPort   uint16 `json:"vport,omitempty"`
	VProto  string `json:"vproto,omitempty"`
	VDir    string `json:"vdir,omitempty"`
	VMethod string `json:"vmethod,omitempty"`
}

// MatchesVIP reports whether the match selects connections to vip (any port when port is 0).
func (m *IPVSMatch) MatchesVIP(vip netip.Addr, port uint16) bool {
	if m == nil || m.Negated {
		return false
	}
	if m.VAddr != "" && !prefixContains(m.VAddr, vip) {
		return false
	}
	return m.VPort == 0 || port == 0 || m.VPort == port
}

// IsSourceNAT reports whether the rule rewrites the source.
func (r Rule) IsSourceNAT() bool { return r.Target == "MASQUERADE" || r.Target == "SNAT" }

func prefixContains(s string, a netip.Addr) bool {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Contains(a)
	}
	b, err := netip.ParseAddr(s)
	return err == nil && b == a
}

// Read reads both iptables backends and native nftables inside ns.
func Read(ns netns.Target) (Snapshot, error) {
	snap := Snapshot{Rules: []Rule{}}
	for _, be := range []string{IptablesLegacy, IptablesNft} {
		tool := be + "-save"
		b := Backend{Name: be}
		if _, err := exec.LookPath(tool); err != nil {
			b.Reason = tool + " not installed"
			snap.Backends = append(snap.Backends, b)
			continue
		}
		var out []byte
		err := ns.Do(func() error {
			var stderr bytes.Buffer
			cmd := exec.Command(tool, "-c")
			cmd.Stderr = &stderr
			var err error
			out, err = cmd.Output()
			if err != nil {
				return fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(stderr.String()))
			}
			return nil
		})
		if err != nil {
			b.Reason = err.Error()
			snap.Backends = append(snap.Backends, b)
			continue
		}
		rules, err := ParseSave(be, out)
		if err != nil {
			b.Reason = err.Error()
			snap.Backends = append(snap.Backends, b)
			continue
		}
		b.Read, b.Rules = true, len(rules)
		snap.Backends = append(snap.Backends, b)
		snap.Rules = append(snap.Rules, rules...)
	}
	nb := Backend{Name: Nft}
	if nft, err := readNft(ns); err != nil {
		nb.Reason = err.Error()
	} else {
		nb.Read, nb.Rules = true, len(nft)
		snap.Rules = append(snap.Rules, nft...)
	}
	snap.Backends = append(snap.Backends, nb)
	rulesIn := map[string]int{}
	for _, b := range snap.Backends {
		rulesIn[b.Name] = b.Rules
	}
	snap.Mixed = rulesIn[IptablesLegacy] > 0 && rulesIn[IptablesNft]+rulesIn[Nft] > 0
	return snap, nil
}

// ParseSave parses `iptables-save -c` output.
func ParseSave(backend string, data []byte) ([]Rule, error) {
	var rules []Rule
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT" || line[0] == ':':
			continue
		case line[0] == '*':
			table = line[1:]
			continue
		}
		r := Rule{Backend: backend, Table: table}
		if line[0] == '[' {
			end := strings.IndexByte(line, ']')
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated counters", lineNo)
			}
			p, b, ok := strings.Cut(line[1:end], ":")
			var err1, err2 error
			r.Packets, err1 = strconv.ParseUint(p, 10, 64)
			r.Bytes, err2 = strconv.ParseUint(b, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("line %d: bad counters %q", lineNo, line[:end+1])
			}
			line = strings.TrimSpace(line[end+1:])
		}
		args, err := splitArgs(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if len(args) < 2 || args[0] != "-A" {
			return nil, fmt.Errorf("line %d: not a rule: %q", lineNo, line)
		}
		r.Chain, r.Spec, r.HasCounter = args[1], line, true
		labelRule(&r, args[2:])
		rules = append(rules, r)
	}
	return rules, sc.Err()
}

func labelRule(r *Rule, args []string) {
	negate := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch a {
		case "!":
			negate = true
			continue
		case "-j", "--jump", "-g", "--goto":
			r.Target = next()
		case "-m", "--match":
			if next() == "ipvs" && r.IPVS == nil {
				r.IPVS = &IPVSMatch{}
			}
		case "--ipvs":
			if r.IPVS != nil {
				r.IPVS.Ipvs, r.IPVS.Negated = true, negate
			}
		case "--vaddr":
			v := next()
			if r.IPVS != nil {
				r.IPVS.VAddr = strings.TrimSuffix(v, "/32")
				r.IPVS.Negated = r.IPVS.Negated || negate
			}
		case "--vport":
			p, _ := strconv.ParseUint(next(), 10, 16)
			if r.IPVS != nil {
				r.IPVS.VPort = uint16(p)
			}
		case "--vproto":
			if r.IPVS != nil {
				r.IPVS.VProto = next()
			}
		case "--vdir":
			if r.IPVS != nil {
				r.IPVS.VDir = next()
			}
		case "--vmethod":
			if r.IPVS != nil {
				r.IPVS.VMethod = next()
			}
		case "--ctorigdst":
			r.CtOrigDst = strings.TrimSuffix(next(), "/32")
		}
		negate = false
	}
}

// splitArgs splits an iptables-save line into words; iptables-save quotes
// words with spaces (comments) in double quotes with backslash escapes.
func splitArgs(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case quoted && c == '"':
			quoted = false
		case !quoted && c == '"':
			quoted, inWord = true, true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}

// Key identifies a rule across two reads (for deltas): its place and its
// text without counters.
func (r Rule) Key() string {
	return r.Backend + "|" + r.Table + "|" + r.Chain + "|" + nftCounter.ReplaceAllString(r.Spec, "counter")
}
