package checks_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// A SYN to a service with no real of weight > 0 is dropped by IPVS itself
// (ip_vs_in: no destination, ICMP port unreachable, NF_DROP from its
// LOCAL_IN hook): seen in the guest as "NETFILTER_DROP at nf_hook_slow in
// input". That is ipvs.reals_available's fault, not a second failure of
// drops.vip_flows whose fix lists the INPUT rules; and a real added
// during the window leaves drops of a fault fixed during it.
func TestDropsNoRealServer(t *testing.T) {
	syn := func(symbol, hook string) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Reason: 2, Location: 0xffff,
			Src: netip.MustParseAddrPort("10.1.0.3:40000"), Dst: netip.MustParseAddrPort("10.1.0.6:8085")}, Count: 3},
			ReasonName: "NETFILTER_DROP", Symbol: symbol, Hook: hook}
	}
	ipvsDrop := syn("nf_hook_slow+0xa4", "input")
	noReal := func(s *probes.Snapshot) { s.IPVS.Services[0].Reals = nil }
	weight0 := func(s *probes.Snapshot) { s.IPVS.Services[0].Reals[0].Weight = 0 }
	tests := []struct {
		name        string
		first, last func(*probes.Snapshot) // nil: as the fixture is (a real of weight 1)
		drop        drops.Counted
		want        checks.Status
		wantIn      string // in drops.vip_flows' title and reason
	}{
		{"no real: IPVS's drop", noReal, noReal, ipvsDrop, checks.Warn, "IPVS dropped it: TCP 10.1.0.6:8085 has no real server of weight > 0"},
		{"only a real of weight 0", weight0, weight0, ipvsDrop, checks.Warn, "the cause: ipvs.reals_available"},
		{"hook not known", noReal, noReal, syn("nf_hook_slow+0xa4", ""), checks.Warn, "the cause: ipvs.reals_available"},
		{"real added during the window", noReal, nil, ipvsDrop, checks.Warn, "ipvs.reals_available (fixed during the window)"},
		// A filter rule drops before IPVS's hook: its table's function.
		{"a filter rule's drop", noReal, noReal, syn("nft_do_chain+0x47f", "input"), checks.Fail, "NETFILTER_DROP"},
		{"a real takes connections", nil, nil, ipvsDrop, checks.Fail, "NETFILTER_DROP"},
		{"in forward: not IPVS's", noReal, noReal, syn("nf_hook_slow+0xa4", "forward"), checks.Fail, "NETFILTER_DROP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, s := loadFixture(t, "seed-stage3"), loadFixture(t, "seed-stage3")
			if tt.first != nil {
				tt.first(first)
			}
			if tt.last != nil {
				tt.last(s)
			}
			s.Window = &probes.Window{First: first}
			s.Drops = &drops.Sample{Window: 3 * time.Second, Drops: []drops.Counted{tt.drop}}
			fs := checks.Run(s, probes.Selector{})
			f := statusOf(fs, "drops.vip_flows")
			if f.Status != tt.want || !strings.Contains(f.Title+" "+f.Reason, tt.wantIn) {
				t.Errorf("Run(%s) drops.vip_flows = %s %q (%s), want %s with %q", tt.name, f.Status, f.Title, f.Reason, tt.want, tt.wantIn)
			}
			// Fixed during the window: nothing left to type.
			if tt.want == checks.Warn && strings.Contains(strings.Join(f.Fix, "\n"), "INPUT") || tt.last == nil && tt.first != nil && len(f.Fix) > 0 {
				t.Errorf("Run(%s) drops.vip_flows fix = %q, want no listing of INPUT rules for IPVS's own drop, none once its cause is fixed", tt.name, f.Fix)
			}
		})
	}
}

// ipvs.reals_available's fix is the command for the service at hand: its
// weight-0 reals weighted again (ipvsadm -e, an -a would fail: they
// exist), or, with no real, the -a that adds one, the address left open.
func TestRealsAvailableFix(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*probes.Snapshot)
		wantFix []string
	}{
		{"a real of weight 0", func(s *probes.Snapshot) { s.IPVS.Services[0].Reals[0].Weight = 0 },
			[]string{"ip netns exec lb ipvsadm -e -t 10.1.0.6:8085 -r 10.1.0.50:8085 -m -w 1"}},
		{"no real", func(s *probes.Snapshot) { s.IPVS.Services[0].Reals = nil },
			[]string{"ip netns exec lb ipvsadm -a -t 10.1.0.6:8085 -r REAL:8085 -m -w 1   # REAL: a server of the service; -m for NAT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage3")
			tt.change(s)
			f := statusOf(checks.Run(s, probes.Selector{}), "ipvs.reals_available")
			if f.Status != checks.Fail || strings.Join(f.Fix, "\n") != strings.Join(tt.wantFix, "\n") {
				t.Errorf("Run(%s) ipvs.reals_available = %s, fix %q; want fail, fix %q", tt.name, f.Status, f.Fix, tt.wantFix)
			}
		})
	}
}

// drops.vip_flows says why a window traced no drop: --watch 0 only when
// there was no window.
func TestDropsSkipSaysWhy(t *testing.T) {
	tests := []struct {
		name   string
		window *probes.Window
		want   string
	}{
		{"static", nil, "drops were not traced: the window was off (--watch 0); watch while traffic flows, e.g. --watch 5s"},
		{"nothing to watch", &probes.Window{Skipped: map[string]string{"window": "nothing to watch: no IPVS service and no --vip"}},
			"drops were not traced: nothing to watch: no IPVS service and no --vip"},
		{"not asked for", &probes.Window{Skipped: map[string]string{probes.LayerDrops: "drop tracing was not asked for"}},
			"drops were not traced: drop tracing was not asked for"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage3")
			s.Window, s.Drops = tt.window, nil
			if f := statusOf(checks.Run(s, probes.Selector{}), "drops.vip_flows"); f.Status != checks.Skip || f.Reason != tt.want {
				t.Errorf("Run(%s) drops.vip_flows = %s %q, want skip %q", tt.name, f.Status, f.Reason, tt.want)
			}
		})
	}
}
