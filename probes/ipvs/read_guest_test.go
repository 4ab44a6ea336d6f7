//go:build guest

package ipvs_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// ipvsadmRestore loads rules (ipvsadm -R) into ns.
func ipvsadmRestore(tb testing.TB, ns netns.Target, rules []byte) {
	tb.Helper()
	err := ns.Do(func() error {
		cmd := exec.Command("ipvsadm", "-R")
		cmd.Stdin = bytes.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("ipvsadm -R in %s: %v", ns, err)
	}
}

// mobyRead is what Read returned through moby/ipvs before it read IPVS's
// netlink dumps itself: the reference the new reader must agree with.
func mobyRead(ns netns.Target) ([]ipvs.Service, error) {
	h, err := mobyipvs.New(ns.Path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		return nil, err
	}
	addrPort := func(ip net.IP, port uint16) netip.AddrPort {
		a, _ := netip.AddrFromSlice(ip)
		return netip.AddrPortFrom(a.Unmap(), port)
	}
	stats := func(s mobyipvs.SvcStats) ipvs.Stats {
		return ipvs.Stats{Conns: s.Connections, PacketsIn: s.PacketsIn, PacketsOut: s.PacketsOut, BytesIn: s.BytesIn, BytesOut: s.BytesOut,
			CPS: s.CPS, PPSIn: s.PPSIn, PPSOut: s.PPSOut, BPSIn: s.BPSIn, BPSOut: s.BPSOut}
	}
	methods := map[uint32]string{mobyipvs.ConnectionFlagMasq: ipvs.Masq, mobyipvs.ConnectionFlagLocalNode: ipvs.Local, mobyipvs.ConnectionFlagTunnel: ipvs.Tunnel, mobyipvs.ConnectionFlagDirectRoute: ipvs.Route}
	flagNames := []string{"persistent", "hashed", "ops", "sched-flag-1", "sched-flag-2", "sched-flag-3"}
	var out []ipvs.Service
	for _, s := range svcs {
		proto := map[uint16]string{6: "tcp", 17: "udp", 132: "sctp"}[s.Protocol]
		if s.FWMark != 0 {
			proto = "fwmark"
		}
		flags := []string{}
		for i, n := range flagNames {
			if s.Flags&(1<<i) != 0 {
				flags = append(flags, n)
			}
		}
		svc := ipvs.Service{Proto: proto, Addr: addrPort(s.Address, s.Port), FWMark: s.FWMark, Scheduler: s.SchedName, Flags: flags,
			Timeout: s.Timeout, Stats: stats(mobyipvs.SvcStats(s.Stats)), Reals: []ipvs.Real{}}
		dsts, err := h.GetDestinations(s)
		if err != nil {
			return nil, err
		}
		for _, d := range dsts {
			svc.Reals = append(svc.Reals, ipvs.Real{Addr: addrPort(d.Address, d.Port), Method: methods[d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask],
				Weight: d.Weight, ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections,
				UpperThresh: d.UpperThreshold, LowerThresh: d.LowerThreshold, Stats: stats(mobyipvs.SvcStats(d.Stats))})
		}
		out = append(out, svc)
	}
	return out, nil
}

// Read (IPVS's netlink dumps read by lbdoctor) says what moby/ipvs says,
// service by service and real by real, over every kind of service: TCP,
// UDP, IPv6, firewall mark, persistent, each forwarding method,
// thresholds, counters that moved.
func TestGuestReadAgreesWithMoby(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 3) // counters and connections that are not 0
	ipvsadmRestore(t, l.LB, []byte(`-A -t 10.9.0.1:80 -s wrr -p 120
-a -t 10.9.0.1:80 -r 10.9.1.1:8080 -m -w 3 -x 100 -y 10
-a -t 10.9.0.1:80 -r 10.9.1.2:80 -g -w 0
-a -t 10.9.0.1:80 -r 10.9.1.3:80 -i -w 1
-A -u 10.9.0.2:53 -s sh
-a -u 10.9.0.2:53 -r 10.9.1.4:5353 -m -w 2
-A -f 7 -s rr
-a -f 7 -r 10.9.1.5:0 -g -w 1
-A -t [2001:db8::6]:443 -s lc
-a -t [2001:db8::6]:443 -r [2001:db8::50]:8443 -m -w 1
-a -t [2001:db8::6]:443 -r [2001:db8::51]:443 -g -w 1
-A -t 10.9.0.3:81 -s rr
`))
	time.Sleep(2500 * time.Millisecond) // the counters of the connections folded
	got, err := ipvs.Read(l.LB)
	if err != nil {
		t.Fatalf("Read(lb) = %v", err)
	}
	want, err := mobyRead(l.LB)
	if err != nil {
		t.Fatalf("moby/ipvs read of lb: %v", err)
	}
	if len(got.Services) != 6 || len(want) != 6 {
		t.Fatalf("Read(lb) = %d services, moby/ipvs %d, want 6 each", len(got.Services), len(want))
	}
	// The estimator's rates decay at every fold (2 s) after traffic:
	// they may move between the two reads, the counters do not.
	noRates := func(s ipvs.Service) ipvs.Service {
		s.Stats.CPS, s.Stats.PPSIn, s.Stats.PPSOut, s.Stats.BPSIn, s.Stats.BPSOut = 0, 0, 0, 0, 0
		reals := append([]ipvs.Real{}, s.Reals...)
		for i := range reals {
			reals[i].Stats.CPS, reals[i].Stats.PPSIn, reals[i].Stats.PPSOut, reals[i].Stats.BPSIn, reals[i].Stats.BPSOut = 0, 0, 0, 0, 0
		}
		s.Reals = reals
		return s
	}
	for i := range want {
		g, w := noRates(got.Services[i]), noRates(want[i])
		if !reflect.DeepEqual(g, w) {
			t.Errorf("Read(lb) service %d = %+v, want (moby/ipvs) %+v", i, g, w)
		}
	}
	if got.Timeouts.TCP == 0 {
		t.Errorf("Read(lb) timeouts = %+v, want IPVS's", got.Timeouts)
	}
}

// BenchmarkGuestReadScale reads 1,000 services × 10 reals (a kube-proxy
// IPVS node's size) with Read, with moby/ipvs (what Read used before), and
// with ipvsadm -Ln, side by side in one guest:
//
//	make guest-test RUN='^$' BENCH=GuestReadScale GUEST_PKGS=./probes/ipvs/
func BenchmarkGuestReadScale(b *testing.B) {
	ns := testkit.Netns(b, "rs")
	var rules bytes.Buffer
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&rules, "-A -t 10.96.%d.%d:80 -s rr\n", i/250, i%250+1)
		for j := 0; j < 10; j++ {
			k := i*10 + j
			fmt.Fprintf(&rules, "-a -t 10.96.%d.%d:80 -r 10.244.%d.%d:8080 -m -w 1\n", i/250, i%250+1, k/250, k%250+1)
		}
	}
	ipvsadmRestore(b, ns, rules.Bytes())
	b.Run("lbdoctor", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if s, err := ipvs.Read(ns); err != nil || len(s.Services) != 1000 {
				b.Fatalf("Read = %d services, %v; want 1000", len(s.Services), err)
			}
		}
	})
	b.Run("moby-ipvs", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if s, err := mobyRead(ns); err != nil || len(s) != 1000 {
				b.Fatalf("moby/ipvs read = %d services, %v; want 1000", len(s), err)
			}
		}
	})
	b.Run("ipvsadm-Ln", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			testkit.Run(b, ns, "ipvsadm", "-Ln")
		}
	})
}
