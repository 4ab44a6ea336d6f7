package checks_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/window"
)

// Scale of BenchmarkRunScale: issue 11's LB.
const (
	benchServices = 1000
	benchReals    = 10
)

// scaleLB is the two-arm fixture grown to the LB BenchmarkGuestCheckScale
// builds in the guest (cmd/lbdoctor/scale_guest_test.go): 1,000 services ×
// 10 masquerade reals behind a gateway (10.244.0.0/16 via 10.2.0.2), every
// VIP on lo, an `-m ipvs` MASQUERADE rule, and the listed tables full (a
// check that walks them for each real costs services × reals × MaxListed).
// stat is every counter's value: two reads of a window differ by it.
func scaleLB(b *testing.B, stat uint32) *probes.Snapshot {
	data, err := os.ReadFile(filepath.Join("testdata", "two-arm.snapshot.json"))
	if err != nil {
		b.Fatal(err)
	}
	var s probes.Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		b.Fatal(err)
	}
	if len(s.IPVS.Services) == 0 {
		b.Fatal("two-arm fixture has no IPVS service")
	}
	proto := s.IPVS.Services[0]
	s.IPVS.Services = nil
	gw := netip.MustParseAddr("10.2.0.2")
	s.Net.Routes = append(s.Net.Routes, netstate.Route{Dst: netip.MustParsePrefix("10.244.0.0/16"), Gw: gw, Dev: "eth1", Table: 254, Scope: "universe"})
	s.Net.Neighbours = append(s.Net.Neighbours, netstate.Neighbour{IP: gw, MAC: "02:00:00:00:02:02", Dev: "eth1", State: "PERMANENT"})
	lo := &s.Net.Links[0]
	for i := 0; i < benchServices; i++ {
		svc := proto
		svc.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}), 80)
		svc.Stats = ipvs.Stats{Conns: stat, PacketsIn: stat, PacketsOut: stat}
		svc.Reals = nil
		for j := 0; j < benchReals; j++ {
			k := i*benchReals + j
			r := proto.Reals[0]
			r.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(k / 250), byte(k%250 + 1)}), 8080)
			r.Stats = ipvs.Stats{Conns: stat, PacketsIn: stat, PacketsOut: stat}
			svc.Reals = append(svc.Reals, r)
		}
		s.IPVS.Services = append(s.IPVS.Services, svc)
		vip := netip.PrefixFrom(svc.Addr.Addr(), 32)
		s.Net.Local = append(s.Net.Local, vip)
		lo.Addrs = append(lo.Addrs, vip)
	}
	rs, chains, err := rules.ParseSaveChains(rules.IptablesNft, []byte("*nat\n:POSTROUTING ACCEPT [0:0]\n"+
		"[0:0] -A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -j MASQUERADE\nCOMMIT\n"))
	if err != nil {
		b.Fatal(err)
	}
	s.Rules.Rules, s.Rules.Chains = rs, chains
	for i := range s.Rules.Backends {
		if s.Rules.Backends[i].Name == rules.IptablesNft {
			s.Rules.Backends[i].Rules = len(rs)
		}
	}
	// kube-proxy's settings, as the guest's LB has them.
	setSysctl(&s, "net.ipv4.vs.conntrack", "1")
	setSysctl(&s, "net.ipv4.tcp_keepalive_time", "7200")
	client := netip.MustParseAddr("10.1.0.2")
	for i := 0; i < probes.MaxListed; i++ {
		svc := s.IPVS.Services[i%len(s.IPVS.Services)]
		src := netip.AddrPortFrom(client, uint16(10000+i))
		s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: svc.Proto, Client: src, VIP: svc.Addr, Dest: svc.Reals[0].Addr, State: "ESTABLISHED", Expires: 3600})
		s.Conntrack.Flows = append(s.Conntrack.Flows, conntrack.Flow{Proto: svc.Proto, Orig: conntrack.Tuple{Src: src, Dst: svc.Addr}, Reply: conntrack.Tuple{Src: svc.Reals[0].Addr, Dst: src}, State: "ESTABLISHED", Status: []string{"DST_NAT"}, Timeout: 3600})
	}
	// Counted over the whole table: every service's every real.
	for _, svc := range s.IPVS.Services {
		for _, r := range svc.Reals {
			s.IPVS.ConnCounts = append(s.IPVS.ConnCounts, ipvs.ConnCount{Proto: svc.Proto, VIP: svc.Addr, Dest: r.Addr, State: "ESTABLISHED", Count: 10})
			s.Conntrack.Backends = append(s.Conntrack.Backends, r.Addr)
		}
	}
	return &s
}

// scaleWindow is the window check builds over scaleLB, the way window.Run
// builds it after its last read (window.Go's tail): the first read without
// the flow tables, the counters' deltas, every real probed (as far as
// health.MaxTargets), and the drops the tracer counted.
func scaleWindow(b *testing.B, sel probes.Selector, counted []drops.Counted) *probes.Snapshot {
	before, after := scaleLB(b, 100), scaleLB(b, 200)
	before.IPVS.Conns, before.IPVS.ConnCounts, before.Conntrack.Flows, before.Conntrack.Backends = nil, nil, nil, nil
	after.Time = before.Time.Add(3 * time.Second)
	after.Drops = &drops.Sample{Window: 3 * time.Second, Attach: "kfree_skb", Drops: counted}
	w := &probes.Window{Length: 3 * time.Second, Elapsed: 3 * time.Second, Skipped: map[string]string{}}
	for _, svc := range after.IPVS.Services {
		for _, r := range svc.Reals {
			if len(w.Health) == health.MaxTargets {
				w.HealthLeftOut++
				continue
			}
			w.Health = append(w.Health, health.Result{Service: svc.Key(), Proto: svc.Proto, Real: r.Addr, Connect: "ok", RTT: time.Millisecond,
				Source: netip.MustParseAddr("10.2.0.1"), SourcePort: 40000, Neighbour: "PERMANENT", NextHop: netip.MustParseAddr("10.2.0.2"), Dev: "eth1"})
		}
	}
	buildWindow(before, after, w, sel)
	return after
}

// buildWindow is what window.Run computes after its last read, before the
// checks: the deltas and the joins.
func buildWindow(before, after *probes.Snapshot, w *probes.Window, sel probes.Selector) {
	w.Deltas = probes.Delta(before, after)
	w.Neighbours = window.RealNeighbours(after, sel)
	w.RoutesBack = window.RoutesBack(after)
	w.DropPoints = window.Join(before, after, w)
	w.Paths = window.Paths(after, w, sel)
	w.First = before
	after.Window = w
}

// BenchmarkRunScale runs the catalog on issue 11's LB (scaleLB): static,
// with a window whose deltas name every service and real, and with a
// window whose drop no finding of its last read explains (drops.vip_flows
// then judges it on the window's first read); "window-build" is what the
// window computes after its last read, before the checks (deltas,
// neighbours, drop joins, paths). The checks' share of `check` on a big
// LB, measured on the host (the guest benchmark, BenchmarkGuestCheckScale,
// measures the whole command).
func BenchmarkRunScale(b *testing.B) {
	sel := probes.Selector{}
	static := scaleLB(b, 100)
	quiet := scaleWindow(b, sel, nil)
	// A drop nothing explains (a qdisc's, on the way to a client): the
	// first read is judged for a cause fixed during the window.
	dropped := scaleWindow(b, sel, []drops.Counted{{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 5, Location: 0xffff,
		Src: netip.MustParseAddrPort("10.96.0.1:80"), Dst: netip.MustParseAddrPort("10.1.0.2:10000")}, Count: 3},
		ReasonName: "QDISC_DROP", Symbol: "__dev_queue_xmit+0x5a"}})
	for _, tc := range []struct {
		name string
		s    *probes.Snapshot
		want checks.Status // drops.vip_flows
	}{{"static", static, checks.Skip}, {"window", quiet, checks.Pass}, {"window-drop", dropped, checks.Fail}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				fs := checks.Run(tc.s, sel)
				if got := statusOf(fs, "drops.vip_flows").Status; got != tc.want {
					b.Fatalf("Run(%s) drops.vip_flows = %s, want %s", tc.name, got, tc.want)
				}
			}
		})
	}
	b.Run("window-build", func(b *testing.B) {
		b.ReportAllocs()
		before, after := *dropped.Window.First, *dropped
		for i := 0; i < b.N; i++ {
			w := &probes.Window{Length: 3 * time.Second, Elapsed: 3 * time.Second, Health: dropped.Window.Health, Skipped: map[string]string{}}
			buildWindow(&before, &after, w, sel)
			if len(w.Paths) != window.MaxPaths {
				b.Fatalf("window.Paths = %d paths, want %d", len(w.Paths), window.MaxPaths)
			}
		}
	})
}

// On issue 11's LB every check writes more lines than a finding shows:
// the lines it only counts (withLines) are never among those shown, and
// the last line shown counts the rest.
func TestRunScaleShowsEveryLine(t *testing.T) {
	b := &testing.B{}
	sel := probes.Selector{}
	for _, tc := range []struct {
		name string
		s    *probes.Snapshot
	}{{"static", scaleLB(b, 100)}, {"window", scaleWindow(b, sel, nil)}} {
		t.Run(tc.name, func(t *testing.T) {
			capped := 0
			for _, f := range checks.Run(tc.s, sel) {
				for i, e := range f.Evidence {
					if e.Fact == "" || e.Source == "" {
						t.Errorf("Run(%s) %s evidence line %d = %q (%s), want a line written", tc.name, f.ID, i, e.Fact, e.Source)
					}
				}
				if n := len(f.Evidence); n == checks.MaxEvidence && strings.HasPrefix(f.Evidence[n-1].Fact, "… and ") {
					capped++
				}
			}
			if capped < 3 {
				t.Errorf("Run(%s) = %d findings with lines left out, want at least 3 (a scale that writes more than a finding shows)", tc.name, capped)
			}
		})
	}
}
