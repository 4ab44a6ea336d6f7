package checks_test

import (
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/probes"
)

// A full conntrack table drops the clients' SYNs itself: nf_conntrack_in
// returns NF_DROP in prerouting (NETFILTER_DROP at nf_hook_slow, no rule
// moved) and counts them in conntrack's drop. conntrack.table fails and
// explains them; drops.vip_flows only warns, pointing at it with its fix,
// where it failed beside it blaming a packet-filter rule and listing
// `iptables -t filter -nvL PREROUTING`, a chain the filter table has not.
// A prerouting drop that conntrack did not count is still a rule's, listed
// where prerouting has chains (raw, mangle); and conntrack.table, whose
// counters count since the namespace started, only warns when the window
// saw it drop nothing (the table was grown since), where it failed for as
// long as the namespace lived. A static snapshot cannot tell: it fails.
func TestDropsOfAFullConntrackTable(t *testing.T) {
	for _, tt := range []struct {
		name       string
		ctDrop     uint64 // conntrack's drop in the window
		noWindow   bool
		wantCT     checks.Status // conntrack.table
		want       checks.Status // drops.vip_flows
		wantIn     string        // in drops.vip_flows' title
		wantFix    string
		notWantFix string
	}{
		{"conntrack counted the drops", 6, false, checks.Fail, checks.Warn, "the cause: conntrack.table", "sysctl -w net.netfilter.nf_conntrack_max=65536", "-nvL"},
		{"conntrack counted none", 0, false, checks.Warn, checks.Fail, "NETFILTER_DROP at nf_hook_slow in prerouting", "iptables-legacy -t raw -nvL PREROUTING --line-numbers", "-t filter -nvL PREROUTING"},
		{"static snapshot", 0, true, checks.Fail, checks.Fail, "", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "seed-stage3-drops")
			ds := inputSYNDrops(6)
			for i := range ds {
				ds[i].Hook = "prerouting"
			}
			s.Drops.Drops = ds
			s.Rules.Backends[0].Rules = 1
			s.Conntrack.Stats.MaxEntries, s.Conntrack.Stats.Entries, s.Conntrack.Stats.Drop = 4, 6, 16
			s.Window = &probes.Window{DropPoints: []probes.DropPoint{{Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "prerouting", Count: 6}}}
			s.Window.Deltas.Conntrack.Drop = tt.ctDrop
			if tt.noWindow {
				s.Window = nil
			}
			fs := checks.Run(s, probes.Selector{})
			if ct := statusOf(fs, "conntrack.table"); ct.Status != tt.wantCT {
				t.Errorf("conntrack.table = %s %q, want %s", ct.Status, ct.Title, tt.wantCT)
			}
			f := statusOf(fs, "drops.vip_flows")
			fix := strings.Join(f.Fix, "\n")
			if f.Status != tt.want || !strings.Contains(f.Title, tt.wantIn) || !strings.Contains(fix, tt.wantFix) || (tt.notWantFix != "" && strings.Contains(fix, tt.notWantFix)) {
				t.Errorf("drops.vip_flows = %s %q (%s)\nfix %q\nwant %s, title with %q, fix with %q and without %q", f.Status, f.Title, f.Reason, f.Fix, tt.want, tt.wantIn, tt.wantFix, tt.notWantFix)
			}
		})
	}
}
