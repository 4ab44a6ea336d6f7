// Package rules reads the packet-filter rules of a network namespace that can
// touch load-balanced traffic, with their hit counters, from the iptables
// backends (legacy and nft) and labels what matters to IPVS NAT: `-m ipvs`
// matches, SNAT/MASQUERADE, DNAT, and drops.
package rules

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
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
	// Omitted is the number of rules a capped copy left out (see
	// probes.Snapshot.Capped).
	Omitted int `json:"omitted,omitempty"`
	// Chains are the base chains (those a hook runs) with their policies
	// and, where the backend keeps one, the policy's counter.
	Chains []Chain `json:"chains,omitempty"`
}

// Chain is a base chain: a netfilter hook runs it, and its policy decides
// what no rule did.
type Chain struct {
	Backend  string `json:"backend"`
	Family   string `json:"family"` // ip (iptables), or the nft table's family: ip, ip6, inet, …
	Table    string `json:"table"`  // as in Rule.Table: "filter", or "ip f" for native nft
	Chain    string `json:"chain"`
	Hook     string `json:"hook"`               // prerouting, input, forward, output, postrouting
	Priority string `json:"priority,omitempty"` // native nft: as nft lists it
	Policy   string `json:"policy"`             // ACCEPT or DROP
	// Packets and Bytes count what the policy decided (iptables-save's
	// ":INPUT DROP [12:720]"). A native nft base chain has no policy
	// counter that nft shows: HasCounter false, and Packets stay 0.
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	HasCounter bool   `json:"has_counter"`
}

// Key identifies a chain across two reads.
func (c Chain) Key() string { return c.Backend + "|" + c.Family + "|" + c.Table + "|" + c.Chain }

// builtinHooks are the hooks of iptables' built-in chains.
var builtinHooks = map[string]string{"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward", "OUTPUT": "output", "POSTROUTING": "postrouting"}

// Backend says whether a rule source could be read.
type Backend struct {
	Name   string `json:"name"`
	Read   bool   `json:"read"`
	Rules  int    `json:"rules"`
	Reason string `json:"reason,omitempty"` // why it was not read
	Tool   string `json:"tool,omitempty"`   // what read it
	// IPv6Unread says why an iptables backend read for IPv4 could not be
	// read for IPv6 (ip6tables): a conclusion about an IPv6 service from
	// the absence of a rule needs it read too.
	IPv6Unread string `json:"ipv6_unread,omitempty"`
}

// Rule is one rule with its counters and what lbdoctor recognised in it.
type Rule struct {
	Backend string `json:"backend"`
	// Family is the address family the rule filters: ip (iptables), ip6
	// (ip6tables), or a native nft table's family (ip, ip6, inet, …).
	Family  string `json:"family,omitempty"`
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
	// Handle is a native nft rule's handle (`nft delete rule … handle N`).
	Handle uint64 `json:"handle,omitempty"`
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

// Covers reports whether the rule can see packets of a's family: an ip
// rule IPv4, an ip6 rule IPv6, an inet (or unlabelled) rule both.
func (r Rule) Covers(a netip.Addr) bool { return familyCovers(r.Family, a) }

// Covers reports whether the chain sees packets of a's family, as Rule.Covers.
func (c Chain) Covers(a netip.Addr) bool { return familyCovers(c.Family, a) }

func familyCovers(family string, a netip.Addr) bool {
	switch family {
	case "", "inet":
		return true
	case "ip":
		return a.Is4() || a.Is4In6()
	case "ip6":
		return a.Is6() && !a.Is4In6()
	}
	return false // arp, bridge, netdev: not the NAT path's L3 hooks
}

// In reports whether the rule is one of chain c's: same backend, family,
// table and chain (an iptables rule read without a family is IPv4's).
func (r Rule) In(c Chain) bool {
	fam := r.Family
	if fam == "" && r.Backend != Nft {
		fam = "ip"
	}
	return r.Backend == c.Backend && (fam == c.Family || c.Family == "") && r.Table == c.Table && r.Chain == c.Chain
}

// Command is the tool that writes rules of an iptables backend for family:
// iptables-nft, or ip6tables-nft for ip6 (legacy alike).
func Command(backend, family string) string {
	if family == "ip6" {
		return strings.Replace(backend, "iptables", "ip6tables", 1)
	}
	return backend
}

// TableName names the rule's table for people: "nat" for iptables, "ip6
// nat" for ip6tables, native nft tables with their family ("inet own").
func (r Rule) TableName() string {
	if r.Family == "ip6" && r.Backend != Nft {
		return "ip6 " + r.Table
	}
	return r.Table
}

// IsSourceNAT reports whether the rule rewrites the source.
func (r Rule) IsSourceNAT() bool { return r.Target == "MASQUERADE" || r.Target == "SNAT" }

// CoversVIP reports whether the rule source-NATs the IPVS connections of
// vip (any port when its port is 0): an `-m ipvs` match that selects it, or
// a conntrack original destination (--ctorigdst, nft `ct original`) that is it.
func (r Rule) CoversVIP(vip netip.AddrPort) bool {
	if !r.IsSourceNAT() || !r.Covers(vip.Addr()) { // never the other family's: an iptables rule never sees an IPv6 packet
		return false
	}
	return r.IPVS.MatchesVIP(vip.Addr(), vip.Port()) || (r.CtOrigDst != "" && r.CtOrigDst == vip.Addr().String())
}

func prefixContains(s string, a netip.Addr) bool {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Contains(a)
	}
	b, err := netip.ParseAddr(s)
	return err == nil && b == a
}

// Tool is one iptables tool on PATH (a save tool, or one that writes
// rules), classified by the xtables-*-multi binary it links to, else by
// asking it which backend it drives: `iptables-save` alone may be either, and minimal images
// (kube-proxy's) ship only that name or only an xtables-*-multi binary.
type Tool struct {
	Path    string   // as found on PATH
	Args    []string // before its own arguments: the applet name for an xtables-*-multi
	Backend string   // IptablesLegacy or IptablesNft
}

func (t Tool) String() string { return strings.Join(append([]string{t.Path}, t.Args...), " ") }

// toolName is a name an iptables tool goes by; an xtables-*-multi binary
// takes the applet as its first argument. Lists of them go in order of
// preference: the explicit names first.
type toolName struct {
	name string
	args []string
}

var (
	saveTools = []toolName{
		{"iptables-legacy-save", nil}, {"iptables-nft-save", nil}, {"iptables-save", nil},
		{"xtables-legacy-multi", []string{"iptables-save"}}, {"xtables-nft-multi", []string{"iptables-save"}},
	}
	// ruleTools write rules: what setup and --fix run.
	ruleTools = []toolName{
		{IptablesLegacy, nil}, {IptablesNft, nil}, {"iptables", nil},
		{"xtables-legacy-multi", []string{"iptables"}}, {"xtables-nft-multi", []string{"iptables"}},
	}
)

// SaveToolNames lists the names FindSaveTools looks for, for messages.
func SaveToolNames() string { return toolNames(saveTools) }

// RuleToolNames lists the names FindRuleTools looks for, for messages.
func RuleToolNames() string { return toolNames(ruleTools) }

func toolNames(tools []toolName) string {
	var names []string
	for _, t := range tools {
		names = append(names, t.name)
	}
	return strings.Join(names, ", ")
}

// FindSaveTools finds the iptables save tools on PATH and asks each which
// backend it is (`--version` prints "(legacy)" or "(nf_tables)"; a link to
// an xtables-*-multi binary is known by the binary's name); it
// returns the first of each backend, asking no further once it has both. The answer is kept for the process's
// PATH and the tools' files as found: a window reads the rules twice, and
// each `--version` is a process started (five of them: a second of a
// slow machine).
func FindSaveTools() map[string]Tool {
	key := toolsKey(saveTools)
	foundMu.Lock()
	defer foundMu.Unlock()
	if f, ok := found[key]; ok {
		return maps.Clone(f)
	}
	f := findTools(saveTools)
	found[key] = f
	return maps.Clone(f)
}

var (
	foundMu sync.Mutex
	found   = map[string]map[string]Tool{}
)

// toolsKey names what findTools would find for tools: PATH, and each
// tool's path with its file's identity (inode, size, change time), so a
// tool installed, removed or replaced is asked again.
func toolsKey(tools []toolName) string {
	var b strings.Builder
	b.WriteString(os.Getenv("PATH"))
	for _, t := range tools {
		path, err := exec.LookPath(t.name)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil {
			fmt.Fprintf(&b, "\x00%s %d %d %d.%d", path, st.Ino, st.Size, st.Ctim.Sec, st.Ctim.Nsec)
		}
	}
	return b.String()
}

// FindRuleTools finds the tools that add and delete iptables rules, by the
// backend each drives, as FindSaveTools does: a host whose only tool is
// `iptables` on nf_tables writes through it.
func FindRuleTools() map[string]Tool { return findTools(ruleTools) }

func findTools(tools []toolName) map[string]Tool {
	found := map[string]Tool{}
	for _, c := range tools {
		if len(found) == 2 {
			// The first of each backend is found: the names after them
			// can only be another of the same (a Debian host has all
			// five; three processes fewer, seconds of a slow machine).
			break
		}
		path, err := exec.LookPath(c.name)
		if err != nil {
			continue
		}
		be := multiBackend(path)
		if be == "" {
			out, err := exec.Command(path, append(slices.Clone(c.args), "--version")...).CombinedOutput()
			if err != nil {
				continue
			}
			be = BackendOfVersion(string(out))
		}
		if be == "" {
			continue
		}
		if _, ok := found[be]; !ok {
			found[be] = Tool{Path: path, Args: c.args, Backend: be}
		}
	}
	return found
}

// multiBackend is the backend of the tool at path when it is (a link to)
// an xtables-*-multi binary, which drives only the backend it is named for
// (Debian's iptables-*-save are such links): no process to start, where
// each `--version` costs a quarter second of a slow machine (the TCG
// guest) on every verb's first read. "" when the name does not say.
func multiBackend(path string) string {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ""
	}
	switch filepath.Base(real) {
	case "xtables-nft-multi":
		return IptablesNft
	case "xtables-legacy-multi":
		return IptablesLegacy
	}
	return ""
}

// BackendOfVersion reads the backend from an iptables tool's --version line.
func BackendOfVersion(v string) string {
	switch {
	case strings.Contains(v, "(nf_tables)"):
		return IptablesNft
	case strings.Contains(v, "(legacy)"), oldIptables.MatchString(v):
		return IptablesLegacy // before 1.8 there was no other backend, nor a marker
	}
	return ""
}

var oldIptables = regexp.MustCompile(`^ip6?tables(-save)? v1\.[0-7]\.`)

// legacyTablesFile lists the x_tables tables of the calling thread's
// namespace; absent when ip_tables is not loaded.
const legacyTablesFile = "/proc/thread-self/net/ip_tables_names"

// legacyTables6File is its IPv6 counterpart (ip6_tables).
const legacyTables6File = "/proc/thread-self/net/ip6_tables_names"

// readSave runs a save tool (`-c`, with counters) inside ns and parses its
// rules and base chains, labelled with the address family it dumps.
func readSave(ns netns.Target, backend string, tool Tool, family string) ([]Rule, []Chain, error) {
	var out []byte
	err := ns.Do(func() error {
		var stderr bytes.Buffer
		cmd := exec.Command(tool.Path, append(slices.Clone(tool.Args), "-c")...)
		cmd.Stderr = &stderr
		var err error
		out, err = cmd.Output()
		if err != nil {
			if backend == IptablesLegacy && !kernel.HasCapability(unix.CAP_NET_RAW) {
				// It says "Permission denied (you must be root)": the
				// capability it lacks is named instead.
				return fmt.Errorf("%s: reading iptables-legacy rules needs CAP_NET_RAW (iptables-legacy-save opens a raw socket): run as root: %w", tool, err)
			}
			return fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	rules, chains, err := ParseSaveChains(backend, out)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tool, err)
	}
	for i := range rules {
		rules[i].Family = family
	}
	for i := range chains {
		chains[i].Family = family
	}
	return rules, chains, nil
}

// IPv6 is the ip6tables-save of the same backend as t: the applet of the
// same xtables-*-multi binary (also behind an iptables-save link), else
// the ip6tables name of t on PATH, asked which backend it drives.
func (t Tool) IPv6() (Tool, error) {
	if len(t.Args) > 0 {
		return Tool{Path: t.Path, Args: []string{"ip6tables-save"}, Backend: t.Backend}, nil
	}
	if real, err := filepath.EvalSymlinks(t.Path); err == nil && strings.HasPrefix(filepath.Base(real), "xtables-") && strings.HasSuffix(real, "-multi") {
		return Tool{Path: real, Args: []string{"ip6tables-save"}, Backend: t.Backend}, nil
	}
	name := strings.Replace(filepath.Base(t.Path), "iptables", "ip6tables", 1)
	path, err := exec.LookPath(name)
	if err != nil {
		return Tool{}, fmt.Errorf("no %s on PATH beside %s", name, t.Path)
	}
	out, err := exec.Command(path, "--version").CombinedOutput()
	if be := BackendOfVersion(string(out)); err != nil || be != t.Backend {
		return Tool{}, fmt.Errorf("%s is not an ip6tables save tool of %s (%q)", path, t.Backend, strings.TrimSpace(string(out)))
	}
	return Tool{Path: path, Backend: t.Backend}, nil
}

// Read reads both iptables backends and native nftables inside ns, each
// once, through whichever tool on PATH drives it. A backend that could not
// be read is listed with the reason; Unread names them.
func Read(ns netns.Target) (Snapshot, error) {
	snap := Snapshot{Rules: []Rule{}}
	tools := FindSaveTools()
	for _, be := range []string{IptablesLegacy, IptablesNft} {
		b := Backend{Name: be}
		tool, ok := tools[be]
		if ok && be == IptablesLegacy && noLegacyTables(ns) {
			// The kernel says x_tables holds no table here, for either
			// family: nothing for the tool to show, and two processes
			// (iptables-legacy-save, ip6tables-legacy-save) fewer per read
			// on a host whose rules live in nf_tables.
			b.Read, b.Tool = true, "/proc/net/ip_tables_names, ip6_tables_names (no x_tables table)"
			snap.Backends = append(snap.Backends, b)
			continue
		}
		if !ok {
			b.Reason = "no " + be + " save tool on PATH (looked for " + SaveToolNames() + ")"
			if be == IptablesLegacy {
				// Without a tool, the kernel still says whether x_tables
				// holds any table here: none means no legacy rule.
				if tables, err := legacyTables(ns, legacyTablesFile); err == nil && len(tables) == 0 {
					b.Read, b.Reason, b.Tool = true, "", "/proc/net/ip_tables_names (no x_tables table)"
					if tables6, err := legacyTables(ns, legacyTables6File); err != nil || len(tables6) > 0 {
						b.IPv6Unread = fmt.Sprintf("no ip6tables save tool on PATH, and x_tables has IPv6 tables %s", strings.Join(tables6, ", "))
					}
				} else if err == nil {
					b.Reason += "; x_tables has tables " + strings.Join(tables, ", ")
				}
			}
			snap.Backends = append(snap.Backends, b)
			continue
		}
		b.Tool = tool.String()
		rules, chains, err := readSave(ns, be, tool, "ip")
		if err != nil {
			b.Reason = err.Error()
			snap.Backends = append(snap.Backends, b)
			continue
		}
		// IPv6 rules live in the same backend, behind ip6tables-save.
		if tool6, err := tool.IPv6(); err != nil {
			b.IPv6Unread = err.Error()
		} else if rules6, chains6, err := readSave(ns, be, tool6, "ip6"); err != nil {
			b.IPv6Unread = err.Error()
		} else {
			rules, chains = append(rules, rules6...), append(chains, chains6...)
		}
		b.Read, b.Rules = true, len(rules)
		snap.Backends = append(snap.Backends, b)
		snap.Rules = append(snap.Rules, rules...)
		snap.Chains = append(snap.Chains, chains...)
	}
	nb := Backend{Name: Nft, Tool: "nft"}
	if nft, chains, err := readNft(ns); err != nil {
		nb.Reason = err.Error()
	} else {
		// iptables-nft's tables are nf_tables tables too: a rule
		// iptables-nft-save showed is not shown again as a native one.
		owned := tablesOf(snap.Rules, snap.Chains)
		nft = slices.DeleteFunc(nft, func(r Rule) bool { return owned[r.Table] })
		chains = slices.DeleteFunc(chains, func(c Chain) bool { return owned[c.Table] })
		nb.Read, nb.Rules = true, len(nft)
		snap.Rules = append(snap.Rules, nft...)
		snap.Chains = append(snap.Chains, chains...)
	}
	snap.Backends = append(snap.Backends, nb)
	rulesIn := map[string]int{}
	for _, b := range snap.Backends {
		rulesIn[b.Name] = b.Rules
	}
	snap.Mixed = rulesIn[IptablesLegacy] > 0 && rulesIn[IptablesNft]+rulesIn[Nft] > 0
	return snap, nil
}

// tablesOf names, as native nft names them (family ip or ip6), the tables
// iptables-nft read: their rules and chains are not shown again as native.
func tablesOf(read []Rule, chains []Chain) map[string]bool {
	owned := map[string]bool{}
	for _, r := range read {
		if r.Backend == IptablesNft {
			owned[r.Family+" "+r.Table] = true
		}
	}
	for _, c := range chains {
		if c.Backend == IptablesNft {
			owned[c.Family+" "+c.Table] = true
		}
	}
	return owned
}

// legacyTables lists the x_tables tables of ns in file (IPv4's or
// IPv6's); none when ip_tables (ip6_tables) is not loaded.
func legacyTables(ns netns.Target, file string) ([]string, error) {
	var tables []string
	err := ns.Do(func() error {
		data, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		tables = strings.Fields(string(data))
		return err
	})
	return tables, err
}

// noLegacyTables reports whether the kernel proves that x_tables holds no
// table in ns, IPv4 or IPv6 (both lists read, both empty).
func noLegacyTables(ns netns.Target) bool {
	t4, err4 := legacyTables(ns, legacyTablesFile)
	t6, err6 := legacyTables(ns, legacyTables6File)
	return err4 == nil && err6 == nil && len(t4) == 0 && len(t6) == 0
}

// Unread names the backends that could not be read, with why.
func (s Snapshot) Unread() []Backend {
	var out []Backend
	for _, b := range s.Backends {
		if !b.Read {
			out = append(out, b)
		}
	}
	return out
}

// ParseSave parses `iptables-save -c` output.
func ParseSave(backend string, data []byte) ([]Rule, error) {
	rules, _, err := ParseSaveChains(backend, data)
	return rules, err
}

// ParseSaveChains parses `iptables-save -c` output into rules and the
// built-in chains with their policies and policy counters.
func ParseSaveChains(backend string, data []byte) ([]Rule, []Chain, error) {
	var rules []Rule
	var chains []Chain
	table := ""
	// Tables iptables-nft-save cannot show (a native nft table named as
	// one of its own, `table ip nat { chain pre { type nat hook
	// prerouting … } }`): it warns and prints the built-in chains empty,
	// which are not the table. Left out here, native nft reads them.
	var incompatible []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if m := incompatibleTable.FindStringSubmatch(line); m != nil {
			incompatible = append(incompatible, m[1])
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT":
			continue
		case line[0] == ':':
			c, ok, err := parseChainLine(backend, table, line)
			if err != nil {
				return nil, nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
			if ok {
				chains = append(chains, c)
			}
			continue
		case line[0] == '*':
			table = line[1:]
			continue
		}
		r := Rule{Backend: backend, Table: table}
		if line[0] == '[' {
			end := strings.IndexByte(line, ']')
			if end < 0 {
				return nil, nil, fmt.Errorf("line %d: unterminated counters", lineNo)
			}
			var err error
			if r.Packets, r.Bytes, err = parseCounters(line[:end+1]); err != nil {
				return nil, nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
			line = strings.TrimSpace(line[end+1:])
		}
		args, err := splitArgs(line)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if len(args) < 2 || args[0] != "-A" {
			return nil, nil, fmt.Errorf("line %d: not a rule: %q", lineNo, line)
		}
		r.Chain, r.Spec, r.HasCounter = args[1], line, true
		labelRule(&r, args[2:])
		rules = append(rules, r)
	}
	if len(incompatible) > 0 {
		rules = slices.DeleteFunc(rules, func(r Rule) bool { return slices.Contains(incompatible, r.Table) })
		chains = slices.DeleteFunc(chains, func(c Chain) bool { return slices.Contains(incompatible, c.Table) })
	}
	return rules, chains, sc.Err()
}

// incompatibleTable is iptables-nft-save's warning for a table it cannot
// show: "# Table `nat' contains incompatible base-chains, use 'nft' tool
// to list them." (iptables 1.8.9).
var incompatibleTable = regexp.MustCompile("^# Table `([^']+)' contains incompatible base-chains")

// parseCounters parses "[packets:bytes]".
func parseCounters(s string) (packets, bytes uint64, err error) {
	p, b, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), ":")
	var err1, err2 error
	packets, err1 = strconv.ParseUint(p, 10, 64)
	bytes, err2 = strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil || !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return 0, 0, fmt.Errorf("bad counters %q", s)
	}
	return packets, bytes, nil
}

// parseChainLine parses ":INPUT DROP [12:720]"; a user chain (":KUBE-X -
// [0:0]") has no policy and is no base chain: ok is false.
func parseChainLine(backend, table, line string) (c Chain, ok bool, err error) {
	f := strings.Fields(line[1:])
	if len(f) < 2 {
		return c, false, fmt.Errorf("bad chain line %q", line)
	}
	if f[1] == "-" {
		return c, false, nil
	}
	c = Chain{Backend: backend, Family: "ip", Table: table, Chain: f[0], Hook: builtinHooks[f[0]], Policy: strings.ToUpper(f[1])}
	if len(f) > 2 {
		if c.Packets, c.Bytes, err = parseCounters(f[2]); err != nil {
			return c, false, err
		}
		c.HasCounter = true
	}
	return c, true, nil
}

func labelRule(r *Rule, args []string) {
	negate := false
	walkArgs(args, func(a string, next func() string) bool {
		switch a {
		case "!":
			negate = true
			return true
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
				r.IPVS.VAddr = hostAddr(v)
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
			r.CtOrigDst = hostAddr(next())
		}
		negate = false
		return true
	})
}

// hostAddr writes a one-address prefix as iptables-save prints it
// (10.1.0.6/32, fd00::6/128) as the address alone.
func hostAddr(v string) string {
	if p, err := netip.ParsePrefix(v); err == nil && p.IsSingleIP() {
		return p.Addr().String()
	}
	return v
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
	return r.Backend + "|" + r.Family + "|" + r.Table + "|" + r.Chain + "|" + nftCounter.ReplaceAllString(r.Spec, "counter")
}

// Drops reports whether the rule's verdict drops or rejects what it matches.
func (r Rule) Drops() bool { return r.Target == "DROP" || r.Target == "REJECT" }

// Untracks reports whether the rule takes what it matches out of
// conntrack: iptables' `-j CT --notrack` (`-j NOTRACK`), nft's `notrack`.
// No NAT applies to an untracked packet, nor to the flow it opens.
func (r Rule) Untracks() bool {
	return r.Target == "NOTRACK" || (r.Target == "CT" && strings.Contains(" "+r.Spec+" ", " --notrack "))
}

// BeforeConntrack reports whether a rule of the prerouting or output hook
// runs before conntrack looks a packet up (priority -200): iptables' raw
// table does (-300); a native nft chain does by its priority, read from
// how nft lists it (`raw`, `-300`, `raw - 10`). known is false when the
// priority could not be read.
func (r Rule) BeforeConntrack(chains []Chain) (before, known bool) {
	if r.Backend != Nft {
		return r.Table == "raw", true
	}
	for _, c := range chains {
		if r.In(c) {
			p, ok := NftPriority(c.Priority)
			return ok && p < -200, ok
		}
	}
	return false, false
}

// nftPriorityNames are the standard priorities of the ip, ip6 and inet
// families, as nft lists them.
var nftPriorityNames = map[string]int{"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}

// NftPriority reads a base chain's priority as nft lists it: a number, a
// standard name, or a name plus or minus a number.
func NftPriority(s string) (int, bool) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, false
	}
	base, err := strconv.Atoi(f[0])
	if err != nil {
		var ok bool
		if base, ok = nftPriorityNames[f[0]]; !ok {
			return 0, false
		}
	}
	switch {
	case len(f) == 1:
		return base, true
	case len(f) == 3 && (f[1] == "+" || f[1] == "-"):
		n, err := strconv.Atoi(f[2])
		if err != nil {
			return 0, false
		}
		if f[1] == "-" {
			n = -n
		}
		return base + n, true
	}
	return 0, false
}

// HookOf is the netfilter hook a rule runs in: its nft base chain's hook,
// or an iptables built-in chain's; "" for a rule in a user chain (reached by
// a jump from somewhere lbdoctor does not follow).
func (r Rule) HookOf() string {
	if r.Hook != "" {
		return r.Hook
	}
	if r.Backend != Nft {
		return builtinHooks[r.Chain]
	}
	return ""
}

// Place names a rule's table and chain the way its backend's tool does:
// "iptables-legacy filter INPUT", "nft ip f in".
func (r Rule) Place() string { return r.Backend + " " + r.TableName() + " " + r.Chain }

// Place names a chain the way Rule.Place does.
func (c Chain) Place() string {
	if c.Family == "ip6" && c.Backend != Nft {
		return c.Backend + " ip6 " + c.Table + " " + c.Chain
	}
	return c.Backend + " " + c.Table + " " + c.Chain
}
