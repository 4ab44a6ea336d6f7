package probes_test

import (
	"net/netip"
	"slices"
	"testing"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

func TestDropFilter(t *testing.T) {
	ap := netip.MustParseAddrPort
	svcs := []ipvs.Service{
		{Proto: "tcp", Addr: ap("10.1.0.6:8085"), Reals: []ipvs.Real{{Addr: ap("10.1.0.50:8085")}, {Addr: ap("10.1.0.51:9000")}}},
		{Proto: "udp", Addr: ap("10.1.0.6:53"), Reals: []ipvs.Real{{Addr: ap("10.1.0.60:53")}}},
		{Proto: "fwmark", FWMark: 7},
	}
	tests := []struct {
		name      string
		sel       probes.Selector
		svcs      []ipvs.Service
		wantAddrs []string
		wantPorts []uint16
	}{
		{"one service: VIP, its reals, their ports", probes.Selector{VIP: ap("10.1.0.6:8085")}, svcs,
			[]string{"10.1.0.6", "10.1.0.50", "10.1.0.51"}, []uint16{8085, 9000}},
		{"udp service", probes.Selector{VIP: ap("10.1.0.6:53"), Proto: "udp"}, svcs,
			[]string{"10.1.0.6", "10.1.0.60"}, []uint16{53}},
		{"every service, fwmark left out", probes.Selector{}, svcs,
			[]string{"10.1.0.6", "10.1.0.50", "10.1.0.51", "10.1.0.60"}, []uint16{8085, 9000, 53}},
		{"VIP without IPVS: the VIP alone", probes.Selector{VIP: ap("10.9.0.1:80")}, nil,
			[]string{"10.9.0.1"}, []uint16{80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addrs, ports := probes.DropFilter(tt.sel, tt.svcs)
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.wantAddrs) || !slices.Equal(ports, tt.wantPorts) {
				t.Errorf("DropFilter(%+v) = %v %v, want %v %v", tt.sel, got, ports, tt.wantAddrs, tt.wantPorts)
			}
		})
	}
}

func TestOutsideDrops(t *testing.T) {
	ap := netip.MustParseAddrPort
	drop := func(src, dst string) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: ap(src), Dst: ap(dst)}, Count: 1}}
	}
	notItemised := drops.Counted{Aggregate: drops.Aggregate{Count: 7, NotItemised: true}}
	addrs := []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.244.0.1")}
	tests := []struct {
		name  string
		drop  drops.Counted
		ports []uint16
		want  bool
	}{
		{"client to a VIP", drop("10.1.0.2:1000", "10.96.0.1:80"), []uint16{80, 8080}, true},
		{"real's reply", drop("10.244.0.1:8080", "10.1.0.2:1000"), []uint16{80, 8080}, true},
		{"another address", drop("10.1.0.2:1000", "10.96.0.9:80"), []uint16{80, 8080}, false},
		{"a selected address, another port", drop("10.1.0.2:1000", "10.96.0.1:22"), []uint16{80, 8080}, false},
		{"no port filter", drop("10.1.0.2:1000", "10.96.0.1:22"), nil, true},
		{"counted by place alone: no flow to tell", notItemised, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := !probes.OutsideDrops(addrs, tt.ports)(tt.drop)
			if got != tt.want {
				t.Errorf("OutsideDrops(%s → %s, ports %v) kept = %v, want %v", tt.drop.Src, tt.drop.Dst, tt.ports, got, tt.want)
			}
		})
	}
}

// A window's first read (NoFlowTables) leaves the flow tables to its last
// read, but for a --vip IPVS does not serve: its flows name the backends
// the drop tracer needs before the window opens.
func TestGatherNoFlowTables(t *testing.T) {
	ns := testkit.Netns(t, "nft")
	vip, backend := netip.MustParseAddrPort("10.99.0.6:80"), netip.MustParseAddrPort("10.99.0.50:8080")
	err := ns.Do(func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		f := ct.NewFlow(unix.IPPROTO_TCP, ct.StatusConfirmed|ct.StatusDstNAT, netip.MustParseAddr("10.99.0.3"), vip.Addr(), 40000, vip.Port(), 600, 0)
		f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = backend.Addr(), backend.Port()
		return c.Create(f)
	})
	if err != nil {
		t.Fatalf("conntrack flow to %s via %s: %v", vip, backend, err)
	}
	tests := []struct {
		name         string
		sel          probes.Selector
		opt          probes.Options
		wantBackends int
		wantSelector string
	}{
		{"static read, --vip not IPVS", probes.Selector{VIP: vip}, probes.Options{}, 1, "original destination tcp 10.99.0.6:80, udp 10.99.0.6:80"},
		{"window's first read, --vip not IPVS: still read", probes.Selector{VIP: vip}, probes.Options{NoFlowTables: true}, 1, "original destination tcp 10.99.0.6:80, udp 10.99.0.6:80"},
		// No IPVS here: a first read with nothing selected is the report
		// of a window with nothing to watch, and says why no flow was read.
		{"window's first read, nothing selected: says so", probes.Selector{}, probes.Options{NoFlowTables: true}, 0, "none (no VIP selected and no IPVS service)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := probes.Gather(ns, tt.sel, tt.opt)
			if len(s.Conntrack.Backends) != tt.wantBackends || s.Conntrack.Selector != tt.wantSelector || s.Errors[probes.ProbeConntrack] != "" {
				t.Errorf("Gather(%+v, %+v).Conntrack = backends %v, selector %q, errors %v; want %d backends, selector %q", tt.sel, tt.opt, s.Conntrack.Backends, s.Conntrack.Selector, s.Errors, tt.wantBackends, tt.wantSelector)
			}
		})
	}
}
