package checks_test

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

var (
	churnVIP = netip.MustParseAddrPort("10.1.0.6:8085")
	realA    = netip.MustParseAddrPort("10.1.0.50:8085")
	realB    = netip.MustParseAddrPort("10.1.0.51:8085")
)

// churnFixture is seed-stage1 (one masquerade TCP service, kernel 6.1)
// with the sysctls given set and the IPVS table counted.
func churnFixture(t *testing.T, sysctls map[string]string) *probes.Snapshot {
	t.Helper()
	s := loadFixture(t, "seed-stage1")
	for k, v := range sysctls {
		if v == "" {
			delete(s.Sysctls, k)
			continue
		}
		s.Sysctls[k] = sysctl.Value{Key: k, Value: v, Present: true}
	}
	return s
}

// withReals makes the service proto and gives it reals a and b with these
// weights (b < 0: no b).
func withReals(s *probes.Snapshot, proto string, wa, wb int) {
	svc := &s.IPVS.Services[0]
	svc.Proto = proto
	svc.Reals = []ipvs.Real{{Addr: realA, Method: ipvs.Masq, Weight: wa}}
	if wb >= 0 {
		svc.Reals = append(svc.Reals, ipvs.Real{Addr: realB, Method: ipvs.Masq, Weight: wb})
	}
}

// run runs the catalog and returns the finding id.
func run(t *testing.T, s *probes.Snapshot, id string) (checks.Finding, []checks.Finding) {
	t.Helper()
	fs := checks.Run(s, probes.Selector{})
	return find(fs, id), fs
}

func TestPersistenceQuiescent(t *testing.T) {
	template := ipvs.ConnCount{Proto: "tcp", VIP: churnVIP, Dest: realA, State: "NONE", Template: true, Count: 3}
	tests := []struct {
		name       string
		persistent bool
		quiescent  string
		weightA    int
		counts     []ipvs.ConnCount
		connsErr   bool
		want       checks.Status
		wantTitle  string
	}{
		{name: "not persistent", weightA: 0, counts: []ipvs.ConnCount{template}, quiescent: "0", want: checks.Pass, wantTitle: "no selected service is persistent"},
		{name: "templates to a drained real", persistent: true, quiescent: "0", weightA: 0, counts: []ipvs.ConnCount{template}, want: checks.Fail, wantTitle: "persistent clients are still sent to 10.1.0.50:8085 (weight 0)"},
		{name: "templates to a drained real, quiescent templates expire", persistent: true, quiescent: "1", weightA: 0, counts: []ipvs.ConnCount{template}, want: checks.Pass, wantTitle: "expires on its next use"},
		{name: "templates to a real in service", persistent: true, quiescent: "0", weightA: 1, counts: []ipvs.ConnCount{template}, want: checks.Pass, wantTitle: "no persistent client is pinned"},
		{name: "a connection, not a template, to a drained real", persistent: true, quiescent: "0", weightA: 0,
			counts: []ipvs.ConnCount{{Proto: "tcp", VIP: churnVIP, Dest: realA, State: "ESTABLISHED", Count: 1}}, want: checks.Pass, wantTitle: "no persistent client is pinned"},
		{name: "a drained real, table unread", persistent: true, quiescent: "0", weightA: 0, connsErr: true, want: checks.Warn, wantTitle: "while templates to them are kept"},
		{name: "sysctl unread", persistent: true, quiescent: "", weightA: 0, want: checks.Skip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := churnFixture(t, map[string]string{"net.ipv4.vs.expire_quiescent_template": tt.quiescent})
			withReals(s, "tcp", tt.weightA, 1)
			if tt.persistent {
				s.IPVS.Services[0].Flags = append(s.IPVS.Services[0].Flags, "persistent")
				s.IPVS.Services[0].Timeout = 300
			}
			s.IPVS.ConnCounts = tt.counts
			if tt.connsErr {
				s.Errors = map[string]string{probes.ProbeIPVSConns: "not read: IPVS holds 20000 connections"}
			}
			got, _ := run(t, s, "ipvs.persistence_quiescent")
			if got.Status != tt.want || !strings.Contains(got.Title, tt.wantTitle) {
				t.Errorf("ipvs.persistence_quiescent(%s) = %s %q, want %s %q", tt.name, got.Status, got.Title, tt.want, tt.wantTitle)
			}
			if tt.want == checks.Fail && !slices.Contains(got.Fix, "ip netns exec lb sysctl -w net.ipv4.vs.expire_quiescent_template=1") {
				t.Errorf("ipvs.persistence_quiescent(%s) fix = %q, want the sysctl", tt.name, got.Fix)
			}
		})
	}
}

// The IPVS table as 6.1 shows it (guest, ipvsadm -Lnc): a template carries
// its service's protocol, and a firewall-mark service's is "IP 0.0.0.9:0".
func TestPersistenceQuiescentTemplatesOfTheirService(t *testing.T) {
	fwm := ipvs.Service{Proto: "fwmark", FWMark: 9, Scheduler: "rr", Flags: []string{"persistent"}, Timeout: 60,
		Reals: []ipvs.Real{{Addr: realA, Method: ipvs.Masq, Weight: 0}, {Addr: realB, Method: ipvs.Masq, Weight: 1}}}
	tests := []struct {
		name      string
		svc       func(s *probes.Snapshot)
		counts    []ipvs.ConnCount
		want      checks.Status
		wantTitle string
	}{
		{name: "a TCP service's template is not its UDP twin's, whose real is drained",
			svc: func(s *probes.Snapshot) {
				withReals(s, "udp", 0, 1)
				s.IPVS.Services[0].Flags, s.IPVS.Services[0].Timeout = []string{"persistent"}, 60
			},
			counts: []ipvs.ConnCount{{Proto: "tcp", VIP: churnVIP, Dest: realA, State: "ASSURED", Template: true, Count: 1}},
			want:   checks.Pass, wantTitle: "no persistent client is pinned"},
		{name: "a firewall-mark service's template to its drained real",
			svc:    func(s *probes.Snapshot) { s.IPVS.Services = []ipvs.Service{fwm} },
			counts: []ipvs.ConnCount{{Proto: "ip", VIP: netip.MustParseAddrPort("0.0.0.9:0"), Dest: netip.AddrPortFrom(realA.Addr(), 0), State: "ASSURED", Template: true, Count: 1}},
			want:   checks.Fail, wantTitle: "persistent clients are still sent to 10.1.0.50"},
		{name: "another mark's template",
			svc:    func(s *probes.Snapshot) { s.IPVS.Services = []ipvs.Service{fwm} },
			counts: []ipvs.ConnCount{{Proto: "ip", VIP: netip.MustParseAddrPort("0.0.0.8:0"), Dest: netip.AddrPortFrom(realA.Addr(), 0), State: "ASSURED", Template: true, Count: 1}},
			want:   checks.Pass, wantTitle: "no persistent client is pinned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := churnFixture(t, map[string]string{"net.ipv4.vs.expire_quiescent_template": "0"})
			tt.svc(s)
			s.IPVS.ConnCounts = tt.counts
			got, _ := run(t, s, "ipvs.persistence_quiescent")
			if got.Status != tt.want || !strings.Contains(got.Title, tt.wantTitle) {
				t.Errorf("ipvs.persistence_quiescent(%s) = %s %q, want %s %q", tt.name, got.Status, got.Title, tt.want, tt.wantTitle)
			}
		})
	}
}

func TestStaleUDP(t *testing.T) {
	conn := func(dest netip.AddrPort) []ipvs.ConnCount {
		return []ipvs.ConnCount{{Proto: "udp", VIP: churnVIP, Dest: dest, State: "UDP", Count: 2}}
	}
	tests := []struct {
		name      string
		proto     string
		nodest    string
		weightA   int
		noA       bool
		fwmark    uint32
		counts    []ipvs.ConnCount
		connsErr  bool
		want      checks.Status
		wantTitle string
		wantFix   []string
	}{
		{name: "TCP service", proto: "tcp", nodest: "0", counts: conn(realA), want: checks.Pass, wantTitle: "no selected service is UDP"},
		{name: "entries to a drained real", proto: "udp", nodest: "0", weightA: 0, counts: conn(realA), want: checks.Fail, wantTitle: "UDP clients are kept on 10.1.0.50:8085",
			wantFix: []string{"ip netns exec lb sysctl -w net.ipv4.vs.expire_nodest_conn=1", "ip netns exec lb ipvsadm -d -u 10.1.0.6:8085 -r 10.1.0.50:8085"}},
		{name: "entries to a removed real, expire_nodest_conn=0", proto: "udp", nodest: "0", noA: true, counts: conn(realA), want: checks.Fail, wantTitle: "UDP clients are kept on 10.1.0.50:8085",
			wantFix: []string{"ip netns exec lb sysctl -w net.ipv4.vs.expire_nodest_conn=1"}},
		{name: "entries to a removed real, expire_nodest_conn=1", proto: "udp", nodest: "1", noA: true, counts: conn(realA), want: checks.Pass, wantTitle: "no UDP client is kept"},
		{name: "entries to reals in service", proto: "udp", nodest: "0", weightA: 1, counts: conn(realA), want: checks.Pass, wantTitle: "no UDP client is kept"},
		{name: "table unread", proto: "udp", nodest: "0", weightA: 0, connsErr: true, want: checks.Skip},
		// A firewall-mark service's entries carry the packets' own VIP and
		// protocol: its UDP is known by them.
		{name: "a firewall-mark service's UDP entries to a drained real", proto: "fwmark", fwmark: 16, nodest: "0", weightA: 0, counts: conn(realA), want: checks.Fail,
			wantTitle: "UDP clients are kept on 10.1.0.50:8085", wantFix: []string{"ip netns exec lb ipvsadm -d -f 16 -r 10.1.0.50"}},
		{name: "a firewall-mark service's UDP entries to a removed real", proto: "fwmark", fwmark: 16, nodest: "0", noA: true, counts: conn(realA), want: checks.Fail,
			wantTitle: "UDP clients are kept on 10.1.0.50:8085", wantFix: []string{"ip netns exec lb sysctl -w net.ipv4.vs.expire_nodest_conn=1"}},
		{name: "a firewall-mark service's TCP entries to a drained real", proto: "fwmark", fwmark: 16, nodest: "0", weightA: 0,
			counts: []ipvs.ConnCount{{Proto: "tcp", VIP: churnVIP, Dest: realA, State: "ESTABLISHED", Count: 2}}, want: checks.Pass, wantTitle: "no selected service is UDP"},
		{name: "a firewall-mark service, table unread", proto: "fwmark", fwmark: 16, nodest: "0", connsErr: true, want: checks.Skip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := churnFixture(t, map[string]string{"net.ipv4.vs.expire_nodest_conn": tt.nodest})
			withReals(s, tt.proto, tt.weightA, 1)
			if tt.noA {
				s.IPVS.Services[0].Reals = s.IPVS.Services[0].Reals[1:]
			}
			if tt.fwmark != 0 {
				// ipvsadm -a -f MARK -r ADDR: a real without a port; its
				// entries take the packets' own.
				svc := &s.IPVS.Services[0]
				svc.FWMark, svc.Addr = tt.fwmark, netip.AddrPort{}
				for i, r := range svc.Reals {
					svc.Reals[i].Addr = netip.AddrPortFrom(r.Addr.Addr(), 0)
				}
			}
			s.IPVS.ConnCounts = tt.counts
			if tt.connsErr {
				s.Errors = map[string]string{probes.ProbeIPVSConns: "not read: IPVS holds 20000 connections"}
			}
			got, _ := run(t, s, "ipvs.stale_udp")
			if got.Status != tt.want || !strings.Contains(got.Title, tt.wantTitle) {
				t.Errorf("ipvs.stale_udp(%s) = %s %q, want %s %q", tt.name, got.Status, got.Title, tt.want, tt.wantTitle)
			}
			for _, f := range tt.wantFix {
				if !slices.Contains(got.Fix, f) {
					t.Errorf("ipvs.stale_udp(%s) fix = %q, want %q in it", tt.name, got.Fix, f)
				}
			}
		})
	}
}

func TestConnReuse(t *testing.T) {
	tests := []struct {
		name, kernel, mode, nodest, vsct string
		want                             checks.Status
		wantFix                          []string
	}{
		{"6.1, mode 1", "6.1.0-56-cloud-amd64", "1", "0", "1", checks.Pass, nil},
		{"6.1, mode 0, expire_nodest_conn 0", "6.1.0-56-cloud-amd64", "0", "0", "1", checks.Fail,
			[]string{"ip netns exec lb sysctl -w net.ipv4.vs.conn_reuse_mode=1", "ip netns exec lb sysctl -w net.ipv4.vs.expire_nodest_conn=1"}},
		{"6.1, mode 0, expire_nodest_conn 1", "6.1.0-56-cloud-amd64", "0", "1", "1", checks.Warn, []string{"ip netns exec lb sysctl -w net.ipv4.vs.conn_reuse_mode=1"}},
		{"5.4, mode 0, expire_nodest_conn 0", "5.4.0-150-generic", "0", "0", "1", checks.Fail, []string{"ip netns exec lb sysctl -w net.ipv4.vs.expire_nodest_conn=1"}},
		{"5.4, mode 0, expire_nodest_conn 1 (kube-proxy's choice)", "5.4.0-150-generic", "0", "1", "1", checks.Pass, nil},
		{"5.4, mode 1, vs.conntrack 1", "5.4.0-150-generic", "1", "1", "1", checks.Warn, []string{"ip netns exec lb sysctl -w net.ipv4.vs.conn_reuse_mode=0"}},
		{"5.4, mode 1, vs.conntrack 0", "5.4.0-150-generic", "1", "1", "0", checks.Pass, nil},
		{"5.10, mode 1", "5.10.0-30-amd64", "1", "0", "1", checks.Pass, nil},
		{"4.19, mode 2", "4.19.0-26-amd64", "2", "1", "1", checks.Warn, nil},
		{"unparsable kernel", "weird", "1", "1", "1", checks.Skip, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := churnFixture(t, map[string]string{"net.ipv4.vs.conn_reuse_mode": tt.mode, "net.ipv4.vs.expire_nodest_conn": tt.nodest, "net.ipv4.vs.conntrack": tt.vsct})
			s.Kernel = tt.kernel
			got, _ := run(t, s, "ipvs.conn_reuse")
			if got.Status != tt.want {
				t.Errorf("ipvs.conn_reuse(%s) = %s %q, want %s", tt.name, got.Status, got.Title, tt.want)
			}
			for _, f := range tt.wantFix {
				if !slices.Contains(got.Fix, f) {
					t.Errorf("ipvs.conn_reuse(%s) fix = %q, want %q in it", tt.name, got.Fix, f)
				}
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	noSocket := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 2, Location: 0xffff,
		Src: netip.MustParseAddrPort("10.1.0.3:40000"), Dst: churnVIP}, Count: 5}, ReasonName: "NO_SOCKET", Symbol: "tcp_v4_rcv+0x7b"}
	// The real's answer on a forgotten connection, to the LB's SNAT address.
	realNoSocket := noSocket
	realNoSocket.Src, realNoSocket.Dst = realA, netip.MustParseAddrPort("10.1.0.5:61000")
	tests := []struct {
		name       string
		proto      string
		tcp        int
		keepalive  string
		drops      []drops.Counted
		want       checks.Status
		wantTitle  string
		wantFix    string
		wantDrops  checks.Status
		wantReason string
	}{
		{name: "defaults: 900 s before keepalive's 7200 s", proto: "tcp", tcp: 900, keepalive: "7200", want: checks.Warn, wantTitle: "IPVS forgets a TCP connection idle 900s, before keepalive's first probe (7200s)",
			wantFix: "ip netns exec lb ipvsadm --set 7260 120 300   # IPVS tcp timeout past the first keepalive probe; tcpfin and udp as they are"},
		{name: "IPVS outlasts keepalive", proto: "tcp", tcp: 7260, keepalive: "7200", want: checks.Pass},
		{name: "clients probe sooner", proto: "tcp", tcp: 900, keepalive: "600", want: checks.Pass},
		{name: "the window saw the RSTs", proto: "tcp", tcp: 3, keepalive: "7200", drops: []drops.Counted{noSocket, realNoSocket}, want: checks.Fail,
			wantTitle: "IPVS forgot idle TCP connections after 3s", wantDrops: checks.Warn, wantReason: "explained by ipvs.timeouts"},
		{name: "keepalive unread", proto: "tcp", tcp: 900, keepalive: "", want: checks.Skip},
		{name: "UDP service", proto: "udp", tcp: 900, keepalive: "7200", want: checks.Pass, wantTitle: "no selected service is TCP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := churnFixture(t, map[string]string{"net.ipv4.tcp_keepalive_time": tt.keepalive, "net.netfilter.nf_conntrack_tcp_timeout_established": "432000", "net.netfilter.nf_conntrack_udp_timeout_stream": "120"})
			s.IPVS.Services[0].Proto = tt.proto
			s.IPVS.Timeouts.TCP = tt.tcp
			if tt.drops != nil {
				s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: tt.drops}
			}
			got, fs := run(t, s, "ipvs.timeouts")
			if got.Status != tt.want || !strings.Contains(got.Title, tt.wantTitle) {
				t.Errorf("ipvs.timeouts(%s) = %s %q, want %s %q", tt.name, got.Status, got.Title, tt.want, tt.wantTitle)
			}
			if tt.wantFix != "" && !slices.Contains(got.Fix, tt.wantFix) {
				t.Errorf("ipvs.timeouts(%s) fix = %q, want %q", tt.name, got.Fix, tt.wantFix)
			}
			if tt.want == checks.Warn || tt.want == checks.Fail {
				if ev := got.Evidence[0].Fact; ev != "TCP idle timeouts: IPVS established "+strconv.Itoa(tt.tcp)+"s · tcp_keepalive_time 7200s · conntrack established 432000s" {
					t.Errorf("ipvs.timeouts(%s) evidence = %q, want the three timeouts side by side", tt.name, ev)
				}
			}
			if tt.wantDrops != "" {
				if d := find(fs, "drops.vip_flows"); d.Status != tt.wantDrops || !strings.Contains(d.Reason, tt.wantReason) {
					t.Errorf("drops.vip_flows(%s) = %s %q, want %s %q", tt.name, d.Status, d.Reason, tt.wantDrops, tt.wantReason)
				}
			}
		})
	}
}

func TestStaleFlows(t *testing.T) {
	client := netip.MustParseAddrPort("10.1.0.3:53000")
	untouched := conntrack.Flow{Proto: "tcp", Orig: conntrack.Tuple{Src: client, Dst: churnVIP}, Reply: conntrack.Tuple{Src: churnVIP, Dst: client}, State: "SYN_SENT", Status: []string{"CONFIRMED"}, Timeout: 29}
	notSNATed := conntrack.Flow{Proto: "tcp", Orig: conntrack.Tuple{Src: client, Dst: churnVIP}, Reply: conntrack.Tuple{Src: realA, Dst: client}, State: "SYN_SENT", Status: []string{"CONFIRMED"}, Timeout: 29}
	tally := func(n int) []probes.FlowTally { return []probes.FlowTally{{Proto: "tcp", Dst: churnVIP, Count: n}} }
	tests := []struct {
		name      string
		fixture   string // seed-stage3: one-arm with an -m ipvs MASQUERADE rule; seed-stage1: without; two-arm: none due
		method    string
		udp       bool // the service and its flow are UDP (a client that keeps its port)
		flow      conntrack.Flow
		untouched []probes.FlowTally
		notSNATed []probes.FlowTally
		selector  string
		want      checks.Status
		wantFix   string
	}{
		{name: "a flow older than the service", fixture: "seed-stage3", method: ipvs.Masq, flow: untouched, untouched: tally(1), want: checks.Warn,
			wantFix: "ip netns exec lb conntrack -D -p tcp --orig-dst 10.1.0.6 --orig-port-dst 8085 --reply-src 10.1.0.6   # only flows nothing rewrote: a flow IPVS took has its real as reply source"},
		// A TCP attempt ends when its client gives up; a UDP client keeps
		// its port and its flow for ever.
		{name: "a UDP flow older than the service", fixture: "seed-stage3", method: ipvs.Masq, udp: true, flow: untouched, untouched: tally(1), want: checks.Fail,
			wantFix: "ip netns exec lb conntrack -D -p udp --orig-dst 10.1.0.6 --orig-port-dst 8085 --reply-src 10.1.0.6   # only flows nothing rewrote: a flow IPVS took has its real as reply source"},
		{name: "a UDP flow older than the SNAT rule", fixture: "seed-stage3", method: ipvs.Masq, udp: true, flow: notSNATed, notSNATed: tally(3), want: checks.Fail},
		{name: "untouched flows of another protocol", fixture: "seed-stage3", method: ipvs.Masq, flow: untouched, untouched: []probes.FlowTally{{Proto: "udp", Dst: churnVIP, Count: 1}}, want: checks.Pass},
		{name: "direct routing: IPVS never rewrites", fixture: "seed-stage3", method: ipvs.Route, flow: untouched, untouched: tally(1), want: checks.Pass},
		{name: "a flow older than the SNAT rule", fixture: "seed-stage3", method: ipvs.Masq, flow: notSNATed, notSNATed: tally(3), want: checks.Warn,
			wantFix: "ip netns exec lb conntrack -D -p tcp --orig-dst 10.1.0.6 --orig-port-dst 8085 --reply-dst 10.1.0.3   # this client's flows without SNAT (a SNATed flow's replies go to the LB)"},
		{name: "no SNAT rule at all: nat.return_path's to judge", fixture: "seed-stage1", method: ipvs.Masq, flow: notSNATed, notSNATed: tally(3), want: checks.Pass},
		{name: "two-arm: no SNAT is due", fixture: "two-arm", method: ipvs.Masq, flow: notSNATed, notSNATed: tally(3), want: checks.Pass},
		{name: "every flow rewritten", fixture: "seed-stage3", method: ipvs.Masq, flow: untouched, want: checks.Pass},
		{name: "flows not read", fixture: "seed-stage3", method: ipvs.Masq, flow: untouched, selector: "none (statistics only)", want: checks.Skip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, tt.fixture)
			for i := range s.IPVS.Services[0].Reals {
				s.IPVS.Services[0].Reals[i].Method = tt.method
			}
			s.Conntrack.Flows = []conntrack.Flow{tt.flow}
			s.Conntrack.Counts = nil
			s.Conntrack.Untouched = tt.untouched
			s.Conntrack.NotSNATed = tt.notSNATed
			if tt.udp {
				s.IPVS.Services[0].Proto = "udp"
				s.Conntrack.Flows[0].Proto, s.Conntrack.Flows[0].State = "udp", ""
				for _, l := range [][]probes.FlowTally{s.Conntrack.Untouched, s.Conntrack.NotSNATed} {
					for i := range l {
						l[i].Proto = "udp"
					}
				}
			}
			if tt.selector != "" {
				s.Conntrack.Selector = tt.selector
			}
			got, fs := run(t, s, "conntrack.stale_flows")
			if got.Status != tt.want {
				t.Errorf("conntrack.stale_flows(%s) = %s %q, want %s", tt.name, got.Status, got.Title, tt.want)
			}
			if tt.wantFix != "" && !slices.Contains(got.Fix, tt.wantFix) {
				t.Errorf("conntrack.stale_flows(%s) fix = %q, want %q", tt.name, got.Fix, tt.wantFix)
			}
			// The flow is unreplied: the VIP's flows never "complete".
			if st := find(fs, "conntrack.flow_states"); st.Status == checks.Pass {
				t.Errorf("conntrack.flow_states(%s) = pass %q with the VIP's flow unreplied", tt.name, st.Title)
			}
		})
	}
}

// ipvs.expire_nodest_conn cites the idle timeout of its services'
// protocol, not TCP's for a UDP service.
func TestExpireNodestCitesTheProtocolTimeout(t *testing.T) {
	tests := []struct{ proto, want, notWant string }{
		{"tcp", "(tcp 900s)", "udp"},
		{"udp", "(udp 300s)", "tcp"},
	}
	for _, tt := range tests {
		s := churnFixture(t, nil)
		s.IPVS.Services[0].Proto = tt.proto
		got, _ := run(t, s, "ipvs.expire_nodest_conn")
		if got.Status != checks.Warn || !strings.Contains(got.Reason, tt.want) || strings.Contains(got.Reason, tt.notWant+" ") {
			t.Errorf("ipvs.expire_nodest_conn(%s service) = %s %q, want warn citing %s", tt.proto, got.Status, got.Reason, tt.want)
		}
	}
}
