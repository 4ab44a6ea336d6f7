package setup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/lbdoctor/lbdoctor/internal/input"
)

// ParseError names the place of bad input: file:line: message, one line,
// with the user's values cut (input.Quote).
type ParseError struct {
	File string
	Line int
	Msg  string
}

func (e *ParseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return e.File + ": " + e.Msg
}

// place is where a service or real was written: its line, and the lines
// of its fields, so an error of Validate points at the line that made it.
type place struct {
	line   int
	fields map[string]int
}

func (p *place) at(field string) int {
	if l, ok := p.fields[field]; ok {
		return l
	}
	return p.line
}

func (p *place) set(field string, line int) {
	if p.fields == nil {
		p.fields = map[string]int{}
	}
	p.fields[field] = line
}

// places are the places of a spec's services and reals, by index.
type places struct {
	top      place
	services []place
	reals    [][]place
}

func (ps *places) addService(line int) *place {
	ps.services = append(ps.services, place{line: line})
	ps.reals = append(ps.reals, nil)
	return &ps.services[len(ps.services)-1]
}

func (ps *places) addReal(line int) *place {
	i := len(ps.reals) - 1
	ps.reals[i] = append(ps.reals[i], place{line: line})
	return &ps.reals[i][len(ps.reals[i])-1]
}

// validate runs spec.Validate (or the expectation's rules) and turns its
// error into file:line.
func (ps *places) validate(file string, spec Spec, expect bool) error {
	err := spec.validate(expect)
	var se *SpecError
	if !errors.As(err, &se) {
		if err != nil {
			return &ParseError{File: file, Msg: err.Error()}
		}
		return nil
	}
	line := 0
	switch {
	case se.Service < 0:
		line = ps.top.at(se.Field)
	case se.Real < 0 && se.Service < len(ps.services):
		line = ps.services[se.Service].at(se.Field)
	case se.Service < len(ps.reals) && se.Real < len(ps.reals[se.Service]):
		line = ps.reals[se.Service][se.Real].at(se.Field)
	}
	return &ParseError{File: file, Line: line, Msg: se.Msg}
}

var (
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$`)
	portNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]*$`)
)

// nameErr says why host:port is not an address when it holds a name: a
// hostname, or a service name such as http. "" when it holds none.
func nameErr(host, port string) string {
	if _, err := netip.ParseAddr(host); err != nil && hostnameRE.MatchString(host) && strings.ContainsAny(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		return "hostnames are not supported (lbdoctor resolves no names): give an IPv4 address"
	}
	if portNameRE.MatchString(port) {
		return "service names are not supported: give the port number"
	}
	return ""
}

// parseAddrPort reads what (vip, real, …) = s as IPv4 ADDR:PORT; the second
// result says why not, in one line, and whether a name was given instead.
func parseAddrPort(what, s string) (netip.AddrPort, string, bool) {
	ap, err := netip.ParseAddrPort(s)
	if err == nil {
		return ap, "", false
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if why := nameErr(s[:i], s[i+1:]); why != "" {
			return ap, fmt.Sprintf("%s %s: %s", what, input.Quote(s), why), true
		}
	}
	return ap, fmt.Sprintf("%s %s: want IPv4 ADDR:PORT, e.g. 10.1.0.6:8085", what, input.Quote(s)), false
}

// parseHostPort is parseAddrPort for an address and port given apart
// (keepalived's "virtual_server 10.1.0.6 80").
func parseHostPort(what, host, port string) (netip.AddrPort, string) {
	addr, aerr := netip.ParseAddr(host)
	p, perr := strconv.ParseUint(port, 10, 16)
	if aerr == nil && perr == nil {
		return netip.AddrPortFrom(addr, uint16(p)), ""
	}
	given := input.Cut(host) + " " + input.Cut(port)
	if why := nameErr(host, port); why != "" {
		return netip.AddrPort{}, fmt.Sprintf("%s %s: %s", what, given, why)
	}
	return netip.AddrPort{}, fmt.Sprintf("%s %s: want an IPv4 ADDR and a PORT, e.g. 10.1.0.6 8085", what, given)
}

// parseWeight reads an IPVS weight; the second result says why not.
func parseWeight(s string) (int, string) {
	w, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, "weight: want a whole number 0-65535, got " + input.Quote(s)
	}
	return int(w), ""
}

// lineScanner reads a file line by line; a line longer than input.MaxSize
// (only when the reader was not input.Read's) ends the scan with an error.
func lineScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), input.MaxSize+1)
	return sc
}

func scanErr(file string, line int, err error) error {
	if errors.Is(err, bufio.ErrTooLong) {
		return &ParseError{file, line + 1, "line is longer than the 1 MiB lbdoctor reads"}
	}
	return &ParseError{File: file, Msg: "cannot read: " + err.Error()}
}

// ParseYAML reads a spec of several services:
//
//	snat_backend: auto          # auto, iptables, nft
//	services:
//	  - vip: 10.1.0.6:8085
//	    proto: tcp              # default tcp
//	    scheduler: rr           # default rr
//	    snat: auto              # auto, always, never
//	    reals:
//	      - addr: 10.1.0.50:8085
//	        weight: 1
//
// It walks yaml.v3's nodes rather than decoding into structs, so that
// every error carries the line it is about and speaks of the file's keys.
func ParseYAML(file string, data []byte) (Spec, error) {
	spec, _, err := parseYAML(file, data)
	return spec, err
}

// parseYAML is ParseYAML, with the lines of the services and reals.
func parseYAML(file string, data []byte) (Spec, places, error) {
	noServices := &ParseError{File: file, Msg: "has no services: want services: with a vip and its reals (see README)"}
	if line, why := input.BinaryLine(data); why != "" {
		return Spec{}, places{}, &ParseError{file, line, why}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return Spec{}, places{}, noServices
	} else if err != nil {
		return Spec{}, places{}, yamlSyntaxErr(file, data, err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return Spec{}, places{}, &ParseError{file, next.Line, "a second YAML document (---): lbdoctor reads one; put all services under one services:"}
	} else if !errors.Is(err, io.EOF) {
		return Spec{}, places{}, yamlSyntaxErr(file, data, err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Tag == "!!null" {
		return Spec{}, places{}, noServices
	}
	y := &yamlWalk{file: file}
	spec, err := y.spec(doc.Content[0])
	if err != nil {
		return Spec{}, places{}, err
	}
	if len(spec.Services) == 0 {
		noServices.Line = y.ps.top.at("services")
		return Spec{}, places{}, noServices
	}
	if err := y.ps.validate(file, spec, false); err != nil {
		return Spec{}, places{}, err
	}
	return spec, y.ps, nil
}

type yamlWalk struct {
	file string
	ps   places
}

func (y *yamlWalk) errf(n *yaml.Node, format string, a ...any) error {
	return &ParseError{y.file, n.Line, fmt.Sprintf(format, a...)}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping (key: value)"
	case yaml.AliasNode:
		return "an alias"
	}
	return "a value"
}

// mapping calls each for every key of n, which must be a mapping of known
// keys, each given once.
func (y *yamlWalk) mapping(n *yaml.Node, what string, known []string, each func(key string, v *yaml.Node) error) error {
	if n.Kind == yaml.AliasNode {
		return y.errf(n, "%s: aliases (*name) are not supported: write it out", what)
	}
	if n.Kind != yaml.MappingNode {
		return y.errf(n, "%s: want a mapping (key: value), got %s", what, kindName(n))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return y.errf(k, "%s: a key must be a plain word, got %s", what, kindName(k))
		}
		if !slices.Contains(known, k.Value) {
			more := ""
			if n := unknownKeys(n.Content[i+2:], known); n > 0 {
				more = fmt.Sprintf(", and %d more", n)
			}
			return y.errf(k, "unknown key %s in %s%s (known: %s)", input.Quote(k.Value), what, more, strings.Join(known, ", "))
		}
		if first, dup := seen[k.Value]; dup {
			return y.errf(k, "%s is given twice in %s (first on line %d)", k.Value, what, first)
		}
		seen[k.Value] = k.Line
		if v.Kind == yaml.AliasNode {
			return y.errf(v, "%s: aliases (*name) are not supported: write the value out", k.Value)
		}
		if err := each(k.Value, v); err != nil {
			return err
		}
	}
	return nil
}

// unknownKeys counts the keys of a mapping's rest (key, value, …) that are
// not known, so one line can say how many more there are.
func unknownKeys(rest []*yaml.Node, known []string) int {
	n := 0
	for i := 0; i < len(rest); i += 2 {
		if !slices.Contains(known, rest[i].Value) {
			n++
		}
	}
	return n
}

// scalar is the text of a value; "" for an empty (null) one.
func (y *yamlWalk) scalar(key string, v *yaml.Node) (string, error) {
	if v.Kind != yaml.ScalarNode {
		return "", y.errf(v, "%s: want a value, got %s", key, kindName(v))
	}
	if v.Tag == "!!null" {
		return "", nil
	}
	return v.Value, nil
}

// oneOf is a value that must be one of want, in any case (or empty, for
// the default); it is returned in lower case.
func (y *yamlWalk) oneOf(key string, v *yaml.Node, want []string) (string, error) {
	s, err := y.scalar(key, v)
	if err != nil || s == "" || slices.Contains(want, strings.ToLower(s)) {
		return strings.ToLower(s), err // names are read in any case, as on the command line
	}
	return "", y.errf(v, "%s: want one of %s, got %s", key, strings.Join(want, ", "), input.Quote(s))
}

func (y *yamlWalk) list(key string, v *yaml.Node) ([]*yaml.Node, error) {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return nil, nil
	}
	if v.Kind != yaml.SequenceNode {
		return nil, y.errf(v, "%s: want a list (- …), got %s", key, kindName(v))
	}
	for _, it := range v.Content {
		if it.Kind == yaml.AliasNode {
			return nil, y.errf(it, "%s: aliases (*name) are not supported: write it out", key)
		}
	}
	return v.Content, nil
}

func (y *yamlWalk) spec(root *yaml.Node) (Spec, error) {
	spec := Spec{SNATBackend: BackendAuto}
	y.ps.top.line = root.Line
	err := y.mapping(root, "the file", []string{"snat_backend", "services"}, func(key string, v *yaml.Node) error {
		y.ps.top.set(key, v.Line)
		switch key {
		case "snat_backend":
			b, err := y.oneOf(key, v, []string{BackendAuto, BackendIptables, BackendNft})
			spec.SNATBackend = orDefault(b, BackendAuto)
			return err
		default: // services
			items, err := y.list(key, v)
			for _, it := range items {
				svc, err := y.service(it)
				if err != nil {
					return err
				}
				spec.Services = append(spec.Services, svc)
			}
			return err
		}
	})
	return spec, err
}

func (y *yamlWalk) service(n *yaml.Node) (Service, error) {
	svc := Service{Proto: "tcp", Scheduler: "rr", SNAT: SNATAuto}
	p := y.ps.addService(n.Line)
	hasVIP := false
	err := y.mapping(n, "a service", []string{"vip", "proto", "scheduler", "snat", "reals"}, func(key string, v *yaml.Node) error {
		p.set(key, v.Line)
		var s string
		var err error
		switch key {
		case "vip":
			if s, err = y.scalar(key, v); err != nil {
				return err
			}
			var why string
			if svc.VIP, why, _ = parseAddrPort("vip", s); why != "" {
				return y.errf(v, "%s", why)
			}
			hasVIP = true
		case "proto":
			s, err = y.oneOf(key, v, []string{"tcp", "udp"})
			svc.Proto = orDefault(s, svc.Proto)
		case "scheduler":
			s, err = y.oneOf(key, v, Schedulers)
			svc.Scheduler = orDefault(s, svc.Scheduler)
		case "snat":
			s, err = y.oneOf(key, v, []string{SNATAuto, SNATAlways, SNATNever})
			svc.SNAT = orDefault(s, svc.SNAT)
		default: // reals
			items, lerr := y.list(key, v)
			for _, it := range items {
				r, err := y.real(it)
				if err != nil {
					return err
				}
				svc.Reals = append(svc.Reals, r)
			}
			err = lerr
		}
		return err
	})
	if err == nil && !hasVIP {
		err = y.errf(n, "a service without vip: give vip: ADDR:PORT")
	}
	return svc, err
}

func (y *yamlWalk) real(n *yaml.Node) (Real, error) {
	r := Real{Weight: 1}
	p := y.ps.addReal(n.Line)
	hasAddr := false
	err := y.mapping(n, "a real", []string{"addr", "weight"}, func(key string, v *yaml.Node) error {
		p.set(key, v.Line)
		s, err := y.scalar(key, v)
		if err != nil {
			return err
		}
		var why string
		switch key {
		case "addr":
			r.Addr, why, _ = parseAddrPort("addr", s)
			hasAddr = true
		default: // weight
			if s != "" {
				r.Weight, why = parseWeight(s)
			}
		}
		if why != "" {
			return y.errf(v, "%s", why)
		}
		return nil
	})
	if err == nil && !hasAddr {
		err = y.errf(n, "a real without addr: give addr: ADDR:PORT")
	}
	return r, err
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// yamlSyntaxErr turns a yaml.v3 syntax error into file:line: message.
// yaml.v3 names the line where the enclosing block began (line 1 for a bad
// indent deep in services:), so the line is searched for: the first whose
// prefix of the file already fails with the same message.
func yamlSyntaxErr(file string, data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.Join(strings.Fields(msg), " ")
	line := 1 // some errors name no line (too deep, a stray ':'): searched from the top
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	fails := func(k int) bool {
		var n yaml.Node
		err := yaml.Unmarshal(bytes.Join(lines[:k], nil), &n)
		if err == nil {
			return false
		}
		got := strings.Join(strings.Fields(strings.TrimPrefix(err.Error(), "yaml: ")), " ")
		if sm := yamlLineRE.FindStringSubmatch(got); sm != nil {
			got = sm[2]
		}
		return got == msg
	}
	if lo, hi := line, len(lines); lo < hi {
		// Binary search between the reported line and the end: at most
		// ~20 parses of at most input.MaxSize each.
		for lo < hi {
			mid := (lo + hi) / 2
			if fails(mid) {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		line = lo
	}
	text := ""
	if line-1 < len(lines) && line > 0 {
		text = string(lines[line-1])
	}
	if strings.Contains(msg, "cannot start any token") && strings.Contains(text[:len(text)-len(strings.TrimLeft(text, " \t"))], "\t") {
		return &ParseError{file, line, "a tab indents this line: YAML indents with spaces only"}
	}
	return &ParseError{file, line, yamlWords(msg, text)}
}

// maxYAMLKey is the longest plain key yaml.v3 reads (YAML 1.2 allows
// implicit keys of at most 1024 characters).
const maxYAMLKey = 1024

// yamlWords says the YAML parser's complaints in the user's terms; text is
// the line it is about.
func yamlWords(msg, text string) string {
	key, _, hasColon := strings.Cut(strings.TrimLeft(text, " -"), ":")
	switch {
	case msg == "did not find expected key", msg == "did not find expected '-' indicator":
		return "this line's indentation does not fit the lines above (YAML: " + msg + ")"
	case strings.HasPrefix(msg, "exceeded max depth"):
		return "nested deeper than lbdoctor reads (10000 levels): a services file is 4 levels deep (see README)"
	case (msg == "mapping values are not allowed in this context" || msg == "could not find expected ':'") && hasColon && utf8.RuneCountInString(key) > maxYAMLKey:
		return fmt.Sprintf("a key of %d characters: YAML keys are at most %d", utf8.RuneCountInString(key), maxYAMLKey)
	case msg == "mapping values are not allowed in this context":
		return "a second ': ' on this line: quote a value that holds ': '"
	case msg == "could not find expected ':'":
		return "a key without ':' (want key: value)"
	}
	return "YAML: " + msg
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// ipvsadmNumeric is the hint for `ipvsadm -S` output without -n.
const ipvsadmNumeric = "; this looks like `ipvsadm -S` output: give `ipvsadm -Sn` (numeric) output"

// ParseIpvsadm reads `ipvsadm -Sn` output (-A and -a lines). Only NAT (-m)
// real servers can be built by lbdoctor setup; anything else is refused.
// The listing (`ipvsadm -Ln`) and names instead of numbers (`ipvsadm -S`
// without -n) are recognised and the right command is named.
func ParseIpvsadm(file string, r io.Reader) (Spec, error) {
	spec, _, err := parseIpvsadm(file, r, false)
	return spec, err
}

// notRead says an option or keyword is refused: setup does not build it,
// check --expect does not compare it.
func notRead(expect bool, what string) string {
	if expect {
		return what + " is not compared by lbdoctor check --expect"
	}
	return what + " is not supported by lbdoctor setup"
}

// Persistence timeouts when none is given (seconds): ipvsadm's -p, and
// keepalived's bare persistence_timeout (IPVS_SVC_PERSISTENT_TIMEOUT).
const (
	defaultPersistence    = 300
	keepalivedPersistence = 6 * 60
)

// parseIpvsadm is ParseIpvsadm; for an expectation (check --expect) it
// also takes every forwarding method (ipvsadm's default, -g, when none is
// given), persistence (-p) and firewall-mark services (-f).
func parseIpvsadm(file string, r io.Reader, expect bool) (Spec, places, error) {
	spec := Spec{SNATBackend: BackendAuto}
	var ps places
	index := map[string]int{}
	sc := lineScanner(r)
	line := 0
	for sc.Scan() {
		line++
		bad := func(format string, a ...any) error { return &ParseError{file, line, fmt.Sprintf(format, a...)} }
		if why := input.BinaryText(sc.Bytes()); why != "" {
			return Spec{}, ps, bad("%s", why)
		}
		text := sc.Text()
		f := strings.Fields(text)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch {
		case strings.HasPrefix(text, "IP Virtual Server version"), f[0] == "Prot", f[0] == "->",
			slices.Contains([]string{"TCP", "UDP", "SCTP", "FWM"}, f[0]):
			return Spec{}, ps, bad("this is `ipvsadm -L` (list) output: give `ipvsadm -Sn` (save, numeric) output")
		case !strings.HasPrefix(f[0], "-"):
			return Spec{}, ps, bad("want -A or -a lines of `ipvsadm -Sn` output, got %s", input.Quote(f[0]))
		}
		var proto, vip, sched, real, method string
		var mark, persist uint32
		weight := 1
		for i := 1; i < len(f); i++ {
			arg := func() string {
				if i+1 < len(f) {
					i++
					return f[i]
				}
				return ""
			}
			switch f[i] {
			case "-t", "--tcp-service":
				proto, vip = "tcp", arg()
			case "-u", "--udp-service":
				proto, vip = "udp", arg()
			case "-f", "--fwmark-service":
				if !expect {
					return Spec{}, ps, bad("firewall-mark services cannot be set up by lbdoctor")
				}
				m, err := strconv.ParseUint(arg(), 10, 32)
				if err != nil || m == 0 {
					return Spec{}, ps, bad("-f: want a firewall mark 1-4294967295, got %s", input.Quote(f[i]))
				}
				proto, vip, mark = "", "fwmark", uint32(m)
			case "--sctp-service":
				return Spec{}, ps, bad("SCTP services cannot be set up by lbdoctor (tcp and udp only)")
			case "-s", "--scheduler":
				sched = strings.ToLower(arg())
			case "-r", "--real-server":
				real = arg()
			case "-m", "--masquerading":
				method = "masq"
			case "-g", "--gatewaying":
				method = "route"
			case "-i", "--ipip":
				method = "tunnel"
			case "-w", "--weight":
				var why string
				if weight, why = parseWeight(arg()); why != "" {
					return Spec{}, ps, bad("%s", why)
				}
			case "-p", "--persistent":
				if !expect {
					return Spec{}, ps, bad("%s", notRead(expect, "option "+f[i]))
				}
				persist = defaultPersistence
				if i+1 < len(f) && !strings.HasPrefix(f[i+1], "-") {
					t, err := strconv.ParseUint(arg(), 10, 32)
					if err != nil || t == 0 {
						return Spec{}, ps, bad("-p: want a timeout in seconds, got %s", input.Quote(f[i]))
					}
					persist = uint32(t)
				}
			case "-M", "--netmask", "-b", "--sched-flags", "-x", "--u-threshold", "-y", "--l-threshold", "--pe":
				return Spec{}, ps, bad("%s", notRead(expect, "option "+f[i]))
			default:
				if strings.HasPrefix(f[i], "-") {
					return Spec{}, ps, bad("unknown option %s", input.Quote(f[i]))
				}
			}
		}
		if vip == "" {
			return Spec{}, ps, bad("%s without -t or -u ADDR:PORT", input.Quote(f[0]))
		}
		var ap netip.AddrPort
		key := fmt.Sprintf("fwmark %d", mark)
		if mark == 0 {
			var why string
			var named bool
			if ap, why, named = parseAddrPort("service", vip); why != "" {
				if named {
					why += ipvsadmNumeric
				}
				return Spec{}, ps, bad("%s", why)
			}
			key = proto + " " + ap.String()
		}
		switch f[0] {
		case "-A", "--add-service":
			if _, dup := index[key]; dup {
				return Spec{}, ps, bad("service %s is added twice", key)
			}
			index[key] = len(spec.Services)
			ps.addService(line)
			spec.Services = append(spec.Services, Service{Proto: proto, VIP: ap, Scheduler: orDefault(sched, "wlc"), SNAT: SNATAuto, FWMark: mark, Persistence: persist})
		case "-a", "--add-server":
			i, ok := index[key]
			if !ok {
				return Spec{}, ps, bad("real server for %s before its -A line", key)
			}
			if real == "" {
				return Spec{}, ps, bad("-a without -r ADDR:PORT")
			}
			ra, why, named := parseAddrPort("real server", real)
			if why != "" {
				if named {
					why += ipvsadmNumeric
				}
				return Spec{}, ps, bad("%s", why)
			}
			if method != "masq" && !expect {
				return Spec{}, ps, bad("real %s of %s uses %s forwarding: lbdoctor sets up NAT (-m) only", ra, key, orDefault(method, "route (the default)"))
			}
			spec.Services[i].Reals = append(spec.Services[i].Reals, Real{Addr: ra, Weight: weight, Method: orDefault(method, "route")})
			ps.reals[i] = append(ps.reals[i], place{line: line})
		default:
			return Spec{}, ps, bad("want -A or -a, got %s", input.Quote(f[0]))
		}
	}
	if err := sc.Err(); err != nil {
		return Spec{}, ps, scanErr(file, line, err)
	}
	if len(spec.Services) == 0 {
		return Spec{}, ps, &ParseError{File: file, Msg: "has no services: want the -A and -a lines of `ipvsadm -Sn` output"}
	}
	if err := ps.validate(file, spec, expect); err != nil {
		return Spec{}, ps, err
	}
	return spec, ps, nil
}

// keepalived.conf keywords lbdoctor knows, by the block they are written in
// (keepalived's manual, keepalived.conf(5)). keepalived ignores a keyword it
// does not know, with a log line nobody reads: lbdoctor refuses one instead,
// since a misspelled virtual_server, real_server or weight would otherwise
// build something other than the file says.
var (
	// keepalivedRead are the keywords whose values lbdoctor reads: a value
	// more on their line is a mistake it says, not one it skips.
	keepalivedRead = []string{"virtual_server", "real_server", "lb_algo", "lvs_sched", "lb_kind", "lvs_method", "protocol", "weight", "persistence_timeout"}
	// keepalivedTop are the top-level keywords; only virtual_server is read.
	keepalivedTop = []string{
		"global_defs", "vrrp_script", "vrrp_instance", "vrrp_sync_group", "virtual_server_group",
		"virtual_server", "static_ipaddress", "static_routes", "static_rules", "linkbeat_interfaces",
		"track_file", "vrrp_track_file", "track_process", "vrrp_track_process", "garp_group",
		"net_namespace", "net_namespace_ipvs", "instance", "use_pid_dir", "linkbeat_use_polling",
		"bfd_instance", "include",
	}
	// keepalivedIgnored are keywords of virtual_server and real_server that
	// do not change what IPVS is programmed with (health checking, sorry
	// server, notifications, VRRP coupling): their values and blocks are
	// skipped.
	keepalivedIgnored = []string{
		"delay_loop", "retry", "delay_before_retry", "connect_timeout", "warmup", "smtp_alert",
		"TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "DNS_CHECK", "SMTP_CHECK", "BFD_CHECK",
		"UDP_CHECK", "PING_CHECK", "FILE_CHECK", "sorry_server", "sorry_server_inhibit",
		"sorry_server_lvs_method", "quorum", "quorum_up", "quorum_down", "hysteresis", "alpha",
		"omega", "inhibit_on_failure", "notify_up", "notify_down", "ha_suspend", "ip_family",
		"track_file", "virtualhost",
	}
	// keepalivedUnsupported change the IPVS service or real server in ways
	// lbdoctor setup does not build: refused, naming the keyword.
	keepalivedUnsupported = []string{
		"persistence_timeout", "persistence_granularity", "persistence_engine", "ops",
		"one_packet_scheduler", "hashed", "flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback",
		"mh-port", "mh-fallback", "uthreshold", "lthreshold", "tunnel_type",
	}
)

// ParseKeepalived reads the virtual_server blocks of a keepalived.conf.
// Only lb_kind NAT (exactly: keepalived once took a lowercase "nat" and
// programmed random methods) with plain real_server blocks can be set up.
// include is not followed, and says so. A keyword keepalived does not know
// at the top level or in a virtual_server or real_server block is refused;
// other blocks (global_defs, vrrp_instance, health checkers, …) are skipped.
func ParseKeepalived(file string, r io.Reader) (Spec, error) {
	spec, _, err := parseKeepalived(file, r, false)
	return spec, err
}

// keepalivedMethods are the lb_kind values keepalived takes, exactly: it
// compares them with strcmp, so "nat" is no NAT (keepalived once left the
// method unset for it and programmed whatever was in memory).
var keepalivedMethods = map[string]string{"NAT": "masq", "DR": "route", "TUN": "tunnel"}

// parseKeepalived is ParseKeepalived; for an expectation (check --expect)
// it also takes lb_kind DR and TUN (in the virtual_server or one
// real_server), persistence_timeout and fwmark virtual_servers.
func parseKeepalived(file string, r io.Reader, expect bool) (Spec, places, error) {
	spec := Spec{SNATBackend: BackendAuto}
	var ps places
	sc := lineScanner(r)
	line := 0
	// blocks holds the keyword that opened each enclosing block; "" for a
	// block not opened by one. last is the keyword of the current
	// statement, which a { (on its line or the next) opens.
	var blocks []string
	last := ""
	var cur *Service
	var curPlace place
	var curReals []place
	kind := ""
	var real *Real
	var realPlace place
	for sc.Scan() {
		line++
		bad := func(format string, a ...any) error { return &ParseError{file, line, fmt.Sprintf(format, a...)} }
		if why := input.BinaryText(sc.Bytes()); why != "" {
			return Spec{}, ps, bad("%s", why)
		}
		text := sc.Text()
		if i := strings.IndexAny(text, "#!"); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		start := true // the next word is a keyword: first on a line, or after { or }
		for len(f) > 0 {
			w := f[0]
			depth := len(blocks)
			in := ""
			if depth > 0 {
				in = blocks[depth-1]
			}
			switch {
			case w == "}":
				if depth == 0 {
					return Spec{}, ps, bad("unbalanced }")
				}
				blocks = blocks[:depth-1]
				switch {
				case in == "real_server" && real != nil:
					cur.Reals = append(cur.Reals, *real)
					curReals = append(curReals, realPlace)
					real = nil
				case in == "virtual_server" && cur != nil && depth == 1:
					switch {
					case expect && kind == "":
						return Spec{}, ps, &ParseError{file, curPlace.line, fmt.Sprintf("virtual_server %s has no lb_kind: write the one keepalived runs (NAT, DR or TUN)", keepalivedName(cur))}
					case expect:
						for i := range cur.Reals {
							cur.Reals[i].Method = orDefault(cur.Reals[i].Method, keepalivedMethods[kind])
						}
					case kind == "NAT":
					case kind == "":
						return Spec{}, ps, &ParseError{file, curPlace.line, fmt.Sprintf("virtual_server %s has no lb_kind: lbdoctor sets up NAT only (write lb_kind NAT)", cur.VIP)}
					default:
						return Spec{}, ps, &ParseError{file, curPlace.at("lb_kind"), fmt.Sprintf("virtual_server %s: lb_kind %s: lbdoctor sets up NAT only (write lb_kind NAT)", cur.VIP, input.Quote(kind))}
					}
					spec.Services = append(spec.Services, *cur)
					ps.services = append(ps.services, curPlace)
					ps.reals = append(ps.reals, curReals)
					cur, kind, curReals = nil, "", nil
				}
				f, start, last = f[1:], true, ""
				continue
			case w == "{":
				blocks = append(blocks, last)
				f, start, last = f[1:], true, ""
				continue
			case !start:
				// A value of the current keyword (one lbdoctor does not
				// read, or the rest of one it does).
				f = f[1:]
				continue
			case w == "include":
				return Spec{}, ps, bad("include is not followed: lbdoctor reads this one file; give it the file with the virtual_server blocks")
			}
			start, last = false, w
			read := slices.Contains(keepalivedRead, w) // lbdoctor takes its values: no more may follow
			checked := depth == 0 || depth == 1 && in == "virtual_server" && cur != nil || depth == 2 && in == "real_server" && real != nil
			if !checked {
				f = f[1:] // inside a block lbdoctor does not read
				continue
			}
			switch {
			case depth == 0 && w == "virtual_server" && (len(f) < 3 || f[1] != "fwmark" || !expect):
				if len(f) < 3 {
					return Spec{}, ps, bad("virtual_server needs ADDR PORT")
				}
				switch {
				case f[1] == "group" && expect:
					return Spec{}, ps, bad("virtual_server group is not compared by lbdoctor check --expect: write its virtual_servers out")
				case f[1] == "group" || f[1] == "fwmark":
					return Spec{}, ps, bad("virtual_server %s cannot be set up by lbdoctor", f[1])
				}
				ap, why := parseHostPort("virtual_server", f[1], f[2])
				if why != "" {
					return Spec{}, ps, bad("%s", why)
				}
				cur, curPlace, curReals = &Service{Proto: "tcp", VIP: ap, Scheduler: "wlc", SNAT: SNATAuto}, place{line: line}, nil
				f = f[3:]
			case depth == 0 && w == "virtual_server" && f[1] == "fwmark" && expect:
				m, err := strconv.ParseUint(f[2], 10, 32)
				if err != nil || m == 0 {
					return Spec{}, ps, bad("virtual_server fwmark %s: want a firewall mark 1-4294967295", input.Quote(f[2]))
				}
				cur, curPlace, curReals = &Service{Scheduler: "wlc", SNAT: SNATAuto, FWMark: uint32(m)}, place{line: line}, nil
				f = f[3:]
			case depth == 0 && strings.HasPrefix(w, "$"), depth == 0 && strings.HasPrefix(w, "@"):
				return Spec{}, ps, bad("%s: keepalived's parameters ($NAME) and conditional lines (@ID) are not supported: write the values out", input.Quote(w))
			case depth == 0:
				if !slices.Contains(keepalivedTop, w) {
					return Spec{}, ps, bad("unknown keyword %s at the top level (keepalived would ignore it too: check the spelling)", input.Quote(w))
				}
				f = f[1:]
			case depth == 1 && w == "real_server":
				if len(f) < 3 {
					return Spec{}, ps, bad("real_server needs ADDR PORT")
				}
				ap, why := parseHostPort("real_server", f[1], f[2])
				if why != "" {
					return Spec{}, ps, bad("%s", why)
				}
				real, realPlace = &Real{Addr: ap, Weight: 1}, place{line: line}
				f = f[3:]
			case depth == 1 && (w == "lb_algo" || w == "lvs_sched"):
				if len(f) < 2 {
					return Spec{}, ps, bad("%s needs a scheduler name", w)
				}
				cur.Scheduler, f = strings.ToLower(f[1]), f[2:]
				curPlace.set("scheduler", line)
			case depth == 1 && (w == "lb_kind" || w == "lvs_method"):
				if len(f) < 2 {
					return Spec{}, ps, bad("%s needs NAT, DR or TUN", w)
				}
				if _, ok := keepalivedMethods[f[1]]; expect && !ok {
					return Spec{}, ps, bad("%s %s: keepalived takes NAT, DR or TUN, in capitals only", w, input.Quote(f[1]))
				}
				kind, f = f[1], f[2:]
				curPlace.set("lb_kind", line)
			case depth == 1 && w == "protocol":
				if len(f) < 2 {
					return Spec{}, ps, bad("protocol needs TCP or UDP")
				}
				switch {
				case cur.FWMark != 0 && (f[1] == "TCP" || f[1] == "UDP"):
					// The mark selects the packets, whatever their protocol.
				case f[1] == "TCP":
					cur.Proto = "tcp"
				case f[1] == "UDP":
					cur.Proto = "udp"
				default:
					// keepalived compares exactly: "udp" is ignored
					// there and the service is built as TCP.
					return Spec{}, ps, bad("protocol %s: want TCP or UDP (keepalived reads them in capitals only)", input.Quote(f[1]))
				}
				f = f[2:]
			case depth == 2 && w == "weight":
				if len(f) < 2 {
					return Spec{}, ps, bad("weight needs a number")
				}
				n, why := parseWeight(f[1])
				if why != "" {
					return Spec{}, ps, bad("%s", why)
				}
				real.Weight, f = n, f[2:]
				realPlace.set("weight", line)
			case depth == 2 && (w == "lvs_method" || w == "lb_kind") && expect:
				m, ok := "", false
				if len(f) >= 2 {
					m, ok = keepalivedMethods[f[1]]
				}
				if !ok {
					return Spec{}, ps, bad("real_server %s: %s: keepalived takes NAT, DR or TUN, in capitals only", real.Addr, w)
				}
				real.Method, f = m, f[2:]
			case depth == 1 && w == "persistence_timeout" && expect:
				if len(f) < 2 || f[1] == "}" {
					// keepalived's IPVS_SVC_PERSISTENT_TIMEOUT, 6 minutes.
					cur.Persistence, f = keepalivedPersistence, f[1:]
					break
				}
				t, err := strconv.ParseUint(f[1], 10, 32)
				if err != nil {
					return Spec{}, ps, bad("persistence_timeout %s: want a timeout in seconds", input.Quote(f[1]))
				}
				cur.Persistence, f = uint32(t), f[2:]
			case depth == 2 && (w == "lvs_method" || w == "lb_kind"):
				if len(f) < 2 || f[1] != "NAT" {
					return Spec{}, ps, bad("real_server %s: %s: lbdoctor sets up NAT only (write lb_kind NAT, or leave it out)", real.Addr, w)
				}
				f = f[2:]
			case slices.Contains(keepalivedUnsupported, w):
				return Spec{}, ps, bad("%s", notRead(expect, w))
			case slices.Contains(keepalivedIgnored, w):
				// Does not change what IPVS is programmed with: its
				// values and block are skipped.
				f = f[1:]
			default:
				where := "virtual_server"
				if depth == 2 {
					where = "real_server"
				}
				return Spec{}, ps, bad("unknown keyword %s in %s (keepalived would ignore it too: check the spelling)", input.Quote(w), where)
			}
			if read && checked && len(f) > 0 && f[0] != "{" && f[0] != "}" {
				return Spec{}, ps, bad("%s: %s is one value too many", w, input.Quote(f[0]))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Spec{}, ps, scanErr(file, line, err)
	}
	if len(blocks) != 0 {
		return Spec{}, ps, &ParseError{File: file, Line: line, Msg: "file ends inside a block"}
	}
	if len(spec.Services) == 0 {
		msg := "has no virtual_server block: lbdoctor builds the lb_kind NAT virtual_servers of a keepalived.conf"
		if expect {
			msg = "has no virtual_server block: nothing to compare IPVS with"
		}
		return Spec{}, ps, &ParseError{File: file, Msg: msg}
	}
	if err := ps.validate(file, spec, expect); err != nil {
		return Spec{}, ps, err
	}
	return spec, ps, nil
}

// keepalivedName names a virtual_server as the file writes it.
func keepalivedName(s *Service) string {
	if s.FWMark != 0 {
		return fmt.Sprintf("fwmark %d", s.FWMark)
	}
	return s.VIP.String()
}
