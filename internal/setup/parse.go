package setup

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ParseError names the place of bad input: file:line: message.
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

// yamlSpec is the file format of `setup -f`.
type yamlSpec struct {
	SNATBackend string        `yaml:"snat_backend"`
	Services    []yamlService `yaml:"services"`
}

type yamlService struct {
	VIP       string     `yaml:"vip"`
	Proto     string     `yaml:"proto"`
	Scheduler string     `yaml:"scheduler"`
	SNAT      string     `yaml:"snat"`
	Reals     []yamlReal `yaml:"reals"`
	line      int
}

type yamlReal struct {
	Addr   string `yaml:"addr"`
	Weight *int   `yaml:"weight"`
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
func ParseYAML(file string, data []byte) (Spec, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Spec{}, yamlErr(file, err)
	}
	var ys yamlSpec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&ys); err != nil {
		return Spec{}, yamlErr(file, err)
	}
	lines := serviceLines(&doc)
	spec := Spec{SNATBackend: orDefault(ys.SNATBackend, BackendAuto)}
	for i, s := range ys.Services {
		line := 0
		if i < len(lines) {
			line = lines[i]
		}
		vip, err := netip.ParseAddrPort(s.VIP)
		if err != nil {
			return Spec{}, &ParseError{file, line, fmt.Sprintf("vip %q: want ADDR:PORT", s.VIP)}
		}
		svc := Service{VIP: vip, Proto: orDefault(s.Proto, "tcp"), Scheduler: orDefault(s.Scheduler, "rr"), SNAT: orDefault(s.SNAT, SNATAuto)}
		for _, r := range s.Reals {
			a, err := netip.ParseAddrPort(r.Addr)
			if err != nil {
				return Spec{}, &ParseError{file, line, fmt.Sprintf("service %s: real %q: want ADDR:PORT", s.VIP, r.Addr)}
			}
			w := 1
			if r.Weight != nil {
				w = *r.Weight
			}
			svc.Reals = append(svc.Reals, Real{Addr: a, Weight: w})
		}
		spec.Services = append(spec.Services, svc)
	}
	if err := spec.Validate(); err != nil {
		return Spec{}, &ParseError{File: file, Msg: err.Error()}
	}
	return spec, nil
}

func yamlErr(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	// "line 3: …" → file:3: …
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, tail, ok := strings.Cut(rest, ":"); ok {
			if line, err := strconv.Atoi(n); err == nil {
				return &ParseError{file, line, strings.TrimSpace(tail)}
			}
		}
	}
	if rest, ok := strings.CutPrefix(msg, "unmarshal errors:\n  line "); ok {
		if n, tail, ok := strings.Cut(rest, ":"); ok {
			if line, err := strconv.Atoi(n); err == nil {
				return &ParseError{file, line, strings.TrimSpace(tail)}
			}
		}
	}
	return &ParseError{File: file, Msg: msg}
}

// serviceLines finds the line of each item of services:.
func serviceLines(doc *yaml.Node) []int {
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "services" {
			var out []int
			for _, it := range m.Content[i+1].Content {
				out = append(out, it.Line)
			}
			return out
		}
	}
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// ParseIpvsadm reads `ipvsadm -Sn` output (-A and -a lines). Only NAT (-m)
// real servers can be built by lbdoctor setup; anything else is refused.
func ParseIpvsadm(file string, r io.Reader) (Spec, error) {
	spec := Spec{SNATBackend: BackendAuto}
	index := map[string]int{}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		bad := func(format string, a ...any) error { return &ParseError{file, line, fmt.Sprintf(format, a...)} }
		var proto, vip, sched, real, method string
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
				return Spec{}, bad("firewall-mark services cannot be set up by lbdoctor")
			case "-s", "--scheduler":
				sched = arg()
			case "-r", "--real-server":
				real = arg()
			case "-m", "--masquerading":
				method = "masq"
			case "-g", "--gatewaying":
				method = "route"
			case "-i", "--ipip":
				method = "tunnel"
			case "-w", "--weight":
				w, err := strconv.Atoi(arg())
				if err != nil {
					return Spec{}, bad("weight %q is not a number", f[i])
				}
				weight = w
			case "-p", "--persistent", "-M", "--netmask", "-b", "--sched-flags", "-x", "--u-threshold", "-y", "--l-threshold", "--pe":
				return Spec{}, bad("option %s is not supported by lbdoctor setup", f[i])
			default:
				if strings.HasPrefix(f[i], "-") {
					return Spec{}, bad("unknown option %s", f[i])
				}
			}
		}
		ap, err := netip.ParseAddrPort(vip)
		if err != nil {
			return Spec{}, bad("service %q: want ADDR:PORT", vip)
		}
		key := proto + " " + ap.String()
		switch f[0] {
		case "-A", "--add-service":
			if _, dup := index[key]; dup {
				return Spec{}, bad("service %s is added twice", key)
			}
			index[key] = len(spec.Services)
			spec.Services = append(spec.Services, Service{Proto: proto, VIP: ap, Scheduler: orDefault(sched, "wlc"), SNAT: SNATAuto})
		case "-a", "--add-server":
			i, ok := index[key]
			if !ok {
				return Spec{}, bad("real server for %s before its -A line", key)
			}
			if method != "masq" {
				return Spec{}, bad("real %s of %s uses %s forwarding: lbdoctor sets up NAT (-m) only", real, key, orDefault(method, "route (the default)"))
			}
			ra, err := netip.ParseAddrPort(real)
			if err != nil {
				return Spec{}, bad("real server %q: want ADDR:PORT", real)
			}
			spec.Services[i].Reals = append(spec.Services[i].Reals, Real{Addr: ra, Weight: weight})
		default:
			return Spec{}, bad("want -A or -a, got %s", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return Spec{}, err
	}
	if err := spec.Validate(); err != nil {
		return Spec{}, &ParseError{File: file, Msg: err.Error()}
	}
	return spec, nil
}

// ParseKeepalived reads the virtual_server blocks of a keepalived.conf.
// Only lb_kind NAT (exactly: keepalived once took a lowercase "nat" and
// programmed random methods) with plain real_server blocks can be set up.
func ParseKeepalived(file string, r io.Reader) (Spec, error) {
	spec := Spec{SNATBackend: BackendAuto}
	sc := bufio.NewScanner(r)
	line := 0
	depth := 0
	var cur *Service
	var curLine int
	kind := ""
	var real *Real
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexAny(text, "#!"); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		bad := func(format string, a ...any) error { return &ParseError{file, line, fmt.Sprintf(format, a...)} }
		for len(f) > 0 {
			w := f[0]
			switch {
			case w == "}":
				depth--
				switch {
				case real != nil && depth == 1:
					cur.Reals = append(cur.Reals, *real)
					real = nil
				case cur != nil && depth == 0:
					if kind != "NAT" {
						return Spec{}, &ParseError{file, curLine, fmt.Sprintf("virtual_server %s: lb_kind %q: lbdoctor sets up NAT only (write lb_kind NAT)", cur.VIP, kind)}
					}
					spec.Services = append(spec.Services, *cur)
					cur, kind = nil, ""
				}
				if depth < 0 {
					return Spec{}, bad("unbalanced }")
				}
				f = f[1:]
				continue
			case w == "{":
				depth++
				f = f[1:]
				continue
			}
			switch {
			case depth == 0 && w == "virtual_server":
				if len(f) < 3 {
					return Spec{}, bad("virtual_server needs ADDR PORT")
				}
				if f[1] == "group" || f[1] == "fwmark" {
					return Spec{}, bad("virtual_server %s cannot be set up by lbdoctor", f[1])
				}
				ap, err := netip.ParseAddrPort(f[1] + ":" + f[2])
				if err != nil {
					return Spec{}, bad("virtual_server %s %s: want ADDR PORT", f[1], f[2])
				}
				cur, curLine = &Service{Proto: "tcp", VIP: ap, Scheduler: "wlc", SNAT: SNATAuto}, line
				f = f[3:]
			case depth == 1 && cur != nil && w == "real_server":
				if len(f) < 3 {
					return Spec{}, bad("real_server needs ADDR PORT")
				}
				ap, err := netip.ParseAddrPort(f[1] + ":" + f[2])
				if err != nil {
					return Spec{}, bad("real_server %s %s: want ADDR PORT", f[1], f[2])
				}
				real = &Real{Addr: ap, Weight: 1}
				f = f[3:]
			case depth == 1 && cur != nil && len(f) >= 2 && (w == "lb_algo" || w == "lvs_sched"):
				cur.Scheduler, f = f[1], f[2:]
			case depth == 1 && cur != nil && len(f) >= 2 && (w == "lb_kind" || w == "lvs_method"):
				kind, f = f[1], f[2:]
			case depth == 1 && cur != nil && len(f) >= 2 && w == "protocol":
				switch f[1] {
				case "TCP":
					cur.Proto = "tcp"
				case "UDP":
					cur.Proto = "udp"
				default:
					return Spec{}, bad("protocol %q: want TCP or UDP", f[1])
				}
				f = f[2:]
			case depth == 1 && cur != nil && (w == "persistence_timeout" || w == "persistence_granularity" || w == "virtualhost"):
				return Spec{}, bad("%s is not supported by lbdoctor setup", w)
			case depth == 2 && real != nil && len(f) >= 2 && w == "weight":
				n, err := strconv.Atoi(f[1])
				if err != nil {
					return Spec{}, bad("weight %q is not a number", f[1])
				}
				real.Weight, f = n, f[2:]
			default:
				// Other keywords (delay_loop, health checkers, …) do not
				// change what IPVS is programmed with; their values and
				// blocks are skipped.
				f = f[1:]
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Spec{}, err
	}
	if depth != 0 {
		return Spec{}, &ParseError{File: file, Line: line, Msg: "file ends inside a block"}
	}
	if err := spec.Validate(); err != nil {
		return Spec{}, &ParseError{File: file, Msg: err.Error()}
	}
	return spec, nil
}
