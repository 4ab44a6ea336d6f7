//go:build guest

package setup_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
)

// lbdoctor runs the binary and fails the test unless it exits 0.
func lbdoctor(t *testing.T, args ...string) string {
	t.Helper()
	out, code := testkit.RunLbdoctor(t, args...)
	if code != 0 {
		t.Fatalf("lbdoctor %v = exit %d:\n%s", args, code, out)
	}
	return out
}

// setup builds a working path from the client's point of view: one-arm with
// SNAT (the real server sees the LB), two-arm without (it sees the client).
func TestGuestSetupBuildsWorkingNAT(t *testing.T) {
	for _, tt := range []struct {
		topo     lab.Topology
		wantSNAT bool
	}{{lab.OneArm, true}, {lab.TwoArm, false}} {
		t.Run(string(tt.topo), func(t *testing.T) {
			t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
			l := testkit.Lab(t, tt.topo)
			testkit.Serve(t, l.Real, ":8085")
			vip := netip.AddrPortFrom(l.VIP, 8085)
			args := []string{"setup", "--netns", l.LB.Name, "--vip", vip.String(), "--real", netip.AddrPortFrom(l.RealIP, 8085).String()}

			before := testkit.HostState(t, l.LB)
			dry := lbdoctor(t, append(args, "--dry-run")...)
			if after := testkit.HostState(t, l.LB); after != before || !strings.Contains(dry, "dry run") {
				t.Fatalf("--dry-run changed the host or printed no plan:\n%s", dry)
			}
			if got := strings.Contains(dry, "source NAT needed"); got != tt.wantSNAT {
				t.Errorf("setup decided SNAT=%v, want %v:\n%s", got, tt.wantSNAT, dry)
			}

			out := lbdoctor(t, args...)
			t.Logf("\n%s", out)
			res := lab.Probe(context.Background(), l.Client, vip, 5*time.Second)
			wantPeer := l.ClientIP
			if tt.wantSNAT {
				wantPeer = l.LBIP
			}
			if !res.OK || res.Peer.Addr() != wantPeer {
				t.Fatalf("after setup: client → %s = %+v, want OK with the real server seeing %s", vip, res, wantPeer)
			}
			if again := lbdoctor(t, args...); !strings.Contains(again, "nothing to change") {
				t.Errorf("second setup changed something:\n%s", again)
			}
			down := lbdoctor(t, "teardown", "--netns", l.LB.Name)
			if after := testkit.HostState(t, l.LB); after != before {
				t.Errorf("teardown did not restore the host:\n%s\n--- before ---\n%s\n--- after ---\n%s", down, before, after)
			}
		})
	}
}

// A failure injected after every step of apply leaves the host as it was.
func TestGuestSetupRollsBackAtEveryStep(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "0")
	for _, backend := range []string{setup.BackendIptables, setup.BackendNft} {
		spec := setup.Spec{SNATBackend: backend, Services: []setup.Service{{
			Proto: "tcp", VIP: netip.AddrPortFrom(l.VIP, 8085), Scheduler: "rr", SNAT: setup.SNATAuto,
			Reals: []setup.Real{{Addr: netip.AddrPortFrom(l.RealIP, 8085), Weight: 1}, {Addr: netip.MustParseAddrPort("10.1.0.51:8085"), Weight: 2}},
		}}}
		before := testkit.HostState(t, l.LB)
		steps, _, err := setup.Steps(l.LB, spec, probes.Gather(l.LB, probes.Selector{}, probes.Options{}))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for k := 1; ; k++ {
			p, err := apply.Build(context.Background(), steps)
			if err != nil {
				t.Fatal(err)
			}
			n = len(p.Steps)
			if k > n {
				break
			}
			_, err = apply.Run(context.Background(), p, apply.Hooks{AfterStep: func(i int) error {
				if i == k {
					return fmt.Errorf("injected after step %d", i)
				}
				return nil
			}})
			if !errors.Is(err, apply.ErrRolledBack) {
				t.Fatalf("%s: fail after %d: Run() = %v, want rolled back", backend, k, err)
			}
			if after := testkit.HostState(t, l.LB); after != before {
				t.Fatalf("%s: failure after step %d of %d (%s): state differs\n--- before ---\n%s\n--- after ---\n%s", backend, k, n, p.Steps[k-1].Describe(), before, after)
			}
		}
		if n != 9 {
			t.Errorf("%s: plan had %d steps, want 9 (service, 2 reals, SNAT, ip_forward, expire_nodest_conn, vs.conntrack, 2 send_redirects)", backend, n)
		}
	}
}

// teardown removes only what lbdoctor made: a foreign service, iptables
// rule and nft table stay.
func TestGuestTeardownLeavesForeignObjects(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	l := testkit.Lab(t, lab.OneArm)
	testkit.IPVSMasq(t, l.LB, netip.MustParseAddrPort("10.1.0.7:80"), netip.MustParseAddrPort("10.1.0.50:80"))
	testkit.Run(t, l.LB, "iptables", "-t", "nat", "-A", "POSTROUTING", "-d", "10.9.9.9/32", "-j", "MASQUERADE")
	testkit.Run(t, l.LB, "nft", "add table inet foreign; add chain inet foreign c { type filter hook input priority 5; }; add rule inet foreign c tcp dport 22 accept")
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	testkit.Sysctl(t, l.LB, "net.ipv4.vs.conntrack", "0")
	before := testkit.HostState(t, l.LB)
	lbdoctor(t, "setup", "--netns", l.LB.Name, "--vip", "10.1.0.6:8085", "--real", "10.1.0.50:8085")
	if mid := testkit.HostState(t, l.LB); mid == before {
		t.Fatal("setup changed nothing")
	}
	lbdoctor(t, "teardown", "--netns", l.LB.Name)
	if after := testkit.HostState(t, l.LB); after != before {
		t.Errorf("teardown touched foreign objects or left its own:\n--- before ---\n%s\n--- after ---\n%s", before, after)
	}
	if out := lbdoctor(t, "teardown", "--netns", l.LB.Name); !strings.Contains(out, "nothing to tear down") {
		t.Errorf("second teardown = %q, want nothing to tear down", out)
	}
}

// The same working one-arm service, imported from each input format.
func TestGuestSetupFromFiles(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	l := testkit.Lab(t, lab.OneArm)
	testkit.Serve(t, l.Real, ":8085")
	vip := netip.AddrPortFrom(l.VIP, 8085)
	dir := t.TempDir()
	for _, f := range []struct{ flag, name, body string }{
		{"--file", "lb.yaml", "services:\n  - vip: 10.1.0.6:8085\n    reals:\n      - addr: 10.1.0.50:8085\n"},
		{"--from-ipvsadm", "ipvsadm.rules", "-A -t 10.1.0.6:8085 -s rr\n-a -t 10.1.0.6:8085 -r 10.1.0.50:8085 -m -w 1\n"},
		{"--file", "-", "services:\n  - vip: 10.1.0.6:8085\n    reals:\n      - addr: 10.1.0.50:8085\n"},
		{"--from-keepalived", "keepalived.conf", "virtual_server 10.1.0.6 8085 {\n  lb_algo rr\n  lb_kind NAT\n  protocol TCP\n  real_server 10.1.0.50 8085 {\n    weight 1\n  }\n}\n"},
	} {
		if f.name == "-" {
			// Standard input, given explicitly.
			cmd := exec.Command(testkit.LbdoctorBinary(t), "setup", "--netns", l.LB.Name, f.flag, "-")
			cmd.Stdin = strings.NewReader(f.body)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("lbdoctor setup %s - < spec: %v\n%s", f.flag, err, out)
			}
		} else {
			path := dir + "/" + f.name
			if err := os.WriteFile(path, []byte(f.body), 0o644); err != nil {
				t.Fatal(err)
			}
			lbdoctor(t, "setup", "--netns", l.LB.Name, f.flag, path)
		}
		if res := lab.Probe(context.Background(), l.Client, vip, 5*time.Second); !res.OK || res.Peer.Addr() != l.LBIP {
			t.Errorf("setup %s: client → %s = %+v, want an answer through SNAT", f.flag, vip, res)
		}
		lbdoctor(t, "teardown", "--netns", l.LB.Name)
	}
}
