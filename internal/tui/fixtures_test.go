package tui

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/window"
)

// The golden screens are built from the checks' fixtures (snapshots as
// probes.Gather returns them) with a window's evidence added the way
// window.Run adds it (window.Join, window.Paths): pure, no kernel.

var (
	vip     = netip.MustParseAddrPort("10.1.0.6:8085")
	selVIP  = probes.Selector{VIP: vip, Proto: "tcp"}
	client  = netip.MustParseAddrPort("10.1.0.3:40001")
	twoReal = netip.MustParseAddrPort("10.2.0.50:8085")
)

func loadSnapshot(t *testing.T, name string) *probes.Snapshot {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "checks", "testdata", name+".snapshot.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s probes.Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if s.Errors == nil {
		s.Errors = map[string]string{}
	}
	return &s
}

// finish joins the window's evidence as window.Run does at its end and
// runs the catalog.
func finish(s *probes.Snapshot, w *probes.Window, sel probes.Selector) WindowMsg {
	if w.Skipped == nil {
		w.Skipped = map[string]string{}
	}
	w.Deltas.Window = w.Elapsed
	w.Neighbours = window.RealNeighbours(s, sel)
	w.DropPoints = window.Join(s, s, w)
	w.Paths = window.Paths(s, w, sel)
	s.Window = w
	return WindowMsg{Seq: 1, Snap: s, Findings: checks.Run(s, sel)}
}

func fixture(t *testing.T, name string) (WindowMsg, probes.Selector) {
	t.Helper()
	window2s := func() *probes.Window {
		return &probes.Window{Length: 2 * time.Second, Elapsed: 2 * time.Second}
	}
	switch name {
	case "healthy":
		// The two-arm LB answering: 12 packets each way, the real probed.
		s := loadSnapshot(t, "two-arm")
		s.Drops = &drops.Sample{Window: 2 * time.Second, Attach: "tp_btf"}
		w := window2s()
		w.Deltas.IPVS = []probes.ServiceDelta{{Service: "TCP 10.1.0.6:8085", Conns: 4, PacketsIn: 12, PacketsOut: 12,
			Reals: []probes.RealDelta{{Real: twoReal.String(), Conns: 4, PacketsIn: 12, PacketsOut: 12}}}}
		w.Health = []health.Result{{Service: "TCP 10.1.0.6:8085", Proto: "tcp", Real: twoReal, Connect: "ok", RTT: 180 * time.Microsecond, Neighbour: "REACHABLE", Dev: "eth1"}}
		return finish(s, w, selVIP), selVIP
	case "seed-stage3":
		// The seed's stage 3: one-arm, SNAT in place, forwarding off: the
		// replies die in ip_error (as checks' TestFailingFindingsCarryThePath).
		s := loadSnapshot(t, "seed-stage3-drops")
		real := netip.MustParseAddrPort("10.1.0.50:8085")
		w := window2s()
		w.Deltas.IPVS = []probes.ServiceDelta{{Service: "TCP 10.1.0.6:8085", PacketsIn: 6, Reals: []probes.RealDelta{{Real: real.String(), PacketsIn: 6}}}}
		for _, r := range s.Rules.Rules {
			if r.CoversVIP(vip) {
				w.Deltas.Rules = append(w.Deltas.Rules, probes.RuleDelta{Rule: r, Packets: 4})
			}
		}
		w.Skipped = map[string]string{probes.LayerHealth: "the reals were not probed (check --no-probe; inspect never probes)"}
		return finish(s, w, selVIP), selVIP
	case "forward-policy-drop":
		// The two-arm LB behind an iptables-nft FORWARD policy DROP: the
		// real's replies die in the forward hook before IPVS un-NATs them.
		s := loadSnapshot(t, "two-arm")
		policy := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "DROP", HasCounter: true, Packets: 9}
		s.Rules.Chains = append(s.Rules.Chains, policy)
		s.Drops = &drops.Sample{Window: 2 * time.Second, Attach: "tp_btf", Counters: drops.Counters{Matched: 9},
			Attribution: drops.Attribution{Attributed: 9}, Drops: []drops.Counted{{
				Aggregate:  drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: twoReal, Dst: client}, Count: 9},
				ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x44", Hook: "forward", CallerSymbol: "ip_forward",
				Flow: &drops.Flow{Client: client, VIP: vip, Real: twoReal, Direction: "reply", Stage: "as the real server sent it, before de-NAT", Source: "ipvs"},
			}}}
		w := window2s()
		w.Deltas.IPVS = []probes.ServiceDelta{{Service: "TCP 10.1.0.6:8085", Conns: 3, PacketsIn: 9,
			Reals: []probes.RealDelta{{Real: twoReal.String(), Conns: 3, PacketsIn: 9}}}}
		w.Deltas.Chains = []probes.ChainDelta{{Chain: policy, Packets: 9}}
		w.Health = []health.Result{{Service: "TCP 10.1.0.6:8085", Proto: "tcp", Real: twoReal, Connect: "ok", RTT: 210 * time.Microsecond, Neighbour: "REACHABLE", Dev: "eth1"}}
		return finish(s, w, selVIP), selVIP
	case "no-ipvs":
		// The host's kernel, built without IPVS: the window has nothing to
		// watch and says so.
		s := loadSnapshot(t, "no-ipvs-kernel")
		w := &probes.Window{Length: 2 * time.Second, Skipped: map[string]string{"window": "nothing to watch: no IPVS service and no --vip"}}
		return finish(s, w, probes.Selector{}), probes.Selector{}
	}
	t.Fatalf("no fixture %q", name)
	return WindowMsg{}, probes.Selector{}
}
