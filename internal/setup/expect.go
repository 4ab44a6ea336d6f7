package setup

import (
	"bytes"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/expect"
	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// ParseExpected reads what the operator meant IPVS to run (check --expect)
// from a keepalived.conf, `ipvsadm -Sn` output or lbdoctor's services
// YAML, telling which from the content, with the parsers setup reads them
// with. data is what input.Read returned (at most input.MaxSize). Errors
// are *ParseError: one line, file:line: why.
func ParseExpected(file string, data []byte) (expect.Config, error) {
	// A UTF-8 byte order mark (an editor's, typically before a comment
	// line) says only "UTF-8"; lines keep their numbers without it.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	if line, why := input.BinaryLine(data); why != "" {
		return expect.Config{}, &ParseError{file, line, why}
	}
	format := DetectFormat(data)
	var spec Spec
	var ps places
	var err error
	switch format {
	case expect.Keepalived:
		spec, ps, err = parseKeepalived(file, bytes.NewReader(data), true)
	case expect.Ipvsadm:
		spec, ps, err = parseIpvsadm(file, bytes.NewReader(data), true)
	case expect.YAML:
		spec, ps, err = parseYAML(file, data)
	default:
		return expect.Config{}, &ParseError{File: file, Msg: "is none of the files --expect reads: want a keepalived.conf (virtual_server blocks), `ipvsadm -Sn` output (-A/-a lines) or lbdoctor's services YAML (services:)"}
	}
	if err != nil {
		return expect.Config{}, err
	}
	cfg := expect.Config{File: file, Format: format, Services: make([]expect.Service, 0, len(spec.Services))}
	for i, svc := range spec.Services {
		e := expect.Service{Proto: svc.Proto, Addr: svc.VIP, FWMark: svc.FWMark, Scheduler: svc.Scheduler, Persistence: svc.Persistence, Reals: []expect.Real{}}
		if i < len(ps.services) {
			e.Line = ps.services[i].line
		}
		for j, r := range svc.Reals {
			x := expect.Real{Addr: r.Addr, Weight: r.Weight, Method: orDefault(r.Method, ipvs.Masq)}
			if i < len(ps.reals) && j < len(ps.reals[i]) {
				x.Line = ps.reals[i][j].line
			}
			e.Reals = append(e.Reals, x)
		}
		cfg.Services = append(cfg.Services, e)
	}
	return cfg, nil
}

// DetectFormat tells an expectation file's format from its first line
// that is neither blank nor a comment: `ipvsadm -S` lines start with an
// option (-A), and its listing (-L) with its banner or a service line;
// a keepalived.conf with a keyword of its top level or a block; YAML with
// a key of lbdoctor's. "" when it is none of them.
func DetectFormat(data []byte) string {
	for _, l := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || t[0] == '#' || t[0] == '!' {
			continue
		}
		f := strings.Fields(t)
		switch {
		case strings.HasPrefix(t, "-A"), strings.HasPrefix(t, "-a"), strings.HasPrefix(t, "--add-"),
			strings.HasPrefix(t, "IP Virtual Server version"), f[0] == "Prot":
			return expect.Ipvsadm
		case t == "---", strings.HasPrefix(t, "services:"), strings.HasPrefix(t, "snat_backend:"):
			return expect.YAML
		case keepalivedWord(f[0]):
			return expect.Keepalived
		}
		return ""
	}
	return ""
}

// keepalivedWord is a word a keepalived.conf can start with.
func keepalivedWord(w string) bool {
	for _, k := range keepalivedTop {
		if w == k || strings.HasPrefix(w, k+"{") {
			return true
		}
	}
	return strings.HasPrefix(w, "$") || strings.HasPrefix(w, "@")
}
