//go:build guest

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

func lbd(t *testing.T, args ...string) (string, int) { return testkit.RunLbdoctor(t, args...) }

// Each of the seed's faults fails as the client sees it, and
// `check --fix --yes` turns it into a working path.
func TestGuestLabFaultsAndFix(t *testing.T) {
	for i, tt := range []struct {
		fault, topo, proto string
		// readerGone runs lab up with its stdout's reader gone (`lab up |
		// head -1`): it must build the whole lab, its fault the last step,
		// and exit 0, not die by SIGPIPE at its plan.
		readerGone bool
	}{
		{"none", "one-arm", "tcp", false},
		{"none", "two-arm", "tcp", false},
		{"none", "one-arm", "udp", false},
		{"none", "two-arm", "udp", false},
		{"no-snat", "one-arm", "tcp", false},
		{"vs-conntrack-off", "one-arm", "tcp", false},
		{"ip-forward-off", "one-arm", "tcp", true},
	} {
		name := "lab" + string(rune('a'+i))
		t.Run(tt.fault+"/"+tt.topo+"/"+tt.proto, func(t *testing.T) {
			defer lbd(t, "lab", "down", "--name", name)
			up := []string{"lab", "up", "--name", name, "--fault", tt.fault, "--topology", tt.topo, "--proto", tt.proto}
			if tt.readerGone {
				c := exec.Command(testkit.LbdoctorBinary(t), up...)
				var stderr strings.Builder
				c.Stdout, c.Stderr = closedPipe(t), &stderr
				if err := c.Run(); err != nil {
					t.Fatalf("lab up with its stdout's reader gone: %v (stderr %q), want exit 0", err, stderr.String())
				}
			} else if out, code := lbd(t, up...); code != 0 {
				t.Fatalf("lab up = exit %d:\n%s", code, out)
			}
			if out, code := lbd(t, "lab", "status", "--name", name); code != 0 || !strings.Contains(out, "running") {
				t.Errorf("lab status = exit %d:\n%s", code, out)
			}
			out, code := lbd(t, "lab", "probe", "--name", name, "-n", "2", "--timeout", "1500ms")
			t.Logf("probe with fault %s:\n%s", tt.fault, out)
			if (tt.fault == "none") != (code == 0) {
				t.Fatalf("lab probe with fault %s = exit %d, want %s:\n%s", tt.fault, code, map[bool]string{true: "success", false: "failure"}[tt.fault == "none"], out)
			}
			wantSeen := "source NAT"
			if tt.topo == "two-arm" {
				wantSeen = "NAT keeps it"
			}
			if tt.fault == "none" {
				if !strings.Contains(out, wantSeen) {
					t.Errorf("lab probe: want the real server to see %q:\n%s", wantSeen, out)
				}
				return
			}
			fix, code := lbd(t, "check", "--netns", name+"-lb", "--fix", "--yes")
			t.Logf("check --fix:\n%s", fix)
			after := fix[strings.Index(fix, "after --fix:")+1:]
			if code != 0 || !strings.Contains(fix, "after --fix:") || strings.Contains(after, "✗") {
				t.Fatalf("check --fix --yes = exit %d, want no failing finding after the fix:\n%s", code, fix)
			}
			if out, code := lbd(t, "lab", "probe", "--name", name, "-n", "2"); code != 0 || !strings.Contains(out, "2/2 answered") {
				t.Errorf("after --fix, lab probe = exit %d:\n%s", code, out)
			}
		})
		// lab down removes everything.
		if m, _ := filepath.Glob(filepath.Join(netns.RunDir, name+"-*")); len(m) != 0 {
			t.Errorf("after lab down, namespaces remain: %v", m)
		}
	}
	if _, err := os.Stat("/run/lbdoctor/lab-laba.json"); err == nil {
		t.Error("after lab down, its record remains")
	}
}
