package report_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// inspect shows a DROP policy with the rules, with its counter (or its
// move over --watch), and says when nft keeps none.
func TestInspectShowsDropPolicies(t *testing.T) {
	fwd := rules.Chain{Backend: rules.IptablesNft, Family: "ip", Table: "filter", Chain: "FORWARD", Hook: "forward", Policy: "DROP", HasCounter: true, Packets: 40}
	out := rules.Chain{Backend: rules.Nft, Family: "inet", Table: "inet f", Chain: "out", Hook: "output", Policy: "DROP"}
	in := rules.Chain{Backend: rules.IptablesLegacy, Family: "ip", Table: "filter", Chain: "INPUT", Hook: "input", Policy: "ACCEPT", HasCounter: true}
	for _, tt := range []struct {
		name   string
		deltas *probes.Deltas
		want   []string
	}{
		{"one read", nil, []string{"40 pkts  iptables-nft filter FORWARD: policy DROP (hook forward)", "no counter  nft inet f out: policy DROP (hook output)"}},
		{"watched", &probes.Deltas{Chains: []probes.ChainDelta{{Chain: fwd, Packets: 7}}}, []string{"+7 pkts  iptables-nft filter FORWARD: policy DROP (hook forward)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			s := &probes.Snapshot{Rules: rules.Snapshot{Chains: []rules.Chain{in, fwd, out}}}
			if err := report.InspectText(&b, &report.Inspection{Schema: 1, Snapshot: s, Deltas: tt.deltas}); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("InspectText() =\n%s\nwant %q in it", b.String(), w)
				}
			}
			if strings.Contains(b.String(), "INPUT: policy") {
				t.Errorf("InspectText() shows an ACCEPT policy:\n%s", b.String())
			}
		})
	}
}
