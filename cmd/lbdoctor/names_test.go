package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// Every verb that takes --netns refuses a namespace of another type before
// reading or changing anything (drops used to filter on the mnt inode and
// report 0 drops).
func TestNetnsMustBeANetworkNamespace(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	for _, spec := range []string{"/proc/self/ns/mnt", "/proc/self/ns/pid", "/etc/hostname"} {
		for _, args := range [][]string{
			{"check"},
			{"check", "--fix", "--yes"},
			{"inspect"},
			{"drops", "--duration", "1s"},
			{"setup", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80"},
			{"teardown"},
		} {
			args := append(args, "--netns", spec)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, out, stderr := runCLI(args...)
				if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "not a network namespace") || out != "" {
					t.Errorf("lbdoctor %v = exit %d, stderr %q, stdout %q; want exit 2, one line saying not a network namespace", args, code, stderr, out)
				}
			})
		}
	}
}

// A corrupt setup record is named, exit 2, and nothing changes (it used to
// exit 3 naming only the key, or panic on an unparsable address).
func TestCorruptSetupStateNamesItsPath(t *testing.T) {
	ns := testkit.Netns(t, "corrupt")
	dir := t.TempDir()
	t.Setenv("LBDOCTOR_STATE_DIR", dir)
	path := filepath.Join(dir, "netns-"+ns.Name+".json")
	for _, tt := range []struct{ name, body, want string }{
		{"truncated JSON", `{"netns": "x", "objects": [`, "unexpected end of JSON input"},
		{"garbage vip", `{"netns": "x", "objects": [{"kind": "ipvs-service", "vip": "10.1.0.6", "proto": "tcp", "key": "rr"}]}`, `object 1: ipvs-service vip "10.1.0.6"`},
		{"unknown kind", `{"netns": "x", "objects": [{"kind": "route"}]}`, `object 1: unknown kind "route"`},
		{"sysctl path", `{"netns": "x", "objects": [{"kind": "sysctl", "key": "net/../../x", "previous": "0"}]}`, `object 1: sysctl key`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			before := testkit.HostState(t, ns)
			for _, args := range [][]string{
				{"teardown", "--netns", ns.Name},
				{"teardown", "--netns", ns.Name, "--dry-run"},
				{"setup", "--netns", ns.Name, "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80"},
			} {
				code, out, stderr := runCLI(args...)
				if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, path+": corrupt lbdoctor state") || !strings.Contains(stderr, tt.want) || out != "" {
					t.Errorf("lbdoctor %v = exit %d, stderr %q, stdout %q; want exit 2, one line naming %s: %s", args, code, stderr, out, path, tt.want)
				}
			}
			if b, _ := os.ReadFile(path); string(b) != tt.body {
				t.Errorf("the corrupt state file changed: %q", b)
			}
			if after := testkit.HostState(t, ns); after != before {
				t.Errorf("the namespace changed:\n%s\n---\n%s", before, after)
			}
		})
	}
}

// labNetns creates NAME-ROLE the way someone else would, not through lab.
func labNetns(t *testing.T, name string) netns.Target {
	t.Helper()
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	return ns
}

func stillThere(t *testing.T, ns netns.Target) {
	t.Helper()
	if got, err := netns.Resolve(ns.Name); err != nil || got.Inode != ns.Inode {
		t.Errorf("netns %s (inode %d) is gone or replaced: %+v, %v", ns.Name, ns.Inode, got, err)
	}
}

func TestLabNameIsValidated(t *testing.T) {
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	for _, name := range []string{"../x", "/../../x", "a/b", "a b", "-lab", "", "lab;rm", "läb", strings.Repeat("n", lab.MaxName+1)} {
		for _, verb := range []string{"up", "down", "status", "probe"} {
			args := []string{"lab", verb, "--name", name}
			code, out, stderr := runCLI(args...)
			if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "bad lab name") || out != "" {
				t.Errorf("lbdoctor %q = exit %d, stderr %q, stdout %q; want exit 2, one line: bad lab name", args, code, stderr, out)
			}
		}
	}
}

// `lab down --name` with path segments deleted JSON files outside the
// record directory.
func TestLabDownStaysInItsDirectory(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "run", "lbdoctor")
	t.Setenv("LBDOCTOR_LAB_DIR", dir)
	var sentinels []string
	for _, p := range []string{filepath.Join(root, "x.json"), filepath.Join(root, "run", "x.json"), filepath.Join(dir, "x.json")} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		sentinels = append(sentinels, p)
	}
	for _, name := range []string{"../x", "/../../x", "/../../../x", "../../x"} {
		code, _, stderr := runCLI("lab", "down", "--name", name)
		if code != exitUsage {
			t.Errorf("lab down --name %q = exit %d, %q; want exit 2", name, code, stderr)
		}
	}
	for _, p := range sentinels {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after lab down with path names, %s is gone: %v", p, err)
		}
	}
}

// Without a record, or with one naming other inodes, lab down leaves
// namespaces it did not make, and says so.
func TestLabDownLeavesWhatItDidNotMake(t *testing.T) {
	testkit.RequireRoot(t)
	dir := t.TempDir()
	t.Setenv("LBDOCTOR_LAB_DIR", dir)
	t.Run("no record", func(t *testing.T) {
		name := testkit.UniqueName("lbd-foreign")
		lb, client := labNetns(t, name+"-lb"), labNetns(t, name+"-client")
		code, out, stderr := runCLI("lab", "down", "--name", name)
		if code != 0 || !strings.Contains(out, "left netns "+name+"-lb: no lab record proves lab made it") || strings.Contains(out, "removed") {
			t.Errorf("lab down = exit %d, %q %q; want exit 0 leaving %s-lb", code, out, stderr, name)
		}
		stillThere(t, lb)
		stillThere(t, client)
	})
	t.Run("record with other inodes", func(t *testing.T) {
		name := testkit.UniqueName("lbd-foreign")
		lb := labNetns(t, name+"-lb")
		rec := lab.Record{Name: name, Topology: lab.OneArm, Proto: "tcp", Fault: "none",
			Netns: []lab.Made{{Name: name + "-lb", Inode: lb.Inode + 1}}}
		if err := rec.Save(); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := runCLI("lab", "down", "--name", name)
		if code != 0 || !strings.Contains(out, "left netns "+name+"-lb: not made by this lab (inode differs)") || strings.Contains(out, "removed netns") {
			t.Errorf("lab down = exit %d, %q %q; want exit 0 leaving %s-lb (inode differs)", code, out, stderr, name)
		}
		stillThere(t, lb)
	})
}

// A record whose PID now belongs to another process never gets it killed;
// the process the record identifies does.
func TestLabDownSignalsOnlyItsProcess(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	for _, tt := range []struct {
		name       string
		startDelta uint64
		wantKilled bool
		wantOut    string
	}{
		{"stale record", 1, false, "left process %d: not the process lbdoctor started"},
		{"its own server", 0, true, "removed server process %d"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sleep := exec.Command("sleep", "60")
			if err := sleep.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { sleep.Wait(); close(exited) }()
			t.Cleanup(func() { sleep.Process.Kill(); <-exited })
			id, err := lab.Identify(sleep.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			id.StartTicks += tt.startDelta
			name := testkit.UniqueName("lbd-pid")
			// server_pid is what older records held: it must not be enough.
			body := fmt.Sprintf(`{"name": %q, "topology": "one-arm", "proto": "tcp", "fault": "none", "server_pid": %d, "server": {"pid": %d, "start_ticks": %d, "boot_id": %q}}`,
				name, id.PID, id.PID, id.StartTicks, id.BootID)
			if err := os.WriteFile(lab.RecordPath(name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, stderr := runCLI("lab", "down", "--name", name)
			want := fmt.Sprintf(tt.wantOut, id.PID)
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("lab down = exit %d, %q %q; want exit 0 and %q", code, out, stderr, want)
			}
			select {
			case <-exited:
				if !tt.wantKilled {
					t.Errorf("lab down killed pid %d, which the record does not prove is its server", id.PID)
				}
			case <-time.After(500 * time.Millisecond):
				if tt.wantKilled {
					t.Errorf("lab down left its own server %d running", id.PID)
				}
			}
		})
	}
}

// A corrupt lab record proves nothing: every lab verb names it, exit 2, and
// nothing is removed.
func TestCorruptLabRecord(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	name := testkit.UniqueName("lbd-corrupt")
	lb := labNetns(t, name+"-lb")
	path := lab.RecordPath(name)
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(`{"name": `), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"down", "status", "probe", "up"} {
		args := []string{"lab", verb, "--name", name}
		code, out, stderr := runCLI(args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, path) || out != "" {
			t.Errorf("lbdoctor %v = exit %d, stderr %q, stdout %q; want exit 2, one line naming %s", args, code, stderr, out, path)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != `{"name": ` {
		t.Errorf("the corrupt record changed: %q", b)
	}
	stillThere(t, lb)
}

// teardown puts a sysctl back only while it holds the value lbdoctor set:
// one changed since, or one an older record cannot prove, is left and named.
func TestTeardownRestoresOnlyItsOwnSysctlValue(t *testing.T) {
	ns := testkit.Netns(t, "sysctl")
	dir := t.TempDir()
	t.Setenv("LBDOCTOR_STATE_DIR", dir)
	const (
		mine    = "net.ipv4.conf.all.rp_filter"     // lbdoctor set 1, still 1: back to 0
		changed = "net.ipv4.conf.default.rp_filter" // lbdoctor set 1, now 2: left
		old     = "net.ipv4.conf.lo.rp_filter"      // an older record without "set": left
	)
	testkit.Sysctl(t, ns, mine, "1")
	testkit.Sysctl(t, ns, changed, "2")
	testkit.Sysctl(t, ns, old, "1")
	st := &apply.State{Netns: ns.String(), Objects: []apply.Object{
		{Kind: "sysctl", Key: mine, Previous: "0", Set: "1"},
		{Kind: "sysctl", Key: changed, Previous: "0", Set: "1"},
		{Kind: "sysctl", Key: old, Previous: "0"},
	}}
	if err := st.Save(ns); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI("teardown", "--netns", ns.Name)
	for _, want := range []string{
		"left sysctl " + changed + "=2 in netns " + ns.Name + ": lbdoctor set 1, someone changed it since",
		"left sysctl " + old + "=1 in netns " + ns.Name + ": the record does not say which value lbdoctor set",
		"sysctl -w " + mine + "=0",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("teardown = exit %d, %q %q; want exit 0 and %q", code, out, stderr, want)
		}
	}
	got, err := sysctl.Read(ns, mine, changed, old)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{mine: "0", changed: "2", old: "1"} {
		if got[key].Value != want {
			t.Errorf("after teardown %s = %q, want %q", key, got[key].Value, want)
		}
	}
	if st, err := apply.LoadState(ns); err != nil || len(st.Objects) != 0 {
		t.Errorf("after teardown the record holds %+v (%v), want nothing", st, err)
	}
}

// The real server lab up starts serves only once lab up has recorded it:
// if lab up dies before, the server's stdin closes and it exits by itself,
// so a crash never leaves a process no record names.
func TestLabServerWaitsForItsRecord(t *testing.T) {
	ns := testkit.Netns(t, "serve")
	bin := testkit.LbdoctorBinary(t)
	for _, tt := range []struct {
		name, stdin string
		wantServe   bool
	}{
		{"lab up died", "", false},
		{"recorded", "recorded\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := exec.Command(bin, "lab", "serve", "--netns", ns.Name, "--after-record")
			w, err := srv.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- srv.Wait() }()
			t.Cleanup(func() { srv.Process.Kill(); <-exited })
			w.Write([]byte(tt.stdin))
			w.Close()
			select {
			case err := <-exited:
				if tt.wantServe {
					t.Fatalf("lab serve after %q exited: %v", tt.stdin, err)
				}
				exited <- err
				return
			case <-time.After(3 * time.Second):
				if !tt.wantServe {
					t.Fatalf("lab serve with its stdin closed unrecorded still runs after 3s")
				}
			}
			res := lab.Probe(context.Background(), ns, netip.MustParseAddrPort("127.0.0.1:8085"), 2*time.Second)
			if !res.OK {
				t.Errorf("lab serve after %q: connect = %+v, want an answer", tt.stdin, res)
			}
		})
	}
}
