package deploy

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// runWithCaps runs lbdoctor as root with only caps (CAP_ names) in its
// bounding set, as the container runtime runs it with the DaemonSet's
// capabilities: root's exec then holds exactly those.
func runWithCaps(t *testing.T, caps []string, args ...string) (string, int) {
	t.Helper()
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	cmd := exec.Command("setpriv", append([]string{"--bounding-set=" + set, "--inh-caps=-all", "--", testkit.LbdoctorBinary(t)}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("setpriv %s: %v", set, err)
	}
	return string(out), code
}

// kallsymsNeedsSyslog tells whether this kernel hides /proc/kallsyms
// addresses from a reader without CAP_SYSLOG (kptr_restrict 1, or 0 with
// perf_event_paranoid > 1), as lib/vsprintf.c's kallsyms_show_value decides.
func kallsymsNeedsSyslog(t *testing.T) bool {
	read := func(p string) int {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return n
	}
	switch read("/proc/sys/kernel/kptr_restrict") {
	case 0:
		return read("/proc/sys/kernel/perf_event_paranoid") > 1
	case 1:
		return true
	}
	t.Fatal("kernel.kptr_restrict=2: no one reads kallsyms addresses, the function label stays raw")
	return false
}

// TestCapabilities runs lbdoctor with exactly the DaemonSet's capabilities
// (a drop window: the tracer loaded, attached and named, conntrack read for
// attribution), then with each one taken away, and shows what that one is
// for: the list is what the code needs, no more and no less.
func TestCapabilities(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.Tracefs(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed to run lbdoctor with a capability set")
	}
	m := loadManifests(t)
	caps := m.addedCapabilities(t)
	args := []string{"drops", "--duration", "300ms", "--summary"}
	// What goes wrong without each: a named reason, never a silent gap.
	without := map[string]string{
		"CAP_NET_ADMIN": "conntrack could not be read for attribution",
		"CAP_BPF":       "loading the drop tracer needs CAP_BPF",
		"CAP_PERFMON":   "needs CAP_PERFMON",
		"CAP_SYSLOG":    "locations are raw addresses",
	}
	if !kallsymsNeedsSyslog(t) {
		// This kernel shows addresses to anyone: SYSLOG changes nothing here.
		delete(without, "CAP_SYSLOG")
	}
	t.Run("all", func(t *testing.T) {
		out, code := runWithCaps(t, caps, args...)
		if code != 0 {
			t.Fatalf("lbdoctor %s with %v = exit %d, want 0\n%s", strings.Join(args, " "), caps, code, out)
		}
		for _, bad := range []string{"could not be read", "needs CAP_", "raw addresses", "not permitted"} {
			if strings.Contains(out, bad) {
				t.Errorf("lbdoctor %s with %v says %q, want nothing missing\n%s", strings.Join(args, " "), caps, bad, out)
			}
		}
	})
	for _, c := range caps {
		t.Run("without "+c, func(t *testing.T) {
			want, ok := without[c]
			if !ok {
				if c == "CAP_SYSLOG" {
					return // this kernel shows kallsyms addresses without it
				}
				t.Fatalf("the DaemonSet adds %s, which this test does not know lbdoctor to need", c)
			}
			rest := slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c })
			out, _ := runWithCaps(t, rest, args...)
			if !strings.Contains(out, want) {
				t.Errorf("lbdoctor %s without %s: output lacks %q\n%s", strings.Join(args, " "), c, want, out)
			}
		})
	}
}
