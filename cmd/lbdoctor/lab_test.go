package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// `lab down` removes what a crashed `lab up` left: namespaces without a record.
func TestLabDownAfterCrash(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	name := testkit.UniqueName("lbd-crash")
	crashedLab(t, name)
	code, out, stderr := runCLI("lab", "down", "--name", name)
	if code != 0 || strings.Count(out, "removed netns") != 4 {
		t.Errorf("lab down = exit %d, %q %q; want the 4 namespaces removed", code, out, stderr)
	}
	if m, _ := filepath.Glob(filepath.Join(netns.RunDir, name+"-*")); len(m) != 0 {
		t.Errorf("after lab down: %v remain", m)
	}
	if code, out, _ := runCLI("lab", "down", "--name", name); code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Errorf("second lab down = exit %d, %q", code, out)
	}
}

// crashedLab makes what lab up makes before it can crash: the record, then
// the lab's namespaces; it never gets to the service.
func crashedLab(t *testing.T, name string) {
	t.Helper()
	rec := lab.Record{Name: name, Topology: lab.OneArm, Proto: "tcp", Fault: lab.FaultNone}
	if err := rec.Save(); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.BuildRecorded(&rec); err != nil {
		t.Fatal(err)
	}
}

func TestLabBadInput(t *testing.T) {
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	for _, args := range [][]string{
		{"lab", "up", "--topology", "three-arm"},
		{"lab", "up", "--proto", "sctp"},
		{"lab", "up", "--fault", "everything"},
		{"lab", "probe", "-n", "0"},
		{"lab", "probe", "--name", "nosuchlab", "--timeout", "0s"}, // flags are checked before the lab is looked for
	} {
		code, _, stderr := runCLI(args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 {
			t.Errorf("lbdoctor %v = exit %d, %q; want exit 2 and one line", args, code, stderr)
		}
	}
}

// A lab that is not up means one thing to status and probe: exit 1 (the lab
// asked about is not there), one line naming it — not bad usage.
func TestLabNotUpExitsOne(t *testing.T) {
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	for _, args := range [][]string{
		{"lab", "status", "--name", "nosuchlab"},
		{"lab", "probe", "--name", "nosuchlab"},
		{"lab", "probe", "--name", "nosuchlab", "-n", "5", "--timeout", "1s"},
	} {
		code, stdout, stderr := runCLI(args...)
		if code != exitFindings || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, `lab "nosuchlab" is not up`) || stdout != "" {
			t.Errorf("lbdoctor %v = exit %d, stderr %q, stdout %q; want exit 1 and one line saying the lab is not up", args, code, stderr, stdout)
		}
	}
}

// lab down removes, kills or deletes only what its record proves lab up
// made, and says what it leaves: a record that lists a namespace outside
// the lab's names is corrupt (exit 2, nothing changed); a server recorded in
// another boot, a whole record from another boot and a lab namespace
// deleted and added again under its name (often with the old inode) are
// left, each with a line.
func TestLabDownLeavesWhatTheRecordDoesNotProve(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	sleeper := func(t *testing.T) *exec.Cmd {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c
	}
	tests := []struct {
		name    string
		prepare func(t *testing.T, rec *lab.Record) (keep []string) // namespaces that must survive
		// edit, when set, rewrites the saved record's JSON (as a hand-written one).
		edit   func(m map[string]any)
		code   int
		stdout []string // with NAME, PATH and PID filled in
		stderr string
	}{
		{
			name: "netns outside the lab's names",
			prepare: func(t *testing.T, rec *lab.Record) []string {
				victim := testkit.Netns(t, "victim")
				rec.Netns = []lab.Made{{Name: victim.Name, Inode: victim.Inode}}
				return []string{victim.Name}
			},
			code:   exitUsage,
			stderr: `PATH: corrupt lab record: it lists netns "lbd-victim-`,
		},
		{
			name: "server from another boot",
			prepare: func(t *testing.T, rec *lab.Record) []string {
				p, err := lab.Identify(sleeper(t).Process.Pid)
				if err != nil {
					t.Fatal(err)
				}
				p.BootID = "00000000-0000-0000-0000-000000000000"
				rec.Server = &p
				return nil
			},
			stdout: []string{"left process PID: the record is from another boot (boot id 00000000-0000-0000-0000-000000000000, now "},
		},
		{
			name: "record from another boot",
			prepare: func(t *testing.T, rec *lab.Record) []string {
				lb := stateNetns(t, rec.Name+"-lb")
				p, err := lab.Identify(sleeper(t).Process.Pid)
				if err != nil {
					t.Fatal(err)
				}
				rec.BootID = "00000000-0000-0000-0000-000000000000"
				rec.Netns = []lab.Made{{Name: lb.Name, Inode: lb.Inode}}
				rec.Server = &p
				return []string{lb.Name}
			},
			stdout: []string{
				"left process PID: the record is from another boot",
				"left netns NAME-lb: the record is from another boot (boot id 00000000-0000-0000-0000-000000000000, now ",
				"removed record PATH",
			},
		},
		{
			name: "record without a cookie on a kernel with cookies",
			prepare: func(t *testing.T, rec *lab.Record) []string {
				return ipNetnsAdd(t, rec)
			},
			stdout: []string{
				"left netns NAME-lb: the record has no namespace cookie, though this kernel gives namespaces one: not proven this lab made it",
				"left netns NAME-real: the record has no namespace cookie",
			},
		},
		{
			name: "record with cookie 0 on a kernel with cookies",
			prepare: func(t *testing.T, rec *lab.Record) []string {
				return ipNetnsAdd(t, rec)
			},
			edit: func(m map[string]any) {
				for _, n := range m["netns"].([]any) {
					n.(map[string]any)["cookie"] = 0
				}
			},
			stdout: []string{"left netns NAME-lb: the record has no namespace cookie, though this kernel gives namespaces one: not proven this lab made it"},
		},
		{
			name: "lab netns added again under its name",
			prepare: func(t *testing.T, rec *lab.Record) []string {
				if _, err := lab.BuildRecorded(rec); err != nil {
					t.Fatal(err)
				}
				for _, role := range lab.Roles {
					n := rec.Name + "-" + role
					t.Cleanup(func() {
						if cur, err := netns.Resolve(n); err == nil {
							cur.Delete()
						}
					})
				}
				lb, err := netns.Resolve(rec.Name + "-lb")
				if err != nil {
					t.Fatal(err)
				}
				if err := lb.Delete(); err != nil {
					t.Fatal(err)
				}
				// The kernel hands a freed inode out again once the old
				// namespace is cleaned up: try for it, as a name re-added
				// later would get it. Reused or not, the lab must leave it.
				deadline := time.Now().Add(3 * time.Second)
				for {
					again, err := netns.Create(rec.Name + "-lb")
					if err != nil {
						t.Fatal(err)
					}
					if again.Inode == lb.Inode || time.Now().After(deadline) {
						t.Logf("netns %s added again: inode %d, was %d", again.Name, again.Inode, lb.Inode)
						break
					}
					again.Delete()
					time.Sleep(100 * time.Millisecond)
				}
				return []string{rec.Name + "-lb"}
			},
			stdout: []string{"left netns NAME-lb: not made by this lab (", "removed netns NAME-real"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := testkit.UniqueName("lbd")
			rec := lab.Record{Name: name, Topology: lab.OneArm, Proto: "tcp", Fault: lab.FaultNone}
			keep := tt.prepare(t, &rec)
			if err := rec.Save(); err != nil {
				t.Fatal(err)
			}
			if tt.edit != nil {
				b, err := os.ReadFile(lab.RecordPath(name))
				if err != nil {
					t.Fatal(err)
				}
				var m map[string]any
				if err := json.Unmarshal(b, &m); err != nil {
					t.Fatal(err)
				}
				tt.edit(m)
				b, _ = json.Marshal(m)
				if err := os.WriteFile(lab.RecordPath(name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			inodes := map[string]uint64{}
			for _, n := range keep {
				ns, err := netns.Resolve(n)
				if err != nil {
					t.Fatal(err)
				}
				inodes[n] = ns.Inode
			}
			pid := 0
			if rec.Server != nil {
				pid = rec.Server.PID
			}
			fill := strings.NewReplacer("NAME", name, "PATH", lab.RecordPath(name), "PID", strconv.Itoa(pid)).Replace
			code, out, stderr := runCLI("lab", "down", "--name", name)
			if code != tt.code {
				t.Errorf("lab down = exit %d, want %d (stdout %q, stderr %q)", code, tt.code, out, stderr)
			}
			for _, want := range tt.stdout {
				if !strings.Contains(out, fill(want)) {
					t.Errorf("lab down printed %q, want %q", out, fill(want))
				}
			}
			if tt.stderr != "" && (strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, fill(tt.stderr)) || out != "") {
				t.Errorf("lab down = %q %q, want nothing on stdout and one line with %q", out, stderr, fill(tt.stderr))
			}
			for n, ino := range inodes {
				if ns, err := netns.Resolve(n); err != nil || ns.Inode != ino {
					t.Errorf("after lab down netns %s: %v (inode %d, was %d), want it left", n, err, ns.Inode, ino)
				}
			}
			if pid != 0 { // a child killed stays a zombie until reaped: reap it, if it ended
				var ws syscall.WaitStatus
				if wpid, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); wpid == pid || err != nil {
					t.Errorf("after lab down process %d ended (%v, %v), want it left", pid, ws, err)
				}
			}
		})
	}
}

// ipNetnsAdd makes NAME-lb and NAME-real with `ip netns add` (not lab's) and
// lists them in rec by inode alone, as a hand-written record would.
func ipNetnsAdd(t *testing.T, rec *lab.Record) []string {
	t.Helper()
	var keep []string
	for _, role := range []string{"lb", "real"} {
		n := rec.Name + "-" + role
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", n, err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
		ns, err := netns.Resolve(n)
		if err != nil {
			t.Fatal(err)
		}
		rec.Netns = append(rec.Netns, lab.Made{Name: n, Inode: ns.Inode})
		keep = append(keep, n)
	}
	return keep
}
