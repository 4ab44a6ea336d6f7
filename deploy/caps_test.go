package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// boundingSet is setpriv's --bounding-set for caps (CAP_ names) and extra
// (setpriv's names): as root, an exec then holds exactly those, as the
// container runtime gives the DaemonSet's container its capabilities.
func boundingSet(caps []string, extra ...string) string {
	set := append([]string{"-all"}, extra...)
	for _, c := range caps {
		set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	return strings.Join(set, ",")
}

// runWithCaps runs lbdoctor in ns with only caps and returns its combined
// output and exit code.
func runWithCaps(t *testing.T, ns netns.Target, caps []string, args ...string) (string, int) {
	t.Helper()
	set := boundingSet(caps)
	var out []byte
	var err error
	ns.Do(func() error {
		// The child is forked from this thread, inside ns.
		cmd := exec.Command("setpriv", append([]string{"--bounding-set=" + set, "--inh-caps=-all", "--", testkit.LbdoctorBinary(t)}, args...)...)
		out, err = cmd.CombinedOutput()
		return nil
	})
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("setpriv %s: %v", set, err)
	}
	return string(out), code
}

// backend is a rule backend as inspect -o json reports it.
type backend struct {
	Name   string
	Read   bool
	Rules  int
	Reason string
}

// ruleBackends reads the rule backends out of inspect -o json.
func ruleBackends(t *testing.T, out string) map[string]backend {
	t.Helper()
	var doc struct {
		Snapshot struct{ Rules struct{ Backends []backend } }
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("inspect -o json: %v\n%s", err, out)
	}
	bs := map[string]backend{}
	for _, b := range doc.Snapshot.Rules.Backends {
		bs[b.Name] = b
	}
	return bs
}

// kallsymsNeedsSyslog tells whether this kernel hides /proc/kallsyms
// addresses from a reader without CAP_SYSLOG (kptr_restrict 1, or 0 with
// perf_event_paranoid > 1), as kernel/ksyms_common.c's kallsyms_show_value
// decides.
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
// — a drop window (the tracer loaded, attached, its locations named,
// conntrack read for attribution) and an inspect of a namespace with an
// iptables-legacy rule — then with each one taken away, and shows what that
// one is for: the list is what the code needs, no more and no less.
func TestCapabilities(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.Tracefs(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed to run lbdoctor with a capability set")
	}
	caps := loadManifests(t).addedCapabilities(t)
	ns := testkit.Netns(t, "caps")
	testkit.Run(t, ns, "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP")
	var host netns.Target // the test's own namespace
	drops := []string{"drops", "--duration", "300ms", "--summary"}
	inspect := []string{"inspect", "-o", "json"}

	// What goes wrong without each: a named reason, never a silent gap.
	without := map[string]struct {
		ns   netns.Target
		args []string
		want string
	}{
		"CAP_NET_ADMIN": {host, drops, "conntrack could not be read for attribution"},
		"CAP_BPF":       {host, drops, "loading the drop tracer needs CAP_BPF"},
		"CAP_PERFMON":   {host, drops, "needs CAP_PERFMON"},
		"CAP_SYSLOG":    {host, drops, "locations are raw addresses"},
		"CAP_NET_RAW":   {ns, inspect, "reading iptables-legacy rules needs CAP_NET_RAW"},
	}
	t.Run("all", func(t *testing.T) {
		out, code := runWithCaps(t, host, caps, drops...)
		if code != 0 {
			t.Fatalf("lbdoctor %s with %v = exit %d, want 0\n%s", strings.Join(drops, " "), caps, code, out)
		}
		for _, bad := range []string{"could not be read", "needs CAP_", "raw addresses", "not permitted"} {
			if strings.Contains(out, bad) {
				t.Errorf("lbdoctor %s with %v says %q, want nothing missing\n%s", strings.Join(drops, " "), caps, bad, out)
			}
		}
		out, code = runWithCaps(t, ns, caps, inspect...)
		if code != 0 {
			t.Fatalf("lbdoctor %s with %v = exit %d, want 0\n%s", strings.Join(inspect, " "), caps, code, out)
		}
		for name, b := range ruleBackends(t, out) {
			if !b.Read {
				t.Errorf("lbdoctor %s with %v left %s unread: %s", strings.Join(inspect, " "), caps, name, b.Reason)
			}
		}
		var doc struct {
			Snapshot struct{ Errors map[string]string }
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Snapshot.Errors) > 0 {
			t.Errorf("lbdoctor %s with %v: layers unread %v (%v), want none", strings.Join(inspect, " "), caps, doc.Snapshot.Errors, err)
		}
	})
	// The DaemonSet's comment: another process's namespace (--netns
	// /host/proc/PID/ns/net) needs SYS_ADMIN and SYS_PTRACE besides.
	t.Run("another process's namespace", func(t *testing.T) {
		sleeper := exec.Command("sleep", "60")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
		args := []string{"inspect", "--netns", "/proc/" + strconv.Itoa(sleeper.Process.Pid) + "/ns/net"}
		if out, code := runWithCaps(t, host, append(slices.Clone(caps), "CAP_SYS_ADMIN"), args...); code != 3 || !strings.Contains(out, "permission denied") {
			t.Errorf("lbdoctor %s without CAP_SYS_PTRACE = exit %d, want 3, permission denied\n%s", strings.Join(args, " "), code, out)
		}
		if out, code := runWithCaps(t, host, append(slices.Clone(caps), "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"), args...); code != 0 {
			t.Errorf("lbdoctor %s with CAP_SYS_ADMIN and CAP_SYS_PTRACE = exit %d, want 0\n%s", strings.Join(args, " "), code, out)
		}
	})
	for _, c := range caps {
		t.Run("without "+c, func(t *testing.T) {
			w, ok := without[c]
			if !ok {
				t.Fatalf("the DaemonSet adds %s, which this test does not know lbdoctor to need", c)
			}
			if c == "CAP_SYSLOG" && !kallsymsNeedsSyslog(t) {
				w.want = "" // this kernel shows kallsyms addresses to anyone
			}
			rest := slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c })
			out, _ := runWithCaps(t, w.ns, rest, w.args...)
			if !strings.Contains(out, w.want) {
				t.Errorf("lbdoctor %s without %s: output lacks %q\n%s", strings.Join(w.args, " "), c, w.want, out)
			}
		})
	}
}
