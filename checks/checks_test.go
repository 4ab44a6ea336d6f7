package checks_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
	"github.com/lbdoctor/lbdoctor/window"
)

// Fixtures in testdata/*.snapshot.json are snapshots as `Gather` returns
// them; each has a golden report beside it.
func TestCatalogOnFixtures(t *testing.T) {
	tests := []struct {
		fixture string
		vip     string
		want    map[string]checks.Status
	}{
		{"no-ipvs-kernel", "", map[string]checks.Status{"kernel.ipvs": checks.Fail, "sysctl.ip_forward": checks.Skip, "sysctl.vs_conntrack": checks.Skip, "nat.return_path": checks.Skip, "net.send_redirects": checks.Skip}},
		{"seed-stage1", "", map[string]checks.Status{"kernel.ipvs": checks.Pass, "sysctl.ip_forward": checks.Pass, "sysctl.vs_conntrack": checks.Skip, "nat.return_path": checks.Fail, "net.send_redirects": checks.Warn}},
		{"seed-stage2", "", map[string]checks.Status{"kernel.ipvs": checks.Pass, "sysctl.ip_forward": checks.Pass, "sysctl.vs_conntrack": checks.Fail, "nat.return_path": checks.Pass, "net.send_redirects": checks.Warn}},
		{"seed-stage2", "10.1.0.6:8085", map[string]checks.Status{"kernel.ipvs": checks.Pass, "sysctl.ip_forward": checks.Pass, "sysctl.vs_conntrack": checks.Fail, "nat.return_path": checks.Pass, "net.send_redirects": checks.Warn}},
		{"seed-stage2", "10.1.0.9:80", map[string]checks.Status{"kernel.ipvs": checks.Fail, "sysctl.ip_forward": checks.Skip, "sysctl.vs_conntrack": checks.Skip, "nat.return_path": checks.Skip, "net.send_redirects": checks.Skip}},
		// Every port of an address (serve --vip ADDR): the fix leaves the port to the reader.
		{"seed-stage2", "10.1.0.9", map[string]checks.Status{"kernel.ipvs": checks.Fail, "sysctl.ip_forward": checks.Skip}},
		{"seed-stage3", "", map[string]checks.Status{"kernel.ipvs": checks.Pass, "sysctl.ip_forward": checks.Fail, "sysctl.vs_conntrack": checks.Pass, "nat.return_path": checks.Pass, "net.send_redirects": checks.Skip}},
		{"seed-stage3-drops", "10.1.0.6:8085", map[string]checks.Status{"sysctl.ip_forward": checks.Fail, "drops.vip_flows": checks.Fail}},
		{"seed-stage3", "10.1.0.6:8085", map[string]checks.Status{"drops.vip_flows": checks.Skip}},
		// An nft DNAT VIP with forwarding off: 835 SYNs of 500 flows die in
		// ip_error, none attributed, beside 3 attributed NEIGH_FAILED drops.
		// kernel.ipvs skips it: an ipvsadm -A behind the DNAT would see nothing.
		{"nft-dnat-forward-off", "10.99.0.6:8085", map[string]checks.Status{"drops.vip_flows": checks.Fail, "kernel.ipvs": checks.Skip}},
		// A one-arm nft DNAT LB at send_redirects=1 watched on every port of
		// its VIP: NAT dropped its own ICMP redirects to the real in output.
		// On a kernel without IPVS: a DNAT VIP's check passes.
		{"one-arm-redirects", "10.1.0.6", map[string]checks.Status{"drops.vip_flows": checks.Pass, "kernel.ipvs": checks.Skip}},
		{"two-arm", "", map[string]checks.Status{"kernel.ipvs": checks.Pass, "sysctl.ip_forward": checks.Pass, "sysctl.vs_conntrack": checks.Skip, "nat.return_path": checks.Pass, "net.send_redirects": checks.Skip}},
		{"vs-module-not-loaded", "", map[string]checks.Status{"kernel.ipvs": checks.Fail, "sysctl.ip_forward": checks.Skip, "sysctl.vs_conntrack": checks.Skip, "nat.return_path": checks.Skip, "net.send_redirects": checks.Skip}},
	}
	for _, tt := range tests {
		name := tt.fixture
		if tt.vip != "" {
			name += "@" + tt.vip
		}
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.fixture+".snapshot.json"))
			if err != nil {
				t.Fatal(err)
			}
			var snap probes.Snapshot
			if err := json.Unmarshal(data, &snap); err != nil {
				t.Fatal(err)
			}
			sel := probes.Selector{Proto: "tcp"}
			if a, err := netip.ParseAddr(tt.vip); err == nil {
				sel.VIP = netip.AddrPortFrom(a, 0)
			} else if tt.vip != "" {
				sel.VIP = netip.MustParseAddrPort(tt.vip)
			}
			fs := checks.Run(&snap, sel)
			for _, f := range fs {
				if want, ok := tt.want[f.ID]; ok && f.Status != want {
					t.Errorf("Run(%s) %s = %s (%s), want %s", name, f.ID, f.Status, f.Reason, want)
				}
				if f.Status == checks.Skip && f.Reason == "" {
					t.Errorf("Run(%s) %s skipped without a reason", name, f.ID)
				}
				if f.Status == checks.Fail && (len(f.Fix) == 0 || len(f.Evidence) == 0) {
					t.Errorf("Run(%s) %s fails without evidence and fix: %+v", name, f.ID, f)
				}
			}
			var buf bytes.Buffer
			tgt := report.Target{Netns: snap.Target, Kernel: snap.Kernel}
			if sel.VIP.IsValid() {
				tgt.VIP, tgt.Proto = sel.VIPString(), sel.Proto
			}
			report.Text(&buf, report.New(tgt, fs, snap.Errors))
			testkit.Golden(t, strings.ReplaceAll(name, ":", "_")+".txt", buf.Bytes())
		})
	}
}

func TestVerdict(t *testing.T) {
	tests := []struct {
		name string
		in   []checks.Status
		want checks.Status
	}{
		{"empty", nil, checks.Pass},
		{"skips only", []checks.Status{checks.Skip}, checks.Pass},
		{"warn", []checks.Status{checks.Pass, checks.Warn}, checks.Warn},
		{"fail wins", []checks.Status{checks.Warn, checks.Fail, checks.Pass}, checks.Fail},
	}
	for _, tt := range tests {
		var fs []checks.Finding
		for _, s := range tt.in {
			fs = append(fs, checks.Finding{Status: s})
		}
		if got := checks.Verdict(fs); got != tt.want {
			t.Errorf("Verdict(%s) = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func loadFixture(t *testing.T, name string) *probes.Snapshot {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name+".snapshot.json"))
	if err != nil {
		t.Fatal(err)
	}
	var snap probes.Snapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		t.Fatal(err)
	}
	return &snap
}

// findingText is what a finding says, its title, reason, fix and evidence,
// one per line, for a test to look for a phrase in.
func findingText(f checks.Finding) string {
	text := f.Title + "\n" + f.Reason + "\n" + strings.Join(f.Fix, "\n")
	for _, e := range f.Evidence {
		text += "\n" + e.Fact
	}
	return text
}

func statusOf(fs []checks.Finding, id string) checks.Finding {
	for _, f := range fs {
		if f.ID == id {
			return f
		}
	}
	return checks.Finding{}
}

// drops.vip_flows names the reason with the most drops, whether or not its
// drops were attributed to a flow, and gives every known fix: the tuples of
// a SYN flood must not outnumber their one reason.
func TestDropsHeadlineIsTheBiggestReason(t *testing.T) {
	snap := loadFixture(t, "nft-dnat-forward-off")
	f := statusOf(checks.Run(snap, probes.Selector{VIP: netip.MustParseAddrPort("10.99.0.6:8085"), Proto: "tcp"}), "drops.vip_flows")
	wantTitle := "packets of the selected flows are dropped: IP_INADDRERRORS at ip_error (and 1 more reason)"
	wantFix := "ip netns exec vflb sysctl -w net.ipv4.ip_forward=1"
	if f.Title != wantTitle || !slices.Contains(f.Fix, wantFix) || !slices.Contains(f.Remedies, checks.Remedy{Sysctl: "net.ipv4.ip_forward", Value: "1"}) {
		t.Errorf("Run(nft-dnat-forward-off) drops.vip_flows = %q, fix %q, remedies %v; want %q with fix %q", f.Title, f.Fix, f.Remedies, wantTitle, wantFix)
	}
	var facts []string
	for _, e := range f.Evidence {
		facts = append(facts, e.Fact)
	}
	want := "835 × IP_INADDRERRORS at ip_error+0x92 in 500 flows, no drop attributed to a load-balanced flow"
	if !slices.Contains(facts, want) {
		t.Errorf("Run(nft-dnat-forward-off) drops.vip_flows evidence = %q, want a line %q", facts, want)
	}
	// A DNAT VIP forwards its requests: the reason says so, not IPVS.
	if wantWhy := "(a request DNATed to its backend, or a reply de-NATed to its client)"; !strings.Contains(f.Reason, wantWhy) || strings.Contains(f.Reason, "IPVS") {
		t.Errorf("Run(nft-dnat-forward-off) drops.vip_flows reason = %q, want %q and no IPVS", f.Reason, wantWhy)
	}
}

// drops.vip_flows on a one-arm LB whose own ICMP redirects to the real NAT
// dropped in output (the window kept them apart: Window.OwnRedirects):
// counted in a line of their own with the sysctls that stop them, never a
// failure; a drop of the flows beside them still fails, named by its own
// reason.
func TestDropsOwnRedirects(t *testing.T) {
	const line = "4 of the LB's own ICMP redirects to real 10.1.0.50 were dropped: NETFILTER_DROP at nf_hook_slow+0x7d in output " +
		"(harmless: no packet of the flows, but the LB telling the sender of one it forwarded back out of the interface it came in on of a shorter way; " +
		"dropped, it reached no one: netfilter's NAT hook drops the LB's redirects in output (nf_nat_icmp_reply_translation)); " +
		"set net.ipv4.conf.all.send_redirects=0 and net.ipv4.conf.eth0.send_redirects=0 to stop them"
	tests := []struct {
		name      string
		change    func(*probes.Snapshot)
		want      checks.Status
		wantTitle string
		wantLine  string
	}{
		{"the redirects alone", func(*probes.Snapshot) {}, checks.Pass, "no packet of the selected flows was dropped (4 of the LB's own ICMP redirects were: harmless, send_redirects is on)", line},
		{"beside a drop of the flows", func(s *probes.Snapshot) {
			s.Drops.Drops = append(s.Drops.Drops, drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6,
				Src: netip.MustParseAddrPort("10.1.0.3:40000"), Dst: netip.MustParseAddrPort("10.1.0.50:8085")}, Count: 2}, ReasonName: "IP_INADDRERRORS", Symbol: "ip_error+0x92"})
		}, checks.Fail, "packets of the selected flows are dropped: IP_INADDRERRORS at ip_error", line},
		{"the hook not known", func(s *probes.Snapshot) { s.Window.OwnRedirects[0].Hook = "" }, checks.Pass, "no packet of the selected flows was dropped (4 of the LB's own ICMP redirects were: harmless, send_redirects is on)",
			"4 of the LB's own ICMP redirects to real 10.1.0.50 were dropped: NETFILTER_DROP at nf_hook_slow+0x7d (harmless: no packet of the flows, " +
				"but the LB telling the sender of one it forwarded back out of the interface it came in on of a shorter way; dropped, it reached no one); " +
				"set net.ipv4.conf.all.send_redirects=0 and net.ipv4.conf.eth0.send_redirects=0 to stop them"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "one-arm-redirects")
			tt.change(snap)
			f := statusOf(checks.Run(snap, probes.Selector{VIP: netip.MustParseAddrPort("10.1.0.6:0")}), "drops.vip_flows")
			var facts []string
			for _, e := range f.Evidence {
				facts = append(facts, e.Fact)
			}
			if f.Status != tt.want || f.Title != tt.wantTitle || !slices.Contains(facts, tt.wantLine) {
				t.Errorf("Run(one-arm-redirects, %s) drops.vip_flows = %s %q, evidence:\n%s\nwant %s %q with a line\n%s",
					tt.name, f.Status, f.Title, strings.Join(facts, "\n"), tt.want, tt.wantTitle, tt.wantLine)
			}
		})
	}
}

// drops.vip_flows with packets a real on the LB itself let go (the window
// kept them apart: Window.LocalSocketFrees): said in the title and a line
// of their own, never a failure.
func TestDropsLocalSocketFrees(t *testing.T) {
	snap := loadFixture(t, "one-arm-redirects")
	snap.Window.OwnRedirects = nil
	snap.Conntrack.Backends = append(snap.Conntrack.Backends, netip.MustParseAddrPort("10.1.0.5:8080")) // the DNAT LB's local backend
	snap.Window.LocalSocketFrees = []drops.Counted{
		{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: netip.MustParseAddrPort("10.1.0.3:40000"), Dst: netip.MustParseAddrPort("10.1.0.5:8080")}, Count: 2},
			ReasonName: "NOT_SPECIFIED", Symbol: "sk_stream_kill_queues+0x58"},
		{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, Src: netip.MustParseAddrPort("10.1.0.3:40001"), Dst: netip.MustParseAddrPort("10.1.0.5:8080")}, Count: 1},
			ReasonName: "NOT_SPECIFIED", Symbol: "sk_stream_kill_queues+0x58"},
	}
	f := statusOf(checks.Run(snap, probes.Selector{VIP: netip.MustParseAddrPort("10.1.0.6:0")}), "drops.vip_flows")
	const wantTitle = "no packet of the selected flows was dropped (3 packets were let go by the LB's own sockets: delivered, not lost)"
	const wantLine = "3 packets delivered to local real 10.1.0.5:8080 were let go there with no reason named (NOT_SPECIFIED at sk_stream_kill_queues+0x58: " +
		"a receive queue purged unread at close, a late segment to a closed connection): not lost on the path (a remote real does the same out of the tracer's view) and left out"
	var facts []string
	for _, e := range f.Evidence {
		facts = append(facts, e.Fact)
	}
	if f.Status != checks.Pass || f.Title != wantTitle || !slices.Contains(facts, wantLine) {
		t.Errorf("Run(local real's frees) drops.vip_flows = %s %q, evidence:\n%s\nwant pass %q with a line\n%s", f.Status, f.Title, strings.Join(facts, "\n"), wantTitle, wantLine)
	}
}

// The checks beyond the seed, on the seed's fixture with one fact changed.
func TestChecksOnChangedFixtures(t *testing.T) {
	tests := []struct {
		name   string
		id     string
		change func(*probes.Snapshot)
		want   checks.Status
	}{
		{"reals with weight", "ipvs.reals_available", func(*probes.Snapshot) {}, checks.Pass},
		{"all reals weight 0", "ipvs.reals_available", func(s *probes.Snapshot) { s.IPVS.Services[0].Reals[0].Weight = 0 }, checks.Fail},
		{"no real at all", "ipvs.reals_available", func(s *probes.Snapshot) { s.IPVS.Services[0].Reals = nil }, checks.Fail},
		{"expire_nodest_conn=0", "ipvs.expire_nodest_conn", func(*probes.Snapshot) {}, checks.Warn},
		{"expire_nodest_conn=1", "ipvs.expire_nodest_conn", func(s *probes.Snapshot) {
			v := s.Sysctls["net.ipv4.vs.expire_nodest_conn"]
			v.Value = "1"
			s.Sysctls["net.ipv4.vs.expire_nodest_conn"] = v
		}, checks.Pass},
		{"table with room", "conntrack.table", func(*probes.Snapshot) {}, checks.Pass},
		{"table 95% full", "conntrack.table", func(s *probes.Snapshot) { s.Conntrack.Stats.Entries = s.Conntrack.Stats.MaxEntries * 95 / 100 }, checks.Warn},
		{"table dropped", "conntrack.table", func(s *probes.Snapshot) { s.Conntrack.Stats.EarlyDrop = 3 }, checks.Fail},
		{"insert failed", "conntrack.table", func(s *probes.Snapshot) { s.Conntrack.Stats.InsertFailed = 1 }, checks.Warn},
		{"table full dropped", "conntrack.table", func(s *probes.Snapshot) { s.Conntrack.Stats.Drop = 10 }, checks.Fail},
		// SNAT ran out of source ports: every clash is both an insert
		// failure and a drop, while the table is a quarter full. Not "full".
		{"SNAT ports ran out", "conntrack.table", func(s *probes.Snapshot) {
			s.Conntrack.Stats.MaxEntries, s.Conntrack.Stats.Entries = 262144, 64512
			s.Conntrack.Stats.Drop, s.Conntrack.Stats.InsertFailed = 35488, 35488
		}, checks.Warn},
		{"no flows", "conntrack.flow_states", func(*probes.Snapshot) {}, checks.Skip},
		{"reply never completes", "conntrack.flow_states", func(s *probes.Snapshot) {
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "SYN_RECV", Status: []string{"SEEN_REPLY", "CONFIRMED", "SRC_NAT"}}}
		}, checks.Warn},
		{"no reply", "conntrack.flow_states", func(s *probes.Snapshot) {
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "SYN_SENT", Status: []string{"CONFIRMED"}}}
		}, checks.Warn},
		{"udp without reply", "conntrack.flow_states", func(s *probes.Snapshot) {
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "udp", Status: []string{"CONFIRMED"}}}
		}, checks.Warn},
		{"udp replied", "conntrack.flow_states", func(s *probes.Snapshot) {
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "udp", Status: []string{"SEEN_REPLY", "CONFIRMED"}}}
		}, checks.Pass},
		{"assured", "conntrack.flow_states", func(s *probes.Snapshot) {
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "TIME_WAIT", Status: []string{"SEEN_REPLY", "ASSURED", "CONFIRMED"}}}
		}, checks.Pass},
		{"routes unread", "net.send_redirects", func(s *probes.Snapshot) {
			s.Errors = map[string]string{probes.ProbeNet: "netlink: permission denied"}
			s.Net = netstate.Snapshot{}
		}, checks.Skip},
		{"drop window, no drop", "drops.vip_flows", func(s *probes.Snapshot) { s.Drops = &drops.Sample{Window: time.Second} }, checks.Pass},
		// A window cut short proves less than the one asked for.
		{"drop window cut short, no drop", "drops.vip_flows", func(s *probes.Snapshot) { s.Drops = &drops.Sample{Window: time.Second, CutShort: true} }, checks.Warn},
		{"one framework", "rules.mixed_backends", func(*probes.Snapshot) {}, checks.Pass},
		{"mixed frameworks", "rules.mixed_backends", func(s *probes.Snapshot) { s.Rules.Mixed = true }, checks.Warn},
	}
	for _, tt := range tests {
		snap := loadFixture(t, "seed-stage2")
		tt.change(snap)
		f := statusOf(checks.Run(snap, probes.Selector{}), tt.id)
		if f.Status != tt.want {
			t.Errorf("%s: %s = %s (%s), want %s", tt.name, tt.id, f.Status, f.Title, tt.want)
		}
		if f.Status == checks.Skip && tt.name == "routes unread" && !strings.Contains(f.Reason, "routes could not be read") {
			t.Errorf("%s: %s skipped with %q, want the unread routes named", tt.name, tt.id, f.Reason)
		}
		if (f.Status == checks.Fail || f.Status == checks.Warn) && len(f.Evidence) == 0 {
			t.Errorf("%s: %s %s without evidence", tt.name, tt.id, f.Status)
		}
	}
}

// A conclusion never rests on a rule backend that was not read: the absence
// of a rule is only a finding when every backend was read; a rule found in
// a backend that was read is enough.
func TestRuleChecksWithUnreadBackends(t *testing.T) {
	unread := func(names ...string) func(*probes.Snapshot) {
		return func(s *probes.Snapshot) {
			for i, b := range s.Rules.Backends {
				if slices.Contains(names, b.Name) {
					s.Rules.Backends[i] = rules.Backend{Name: b.Name, Reason: "no " + b.Name + " save tool on PATH"}
				}
			}
			s.Errors = map[string]string{probes.ProbeRules: strings.Join(names, ", ") + " unread"}
		}
	}
	tests := []struct {
		name, fixture, id string
		change            func(*probes.Snapshot)
		want              checks.Status
		wantIn            string // in the reason of a skip
	}{
		{"no SNAT, all read", "seed-stage1", "nat.return_path", func(*probes.Snapshot) {}, checks.Fail, ""},
		{"no SNAT, iptables-nft unread", "seed-stage1", "nat.return_path", unread(rules.IptablesNft), checks.Skip, "iptables-nft could not be read"},
		{"no SNAT, nothing read", "seed-stage1", "nat.return_path", unread(rules.IptablesLegacy, rules.IptablesNft, rules.Nft), checks.Skip, "iptables-legacy could not be read"},
		{"SNAT read, the others unread", "seed-stage2", "nat.return_path", unread(rules.IptablesLegacy, rules.Nft), checks.Pass, ""},
		{"dependent rule read, others unread", "seed-stage2", "sysctl.vs_conntrack", unread(rules.IptablesLegacy, rules.Nft), checks.Fail, ""},
		{"no dependent rule, nft unread", "seed-stage1", "sysctl.vs_conntrack", unread(rules.Nft), checks.Skip, "nft could not be read"},
		{"mixed unknown, nothing read", "seed-stage1", "rules.mixed_backends", unread(rules.IptablesLegacy, rules.IptablesNft, rules.Nft), checks.Skip, "cannot be judged"},
		{"legacy read and empty: not mixed", "seed-stage1", "rules.mixed_backends", unread(rules.IptablesNft, rules.Nft), checks.Pass, ""},
		{"nf_tables read and empty: not mixed", "seed-stage1", "rules.mixed_backends", unread(rules.IptablesLegacy), checks.Pass, ""},
		{"nf_tables holds rules, legacy unread", "seed-stage2", "rules.mixed_backends", unread(rules.IptablesLegacy), checks.Skip, "iptables-legacy could not be read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, tt.fixture)
			tt.change(snap)
			f := statusOf(checks.Run(snap, probes.Selector{}), tt.id)
			if f.Status != tt.want || (tt.wantIn != "" && !strings.Contains(f.Reason, tt.wantIn)) {
				t.Errorf("Run(%s) %s = %s (%s), want %s with %q", tt.name, tt.id, f.Status, f.Reason, tt.want, tt.wantIn)
			}
		})
	}
}

// A flood of more flows than the tracer's flow map holds: the drops it had
// no room for are counted by place, not itemised. The doctor counts them
// with their reason and place (exact totals), says they are not itemised,
// and still names the fix.
func TestDropsNotItemised(t *testing.T) {
	snap := loadFixture(t, "seed-stage3-drops")
	first := snap.Drops.Drops[0] // IP_INADDRERRORS at ip_error+0x92
	snap.Drops.Drops = append([]drops.Counted{{
		Aggregate:  drops.Aggregate{Packet: drops.Packet{Netns: first.Netns, Reason: first.Reason, Location: first.Location}, Count: 5000, NotItemised: true},
		ReasonName: first.ReasonName, Symbol: first.Symbol,
	}}, snap.Drops.Drops...)
	snap.Drops.Counters.Matched += 5000
	snap.Drops.Counters.NotItemised = 5000
	snap.Drops.Attribution.NotAttributed += 5000
	f := statusOf(checks.Run(snap, probes.Selector{VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Proto: "tcp"}), "drops.vip_flows")
	var ev []string
	for _, e := range f.Evidence {
		ev = append(ev, e.Fact)
	}
	got := strings.Join(ev, "\n")
	for _, want := range []string{
		"5007 drops of the selected flows",
		"5000 drops of flows not itemised: the flow map was full, they are counted by place",
		"5006 × IP_INADDRERRORS at ip_error+0x92 in 4 flows and 5000 drops of flows not itemised",
		"  5000 × in flows not itemised (the flow map was full)",
		"  6 × reply packets of 4 flows",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("drops.vip_flows evidence = %q, want %q in it", got, want)
		}
	}
	if f.Status != checks.Fail || !strings.Contains(f.Title, "IP_INADDRERRORS at ip_error") || len(f.Fix) == 0 || !strings.Contains(f.Fix[0], "ip_forward=1") {
		t.Errorf("drops.vip_flows = %s %q fix %q, want a failure at ip_error with ip_forward=1", f.Status, f.Title, f.Fix)
	}
}

// An LB of more services than the kernel's drop filter takes: the window
// still watches (every drop of the namespace, the services' selected in
// user space), and the finding says how it was filtered.
func TestDropsWideFilter(t *testing.T) {
	tests := []struct {
		name     string
		services int
		want     bool
	}{
		{"one service: filtered in the kernel", 0, false},
		{"20 more services: selected in user space", 20, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "seed-stage3-drops")
			for i := range tt.services {
				snap.IPVS.Services = append(snap.IPVS.Services, ipvs.Service{Proto: "tcp", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)}), 80)})
			}
			f := statusOf(checks.Run(snap, probes.Selector{}), "drops.vip_flows")
			got := false
			for _, e := range f.Evidence {
				got = got || strings.Contains(e.Fact, "more than the kernel's drop filter takes (16 of each): every drop in netns lb was counted and the services' drops selected from them")
			}
			if got != tt.want || f.Status != checks.Fail {
				t.Errorf("drops.vip_flows with %d more services = %s, says it selected in user space = %v, want fail, %v\n%v", tt.services, f.Status, got, tt.want, f.Evidence)
			}
		})
	}
}

// A failing finding carries the causal chain of its service's flows: on
// the seed's stage 3 after a window with traffic, sysctl.ip_forward and
// drops.vip_flows show the path that stops at ip_error, in text and JSON,
// and a passing finding carries none.
func TestFailingFindingsCarryThePath(t *testing.T) {
	snap := loadFixture(t, "seed-stage3-drops")
	real := netip.MustParseAddrPort("10.1.0.50:8085")
	masq := snap.Rules.Rules[slices.IndexFunc(snap.Rules.Rules, func(r rules.Rule) bool { return r.CoversVIP(netip.MustParseAddrPort("10.1.0.6:8085")) })]
	w := &probes.Window{Length: 3 * time.Second, Elapsed: 3 * time.Second, Skipped: map[string]string{}, Deltas: probes.Deltas{
		IPVS:  []probes.ServiceDelta{{Service: "TCP 10.1.0.6:8085", PacketsIn: 6, Reals: []probes.RealDelta{{Real: real.String(), PacketsIn: 6}}}},
		Rules: []probes.RuleDelta{{Rule: masq, Packets: 4}},
	}}
	sel := probes.Selector{VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Proto: "tcp"}
	w.Paths = window.Paths(snap, w, sel)
	snap.Window = w
	fs := checks.Run(snap, sel)
	want := "client→VIP ✓ 6 · IPVS→real .50 ✓ 6 · SNAT ✓ · reply real→LB ✓ 6 · de-SNAT (PREROUTING) · route: 10.1.0.3 not local, forwarding off · ✗ ip_error IP_INADDRERRORS ×6 · ✗ nf_hook_slow NETFILTER_DROP ×1"
	for _, tt := range []struct {
		id    string
		paths int
	}{{"sysctl.ip_forward", 1}, {"drops.vip_flows", 1}, {"kernel.ipvs", 0}, {"nat.return_path", 0}} {
		f := statusOf(fs, tt.id)
		if len(f.Path) != tt.paths || (tt.paths > 0 && f.Path[0].String() != want) {
			t.Errorf("Run(seed-stage3 with a window) %s (%s) = paths %v, want %d path(s) reading %q", tt.id, f.Status, f.Path, tt.paths, want)
		}
	}
	var buf bytes.Buffer
	report.Text(&buf, report.New(report.Target{Netns: snap.Target, Kernel: snap.Kernel, VIP: sel.VIP.String(), Proto: "tcp"}, fs, snap.Errors))
	testkit.Golden(t, "seed-stage3-window@10.1.0.6_8085.txt", buf.Bytes())

	// On an LB of many services, those no client used stop too (nothing
	// came): listed first, more than a finding carries, they must not
	// crowd out the path the traffic took and died on.
	idle := w.Paths[0]
	idle.Legs = slices.Clone(idle.Legs)
	for i := range idle.Legs {
		idle.Legs[i].Packets = 0
	}
	idle.Stops = nil
	w.Paths = append(slices.Repeat([]flowpath.Path{idle}, checks.MaxFindingPaths+1), w.Paths...)
	f := statusOf(checks.Run(snap, sel), "sysctl.ip_forward")
	if len(f.Path) == 0 || f.Path[0].String() != want {
		t.Errorf("Run(seed-stage3 with %d idle paths first) sysctl.ip_forward paths = %v, want the first reading %q", checks.MaxFindingPaths+1, f.Path, want)
	}
}

// ipv6TwoArm turns the two-arm fixture into an IPv6-only two-arm LB as an
// operator builds it: VIP [fd00:1::6]:8085 on eth0, real [fd00:2::50]:8085
// behind eth1, IPv6 forwarding on and IPv4 forwarding off.
func ipv6TwoArm(s *probes.Snapshot) {
	s.IPVS.Services[0].Addr = netip.MustParseAddrPort("[fd00:1::6]:8085")
	s.IPVS.Services[0].Reals[0].Addr = netip.MustParseAddrPort("[fd00:2::50]:8085")
	for i, l := range s.Net.Links {
		switch l.Name {
		case "eth0":
			s.Net.Links[i].Addrs = append(l.Addrs, netip.MustParsePrefix("fd00:1::5/64"), netip.MustParsePrefix("fd00:1::6/128"))
		case "eth1":
			s.Net.Links[i].Addrs = append(l.Addrs, netip.MustParsePrefix("fd00:2::1/64"))
		}
	}
	s.Net.Routes = append(s.Net.Routes,
		netstate.Route{Dst: netip.MustParsePrefix("fd00:1::/64"), Dev: "eth0", Table: 254, Scope: "universe"},
		netstate.Route{Dst: netip.MustParsePrefix("fd00:2::/64"), Dev: "eth1", Table: 254, Scope: "universe"})
	setIPForward(s, "0")
	setSysctl(s, "net.ipv6.conf.all.forwarding", "1")
}

// setIPForward writes net.ipv4.ip_forward as the kernel does: it is
// conf.all.forwarding, and writing it sets every interface's forwarding.
func setIPForward(s *probes.Snapshot, v string) {
	for k := range s.Sysctls {
		if strings.HasPrefix(k, "net.ipv4.conf.") && strings.HasSuffix(k, ".forwarding") {
			setSysctl(s, k, v)
		}
	}
	setSysctl(s, "net.ipv4.ip_forward", v)
}

func setSysctl(s *probes.Snapshot, key, value string) {
	s.Sysctls[key] = sysctl.Value{Key: key, Value: value, Present: true}
}

// An IPv6 service is judged by IPv6's switches: its replies cross
// net.ipv6.conf.all.forwarding, never net.ipv4.ip_forward (which failed a
// healthy IPv6-only LB and passed one whose IPv6 forwarding was off).
func TestIPv6Services(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*probes.Snapshot)
		id      string
		want    checks.Status
		wantFix string // in the fix when it fails, in the reason when it skips
	}{
		{"IPv6 forwarding on, IPv4 off", func(*probes.Snapshot) {}, "sysctl.ip_forward", checks.Pass, ""},
		{"IPv6 forwarding off, IPv4 on", func(s *probes.Snapshot) {
			setIPForward(s, "1")
			setSysctl(s, "net.ipv6.conf.all.forwarding", "0")
		}, "sysctl.ip_forward", checks.Fail, "net.ipv6.conf.all.forwarding=1"},
		{"IPv6 forwarding not read", func(s *probes.Snapshot) { delete(s.Sysctls, "net.ipv6.conf.all.forwarding") }, "sysctl.ip_forward", checks.Skip, ""},
		{"an IPv4 service beside, IPv4 forwarding off", func(s *probes.Snapshot) {
			v4 := s.IPVS.Services[0]
			v4.Addr, v4.Reals = netip.MustParseAddrPort("10.1.0.6:8085"), []ipvs.Real{{Addr: netip.MustParseAddrPort("10.2.0.50:8085"), Method: ipvs.Masq, Weight: 1}}
			s.IPVS.Services = append(s.IPVS.Services, v4)
		}, "sysctl.ip_forward", checks.Fail, "net.ipv4.ip_forward=1"},
		{"two-arm return path", func(*probes.Snapshot) {}, "nat.return_path", checks.Pass, ""},
		{"no IPv4 redirects to judge", func(*probes.Snapshot) {}, "net.send_redirects", checks.Skip, "no IPv4 masquerade service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "two-arm")
			ipv6TwoArm(snap)
			tt.change(snap)
			f := statusOf(checks.Run(snap, probes.Selector{}), tt.id)
			if f.Status != tt.want || (tt.wantFix != "" && !strings.Contains(strings.Join(f.Fix, "\n")+f.Reason, tt.wantFix)) {
				t.Errorf("Run(%s) %s = %s %q (%s) fix %q, want %s with fix %q", tt.name, tt.id, f.Status, f.Title, f.Reason, f.Fix, tt.want, tt.wantFix)
			}
		})
	}
}

// An LB of a thousand services: ipvs.reals_available lists the services
// without a real first and counts the rest past 20 lines.
func TestRealsAvailableManyServices(t *testing.T) {
	snap := loadFixture(t, "seed-stage2")
	real := snap.IPVS.Services[0].Reals[0]
	for i := range 1000 {
		svc := ipvs.Service{Proto: "tcp", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}), 80), Reals: []ipvs.Real{real}}
		if i == 500 {
			svc.Reals = nil
		}
		snap.IPVS.Services = append(snap.IPVS.Services, svc)
	}
	f := statusOf(checks.Run(snap, probes.Selector{}), "ipvs.reals_available")
	n := len(snap.IPVS.Services)
	if f.Status != checks.Fail || len(f.Evidence) != 21 || f.Evidence[0].Fact != "TCP 10.96.2.1:80: 0 real server(s), 0 with weight > 0" ||
		f.Evidence[20].Fact != fmt.Sprintf("… and %d more services with a real server of weight > 0", n-20) {
		t.Errorf("ipvs.reals_available of %d services = %s, %d evidence lines, first %q, last %q; want fail, 21 lines, the service without a real first, the rest counted",
			n, f.Status, len(f.Evidence), f.Evidence[0].Fact, f.Evidence[len(f.Evidence)-1].Fact)
	}
}

// ipv6OneArm turns seed stage 1 (one-arm, no SNAT rule) into its IPv6
// twin: VIP [fd00:1::6]:8085 and real [fd00:1::50]:8085 on eth0, with
// IPv6 forwarding on.
func ipv6OneArm(s *probes.Snapshot) {
	s.IPVS.Services[0].Addr = netip.MustParseAddrPort("[fd00:1::6]:8085")
	s.IPVS.Services[0].Reals[0].Addr = netip.MustParseAddrPort("[fd00:1::50]:8085")
	for i, l := range s.Net.Links {
		if l.Name == "eth0" {
			s.Net.Links[i].Addrs = append(l.Addrs, netip.MustParsePrefix("fd00:1::5/64"), netip.MustParsePrefix("fd00:1::6/128"))
		}
	}
	s.Net.Routes = append(s.Net.Routes, netstate.Route{Dst: netip.MustParsePrefix("fd00:1::/64"), Dev: "eth0", Table: 254, Scope: "universe"})
	setSysctl(s, "net.ipv6.conf.all.forwarding", "1")
	setSysctl(s, "net.ipv4.vs.conntrack", "1")
}

// A rule filters one address family: an iptables rule never sees an IPv6
// service's packets (nor an ip6tables rule an IPv4 one's), so it neither
// gives that service SNAT nor needs vs.conntrack for it. Without families,
// an IPv4 `-m ipvs --ipvs` MASQUERADE passed an IPv6 one-arm service that
// has no SNAT at all.
func TestRulesCountForTheirFamily(t *testing.T) {
	masq := func(family, spec string) func(*probes.Snapshot) {
		return func(s *probes.Snapshot) {
			r := rules.Rule{Backend: rules.IptablesNft, Family: family, Table: "nat", Chain: "POSTROUTING", Spec: spec, HasCounter: true, Target: "MASQUERADE",
				IPVS: &rules.IPVSMatch{Ipvs: true}}
			s.Rules.Rules = append(s.Rules.Rules, r)
			s.Rules.Backends[1].Rules++
		}
	}
	tests := []struct {
		name   string
		change func(*probes.Snapshot)
		id     string
		want   checks.Status
		wantIn string // in the title or reason
	}{
		{"IPv4 MASQUERADE only", masq("ip", "-A POSTROUTING -m ipvs --ipvs -j MASQUERADE"), "nat.return_path", checks.Fail, "no source NAT"},
		{"ip6tables MASQUERADE", masq("ip6", "-A POSTROUTING -m ipvs --ipvs -j MASQUERADE"), "nat.return_path", checks.Pass, ""},
		{"IPv4 rule needs no vs.conntrack for IPv6", masq("ip", "-A POSTROUTING -m ipvs --ipvs -j MASQUERADE"), "sysctl.vs_conntrack", checks.Skip, "no rule depends"},
		{"IPv6 rules unread", func(s *probes.Snapshot) { s.Rules.Backends[0].IPv6Unread = "no ip6tables-legacy-save on PATH" }, "nat.return_path", checks.Skip, "the IPv6 rules of iptables-legacy could not be read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "seed-stage1")
			ipv6OneArm(snap)
			tt.change(snap)
			f := statusOf(checks.Run(snap, probes.Selector{VIP: snap.IPVS.Services[0].Addr}), tt.id)
			if f.Status != tt.want || !strings.Contains(f.Title+" "+f.Reason, tt.wantIn) {
				t.Errorf("Run(%s) %s = %s %q (%s), want %s with %q", tt.name, tt.id, f.Status, f.Title, f.Reason, tt.want, tt.wantIn)
			}
		})
	}
}

// firewall.filter judges a service by the chains of its address family: an
// ip6tables DROP never drops an IPv4 service's packets (nor an iptables one
// an IPv6 service's), and the fix of an ip6tables rule is an ip6tables
// command.
func TestFirewallFilterFamilies(t *testing.T) {
	chain := func(family, policy string) rules.Chain {
		return rules.Chain{Backend: rules.IptablesLegacy, Family: family, Table: "filter", Chain: "INPUT", Hook: "input", Policy: policy, HasCounter: true}
	}
	drop := func(family, spec string) rules.Rule {
		return rules.Rule{Backend: rules.IptablesLegacy, Family: family, Table: "filter", Chain: "INPUT", Spec: spec, Target: "DROP", HasCounter: true}
	}
	v6 := func(s *probes.Snapshot) { ipv6OneArm(s) }
	tests := []struct {
		name    string
		fixture string
		change  func(*probes.Snapshot)
		rules   []rules.Rule
		chains  []rules.Chain
		want    checks.Status
		wantFix string
	}{
		{"IPv4 service, ip6tables drops all input", "seed-stage2", func(*probes.Snapshot) {},
			[]rules.Rule{drop("ip6", "-A INPUT -j DROP")}, []rules.Chain{chain("ip", "ACCEPT"), chain("ip6", "DROP")}, checks.Pass, ""},
		{"IPv6 service, iptables drops all input", "seed-stage1", v6,
			[]rules.Rule{drop("ip", "-A INPUT -j DROP")}, []rules.Chain{chain("ip", "DROP"), chain("ip6", "ACCEPT")}, checks.Pass, ""},
		{"IPv6 service, ip6tables drops its VIP", "seed-stage1", v6,
			[]rules.Rule{drop("ip6", "-A INPUT -d fd00:1::6/128 -p tcp -m tcp --dport 8085 -j DROP")}, []rules.Chain{chain("ip", "ACCEPT"), chain("ip6", "ACCEPT")}, checks.Fail,
			"ip netns exec lb ip6tables-legacy -t filter -D INPUT -d fd00:1::6/128 -p tcp -m tcp --dport 8085 -j DROP"},
		{"IPv6 service, ip6tables input policy DROP", "seed-stage1", v6,
			nil, []rules.Chain{chain("ip", "ACCEPT"), chain("ip6", "DROP")}, checks.Fail,
			"ip netns exec lb ip6tables-legacy -t filter -I INPUT -d fd00:1::6 -p tcp --dport 8085 -j ACCEPT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, tt.fixture)
			tt.change(s)
			s.Rules.Rules, s.Rules.Chains = append(s.Rules.Rules, tt.rules...), tt.chains
			f := statusOf(checks.Run(s, probes.Selector{}), "firewall.filter")
			if f.Status != tt.want || !strings.Contains(strings.Join(f.Fix, "\n"), tt.wantFix) {
				t.Errorf("firewall.filter(%s) = %s %q %v fix %q, want %s with fix %q", tt.name, f.Status, f.Title, f.Evidence, f.Fix, tt.want, tt.wantFix)
			}
			if f.Status == checks.Fail && !strings.Contains(f.Title, "iptables-legacy ip6 filter INPUT") {
				t.Errorf("firewall.filter(%s) = %q, want the ip6 table named", tt.name, f.Title)
			}
		})
	}
}

// A finding about many services keeps its evidence short: the first lines
// and a count of the rest, never a line per service of a 1,000-service LB.
func TestEvidenceIsCapped(t *testing.T) {
	snap := loadFixture(t, "seed-stage3")
	svc := snap.IPVS.Services[0]
	for i := 1; i < 1000; i++ {
		x := svc
		x.Addr = netip.AddrPortFrom(svc.Addr.Addr(), uint16(10000+i))
		snap.IPVS.Services = append(snap.IPVS.Services, x)
	}
	f := statusOf(checks.Run(snap, probes.Selector{}), "sysctl.ip_forward")
	last := f.Evidence[len(f.Evidence)-1].Fact
	if f.Status != checks.Fail || len(f.Evidence) != checks.MaxEvidence || !strings.Contains(last, "more lines of evidence") {
		t.Errorf("Run(1,000 services, ip_forward=0) sysctl.ip_forward = %s with %d evidence lines ending %q, want fail with %d lines ending with a count of the rest", f.Status, len(f.Evidence), last, checks.MaxEvidence)
	}
}

// What a bounded read left out is said where it is judged: flow states
// counted over a dump that stopped early, drops not attributed through an
// IPVS table too big to read.
func TestBoundedReadsAreSaid(t *testing.T) {
	tests := []struct {
		name   string
		id     string
		change func(*probes.Snapshot)
		want   string // in an evidence line
	}{
		{"conntrack dump stopped", "conntrack.flow_states", func(s *probes.Snapshot) {
			s.Conntrack.Flows = []conntrack.Flow{{Proto: "tcp", State: "ESTABLISHED", Status: []string{"SEEN_REPLY", "ASSURED", "CONFIRMED"}}}
			s.Conntrack.Partial = "the dump stopped after 10000 flows of the 100000 entries conntrack holds"
		}, "1 flow(s): 1 assured, 0 with a reply that never completed, 0 with no reply (the dump stopped after 10000 flows of the 100000 entries conntrack holds)"},
		{"IPVS table not read for attribution", "drops.vip_flows", func(s *probes.Snapshot) {
			s.Drops = &drops.Sample{Window: time.Second, Attribution: drops.Attribution{Errors: map[string]string{"ipvs": "not read: IPVS holds 100000 connections"}}}
		}, "drops were not attributed through the ipvs table: not read: IPVS holds 100000 connections"},
	}
	for _, tt := range tests {
		snap := loadFixture(t, "seed-stage2")
		tt.change(snap)
		f := statusOf(checks.Run(snap, probes.Selector{}), tt.id)
		var facts []string
		for _, e := range f.Evidence {
			facts = append(facts, e.Fact)
		}
		if !slices.Contains(facts, tt.want) {
			t.Errorf("%s: %s evidence = %q, want a line %q", tt.name, tt.id, facts, tt.want)
		}
	}
}

// A finding that did not pass names the services it is about (JSON
// `services`, serve's per-service series) when they are some of the
// selected ones, sorted; about every selected service, or passing, it
// names none: the finding is about the selection.
func TestFindingServices(t *testing.T) {
	second := ipvs.Service{Proto: "tcp", Addr: netip.MustParseAddrPort("10.1.0.9:80")}
	tests := []struct {
		name   string
		change func(s *probes.Snapshot)
		id     string
		status checks.Status
		want   []string
	}{
		{"one of two services without a real", func(s *probes.Snapshot) {
			s.IPVS.Services = append(s.IPVS.Services, second)
		}, "ipvs.reals_available", checks.Fail, []string{"TCP 10.1.0.9:80"}},
		{"both without a real", func(s *probes.Snapshot) {
			s.IPVS.Services[0].Reals = nil
			s.IPVS.Services = append(s.IPVS.Services, second)
		}, "ipvs.reals_available", checks.Fail, nil},
		{"every service has a real: passes", func(s *probes.Snapshot) {
			s.IPVS.Services = append(s.IPVS.Services, second)
			s.IPVS.Services[1].Reals = s.IPVS.Services[0].Reals
		}, "ipvs.reals_available", checks.Pass, nil},
		{"a filter rule drops one of two services' requests", func(s *probes.Snapshot) {
			s.IPVS.Services = append(s.IPVS.Services, second)
			s.IPVS.Services[1].Reals = s.IPVS.Services[0].Reals
			s.Rules.Rules = append(s.Rules.Rules, rules.Rule{Backend: rules.IptablesLegacy, Table: "filter", Chain: "INPUT", Target: "DROP",
				Spec: "-A INPUT -d 10.1.0.6/32 -p tcp -m tcp --dport 8085 -j DROP", HasCounter: true, Packets: 13})
			s.Rules.Chains = []rules.Chain{{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Hook: "input", Policy: "ACCEPT", HasCounter: true}}
		}, "firewall.filter", checks.Fail, []string{"TCP 10.1.0.6:8085"}},
		{"forwarding off for the only masquerade service", func(s *probes.Snapshot) {
			setIPForward(s, "0")
		}, "sysctl.ip_forward", checks.Fail, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "seed-stage2")
			tt.change(snap)
			f := statusOf(checks.Run(snap, probes.Selector{}), tt.id)
			if f.Status != tt.status || !slices.Equal(f.Services, tt.want) {
				t.Errorf("%s = %s, services %q; want %s, %q", tt.id, f.Status, f.Services, tt.status, tt.want)
			}
		})
	}
}

// A finding's services (JSON findings[].services, serve's per-service
// series) name some of the selected services: absent when the finding is
// about every selected one — the only one, too, IPVS's or a VIP IPVS does
// not serve — since the selection's own series already is that service.
func TestFindingServicesOfVIP(t *testing.T) {
	tests := []struct {
		name    string
		fixture string
		sel     probes.Selector
		id      string
		want    []string
	}{
		{"the only IPVS service", "seed-stage3-drops", probes.Selector{VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Proto: "tcp"}, "drops.vip_flows", nil},
		{"an nft DNAT VIP, the only service", "nft-dnat-forward-off", probes.Selector{VIP: netip.MustParseAddrPort("10.99.0.6:8085"), Proto: "tcp"}, "drops.vip_flows", nil},
		{"an nft DNAT VIP and port, either protocol: TCP is some of it", "nft-dnat-forward-off", probes.Selector{VIP: netip.MustParseAddrPort("10.99.0.6:8085")}, "drops.vip_flows", []string{"TCP 10.99.0.6:8085"}},
		{"every port of an nft DNAT VIP: its services are not known", "nft-dnat-forward-off", probes.Selector{VIP: netip.MustParseAddrPort("10.99.0.6:0")}, "drops.vip_flows", []string{"TCP 10.99.0.6:8085"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := statusOf(checks.Run(loadFixture(t, tt.fixture), tt.sel), tt.id)
			if f.Status != checks.Fail || !slices.Equal(f.Services, tt.want) {
				t.Errorf("Run(%s, %s).%s = %s, services %q; want fail, services %q", tt.fixture, tt.sel.VIPString(), tt.id, f.Status, f.Services, tt.want)
			}
		})
	}
}

// A --vip that only a firewall-mark service serves (a rule marks its
// packets, or IPVS's entries to it are a mark service's) is not missing:
// kernel.ipvs warns that --vip cannot select it, and never suggests an
// ipvsadm -A beside it.
func TestVIPServedByMark(t *testing.T) {
	fwm := ipvs.Service{Proto: "fwmark", FWMark: 16, Scheduler: "rr", Reals: []ipvs.Real{{Addr: netip.MustParseAddrPort("10.1.0.50:80"), Method: ipvs.Masq, Weight: 1}}}
	legacy := func(spec string) rules.Rule {
		return rules.Rule{Backend: rules.IptablesLegacy, Family: "ip", Table: "mangle", Chain: "PREROUTING", Target: "MARK", Spec: spec, HasCounter: true}
	}
	tests := []struct {
		name  string
		vip   string
		rules []rules.Rule
		conns []ipvs.ConnCount
		want  checks.Status
	}{
		{"an iptables MARK rule on the VIP and port", "10.1.0.9:80", []rules.Rule{legacy("-A PREROUTING -d 10.1.0.9/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x10/0xffffffff")}, nil, checks.Warn},
		{"every port of the address", "10.1.0.9:0", []rules.Rule{legacy("-A PREROUTING -d 10.1.0.9/32 -p tcp -m tcp --dport 80 -j MARK --set-mark 16")}, nil, checks.Warn},
		{"a native nft rule", "10.1.0.9:80", []rules.Rule{{Backend: rules.Nft, Family: "ip", Table: "mangle", Chain: "pre", Spec: "ip daddr 10.1.0.9 tcp dport 80 meta mark set 0x00000010"}}, nil, checks.Warn},
		{"IPVS entries of the mark service", "10.1.0.9:80", nil, []ipvs.ConnCount{{Proto: "tcp", VIP: netip.MustParseAddrPort("10.1.0.9:80"), Dest: netip.MustParseAddrPort("10.1.0.50:80"), State: "ESTABLISHED", Count: 3}}, checks.Warn},
		{"the rule marks another port", "10.1.0.9:443", []rules.Rule{legacy("-A PREROUTING -d 10.1.0.9/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x10/0xffffffff")}, nil, checks.Fail},
		{"the rule sets another mark", "10.1.0.9:80", []rules.Rule{legacy("-A PREROUTING -d 10.1.0.9/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x11/0xffffffff")}, nil, checks.Fail},
		{"a conntrack mark is no packet mark", "10.1.0.9:80", []rules.Rule{{Backend: rules.Nft, Family: "ip", Table: "mangle", Chain: "pre", Spec: "ip daddr 10.1.0.9 tcp dport 80 ct mark set 0x00000010"}}, nil, checks.Fail},
		{"nothing marks it", "10.1.0.9:80", nil, nil, checks.Fail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "seed-stage2")
			snap.IPVS.Services = append(snap.IPVS.Services, fwm)
			snap.Rules.Rules = append(snap.Rules.Rules, tt.rules...)
			snap.IPVS.ConnCounts = tt.conns
			f := statusOf(checks.Run(snap, probes.Selector{VIP: netip.MustParseAddrPort(tt.vip)}), "kernel.ipvs")
			adds := slices.ContainsFunc(f.Fix, func(x string) bool { return strings.Contains(x, "ipvsadm -A") })
			if f.Status != tt.want || adds != (tt.want == checks.Fail) {
				t.Errorf("kernel.ipvs(--vip %s) = %s %q, fix %q; want %s, an ipvsadm -A only on a fail", tt.vip, f.Status, f.Title, f.Fix, tt.want)
			}
		})
	}
}

// conntrack.flow_states says which VIPs the flows that never saw a reply
// went to, the most first (a big LB's count alone names none), counted
// over every flow read, and names them as the finding's services.
func TestFlowStatesNamesVIPs(t *testing.T) {
	snap := loadFixture(t, "seed-stage2")
	ap := netip.MustParseAddrPort
	snap.Conntrack.Counts = []probes.FlowCount{{State: "SYN_SENT", Count: 9990}, {State: "ESTABLISHED", SeenReply: true, Assured: true, Count: 10}}
	snap.Conntrack.NoReply = []probes.FlowTally{{Proto: "tcp", Dst: ap("10.1.0.7:80"), Count: 90}, {Proto: "tcp", Dst: ap("10.1.0.6:8085"), Count: 9000},
		{Proto: "udp", Dst: ap("10.1.0.8:53"), Count: 500}, {Proto: "tcp", Dst: ap("10.1.0.9:443"), Count: 300}, {Proto: "tcp", Dst: ap("10.1.0.10:80"), Count: 100}}
	for _, svc := range []string{"tcp 10.1.0.7:80", "udp 10.1.0.8:53", "tcp 10.1.0.9:443", "tcp 10.1.0.10:80", "tcp 10.1.0.11:80"} {
		p, a, _ := strings.Cut(svc, " ")
		snap.IPVS.Services = append(snap.IPVS.Services, ipvs.Service{Proto: p, Addr: ap(a), Reals: snap.IPVS.Services[0].Reals})
	}
	f := statusOf(checks.Run(snap, probes.Selector{}), "conntrack.flow_states")
	wantTitle := "9990 flow(s) never saw a reply: TCP 10.1.0.6:8085 (9000), UDP 10.1.0.8:53 (500), TCP 10.1.0.9:443 (300) and 2 more VIPs"
	var facts []string
	for _, e := range f.Evidence {
		facts = append(facts, e.Fact)
	}
	if f.Status != checks.Warn || f.Title != wantTitle || !slices.Contains(facts, "TCP 10.1.0.7:80: 90 flow(s) with no reply") || len(f.Services) != 5 {
		t.Errorf("conntrack.flow_states = %s %q, evidence %q, services %q; want warn %q, a line per VIP, 5 services", f.Status, f.Title, facts, f.Services, wantTitle)
	}
}

// kernel.ipvs of a --vip that nft DNATs names it as the subject of its
// title, by protocol when one is selected: never "at … (any protocol) is".
func TestKernelIPVSOfADNATVIPNamesIt(t *testing.T) {
	dnat := rules.Rule{Backend: rules.Nft, Family: "ip", Table: "lb", Chain: "pre", Target: "DNAT", Spec: "ip daddr 10.9.0.6 tcp dport 80 dnat to 10.9.0.50:8080"}
	tests := []struct {
		name string
		sel  probes.Selector
		want string
	}{
		{"any protocol", probes.Selector{VIP: netip.MustParseAddrPort("10.9.0.6:80")}, "10.9.0.6:80 is no IPVS service: it is DNATed to 10.9.0.50:8080 (DNAT rule)"},
		{"tcp", probes.Selector{VIP: netip.MustParseAddrPort("10.9.0.6:80"), Proto: "tcp"}, "TCP 10.9.0.6:80 is no IPVS service: it is DNATed to 10.9.0.50:8080 (DNAT rule)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "seed-stage2")
			snap.Rules.Rules = append(snap.Rules.Rules, dnat)
			if f := statusOf(checks.Run(snap, tt.sel), "kernel.ipvs"); f.Status != checks.Skip || f.Title != tt.want {
				t.Errorf("kernel.ipvs(--vip %s) = %s %q, want skip %q", tt.sel.VIPString(), f.Status, f.Title, tt.want)
			}
		})
	}
}

// A one-arm service whose source-NAT rule covers the VIP but is narrowed to
// other clients (`-s 10.99.0.0/16`) leaves its clients to IPVS's DNAT
// alone: nat.return_path fails naming them, even without a window, and
// conntrack.stale_flows does not call their unanswered flows older than
// the rule (deleting them would change nothing).
func TestReturnPathSNATNarrowed(t *testing.T) {
	vip, real := netip.MustParseAddrPort("10.1.0.6:8085"), netip.MustParseAddrPort("10.1.0.50:8085")
	for _, tt := range []struct {
		name      string
		sources   string // the rule's -s, "" none
		wantPath  checks.Status
		wantStale checks.Status
	}{
		{"every client", "", checks.Pass, checks.Warn},
		{"the clients' subnet", "10.1.0.0/24", checks.Pass, checks.Warn},
		{"other clients", "10.99.0.0/16", checks.Fail, checks.Pass},
	} {
		t.Run(tt.name, func(t *testing.T) {
			snap := loadFixture(t, "seed-stage3")
			i := slices.IndexFunc(snap.Rules.Rules, func(r rules.Rule) bool { return r.CoversVIP(vip) })
			if tt.sources != "" {
				snap.Rules.Rules[i].Spec = strings.Replace(snap.Rules.Rules[i].Spec, "-A POSTROUTING ", "-A POSTROUTING -s "+tt.sources+" ", 1)
			}
			// A client's connection attempt IPVS rewrote and nothing
			// source-NATed or answered.
			client := netip.MustParseAddrPort("10.1.0.3:40000")
			snap.Conntrack.Flows = append(snap.Conntrack.Flows, conntrack.Flow{Proto: "tcp", State: "SYN_SENT", Status: []string{"CONFIRMED", "DST_NAT_DONE", "SRC_NAT_DONE"},
				Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: client}})
			snap.Conntrack.NotSNATed = []probes.FlowTally{{Proto: "tcp", Dst: vip, Count: 1}}
			snap.IPVS.Conns = append(snap.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: client, VIP: vip, Dest: real, State: "SYN_RECV"})
			fs := checks.Run(snap, probes.Selector{VIP: vip, Proto: "tcp"})
			f := statusOf(fs, "nat.return_path")
			if f.Status != tt.wantPath {
				t.Errorf("Run(seed-stage3, SNAT rule %q) nat.return_path = %s %q, want %s", snap.Rules.Rules[i].Spec, f.Status, f.Title, tt.wantPath)
			}
			if tt.wantPath == checks.Fail {
				text := findingText(f)
				if !strings.Contains(f.Title, "does not match them") || !strings.Contains(text, "10.1.0.3") || !strings.Contains(text, "-s 10.99.0.0/16") {
					t.Errorf("nat.return_path = %q\n%s\nwant the rule that does not match, naming client 10.1.0.3 and the rule", f.Title, text)
				}
				// vs.conntrack is 1 here: the fix does not ask for it.
				if slices.ContainsFunc(f.Remedies, func(r checks.Remedy) bool { return r.Sysctl == "net.ipv4.vs.conntrack" }) {
					t.Errorf("nat.return_path remedies = %+v, want none setting net.ipv4.vs.conntrack, already 1", f.Remedies)
				}
			}
			if g := statusOf(fs, "conntrack.stale_flows"); g.Status != tt.wantStale {
				t.Errorf("Run(seed-stage3, SNAT rule %q) conntrack.stale_flows = %s %q, want %s", snap.Rules.Rules[i].Spec, g.Status, g.Title, tt.wantStale)
			}
		})
	}
}
