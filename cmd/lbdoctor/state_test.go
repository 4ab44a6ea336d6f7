package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// stateNetns creates a named namespace whose name (whatever namespace holds
// it by then) is deleted when the test ends: the tests below delete and add
// it again.
func stateNetns(t *testing.T, name string) netns.Target {
	t.Helper()
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cur, err := netns.Resolve(name); err == nil {
			cur.Delete()
		}
	})
	return ns
}

// setupObjects makes what setup makes on a host without IPVS — a sysctl
// and a source NAT table — with lbdoctor's own steps; with record, the
// record of them too, as runPlan writes it.
func setupObjects(t *testing.T, ns netns.Target, record bool) {
	t.Helper()
	testkit.Sysctl(t, ns, "net.ipv4.ip_forward", "0")
	steps := []apply.Step{
		apply.NewSysctl(ns, "net.ipv4.ip_forward", "1"),
		apply.NftTable{NS: ns, Family: "ip", Name: "lbdoctor_tcp_10_1_0_6_80", VIP: "10.1.0.6:80",
			Script: "table ip lbdoctor_tcp_10_1_0_6_80 {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tct original ip daddr 10.1.0.6 counter masquerade\n\t}\n}\n"},
	}
	p, err := apply.Build(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	done, err := apply.Run(context.Background(), p, apply.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if !record {
		return
	}
	st, err := apply.LoadState(ns)
	if err != nil {
		t.Fatal(err)
	}
	recordOwned(st, done)
	if err := st.Save(ns); err != nil {
		t.Fatal(err)
	}
}

// The setup record proves what lbdoctor made in one namespace, not under a
// name: a namespace deleted and added again under the same name (the
// kernel often hands it the old inode) inherits nothing, an older record
// that names no namespace and one from another boot prove nothing, and
// teardown changes nothing in any of them. The record made for the
// namespace still tears it down.
func TestTeardownOnlyInTheRecordedNamespace(t *testing.T) {
	testkit.RequireRoot(t)
	dir := t.TempDir()
	t.Setenv("LBDOCTOR_STATE_DIR", dir)
	rewrite := func(t *testing.T, path string, edit func(map[string]any)) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		b, _ = json.Marshal(m)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		// prepare makes the objects and the record, and returns the
		// namespace that holds the name at teardown time.
		prepare  func(t *testing.T, name string) netns.Target
		code     int
		stdout   []string // lines out must hold (PATH is the record's path)
		stderr   string   // the one stderr line must hold it ("" for none)
		keptFile bool     // the record is still there after teardown
		removed  bool     // teardown removed the objects
	}{
		{
			name: "recreated under the same name",
			prepare: func(t *testing.T, name string) netns.Target {
				old := stateNetns(t, name)
				setupObjects(t, old, true)
				if err := old.Delete(); err != nil {
					t.Fatal(err)
				}
				fresh := stateNetns(t, name)
				setupObjects(t, fresh, false) // someone else's, the same objects
				return fresh
			},
			code:     exitUsage,
			stderr:   "the record at PATH was made for another namespace named NAME (inode ",
			keptFile: true,
		},
		{
			name: "older record without an identity",
			prepare: func(t *testing.T, name string) netns.Target {
				ns := stateNetns(t, name)
				setupObjects(t, ns, true)
				rewrite(t, apply.StatePath(ns), func(m map[string]any) { delete(m, "inode"); delete(m, "cookie"); delete(m, "boot_id") })
				return ns
			},
			stdout: []string{
				"left sysctl net.ipv4.ip_forward in netns NAME: the record at PATH does not say which namespace it was made for (an older lbdoctor wrote it); not proven lbdoctor's",
				"left nft table ip lbdoctor_tcp_10_1_0_6_80 in netns NAME: the record at PATH does not say",
				"nothing to tear down: no record proves lbdoctor made anything in netns NAME",
			},
		},
		{
			name: "record without a cookie on a kernel with cookies",
			prepare: func(t *testing.T, name string) netns.Target {
				ns := stateNetns(t, name)
				setupObjects(t, ns, true)
				rewrite(t, apply.StatePath(ns), func(m map[string]any) { delete(m, "cookie") })
				return ns
			},
			stdout: []string{
				"left sysctl net.ipv4.ip_forward in netns NAME: the record at PATH has no namespace cookie, though this kernel gives namespaces one (it may name another namespace that got the same inode); not proven lbdoctor's",
				"left nft table ip lbdoctor_tcp_10_1_0_6_80 in netns NAME: the record at PATH has no namespace cookie",
				"nothing to tear down: no record proves lbdoctor made anything in netns NAME",
			},
		},
		{
			name: "record with cookie 0 on a kernel with cookies",
			prepare: func(t *testing.T, name string) netns.Target {
				ns := stateNetns(t, name)
				setupObjects(t, ns, true)
				rewrite(t, apply.StatePath(ns), func(m map[string]any) { m["cookie"] = 0 })
				return ns
			},
			stdout: []string{
				"left nft table ip lbdoctor_tcp_10_1_0_6_80 in netns NAME: the record at PATH has no namespace cookie, though this kernel gives namespaces one",
				"nothing to tear down: no record proves lbdoctor made anything in netns NAME",
			},
		},
		{
			name: "record from another boot",
			prepare: func(t *testing.T, name string) netns.Target {
				ns := stateNetns(t, name)
				setupObjects(t, ns, true)
				rewrite(t, apply.StatePath(ns), func(m map[string]any) { m["boot_id"] = "00000000-0000-0000-0000-000000000000" })
				return ns
			},
			stdout: []string{
				"left sysctl net.ipv4.ip_forward in netns NAME: the record at PATH is from another boot (00000000-0000-0000-0000-000000000000), and nothing lbdoctor made outlives a reboot; not proven lbdoctor's",
				"nothing to tear down: no record proves lbdoctor made anything in netns NAME",
			},
		},
		{
			name: "the recorded namespace",
			prepare: func(t *testing.T, name string) netns.Target {
				ns := stateNetns(t, name)
				setupObjects(t, ns, true)
				return ns
			},
			stdout:  []string{"teardown: 2 change(s) applied"},
			removed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := testkit.UniqueName("lbd-state")
			ns := tt.prepare(t, name)
			path := apply.StatePath(ns)
			fill := func(s string) string {
				return strings.NewReplacer("PATH", path, "NAME", name).Replace(s)
			}
			before := testkit.HostState(t, ns)
			code, out, stderr := runCLI("teardown", "--netns", name)
			if code != tt.code {
				t.Errorf("teardown --netns %s = exit %d, want %d (stdout %q, stderr %q)", name, code, tt.code, out, stderr)
			}
			for _, want := range tt.stdout {
				if !strings.Contains(out, fill(want)) {
					t.Errorf("teardown --netns %s printed %q, want %q", name, out, fill(want))
				}
			}
			switch {
			case tt.stderr == "" && stderr != "":
				t.Errorf("teardown --netns %s stderr = %q, want none", name, stderr)
			case tt.stderr != "" && (strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, fill(tt.stderr)) || out != ""):
				t.Errorf("teardown --netns %s = %q %q, want nothing on stdout and one line with %q", name, out, stderr, fill(tt.stderr))
			}
			after := testkit.HostState(t, ns)
			fwd, err := sysctl.Read(ns, "net.ipv4.ip_forward")
			if err != nil {
				t.Fatal(err)
			}
			if tt.removed {
				if got := fwd["net.ipv4.ip_forward"].Value; got != "0" || strings.Contains(after, "lbdoctor_tcp_10_1_0_6_80") {
					t.Errorf("after teardown ip_forward = %s and the host holds:\n%s\nwant 0 and no lbdoctor table", got, after)
				}
			} else if after != before {
				t.Errorf("teardown changed a namespace lbdoctor cannot prove it changed:\n--- before ---\n%s\n--- after ---\n%s", before, after)
			}
			if _, err := os.Stat(path); (err == nil) != tt.keptFile {
				t.Errorf("after teardown the record at %s exists: %v, want %v", path, err == nil, tt.keptFile)
			}
			if tt.code == exitUsage { // setup merges into the record: it refuses too, before it reads the host
				code, _, stderr := runCLI("setup", "--netns", name, "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80")
				if code != exitUsage || !strings.Contains(stderr, fill(tt.stderr)) {
					t.Errorf("setup --netns %s = exit %d, %q; want exit 2 and %q", name, code, stderr, fill(tt.stderr))
				}
			}
		})
	}
}
