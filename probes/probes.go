// Package probes gathers what every probe reads in one network namespace
// into a single Snapshot: the plain data the checks judge and that
// `lbdoctor inspect -o json` shows.
package probes

import (
	"net/netip"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// Snapshot is the state of one namespace as the probes saw it.
type Snapshot struct {
	Target  netns.Target    `json:"target"`
	Kernel  string          `json:"kernel"`
	IPVS    ipvs.Snapshot   `json:"ipvs"`
	Sysctls sysctl.Snapshot `json:"sysctls"`
	Rules   rules.Snapshot  `json:"rules"`
	// Errors holds, by probe name, why a probe could not read its layer
	// (privileges, a tool missing); checks that need it are skipped with it.
	Errors map[string]string `json:"errors,omitempty"`
}

// Selector narrows the snapshot to one virtual service.
type Selector struct {
	VIP   netip.AddrPort // zero: every service
	Proto string         // tcp or udp; "" with a VIP means tcp
}

// Probe names, the keys of Snapshot.Errors.
const (
	ProbeIPVS   = "ipvs"
	ProbeSysctl = "sysctl"
	ProbeRules  = "rules"
)

// Gather runs every probe in ns. Probe failures are recorded, not returned:
// one unreadable layer must not hide the others.
func Gather(ns netns.Target) *Snapshot {
	s := &Snapshot{Target: ns, Kernel: kernel.Release(), Errors: map[string]string{}}
	var err error
	if s.IPVS, err = ipvs.Read(ns); err != nil {
		s.Errors[ProbeIPVS] = err.Error()
	}
	if s.Sysctls, err = sysctl.Read(ns, sysctl.DefaultKeys...); err != nil {
		s.Errors[ProbeSysctl] = err.Error()
	}
	if s.Rules, err = rules.Read(ns); err != nil {
		s.Errors[ProbeRules] = err.Error()
	}
	return s
}
