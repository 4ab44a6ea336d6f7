//go:build guest

package conntrack_test

import (
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// IPVS flows in conntrack (vs.conntrack=1), read by the probe and by
// `conntrack -L`, in the same namespace on real IPVS.
func TestGuestFlowsAgreeWithConntrackTool(t *testing.T) {
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 4)
	flows, err := conntrack.Flows(l.LB, conntrack.Filter{Field: conntrack.OrigDst, Addr: vip.Addr(), Port: vip.Port(), Proto: unix.IPPROTO_TCP})
	if err != nil {
		t.Fatal(err)
	}
	var fromProbe []string
	for _, f := range flows {
		if f.Reply.Src.Addr() != l.RealIP || f.Reply.Dst.Addr() != l.LBIP || !f.HasStatus("SRC_NAT") || !f.HasStatus("ASSURED") {
			t.Errorf("flow %s: want reply from the real server to the LB (SNAT), assured", f)
		}
		fromProbe = append(fromProbe, strings.Join([]string{f.Orig.Src.String(), f.Orig.Dst.String(), f.Reply.Src.String(), f.Reply.Dst.String()}, " "))
	}
	// conntrack -L -d VIP -p tcp --dport PORT -o extended: "… src=A dst=B sport=P dport=Q … src=C dst=D sport=R dport=S …"
	out := testkit.Run(t, l.LB, "conntrack", "-L", "-d", vip.Addr().String(), "-p", "tcp", "--dport", "8085")
	var fromTool []string
	for _, line := range strings.Split(out, "\n") {
		kv := map[string][]string{}
		for _, w := range strings.Fields(line) {
			if k, v, ok := strings.Cut(w, "="); ok {
				kv[k] = append(kv[k], v)
			}
		}
		if len(kv["src"]) < 2 {
			continue
		}
		fromTool = append(fromTool, strings.Join([]string{
			kv["src"][0] + ":" + kv["sport"][0], kv["dst"][0] + ":" + kv["dport"][0],
			kv["src"][1] + ":" + kv["sport"][1], kv["dst"][1] + ":" + kv["dport"][1]}, " "))
	}
	sort.Strings(fromProbe)
	sort.Strings(fromTool)
	if len(flows) != 4 || strings.Join(fromProbe, "\n") != strings.Join(fromTool, "\n") {
		t.Errorf("probe flows:\n%s\nconntrack -L:\n%s\nwant the same 4 flows", strings.Join(fromProbe, "\n"), strings.Join(fromTool, "\n"))
	}
}
