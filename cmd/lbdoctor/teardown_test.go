package main

import (
	"context"
	"maps"
	"os"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// applyRecorded runs steps as setup and check --fix do — plan, apply,
// record with recordShared — in ns.
func applyRecorded(t *testing.T, ns netns.Target, steps ...apply.Step) {
	t.Helper()
	p, err := apply.Build(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	done, err := apply.Run(context.Background(), p, apply.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := apply.LoadState(ns)
	if err != nil {
		t.Fatal(err)
	}
	recordShared(steps)(st, done)
	if err := st.Save(ns); err != nil {
		t.Fatal(err)
	}
}

// sysctlFor is a sysctl step made for services.
func sysctlFor(ns netns.Target, key, value string, services ...string) apply.Step {
	s := apply.NewSysctl(ns, key, value)
	s.Services = services
	return s
}

// snatTable is a source NAT table as setup and --fix make it for vip
// (tcp port 80 in its name only: the host has no IPVS, nft tables work).
func snatTable(ns netns.Target, name, vip string) apply.Step {
	return apply.NftTable{NS: ns, Family: "ip", Name: name, VIP: vip,
		Script: "table ip " + name + " {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tcounter masquerade\n\t}\n}\n"}
}

// The user's sequence, on the host's sysctls and nft tables: check --fix
// for service A (10.1.0.6:8085) turns on forwarding and off redirects and
// adds A's source NAT; setup of B (10.1.0.7:80) finds forwarding on and
// makes only its own table and sysctl. teardown --vip B undoes B's alone
// and says, one line each, what it keeps and why; teardown --vip A then
// undoes A's; a record an older lbdoctor wrote without services goes only
// with a whole teardown.
func TestTeardownVIPKeepsOtherServicesChanges(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	name := testkit.UniqueName("lbd-tdvip")
	ns := stateNetns(t, name)
	const a, b = "TCP 10.1.0.6:8085", "TCP 10.1.0.7:80"
	const fwd, allRedir, defRedir, legacy = "net.ipv4.ip_forward", "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.default.send_redirects", "net.ipv4.conf.default.accept_redirects"
	testkit.Sysctl(t, ns, fwd, "0")
	testkit.Sysctl(t, ns, allRedir, "1")
	testkit.Sysctl(t, ns, defRedir, "1")
	testkit.Sysctl(t, ns, legacy, "1")
	// check --fix, for A.
	applyRecorded(t, ns, snatTable(ns, "lbdoctor_tcp_10_1_0_6_8085", "10.1.0.6:8085"),
		sysctlFor(ns, fwd, "1", a), sysctlFor(ns, allRedir, "0", a),
		sysctlFor(ns, legacy, "0")) // as an older lbdoctor recorded it: no services
	// setup, of B: forwarding is already on.
	applyRecorded(t, ns, snatTable(ns, "lbdoctor_tcp_10_1_0_7_80", "10.1.0.7:80"),
		sysctlFor(ns, fwd, "1", b), sysctlFor(ns, defRedir, "0", b))

	values := func() map[string]string {
		got := map[string]string{}
		for _, k := range []string{fwd, allRedir, defRedir, legacy} {
			snap, err := sysctl.Read(ns, k)
			if err != nil {
				t.Fatal(err)
			}
			got[k] = snap[k].Value
		}
		return got
	}
	steps := []struct {
		name    string
		args    []string
		stdout  []string
		sysctls map[string]string
		tables  map[string]bool // nft table → there after
	}{
		{
			name: "teardown --vip B",
			args: []string{"--vip", "10.1.0.7:80"},
			stdout: []string{
				"kept sysctl net.ipv4.ip_forward: still needed by TCP 10.1.0.6:8085\n",
				"kept sysctl net.ipv4.conf.all.send_redirects: made for TCP 10.1.0.6:8085, not 10.1.0.7:80\n",
				"kept nft table ip lbdoctor_tcp_10_1_0_6_8085: made for 10.1.0.6:8085, not 10.1.0.7:80\n",
				"kept sysctl net.ipv4.conf.default.accept_redirects: recorded without the services it was made for (by an older lbdoctor, or a --fix that named none): only a whole teardown undoes it\n",
				"teardown: 2 change(s) applied\n",
			},
			sysctls: map[string]string{fwd: "1", allRedir: "0", defRedir: "1", legacy: "0"},
			tables:  map[string]bool{"lbdoctor_tcp_10_1_0_6_8085": true, "lbdoctor_tcp_10_1_0_7_80": false},
		},
		{
			name:    "teardown --vip A",
			args:    []string{"--vip", "10.1.0.6:8085"},
			stdout:  []string{"kept sysctl net.ipv4.conf.default.accept_redirects: recorded without the services", "teardown: 3 change(s) applied\n"},
			sysctls: map[string]string{fwd: "0", allRedir: "1", defRedir: "1", legacy: "0"},
			tables:  map[string]bool{"lbdoctor_tcp_10_1_0_6_8085": false},
		},
		{
			name:    "whole teardown",
			stdout:  []string{"teardown: 1 change(s) applied\n"},
			sysctls: map[string]string{fwd: "0", allRedir: "1", defRedir: "1", legacy: "1"},
		},
	}
	for _, s := range steps {
		code, out, stderr := runCLI(append([]string{"teardown", "--netns", name}, s.args...)...)
		if code != 0 || stderr != "" {
			t.Fatalf("%s = exit %d, stderr %q, want 0 and none; stdout:\n%s", s.name, code, stderr, out)
		}
		for _, want := range s.stdout {
			if !strings.Contains(out, want) {
				t.Errorf("%s printed:\n%s\nwant a line %q", s.name, out, want)
			}
		}
		if got := values(); !maps.Equal(got, s.sysctls) {
			t.Errorf("after %s sysctls = %v, want %v; it printed:\n%s", s.name, got, s.sysctls, out)
		}
		host := testkit.HostState(t, ns)
		for table, there := range s.tables {
			if strings.Contains(host, table) != there {
				t.Errorf("after %s table %s there = %v, want %v; host:\n%s", s.name, table, !there, there, host)
			}
		}
	}
	if _, err := os.Stat(apply.StatePath(ns)); err == nil {
		t.Errorf("after the whole teardown the record %s is still there, want it gone", apply.StatePath(ns))
	}
}
