// Package setup turns a description of IPVS NAT services into the steps
// that build them correctly — virtual service, real servers, forwarding,
// and source NAT where the return path needs it — and the steps that tear
// down only what lbdoctor made.
package setup

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// SNAT modes.
const (
	SNATAuto   = "auto"
	SNATAlways = "always"
	SNATNever  = "never"
)

// SNAT backends.
const (
	BackendAuto     = "auto"
	BackendIptables = "iptables"
	BackendNft      = "nft"
)

// Service is one NAT virtual service to build.
type Service struct {
	Proto     string // tcp or udp
	VIP       netip.AddrPort
	Scheduler string
	Reals     []Real
	SNAT      string // auto, always, never
	// FWMark and Persistence (seconds) are read for check --expect only:
	// setup builds neither, and its parsers refuse both.
	FWMark      uint32
	Persistence uint32
}

// Real is one real server.
type Real struct {
	Addr   netip.AddrPort
	Weight int
	// Method is the forwarding method (ipvs.Masq, Route, Tunnel), read for
	// check --expect; setup builds masquerade only, and "" means it.
	Method string
}

// Spec is everything to build in one namespace.
type Spec struct {
	Services    []Service
	SNATBackend string // auto, iptables, nft
}

// Schedulers IPVS offers (the guest kernel's modules).
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}

// AddrFault says why a is no address a what ("a VIP", "a real server")
// can have — unspecified, multicast, broadcast, or with a zone — and "" when
// it can have it. It is the one rule for --vip of every verb and for the
// addresses of every input file.
func AddrFault(a netip.Addr, what string) string {
	switch {
	case a.Zone() != "":
		return fmt.Sprintf("%s has no zone (%%%s)", what, a.Zone())
	case a.IsUnspecified():
		return fmt.Sprintf("%s is the unspecified address, not %s", a, what)
	case a.IsMulticast():
		return fmt.Sprintf("%s is a multicast address, not %s", a, what)
	case a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("%s is the broadcast address, not %s", a, what)
	}
	return ""
}

// SpecError is the first thing Validate found wrong with a spec, and where:
// the index of the service (and real) it is about, -1 for none, and the
// field, so a parser can point at the line that gave it.
type SpecError struct {
	Service, Real int
	Field         string // proto, vip, scheduler, snat, reals, addr, weight, snat_backend, services; "" for a duplicate
	Msg           string
}

func (e *SpecError) Error() string { return e.Msg }

// familyWord is the address family validate asks for: setup builds IPv4
// services only, an expectation may name either family.
func familyWord(expect bool) string {
	if expect {
		return ""
	}
	return "IPv4 "
}

// Validate reports the first thing wrong with a spec, as one line (a
// *SpecError). Values from the user are cut (input.Quote).
func (s Spec) Validate() error { return s.validate(false) }

// validate is Validate; for an expectation (check --expect) a firewall-mark
// service has no VIP, and a service without reals is one keepalived runs.
func (s Spec) validate(expect bool) error {
	if len(s.Services) == 0 {
		return &SpecError{Service: -1, Real: -1, Field: "services", Msg: "no service: give --vip and at least one --real"}
	}
	seenSvc := map[string]bool{}
	for i, svc := range s.Services {
		bad := func(field, format string, a ...any) error {
			return &SpecError{Service: i, Real: -1, Field: field, Msg: fmt.Sprintf(format, a...)}
		}
		key := input.Cut(svc.Proto) + " " + svc.VIP.String()
		if expect && svc.FWMark != 0 {
			key = fmt.Sprintf("fwmark %d", svc.FWMark)
		}
		switch {
		case expect && svc.FWMark != 0:
			// No address or protocol to judge: the mark selects packets.
		case svc.Proto != "tcp" && svc.Proto != "udp":
			return bad("proto", "service %s: protocol %s, want tcp or udp", key, input.Quote(svc.Proto))
		case !svc.VIP.Addr().Is4() && !expect || svc.VIP.Port() == 0:
			// setup builds IPv4 services only; IPVS and keepalived also run
			// IPv6 ones, which an expectation names as `ipvsadm -Sn` does.
			return bad("vip", "service %s: the VIP must be %sADDR:PORT with a port", key, familyWord(expect))
		case AddrFault(svc.VIP.Addr(), "a VIP") != "":
			return bad("vip", "service %s: %s", key, AddrFault(svc.VIP.Addr(), "a VIP"))
		}
		switch {
		case !slices.Contains(Schedulers, svc.Scheduler):
			return bad("scheduler", "service %s: unknown scheduler %s (one of %s)", key, input.Quote(svc.Scheduler), strings.Join(Schedulers, ", "))
		case svc.SNAT != SNATAuto && svc.SNAT != SNATAlways && svc.SNAT != SNATNever:
			return bad("snat", "service %s: --snat %s, want auto, always or never", key, input.Quote(svc.SNAT))
		case len(svc.Reals) == 0 && !expect:
			return bad("reals", "service %s: no real server", key)
		case seenSvc[key]:
			return bad("", "service %s is given twice", key)
		}
		seenSvc[key] = true
		seen := map[netip.AddrPort]bool{}
		for j, r := range svc.Reals {
			bad := func(field, format string, a ...any) error {
				return &SpecError{Service: i, Real: j, Field: field, Msg: fmt.Sprintf(format, a...)}
			}
			switch {
			case !r.Addr.Addr().Is4() && !expect || r.Addr.Port() == 0 && !(expect && r.Method != "masq"):
				// ipvsadm -Sn writes a DR or tunnel real of a firewall-mark
				// service with port 0: such a real keeps each packet's port.
				return bad("addr", "service %s: real %s must be %sADDR:PORT", key, r.Addr, familyWord(expect))
			case AddrFault(r.Addr.Addr(), "a real server") != "":
				return bad("addr", "service %s: real %s: %s", key, r.Addr, AddrFault(r.Addr.Addr(), "a real server"))
			case r.Weight < 0 || r.Weight > 65535:
				return bad("weight", "service %s: real %s: weight %d out of 0-65535", key, r.Addr, r.Weight)
			case seen[r.Addr]:
				return bad("", "service %s: real %s is given twice", key, r.Addr)
			}
			seen[r.Addr] = true
		}
	}
	if b := s.SNATBackend; b != BackendAuto && b != BackendIptables && b != BackendNft {
		return &SpecError{Service: -1, Real: -1, Field: "snat_backend", Msg: fmt.Sprintf("--snat-backend %s, want auto, iptables or nft", input.Quote(b))}
	}
	return nil
}

// Decision is what setup decided about one service's source NAT, and why.
type Decision struct {
	Service string
	SNAT    bool
	Reason  string
}

// Steps returns the steps that build spec in ns (needed or not: the plan
// keeps the needed ones), and the SNAT decisions made on the way.
func Steps(ns netns.Target, spec Spec, snap *probes.Snapshot) ([]apply.Step, []Decision, error) {
	var steps []apply.Step
	var decisions []Decision
	// Each sysctl is recorded with the services that need it (by key,
	// apply.ServiceKey), so teardown --vip undoes it only with the last.
	var redirects []checks.Remedy
	redirectFor := map[checks.Remedy][]string{}
	var all, snat []string
	backend, err := snatBackend(spec.SNATBackend, snap)
	if err != nil {
		return nil, nil, err
	}
	locals := snap.Net.LocalSet()
	vipStep := map[netip.Addr]int{} // a VIP's address step, by VIP
	for _, svc := range spec.Services {
		key := apply.ServiceKey(svc.Proto, svc.VIP)
		all = append(all, key)
		// IPVS takes only packets to a local address (ipvs.vip_local): a
		// VIP no local route holds is added where ipvs.vip_local's fix
		// would put it, recorded for the services on it, and the return
		// path judged as it will be.
		vip, judged := svc.VIP.Addr(), snap
		if i, ok := vipStep[vip]; ok {
			a := steps[i].(apply.Address)
			a.Services = append(slices.Clone(a.Services), key)
			steps[i] = a
		} else if local, read := locals.Holds(vip); read && !local {
			a := apply.Address{NS: ns, Prefix: netip.PrefixFrom(vip, vip.BitLen()), Dev: checks.AddrDev(snap, vip), Services: []string{key}}
			vipStep[vip] = len(steps)
			steps = append(steps, a)
		}
		if i, ok := vipStep[vip]; ok {
			a := steps[i].(apply.Address)
			c := *snap
			c.Net = snap.Net.WithAddr(a.Dev, a.Prefix)
			judged = &c
		}
		s := apply.IPVSService{NS: ns, Proto: svc.Proto, VIP: svc.VIP, Scheduler: svc.Scheduler}
		steps = append(steps, s)
		var reals []netip.Addr
		for _, r := range svc.Reals {
			steps = append(steps, apply.IPVSReal{Service: s, Real: r.Addr, Weight: r.Weight})
			reals = append(reals, r.Addr.Addr())
		}
		d := Decision{Service: key}
		rp := checks.DecideReturnPath(judged, vip, reals)
		switch svc.SNAT {
		case SNATAlways:
			d.SNAT, d.Reason = true, "--snat always"
		case SNATNever:
			d.SNAT, d.Reason = false, "--snat never"
		default:
			d.SNAT, d.Reason = rp.NeedsSNAT, rp.Reason
		}
		decisions = append(decisions, d)
		if d.SNAT {
			snat = append(snat, key)
			steps = append(steps, snatStep(ns, backend, svc))
			if rp.OneArm {
				// Replies now leave where they came in: no redirects to the reals.
				for _, r := range checks.RedirectRemedies(rp.Dev) {
					if _, ok := redirectFor[r]; !ok {
						redirects = append(redirects, r)
					}
					redirectFor[r] = append(redirectFor[r], key)
				}
			}
		}
	}
	sysctlFor := func(key, value string, services []string) apply.Step {
		s := apply.NewSysctl(ns, key, value)
		s.Services = services
		return s
	}
	// Forwarding first in the kernel's eyes does not matter; last here so a
	// half-built service never starts forwarding.
	// One switch per address family the services use (sysctl.ip_forward's).
	var forwarding []string
	forwardingFor := map[string][]string{}
	for _, svc := range spec.Services {
		key := checks.ForwardingKey(svc.VIP.Addr())
		if _, ok := forwardingFor[key]; !ok {
			forwarding = append(forwarding, key)
		}
		forwardingFor[key] = append(forwardingFor[key], apply.ServiceKey(svc.Proto, svc.VIP))
	}
	for _, key := range forwarding {
		steps = append(steps, sysctlFor(key, "1", forwardingFor[key]))
	}
	// Connections to a real server that is removed are expired, not blackholed.
	steps = append(steps, sysctlFor("net.ipv4.vs.expire_nodest_conn", "1", all))
	if len(snat) > 0 {
		steps = append(steps, sysctlFor("net.ipv4.vs.conntrack", "1", snat))
	}
	for _, r := range redirects {
		steps = append(steps, sysctlFor(r.Sysctl, r.Value, redirectFor[r]))
	}
	return steps, decisions, nil
}

// snatBackend picks iptables (with the backend the host already uses) or
// native nftables. iptables tools are found by the backend they drive
// (rules.FindRuleTools), not by one name; a legacy backend that could not be
// read may hold rules, so lbdoctor will not guess past it and mix backends.
func snatBackend(want string, snap *probes.Snapshot) (string, error) {
	if want == BackendNft {
		if _, err := exec.LookPath("nft"); err != nil {
			return "", fmt.Errorf("--snat-backend nft: nft is not installed")
		}
		return BackendNft, nil
	}
	tools := rules.FindRuleTools()
	for _, b := range snap.Rules.Backends {
		if b.Name != rules.IptablesLegacy {
			continue
		}
		if !b.Read {
			return "", fmt.Errorf("cannot tell whether iptables-legacy rules are in use (%s): install iptables-legacy, or choose --snat-backend nft", b.Reason)
		}
		if b.Rules > 0 {
			if _, ok := tools[rules.IptablesLegacy]; ok {
				return rules.IptablesLegacy, nil
			}
		}
	}
	for _, be := range []string{rules.IptablesNft, rules.IptablesLegacy} {
		if _, ok := tools[be]; ok {
			return be, nil
		}
	}
	if want == BackendIptables {
		return "", fmt.Errorf("--snat-backend iptables: no iptables tool on PATH (looked for %s)", rules.RuleToolNames())
	}
	if _, err := exec.LookPath("nft"); err == nil {
		return BackendNft, nil
	}
	return "", fmt.Errorf("no SNAT backend: install iptables or nftables")
}

// Comment tags every rule lbdoctor writes.
const Comment = "lbdoctor"

func snatStep(ns netns.Target, backend string, svc Service) apply.Step {
	if backend == BackendNft {
		name := fmt.Sprintf("lbdoctor_%s_%s_%d", svc.Proto, strings.ReplaceAll(svc.VIP.Addr().String(), ".", "_"), svc.VIP.Port())
		script := fmt.Sprintf(`table ip %s {
	comment "made by lbdoctor setup: source NAT for %s %s"
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct original ip daddr %s ct original protocol %s ct original proto-dst %d counter masquerade comment "lbdoctor"
	}
}
`, name, svc.Proto, svc.VIP, svc.VIP.Addr(), svc.Proto, svc.VIP.Port())
		return apply.NftTable{NS: ns, Family: "ip", Name: name, Script: script, VIP: svc.VIP.String()}
	}
	return apply.IptablesRule{NS: ns, Backend: backend, Table: "nat", Chain: "POSTROUTING", VIP: svc.VIP.String(), Rule: []string{
		"-m", "ipvs", "--vaddr", svc.VIP.Addr().String() + "/32", "--vport", fmt.Sprint(svc.VIP.Port()), "--vproto", svc.Proto,
		"-m", "comment", "--comment", Comment, "-j", "MASQUERADE"}}
}

// hairpinStep masquerades the connections of real to itself through svc's
// VIP (nat.hairpin): setup's source NAT, narrowed to that source and
// destination.
func hairpinStep(ns netns.Target, backend string, svc Service, real netip.Addr) apply.Step {
	if backend == BackendNft {
		name := fmt.Sprintf("lbdoctor_hairpin_%s_%s_%d_%s", svc.Proto, strings.ReplaceAll(svc.VIP.Addr().String(), ".", "_"), svc.VIP.Port(), strings.ReplaceAll(real.String(), ".", "_"))
		script := fmt.Sprintf(`table ip %s {
	comment "made by lbdoctor check --fix: source NAT for real %s calling its own service %s %s"
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct original ip daddr %s ct original protocol %s ct original proto-dst %d ip saddr %s ip daddr %s counter masquerade comment "lbdoctor"
	}
}
`, name, real, svc.Proto, svc.VIP, svc.VIP.Addr(), svc.Proto, svc.VIP.Port(), real, real)
		return apply.NftTable{NS: ns, Family: "ip", Name: name, Script: script, VIP: svc.VIP.String()}
	}
	return apply.IptablesRule{NS: ns, Backend: backend, Table: "nat", Chain: "POSTROUTING", VIP: svc.VIP.String(), Rule: []string{
		"-m", "ipvs", "--vaddr", svc.VIP.Addr().String() + "/32", "--vport", fmt.Sprint(svc.VIP.Port()), "--vproto", svc.Proto,
		"-s", real.String() + "/32", "-d", real.String() + "/32",
		"-m", "comment", "--comment", Comment, "-j", "MASQUERADE"}}
}

// TeardownSteps returns the steps that remove what state records, newest
// first, and the objects they remove. With vip set, only what was made for
// that service: its own objects, and a shared change (a sysctl, an address)
// that no other recorded service needs; kept says, one line each, what
// stays and why.
func TeardownSteps(ns netns.Target, st *apply.State, vip netip.AddrPort) (steps []apply.Step, objs []apply.Object, kept []string) {
	for i := len(st.Objects) - 1; i >= 0; i-- {
		o := st.Objects[i]
		if vip.IsValid() {
			if why := keeps(o, vip.String()); why != "" {
				kept = append(kept, fmt.Sprintf("%s: %s", o, why))
				continue
			}
		}
		if s := stepFor(ns, st, o); s != nil {
			steps = append(steps, s)
			objs = append(objs, o)
		}
	}
	return steps, objs, kept
}

// keeps says why teardown --vip vip leaves o, "" when o is vip's alone.
func keeps(o apply.Object, vip string) string {
	if o.VIP != "" && len(o.Services) == 0 { // one service's own object
		if o.VIP == vip {
			return ""
		}
		return "made for " + o.VIP + ", not " + vip
	}
	if len(o.Services) == 0 {
		return "recorded without the services it was made for (by an older lbdoctor, or a --fix that named none): only a whole teardown undoes it"
	}
	var others []string
	mine := false
	for _, k := range o.Services {
		if apply.ServiceVIP(k) == vip {
			mine = true
		} else {
			others = append(others, k)
		}
	}
	switch {
	case !mine:
		return "made for " + strings.Join(others, ", ") + ", not " + vip
	case len(others) > 0:
		return "still needed by " + strings.Join(others, ", ")
	}
	return ""
}

// recordedReals lists the real servers the record holds for service svc.
func recordedReals(st *apply.State, svc apply.Object) []netip.AddrPort {
	var reals []netip.AddrPort
	for _, o := range st.Objects {
		if o.Kind == "ipvs-real" && o.VIP == svc.VIP && o.Proto == svc.Proto {
			if ap, err := netip.ParseAddrPort(o.Real); err == nil {
				reals = append(reals, ap)
			}
		}
	}
	return reals
}

// stepFor is the step that undoes a recorded object (LoadState checked its
// fields parse).
func stepFor(ns netns.Target, st *apply.State, o apply.Object) apply.Step {
	switch o.Kind {
	case "ipvs-service":
		return apply.NewRemoveIPVSService(apply.IPVSService{NS: ns, Proto: o.Proto, VIP: netip.MustParseAddrPort(o.VIP), Scheduler: o.Key}, recordedReals(st, o))
	case "ipvs-real":
		w, _ := strconv.Atoi(o.Key)
		return apply.Remove(apply.IPVSReal{Service: apply.IPVSService{NS: ns, Proto: o.Proto, VIP: netip.MustParseAddrPort(o.VIP)}, Real: netip.MustParseAddrPort(o.Real), Weight: w})
	case "iptables-rule":
		return apply.Remove(apply.IptablesRule{NS: ns, Backend: o.Backend, Table: o.Table, Chain: o.Chain, Rule: o.Rule, VIP: o.VIP})
	case "nft-table":
		return apply.Remove(apply.NftTable{NS: ns, Family: o.Family, Name: o.Table, Script: o.Key, VIP: o.VIP})
	case "sysctl":
		return apply.NewRestoreSysctl(ns, o.Key, o.Previous, o.Set)
	case "address":
		return apply.Remove(apply.Address{NS: ns, Prefix: netip.MustParsePrefix(o.Key), Dev: o.Dev})
	}
	return nil
}

// RemedySteps turns the remedies of failing findings into steps, once
// each. A shared change (a sysctl, an address) is recorded as made for
// the services for names (apply.ServiceKey; none: every service).
func RemedySteps(ns netns.Target, snap *probes.Snapshot, remedies []checks.Remedy, services map[checks.Remedy][]string) ([]apply.Step, error) {
	var steps []apply.Step
	seen := map[checks.Remedy]bool{}
	var sysctls []apply.Step
	for _, r := range remedies {
		if seen[r] {
			continue
		}
		seen[r] = true
		switch {
		case r.SNAT != "":
			vip, err := netip.ParseAddrPort(r.SNAT)
			if err != nil {
				return nil, fmt.Errorf("remedy for %s: %w", r.SNAT, err)
			}
			backend, err := snatBackend(BackendAuto, snap)
			if err != nil {
				return nil, err
			}
			if r.Real == "" {
				steps = append(steps, snatStep(ns, backend, Service{Proto: r.Proto, VIP: vip}))
				continue
			}
			real, err := netip.ParseAddr(r.Real)
			if err != nil || !real.Is4() {
				return nil, fmt.Errorf("remedy for %s: real %q: want an IPv4 address", r.SNAT, r.Real)
			}
			steps = append(steps, hairpinStep(ns, backend, Service{Proto: r.Proto, VIP: vip}, real))
		case r.Sysctl != "":
			s := apply.NewSysctl(ns, r.Sysctl, r.Value)
			s.Services = services[r]
			sysctls = append(sysctls, s)
		case r.Addr != "":
			p, err := netip.ParsePrefix(r.Addr)
			if err != nil || r.Dev == "" {
				return nil, fmt.Errorf("remedy: address %q on %q: want ADDR/BITS and an interface", r.Addr, r.Dev)
			}
			steps = append(steps, apply.Address{NS: ns, Prefix: p, Dev: r.Dev, Services: services[r]})
		}
	}
	// Rules before the sysctls that switch them on, as setup orders them.
	return append(steps, sysctls...), nil
}
