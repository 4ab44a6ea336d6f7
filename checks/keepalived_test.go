package checks_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/expect"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

func finding(fs []checks.Finding, id string) (checks.Finding, bool) {
	i := slices.IndexFunc(fs, func(f checks.Finding) bool { return f.ID == id })
	if i < 0 {
		return checks.Finding{}, false
	}
	return fs[i], true
}

// facts is a finding's evidence and fix, one line each, to search.
func facts(f checks.Finding) string {
	var b strings.Builder
	b.WriteString(f.Title + "\n" + f.Reason + "\n")
	for _, e := range f.Evidence {
		b.WriteString(e.Fact + "\n")
	}
	for _, x := range f.Fix {
		b.WriteString("$ " + x + "\n")
	}
	return b.String()
}

// judged fails unless the finding id of fs has status want and says each
// of has in its title, evidence or fix.
func judged(t *testing.T, fs []checks.Finding, id, name string, want checks.Status, has []string) {
	t.Helper()
	f, ok := finding(fs, id)
	if !ok {
		t.Fatalf("no %s finding", id)
	}
	got := facts(f)
	if f.Status != want {
		t.Fatalf("%s(%s) = %s, want %s:\n%s", id, name, f.Status, want, got)
	}
	for _, h := range has {
		if !strings.Contains(got, h) {
			t.Errorf("%s(%s) =\n%s\nwant it to say %q", id, name, got, h)
		}
	}
}

func method(addr, m string, weight int) ipvs.Real {
	return ipvs.Real{Addr: ap(addr), Method: m, Weight: weight}
}

var snatRule = rules.Rule{Backend: rules.IptablesLegacy, Family: "ip", Table: "nat", Chain: "POSTROUTING", Target: "MASQUERADE",
	Spec: "-A POSTROUTING -m ipvs --vaddr 10.1.0.6 --vport 8085 -j MASQUERADE", IPVS: &rules.IPVSMatch{VAddr: "10.1.0.6", VPort: 8085}}

func TestForwardMethod(t *testing.T) {
	tests := []struct {
		name  string
		reals []ipvs.Real
		edit  func(s *probes.Snapshot)
		want  checks.Status
		has   []string // in the title, evidence or fix
	}{
		{name: "every real masquerades", reals: []ipvs.Real{real("10.2.0.50:8085", 1)}, want: checks.Skip},
		{name: "DR beside reals that masquerade", reals: []ipvs.Real{real("10.2.0.50:8085", 1), method("10.2.0.51:8085", ipvs.Route, 2)}, want: checks.Fail,
			has: []string{"real 10.2.0.51:8085 of TCP 10.1.0.6:8085 forwards by DR (-g), which cannot work there",
				"while its other reals masquerade (NAT): 10.2.0.50:8085",
				"$ ip netns exec lb ipvsadm -e -t 10.1.0.6:8085 -r 10.2.0.51:8085 -m -w 2   # NAT, as the service is built"}},
		{name: "DR alone where a source-NAT rule covers the VIP", reals: []ipvs.Real{method("10.2.0.51:8085", ipvs.Route, 1)}, want: checks.Fail,
			edit: func(s *probes.Snapshot) { s.Rules.Rules = []rules.Rule{snatRule} },
			has:  []string{"a source-NAT rule covers TCP 10.1.0.6:8085: iptables-legacy nat/POSTROUTING -A POSTROUTING -m ipvs --vaddr 10.1.0.6 --vport 8085 -j MASQUERADE"}},
		{name: "DR to a real behind a router", reals: []ipvs.Real{method("10.3.0.9:8085", ipvs.Route, 1)}, want: checks.Fail,
			edit: func(s *probes.Snapshot) {
				s.Net.Routes = append(s.Net.Routes, netstate.Route{Dst: pf("10.3.0.0/24"), Gw: ad("10.2.0.254"), Dev: "eth1"})
			},
			has: []string{"DR needs the real on a segment of the LB", "through gateway 10.2.0.254 (route 10.3.0.0/24)"}},
		{name: "DR to another port", reals: []ipvs.Real{method("10.2.0.51:80", ipvs.Route, 1)}, want: checks.Fail,
			has: []string{"to port 80, but the packets keep the VIP's port 8085"}},
		{name: "a tunnel the LB has no route for", reals: []ipvs.Real{method("192.0.2.9:8085", ipvs.Tunnel, 1)}, want: checks.Fail,
			has: []string{"forwards by TUN (-i), but no route of the LB reaches 192.0.2.9"}},
		{name: "DR alone on the LB's segment", reals: []ipvs.Real{method("10.2.0.51:8085", ipvs.Route, 1)}, want: checks.Pass,
			has: []string{"forwards by DR (-g) on eth1, the real's own segment"}},
		{name: "a tunnel through a router", reals: []ipvs.Real{method("10.3.0.9:8085", ipvs.Tunnel, 1)}, want: checks.Pass,
			edit: func(s *probes.Snapshot) {
				s.Net.Routes = append(s.Net.Routes, netstate.Route{Dst: pf("10.3.0.0/24"), Gw: ad("10.2.0.254"), Dev: "eth1"})
			},
			has: []string{"forwards by TUN (-i) through eth1 (IPIP)"}},
		{name: "weight 0 is not judged", reals: []ipvs.Real{real("10.2.0.50:8085", 1), method("10.2.0.51:8085", ipvs.Route, 0)}, want: checks.Skip},
		{name: "routes unread", reals: []ipvs.Real{method("10.2.0.51:8085", ipvs.Route, 1)}, want: checks.Skip,
			edit: func(s *probes.Snapshot) { s.Errors[probes.ProbeNet] = "permission denied" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArm(tt.reals, nil)
			if tt.edit != nil {
				tt.edit(s)
			}
			judged(t, checks.Run(s, probes.Selector{}), "ipvs.forward_method", tt.name, tt.want, tt.has)
		})
	}
}

// conf is an expectation of the twoArm LB: TCP 10.1.0.6:8085 rr with
// 10.2.0.50:8085 and 10.2.0.51:8085, weight 1, NAT.
func conf() *expect.Config {
	return &expect.Config{File: "keepalived.conf", Format: expect.Keepalived, Services: []expect.Service{{
		Proto: "tcp", Addr: ap("10.1.0.6:8085"), Scheduler: "rr", Line: 3,
		Reals: []expect.Real{{Addr: ap("10.2.0.50:8085"), Weight: 1, Method: ipvs.Masq, Line: 6}, {Addr: ap("10.2.0.51:8085"), Weight: 1, Method: ipvs.Masq, Line: 9}},
	}}}
}

func TestDrift(t *testing.T) {
	matching := []ipvs.Real{real("10.2.0.50:8085", 1), real("10.2.0.51:8085", 1)}
	tests := []struct {
		name  string
		reals []ipvs.Real
		edit  func(s *probes.Snapshot, e *expect.Config)
		sel   probes.Selector
		want  checks.Status
		has   []string
	}{
		{name: "matches", reals: matching, want: checks.Pass,
			has: []string{"1 services and 2 reals of keepalived.conf (keepalived.conf) match IPVS"}},
		{name: "weight, a missing real, a method", reals: []ipvs.Real{real("10.2.0.50:8085", 5), method("10.2.0.51:8085", ipvs.Route, 1)}, want: checks.Fail,
			edit: func(s *probes.Snapshot, e *expect.Config) {
				e.Services[0].Reals = append(e.Services[0].Reals, expect.Real{Addr: ap("10.2.0.52:8085"), Weight: 1, Method: ipvs.Masq, Line: 12})
			},
			has: []string{
				"TCP 10.1.0.6:8085: real 10.2.0.50:8085 has weight 5 in IPVS, 1 in keepalived.conf:6",
				"TCP 10.1.0.6:8085: real 10.2.0.51:8085 forwards by DR (-g) in IPVS, NAT (-m) in keepalived.conf:9",
				"TCP 10.1.0.6:8085: real 10.2.0.52:8085 is missing from IPVS (keepalived.conf:12)",
				"$ ip netns exec lb ipvsadm -e -t 10.1.0.6:8085 -r 10.2.0.50:8085 -m -w 1",
				"$ ip netns exec lb ipvsadm -e -t 10.1.0.6:8085 -r 10.2.0.51:8085 -m -w 1",
				"$ ip netns exec lb ipvsadm -a -t 10.1.0.6:8085 -r 10.2.0.52:8085 -m -w 1",
				"keepalived's health checkers remove a real they find down",
				"systemctl reload keepalived",
			}},
		{name: "an extra real, scheduler and persistence", reals: append(slices.Clone(matching), real("10.2.0.99:8085", 1)), want: checks.Fail,
			edit: func(s *probes.Snapshot, e *expect.Config) {
				s.IPVS.Services[0].Scheduler = "wlc"
				s.IPVS.Services[0].Flags = []string{"persistent"}
				s.IPVS.Services[0].Timeout = 360
				e.Services[0].Persistence = 60
			},
			has: []string{
				"TCP 10.1.0.6:8085: scheduler wlc in IPVS, rr in keepalived.conf:3",
				"TCP 10.1.0.6:8085: persistence timeout 360s in IPVS, 60s in keepalived.conf:3",
				"TCP 10.1.0.6:8085: real 10.2.0.99:8085 (NAT (-m), weight 1) is in IPVS, not in keepalived.conf:3",
				"$ ip netns exec lb ipvsadm -E -t 10.1.0.6:8085 -s rr -p 60",
				"$ ip netns exec lb ipvsadm -d -t 10.1.0.6:8085 -r 10.2.0.99:8085",
			}},
		{name: "persistent where the file is not", reals: matching, want: checks.Fail,
			edit: func(s *probes.Snapshot, e *expect.Config) {
				s.IPVS.Services[0].Flags = []string{"persistent"}
				s.IPVS.Services[0].Timeout = 300
			},
			has: []string{"persistent (timeout 300s) in IPVS, not persistent in keepalived.conf:3", "$ ip netns exec lb ipvsadm -E -t 10.1.0.6:8085 -s rr"}},
		{name: "a service missing, another extra", reals: matching, want: checks.Fail,
			edit: func(s *probes.Snapshot, e *expect.Config) {
				e.Services = append(e.Services, expect.Service{Proto: "udp", Addr: ap("10.1.0.6:53"), Scheduler: "rr", Persistence: 60, Line: 20,
					Reals: []expect.Real{{Addr: ap("10.2.0.50:53"), Weight: 2, Method: ipvs.Route}}})
				s.IPVS.Services = append(s.IPVS.Services, ipvs.Service{Proto: "tcp", Addr: ap("10.1.0.7:80"), Scheduler: "rr", Reals: []ipvs.Real{real("10.2.0.50:80", 1)}})
			},
			has: []string{
				"UDP 10.1.0.6:53: missing from IPVS (keepalived.conf:20)",
				"$ ip netns exec lb ipvsadm -A -u 10.1.0.6:53 -s rr -p 60",
				"$ ip netns exec lb ipvsadm -a -u 10.1.0.6:53 -r 10.2.0.50:53 -g -w 2",
				"TCP 10.1.0.7:80: in IPVS (1 reals), not in keepalived.conf",
				"$ ip netns exec lb ipvsadm -D -t 10.1.0.7:80",
			}},
		{name: "--vip leaves the other services out", reals: matching, want: checks.Pass, sel: sel8085,
			edit: func(s *probes.Snapshot, e *expect.Config) {
				e.Services = append(e.Services, expect.Service{FWMark: 7, Scheduler: "sh"})
				s.IPVS.Services = append(s.IPVS.Services, ipvs.Service{Proto: "tcp", Addr: ap("10.1.0.7:80"), Scheduler: "rr"})
			}},
		{name: "a DR real of a firewall mark: ipvsadm stores port 0", reals: matching, want: checks.Pass,
			edit: func(s *probes.Snapshot, e *expect.Config) {
				e.Services = append(e.Services, expect.Service{FWMark: 7, Scheduler: "sh", Reals: []expect.Real{{Addr: ap("10.2.0.50:8085"), Weight: 1, Method: ipvs.Route}}})
				s.IPVS.Services = append(s.IPVS.Services, ipvs.Service{Proto: "fwmark", FWMark: 7, Scheduler: "sh", Reals: []ipvs.Real{method("10.2.0.50:0", ipvs.Route, 1)}})
			},
			has: []string{"2 services and 3 reals"}},
		{name: "an ipvsadm file's other fix", reals: []ipvs.Real{real("10.2.0.50:8085", 1)}, want: checks.Fail,
			edit: func(s *probes.Snapshot, e *expect.Config) { e.Format, e.File = expect.Ipvsadm, "rules.save" },
			has:  []string{"$ # or load the whole table again: ip netns exec lb ipvsadm -C && ip netns exec lb ipvsadm -R < rules.save"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := twoArm(tt.reals, nil)
			e := conf()
			if tt.edit != nil {
				tt.edit(s, e)
			}
			s.Expected = e
			judged(t, checks.Run(s, tt.sel), "ipvs.drift", tt.name, tt.want, tt.has)
		})
	}
	if _, ok := finding(checks.Run(twoArm(matching, nil), probes.Selector{}), "ipvs.drift"); ok {
		t.Error("ipvs.drift is reported without --expect, want it left out")
	}
}

// A DR real's replies never cross IPVS, working or not: in the window its
// SYNs get nothing back through IPVS, which is no return-path fault of the
// NAT service but ipvs.forward_method's to judge.
func TestReturnPathLeavesDRReals(t *testing.T) {
	dr := answers
	dr.Real = ap("10.2.0.51:8085")
	s := stuck(twoArm([]ipvs.Real{real("10.2.0.50:8085", 1), method("10.2.0.51:8085", ipvs.Route, 1)}, []health.Result{answers, dr}), "10.2.0.51:8085")
	fs := checks.Run(s, sel8085)
	judged(t, fs, "nat.return_path", "a stuck DR real", checks.Pass, nil)
	judged(t, fs, "ipvs.forward_method", "a stuck DR real", checks.Fail, []string{"real 10.2.0.51:8085 of TCP 10.1.0.6:8085 forwards by DR (-g)"})
}
