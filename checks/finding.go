// Package checks judges a probes.Snapshot and returns findings: pure
// functions, no I/O, testable from fixtures. Each finding carries a stable
// dotted id, a status, the evidence it rests on and the exact fix.
package checks

import (
	"fmt"

	"github.com/lbdoctor/lbdoctor/flowpath"

	"github.com/lbdoctor/lbdoctor/probes"
)

// Status of a finding.
type Status string

const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip" // always with a Reason
)

// Evidence is one fact and where it was read.
type Evidence struct {
	Fact   string `json:"fact"`
	Source string `json:"source"`
}

func (e Evidence) String() string { return fmt.Sprintf("%s (%s)", e.Fact, e.Source) }

// Finding is the verdict of one check.
type Finding struct {
	ID       string     `json:"id"`
	Status   Status     `json:"status"`
	Title    string     `json:"title"`
	Reason   string     `json:"reason,omitempty"` // why it was skipped, or the failure in one line
	Evidence []Evidence `json:"evidence"`
	Fix      []string   `json:"fix,omitempty"` // commands, in order
	// Remedies are the fix as data, for `check --fix` to apply through the
	// transactional engine.
	Remedies []Remedy `json:"remedies,omitempty"`
	// Path is the causal chain of a failing finding: the paths of the
	// services' flows it is about, leg by leg, and where they stop (from
	// the window; none for a static snapshot).
	Path []flowpath.Path `json:"path,omitempty"`
}

// Remedy is one change that fixes a finding.
type Remedy struct {
	Sysctl string `json:"sysctl,omitempty"` // set this key …
	Value  string `json:"value,omitempty"`  // … to this value
	SNAT   string `json:"snat,omitempty"`   // add source NAT for this VIP (ADDR:PORT)
	Proto  string `json:"proto,omitempty"`  // … of this protocol
}

// Check is one entry of the catalog.
type Check struct {
	ID    string
	Title string
	Run   func(*probes.Snapshot, probes.Selector) Finding
}

// Catalog lists every check in the order they are shown.
var Catalog = []Check{
	{ID: "kernel.ipvs", Title: "IPVS is usable", Run: checkIPVS},
	{ID: "sysctl.ip_forward", Title: "IP forwarding is on for masquerade services", Run: checkIPForward},
	{ID: "sysctl.vs_conntrack", Title: "IPVS connections are in conntrack where rules need them", Run: checkVSConntrack},
	{ID: "nat.return_path", Title: "replies of masquerade services come back through the LB", Run: checkReturnPath},
	{ID: "net.send_redirects", Title: "a one-arm LB sends no ICMP redirects", Run: checkSendRedirects},
	{ID: "ipvs.reals_available", Title: "every service has a real server that takes connections", Run: checkRealsAvailable},
	{ID: "ipvs.expire_nodest_conn", Title: "connections to a removed real server are expired", Run: checkExpireNodest},
	{ID: "conntrack.table", Title: "the conntrack table has room and no drops", Run: checkConntrackTable},
	{ID: "conntrack.flow_states", Title: "the VIP's flows complete", Run: checkFlowStates},
	{ID: "firewall.filter", Title: "no packet filter drops the services' flows", Run: checkFirewall},
	{ID: "rules.mixed_backends", Title: "rules live in one framework", Run: checkMixedBackends},
	{ID: "drops.vip_flows", Title: "no packet of the selected flows is dropped", Run: checkDrops},
}

// Run runs the catalog against a snapshot.
func Run(s *probes.Snapshot, sel probes.Selector) []Finding {
	out := make([]Finding, 0, len(Catalog))
	for _, c := range Catalog {
		f := c.Run(s, sel)
		f.ID = c.ID
		if f.Title == "" {
			f.Title = c.Title
		}
		if f.Evidence == nil {
			f.Evidence = []Evidence{}
		}
		out = append(out, f)
	}
	return out
}

// Verdict is the worst status among findings: fail, warn, else pass.
func Verdict(fs []Finding) Status {
	v := Pass
	for _, f := range fs {
		switch {
		case f.Status == Fail:
			return Fail
		case f.Status == Warn:
			v = Warn
		}
	}
	return v
}

func skip(reason string) Finding { return Finding{Status: Skip, Reason: reason} }
