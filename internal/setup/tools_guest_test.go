//go:build guest

package setup_test

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A host whose only iptables is `iptables` on nf_tables (kube-proxy images,
// minimal hosts) gets its SNAT rule written through that tool, found by the
// backend it drives; teardown removes it through the same tool.
func TestGuestSetupWritesThroughTheToolItFinds(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	l := testkit.Lab(t, lab.OneArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)

	lone := t.TempDir()
	multi, err := exec.LookPath("xtables-nft-multi")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"iptables", "iptables-save"} {
		if err := os.Symlink(multi, filepath.Join(lone, name)); err != nil {
			t.Fatal(err)
		}
	}
	bin := testkit.LbdoctorBinary(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "PATH="+lone)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("PATH=%s lbdoctor %v: %v\n%s", lone, args, err, out)
		}
		return string(out)
	}

	before := testkit.HostState(t, l.LB)
	out := run("setup", "--netns", l.LB.Name, "--vip", vip.String(), "--real", netip.AddrPortFrom(l.RealIP, 8085).String(), "--snat-backend", "iptables")
	if want := " iptables -t nat -A POSTROUTING "; !strings.Contains(out, want) {
		t.Errorf("setup's plan does not name the tool it runs (%q):\n%s", want, out)
	}
	if save := testkit.Run(t, l.LB, "iptables-nft-save", "-t", "nat"); !strings.Contains(save, "--vaddr "+l.VIP.String()) {
		t.Fatalf("no SNAT rule in nf_tables after setup:\n%s\n%s", out, save)
	}
	if res := lab.Probe(context.Background(), l.Client, vip, 5*time.Second); !res.OK || res.Peer.Addr() != l.LBIP {
		t.Fatalf("after setup: client → %s = %+v, want OK with the real server seeing %s\n%s", vip, res, l.LBIP, out)
	}
	down := run("teardown", "--netns", l.LB.Name)
	if after := testkit.HostState(t, l.LB); after != before {
		t.Errorf("teardown did not restore the host:\n%s\n--- before ---\n%s\n--- after ---\n%s", down, before, after)
	}
}
