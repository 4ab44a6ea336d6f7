package rules

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Nft is the backend name of native nftables rules.
const Nft = "nft"

// readNft reads native nftables rules through `nft -a list ruleset`, the
// view an operator has. (google/nftables v0.3.0 cannot decode a rule with a
// `ct original …` match — the very rule of a one-arm SNAT — so it is not used
// here.) Tables that iptables-nft manages are left to iptables-nft-save.
func readNft(ns netns.Target) ([]Rule, []Chain, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, nil, fmt.Errorf("nft not installed")
	}
	var out []byte
	err := ns.Do(func() error {
		var stderr bytes.Buffer
		cmd := exec.Command("nft", "-a", "list", "ruleset")
		cmd.Stderr = &stderr
		var err error
		if out, err = cmd.Output(); err != nil {
			return fmt.Errorf("nft list ruleset: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return ParseNftRuleset(out)
}

var (
	nftCounter = regexp.MustCompile(`\bcounter packets (\d+) bytes (\d+)`)
	nftHandle  = regexp.MustCompile(`\s*# handle (\d+)$`)
	nftPrio    = regexp.MustCompile(`\bpriority ([^;]+);`)
	nftPolicy  = regexp.MustCompile(`\bpolicy (\w+);`)
	nftCtOrig  = regexp.MustCompile(`\bct original (?:(?:ip|ip6) )?daddr (\S+)`)
	nftHook    = regexp.MustCompile(`\bhook (\w+)`)
	nftJump    = regexp.MustCompile(`\b(?:jump|goto) (\S+)`)
)

// ParseNftList parses `nft -a list ruleset` into rules, skipping sets, maps
// and other objects, and tables that iptables-nft manages.
func ParseNftList(data []byte) ([]Rule, error) {
	rules, _, err := ParseNftRuleset(data)
	return rules, err
}

// ParseNftRuleset is ParseNftList that also returns the base chains, with
// their hook, priority and policy (nft shows no policy counter).
func ParseNftRuleset(data []byte) ([]Rule, []Chain, error) {
	var out []Rule
	var chains []Chain
	var table, chain, hook string
	managed := false // the table carries iptables-nft's "do not touch" warning
	skipDepth := 0   // >0 while inside a set, map or other non-chain block
	depth := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "# Warning: table ") && strings.Contains(line, "iptables-nft"):
			managed = true
			continue
		case strings.HasPrefix(line, "#"):
			continue
		}
		opens := strings.HasSuffix(nftHandle.ReplaceAllString(line, ""), "{")
		switch {
		case line == "}":
			if depth == 0 {
				return nil, nil, fmt.Errorf("nft line %d: unbalanced }", lineNo)
			}
			depth--
			if skipDepth > 0 && depth < skipDepth {
				skipDepth = 0
			}
			if depth == 1 {
				chain, hook = "", ""
			}
			if depth == 0 {
				table, managed = "", false
			}
		case skipDepth > 0:
			if opens {
				depth++
			}
		case depth == 0 && strings.HasPrefix(line, "table ") && opens:
			f := strings.Fields(line)
			if len(f) < 4 {
				return nil, nil, fmt.Errorf("nft line %d: bad table line %q", lineNo, line)
			}
			table = f[1] + " " + f[2]
			depth++
		case depth == 1 && strings.HasPrefix(line, "chain ") && opens:
			f := strings.Fields(line)
			chain = f[1]
			depth++
		case depth == 1 && opens:
			depth++
			skipDepth = depth // a set, map, flowtable, counter or quota object
		case depth == 2 && chain != "" && strings.HasPrefix(line, "type "):
			if m := nftHook.FindStringSubmatch(line); m != nil {
				hook = m[1]
				if !managed {
					c := Chain{Backend: Nft, Family: strings.Fields(table)[0], Table: table, Chain: chain, Hook: hook, Policy: "ACCEPT"}
					if m := nftPrio.FindStringSubmatch(line); m != nil {
						c.Priority = strings.TrimSpace(m[1])
					}
					if m := nftPolicy.FindStringSubmatch(line); m != nil {
						c.Policy = strings.ToUpper(m[1])
					}
					chains = append(chains, c)
				}
			}
		case depth == 2 && chain != "":
			if opens {
				depth++ // a multi-line anonymous set in a rule
				skipDepth = depth
			}
			if managed || strings.Contains(line, "xt match ") || strings.Contains(line, "xt target ") {
				continue
			}
			r := nftRule(table, chain, hook, nftHandle.ReplaceAllString(line, ""))
			if m := nftHandle.FindStringSubmatch(line); m != nil {
				r.Handle, _ = strconv.ParseUint(m[1], 10, 64)
			}
			out = append(out, r)
		case depth == 1:
			// flags, comments of a table
		default:
			return nil, nil, fmt.Errorf("nft line %d: unexpected %q", lineNo, line)
		}
	}
	if depth != 0 {
		return nil, nil, fmt.Errorf("nft ruleset ends inside a block")
	}
	return out, chains, sc.Err()
}

func nftRule(table, chain, hook, spec string) Rule {
	family, _, _ := strings.Cut(table, " ")
	r := Rule{Backend: Nft, Family: family, Table: table, Chain: chain, Hook: hook, Spec: spec}
	if m := nftCounter.FindStringSubmatch(spec); m != nil {
		r.HasCounter = true
		r.Packets, _ = strconv.ParseUint(m[1], 10, 64)
		r.Bytes, _ = strconv.ParseUint(m[2], 10, 64)
	}
	if m := nftCtOrig.FindStringSubmatch(spec); m != nil {
		r.CtOrigDst = m[1]
	}
	words := " " + spec + " "
	switch {
	case strings.Contains(words, " masquerade"):
		r.Target = "MASQUERADE"
	case strings.Contains(words, " snat "):
		r.Target = "SNAT"
	case strings.Contains(words, " dnat "):
		r.Target = "DNAT"
	case strings.HasSuffix(spec, " drop") || spec == "drop":
		r.Target = "DROP"
	case strings.Contains(words, " reject "):
		r.Target = "REJECT"
	case strings.HasSuffix(spec, " accept") || spec == "accept":
		r.Target = "ACCEPT"
	case strings.HasSuffix(spec, " notrack") || spec == "notrack":
		r.Target = "NOTRACK"
	default:
		if m := nftJump.FindStringSubmatch(spec); m != nil {
			r.Target = m[1]
		}
	}
	return r
}
