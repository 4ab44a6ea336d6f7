package checks_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipset"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// kubeSave is kube-proxy's nat table as iptables-save -c prints it (the
// guest's KubeNodeRules after iptables-restore).
const kubeSave = `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-MARK-MASQ - [0:0]
[0:0] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
[0:0] -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
[0:0] -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
[0:0] -A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
[0:0] -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
[0:0] -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
[0:0] -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
[0:0] -A KUBE-SERVICES ! -s 10.2.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
[0:0] -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
[0:0] -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
`

// kubeNode turns the two-arm fixture into a kube-proxy node: its service
// 10.1.0.6:8085 a ClusterIP on kube-ipvs0 with a local pod (10.2.0.50) and
// one of another node (10.2.1.10, routed): replies of the second need
// source NAT, which kube-proxy gives by mark.
func kubeNode(t *testing.T, save string) *probes.Snapshot {
	t.Helper()
	s := loadFixture(t, "two-arm")
	rs, err := rules.ParseSave(rules.IptablesNft, []byte(save))
	if err != nil {
		t.Fatal(err)
	}
	s.Rules.Rules = rs
	svc := &s.IPVS.Services[0]
	svc.Reals = append(svc.Reals, ipvs.Real{Addr: netip.MustParseAddrPort("10.2.1.10:8085"), Method: ipvs.Masq, Weight: 1})
	s.Net.Routes = append(s.Net.Routes, netstate.Route{Dst: netip.MustParsePrefix("10.2.1.0/24"), Gw: netip.MustParseAddr("10.1.0.7"), Dev: "eth0", Table: 254, Scope: "universe"})
	for i, l := range s.Net.Links {
		if l.Name == "eth0" {
			s.Net.Links[i].Addrs = []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24")}
		}
	}
	s.Net.Links = append(s.Net.Links, netstate.Link{Name: "kube-ipvs0", Type: "dummy", Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.6/32")}})
	s.IPSets.Sets = []ipset.Set{
		{Name: "KUBE-CLUSTER-IP", Type: "hash:ip,port", Entries: 1, Members: []ipset.Member{{IP: netip.MustParseAddr("10.1.0.6"), Proto: "tcp", Port: 8085}}},
		{Name: "KUBE-LOOP-BACK", Type: "hash:ip,port,ip", Entries: 1, Members: []ipset.Member{{IP: netip.MustParseAddr("10.2.0.50"), Proto: "tcp", Port: 8085, IP2: netip.MustParseAddr("10.2.0.50")}}},
		{Name: "KUBE-NODE-PORT-TCP", Type: "bitmap:port", Entries: 1, Members: []ipset.Member{{Port: 30080}}},
	}
	s.KubeProxy = &probes.KubeProxy{Dummy: "kube-ipvs0", Chains: []string{"KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-SERVICES"}, Sets: []string{"KUBE-CLUSTER-IP", "KUBE-LOOP-BACK"}}
	setSysctl(s, "net.ipv4.vs.conntrack", "1")
	return s
}

// A kube-proxy node is judged by its design: its source NAT by mark and
// ipset is source NAT, each of its links missing names itself.
func TestKubeProxySNAT(t *testing.T) {
	parse := func(t *testing.T, save string) []rules.Rule {
		rs, err := rules.ParseSave(rules.IptablesNft, []byte(save))
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	tests := []struct {
		name     string
		change   func(*probes.Snapshot)
		status   checks.Status
		evidence string
	}{
		{"kube-proxy's design", func(*probes.Snapshot) {}, checks.Pass, "KUBE-POSTROUTING masquerades packets marked 0x4000/0x4000"},
		{"service not in KUBE-CLUSTER-IP", func(s *probes.Snapshot) { s.IPSets.Sets[0].Members = nil }, checks.Fail, "ipset KUBE-CLUSTER-IP (hash:ip,port, 1 entries) does not hold 10.1.0.6,tcp:8085"},
		{"KUBE-POSTROUTING flushed", func(s *probes.Snapshot) { s.Rules.Rules = without(s.Rules.Rules, "KUBE-POSTROUTING") }, checks.Fail, "KUBE-POSTROUTING masquerades no marked packet"},
		{"KUBE-POSTROUTING not hooked", func(s *probes.Snapshot) { s.Rules.Rules = without(s.Rules.Rules, "POSTROUTING") }, checks.Fail, "nat POSTROUTING does not jump to KUBE-POSTROUTING"},
		{"another mark set", func(s *probes.Snapshot) {
			s.Rules.Rules = without(s.Rules.Rules, "KUBE-MARK-MASQ")
		}, checks.Fail, "KUBE-MARK-MASQ does not set mark 0x4000/0x4000"},
		{"not a kube-proxy node", func(s *probes.Snapshot) { s.KubeProxy = nil }, checks.Fail, ""},
		{"ipsets unread", func(s *probes.Snapshot) {
			s.IPSets.Sets = nil
			s.Errors = map[string]string{probes.ProbeIPSet: "operation not permitted"}
		}, checks.Skip, ""},
		{"a load-balancer IP through KUBE-LOAD-BALANCER", func(s *probes.Snapshot) {
			s.IPSets.Sets[0].Members = nil
			s.IPSets.Sets = append(s.IPSets.Sets, ipset.Set{Name: "KUBE-LOAD-BALANCER", Type: "hash:ip,port", Entries: 1, Members: []ipset.Member{{IP: netip.MustParseAddr("10.1.0.6"), Proto: "tcp", Port: 8085}}})
			s.Rules.Rules = append(s.Rules.Rules, parse(t, "*nat\n[0:0] -A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER\n[0:0] -A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ\nCOMMIT\n")...)
		}, checks.Pass, "KUBE-SERVICES -A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER (0 packets), and ipset KUBE-LOAD-BALANCER holds 10.1.0.6,tcp:8085"},
		{"a ClusterIP of a kube-proxy without --cluster-cidr", func(s *probes.Snapshot) {
			var keep []rules.Rule
			for _, r := range s.Rules.Rules {
				if !strings.Contains(r.Spec, "KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ") {
					keep = append(keep, r)
				}
			}
			s.Rules.Rules = keep
			s.Net.Links[len(s.Net.Links)-1].Addrs = []netip.Prefix{netip.MustParsePrefix("10.1.0.6/32")}
		}, checks.Pass, "kube-proxy masquerades no ClusterIP traffic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := kubeNode(t, kubeSave)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "nat.return_path")
			if f.Status != tt.status || !strings.Contains(evidenceOf(f), tt.evidence) {
				t.Errorf("nat.return_path(%s) = %s %q, want %s with evidence %q\n%s", tt.name, f.Status, f.Title, tt.status, tt.evidence, evidenceOf(f))
			}
			if tt.status == checks.Pass {
				if v := statusOf(checks.Run(s, probes.Selector{}), "sysctl.vs_conntrack"); v.Status != checks.Pass {
					t.Errorf("sysctl.vs_conntrack(%s) = %s, want pass naming kube-proxy's masquerades", tt.name, v.Status)
				}
				setSysctl(s, "net.ipv4.vs.conntrack", "0")
				if v := statusOf(checks.Run(s, probes.Selector{}), "sysctl.vs_conntrack"); v.Status != checks.Fail || !strings.Contains(evidenceOf(v), "KUBE-POSTROUTING") {
					t.Errorf("sysctl.vs_conntrack(%s, vs.conntrack=0) = %s, want fail naming KUBE-POSTROUTING\n%s", tt.name, v.Status, evidenceOf(v))
				}
			}
		})
	}
}

// A real that calls its own service and is scheduled to itself needs a
// masquerade: kube-proxy's loop-back set, or an SNAT of the VIP.
func TestHairpin(t *testing.T) {
	hairpin := func(s *probes.Snapshot) {
		s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: netip.MustParseAddrPort("10.2.0.50:40000"),
			VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Dest: netip.MustParseAddrPort("10.2.0.50:8085"), State: "SYN_RECV"})
	}
	loopBackGone := func(s *probes.Snapshot) {
		var keep []rules.Rule
		for _, r := range s.Rules.Rules {
			if !strings.Contains(r.Spec, "KUBE-LOOP-BACK") {
				keep = append(keep, r)
			}
		}
		s.Rules.Rules = keep
	}
	tests := []struct {
		name   string
		change func(*probes.Snapshot)
		status checks.Status
		text   string
	}{
		{"no hairpin seen", func(*probes.Snapshot) {}, checks.Pass, "no real server was seen as a client"},
		{"hairpin masqueraded by KUBE-LOOP-BACK", hairpin, checks.Pass, "ipset KUBE-LOOP-BACK holds 10.2.0.50,tcp:8085,10.2.0.50"},
		{"hairpin, loop-back rule gone", func(s *probes.Snapshot) { hairpin(s); loopBackGone(s) }, checks.Fail, "TCP 10.2.0.50:40000 → 10.1.0.6:8085 → 10.2.0.50:8085 SYN_RECV"},
		{"hairpin, not in the set", func(s *probes.Snapshot) { hairpin(s); s.IPSets.Sets[1].Members = nil }, checks.Fail, "does not hold 10.2.0.50,tcp:8085,10.2.0.50"},
		{"no hairpin seen, loop-back rule gone", loopBackGone, checks.Warn, "10.2.0.50:8085 of TCP 10.1.0.6:8085"},
		{"hairpin, not kube-proxy, no SNAT", func(s *probes.Snapshot) { hairpin(s); loopBackGone(s); s.KubeProxy = nil }, checks.Fail, "no source-NAT rule covers TCP 10.1.0.6:8085"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := kubeNode(t, kubeSave)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "nat.hairpin")
			if got := f.Title + "\n" + evidenceOf(f); f.Status != tt.status || !strings.Contains(got, tt.text) {
				t.Errorf("nat.hairpin(%s) = %s, want %s with %q\n%s", tt.name, f.Status, tt.status, tt.text, got)
			}
		})
	}
}

// kube-proxy's probe virtual server has no reals and is no user's service.
func TestKubeProxyProbeService(t *testing.T) {
	for _, tt := range []struct {
		name string
		kube bool
		want checks.Status
	}{
		{"kube-proxy node", true, checks.Pass},
		{"any other LB", false, checks.Fail},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := kubeNode(t, kubeSave)
			s.IPVS.Services = append(s.IPVS.Services, ipvs.Service{Proto: "tcp", Addr: probes.KubeProxyProbeService, Scheduler: "rr"})
			s.KubeProxy.ProbeService = true
			if !tt.kube {
				s.KubeProxy = nil
			}
			if f := statusOf(checks.Run(s, probes.Selector{}), "ipvs.reals_available"); f.Status != tt.want {
				t.Errorf("ipvs.reals_available(%s, probe service without reals) = %s %q, want %s", tt.name, f.Status, f.Title, tt.want)
			}
		})
	}
}

// A VIP on a dummy link inside a LAN's subnet is claimed by ARP unless
// arp_ignore ≥ 1 and arp_announce ≥ 2.
func TestARPStrict(t *testing.T) {
	for _, tt := range []struct {
		name             string
		ignore, announce string
		want             checks.Status
	}{
		{"kernel defaults", "0", "0", checks.Warn},
		{"arp_ignore only", "1", "0", checks.Warn},
		{"kube-proxy's strict ARP", "1", "2", checks.Pass},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := kubeNode(t, kubeSave)
			for _, dev := range []string{"all", "eth0"} {
				setSysctl(s, "net.ipv4.conf."+dev+".arp_ignore", "0")
				setSysctl(s, "net.ipv4.conf."+dev+".arp_announce", "0")
			}
			setSysctl(s, "net.ipv4.conf.all.arp_ignore", tt.ignore)
			setSysctl(s, "net.ipv4.conf.all.arp_announce", tt.announce)
			f := statusOf(checks.Run(s, probes.Selector{}), "net.arp_strict")
			if f.Status != tt.want {
				t.Errorf("net.arp_strict(arp_ignore=%s, arp_announce=%s) = %s %q, want %s\n%s", tt.ignore, tt.announce, f.Status, f.Title, tt.want, evidenceOf(f))
			}
		})
	}
}

func without(rs []rules.Rule, chain string) []rules.Rule {
	var out []rules.Rule
	for _, r := range rs {
		if r.Chain != chain {
			out = append(out, r)
		}
	}
	return out
}

func evidenceOf(f checks.Finding) string {
	var b strings.Builder
	for _, e := range f.Evidence {
		b.WriteString(e.String() + "\n")
	}
	return b.String()
}

// A hairpin nothing masquerades is fixed by --fix outside kube-proxy (a
// remedy: the masquerade of the real's connections to itself, and
// vs.conntrack, which its -m ipvs match needs), and said to be left to
// kube-proxy on its node.
func TestHairpinRemedy(t *testing.T) {
	broken := func(s *probes.Snapshot) {
		s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: netip.MustParseAddrPort("10.2.0.50:40000"),
			VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Dest: netip.MustParseAddrPort("10.2.0.50:8085"), State: "SYN_RECV"})
		var keep []rules.Rule
		for _, r := range s.Rules.Rules {
			if !strings.Contains(r.Spec, "KUBE-LOOP-BACK") {
				keep = append(keep, r)
			}
		}
		s.Rules.Rules = keep
	}
	hairpin := checks.Remedy{SNAT: "10.1.0.6:8085", Proto: "tcp", Real: "10.2.0.50"}
	tests := []struct {
		name      string
		change    func(*probes.Snapshot)
		remedies  []checks.Remedy
		fix       string // a line of the fix
		fixByHand string
	}{
		{"not kube-proxy", func(s *probes.Snapshot) { s.KubeProxy = nil }, []checks.Remedy{hairpin},
			"iptables-nft -t nat -A POSTROUTING -m ipvs --vaddr 10.1.0.6 --vport 8085 -s 10.2.0.50 -d 10.2.0.50 -j MASQUERADE", ""},
		{"not kube-proxy, vs.conntrack off", func(s *probes.Snapshot) {
			s.KubeProxy = nil
			s.Sysctls["net.ipv4.vs.conntrack"] = sysctl.Value{Key: "net.ipv4.vs.conntrack", Value: "0", Present: true}
		}, []checks.Remedy{hairpin, {Sysctl: "net.ipv4.vs.conntrack", Value: "1"}}, "sysctl -w net.ipv4.vs.conntrack=1", ""},
		{"kube-proxy", func(*probes.Snapshot) {}, nil,
			"iptables-nft -t nat -I KUBE-POSTROUTING 1 -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE", "kube-proxy owns KUBE-LOOP-BACK and KUBE-POSTROUTING"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := kubeNode(t, kubeSave)
			broken(s)
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "nat.hairpin")
			fix := strings.Join(f.Fix, "\n")
			if f.Status != checks.Fail || !slices.Equal(f.Remedies, tt.remedies) || !strings.Contains(fix, tt.fix) || !strings.HasPrefix(f.FixByHand, tt.fixByHand) || (tt.fixByHand == "") != (f.FixByHand == "") {
				t.Errorf("nat.hairpin(%s) = %s, remedies %+v, fix %q, fix by hand %q; want fail, %+v, a fix line %q, by hand %q", tt.name, f.Status, f.Remedies, f.Fix, f.FixByHand, tt.remedies, tt.fix, tt.fixByHand)
			}
		})
	}
}
