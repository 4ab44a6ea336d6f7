package probes_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// AskRoutes asks a real kernel what the config checks judge: where a VIP
// that is not local would go, and — where the reverse-path filter is on —
// the route back to each client source and whether each filtering
// interface lets it in. The host kernel has no IPVS: the service and the
// client's flow are written into the snapshot, the namespace is real.
func TestAskRoutes(t *testing.T) {
	l := testkit.Lab(t, lab.TwoArm)
	testkit.Veth(t, testkit.VethEnd{NS: l.Client, Name: "eth1", Addrs: []string{"10.3.0.3/24"}}, testkit.VethEnd{NS: l.LB, Name: "eth2", Addrs: []string{"10.3.0.1/24"}})
	testkit.Run(t, l.LB, "ip", "route", "add", l.ClientIP.String()+"/32", "via", "10.3.0.3", "dev", "eth2")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	client := netip.AddrPortFrom(l.ClientIP, 40000)
	read := func(t *testing.T) *probes.Snapshot {
		t.Helper()
		s := &probes.Snapshot{Target: l.LB, Errors: map[string]string{}, IPVS: ipvs.Snapshot{Available: true,
			Services: []ipvs.Service{{Proto: "tcp", Addr: vip, Reals: []ipvs.Real{{Addr: netip.AddrPortFrom(l.RealIP, 8085), Method: ipvs.Masq, Weight: 1}}}}}}
		var err error
		if s.Net, err = netstate.Read(l.LB); err != nil {
			t.Fatal(err)
		}
		if s.Sysctls, err = sysctl.ReadAll(l.LB); err != nil {
			t.Fatal(err)
		}
		s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "ESTABLISHED", Orig: conntrack.Tuple{Src: client, Dst: vip}}}
		return s
	}
	rpFilter := func(s *probes.Snapshot) checks.Finding {
		for _, f := range checks.Run(s, probes.Selector{}) {
			if f.ID == "sysctl.rp_filter" {
				return f
			}
		}
		return checks.Finding{}
	}

	for _, dev := range []string{"all", "eth0", "eth1", "eth2"} { // whatever the host's default
		testkit.Sysctl(t, l.LB, "net.ipv4.conf."+dev+".rp_filter", "0")
	}
	s := read(t)
	probes.AskRoutes(l.LB, s, probes.Selector{})
	if len(s.Net.Lookups) != 0 {
		t.Errorf("AskRoutes(filter off, VIP local) asked %v, want nothing asked", s.Net.Lookups)
	}
	if f := rpFilter(s); f.Status != checks.Pass {
		t.Errorf("sysctl.rp_filter with the filter off = %s %q, want pass", f.Status, f.Title)
	}
	// A source the filter dropped (here to the real, not a VIP: no client
	// source of the checks) is asked about whatever the sysctls read: the
	// route back to it is the window's evidence of the drop.
	s.Drops = &drops.Sample{Window: time.Second, Drops: []drops.Counted{{ReasonName: "IP_RPFILTER",
		Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: client, Dst: netip.AddrPortFrom(l.RealIP, 8085)}, Count: 1}}}}
	probes.AskRoutes(l.LB, s, probes.Selector{})
	if d, ok := s.Net.LookedUp(l.ClientIP); !ok || d.Dev != "eth2" || len(s.Net.Lookups) != 1 {
		t.Errorf("AskRoutes(an IP_RPFILTER drop from %s) asked %v, want only the route back to it, out of eth2", l.ClientIP, s.Net.Lookups)
	}

	testkit.Sysctl(t, l.LB, "net.ipv4.conf.all.rp_filter", "1")
	s = read(t)
	probes.AskRoutes(l.LB, s, probes.Selector{})
	if f := rpFilter(s); f.Status != checks.Warn {
		t.Errorf("sysctl.rp_filter (strict, route back by eth2, a flow known) = %s %q %v, want a warning for eth0", f.Status, f.Title, f.Evidence)
	}
	// The window's drops of the client's SYNs for IP_RPFILTER.
	s.Drops = &drops.Sample{Window: time.Second, Drops: []drops.Counted{{ReasonName: "IP_RPFILTER", Symbol: "ip_rcv_finish_core+0x1",
		Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: client, Dst: vip}, Count: 3}}}}
	probes.AskRoutes(l.LB, s, probes.Selector{})
	f := rpFilter(s)
	if f.Status != checks.Fail || len(f.Remedies) != 1 || f.Remedies[0] != (checks.Remedy{Sysctl: "net.ipv4.conf.eth0.rp_filter", Value: "2"}) {
		t.Errorf("sysctl.rp_filter with IP_RPFILTER drops = %s %q, remedies %v, want a failure fixed by eth0 rp_filter=2\n%v", f.Status, f.Title, f.Remedies, f.Evidence)
	}

	testkit.Run(t, l.LB, "ip", "addr", "del", l.VIP.String()+"/32", "dev", "eth0")
	s = read(t)
	probes.AskRoutes(l.LB, s, probes.Selector{})
	found := false
	for _, d := range s.Net.Lookups {
		found = found || (d.Dst == l.VIP && !d.From.IsValid() && !d.Local && d.Dev == "eth0")
	}
	if !found {
		t.Errorf("AskRoutes(VIP deleted) = %v, want `ip route get %s` answered: out of eth0, not local", s.Net.Lookups, l.VIP)
	}
}
