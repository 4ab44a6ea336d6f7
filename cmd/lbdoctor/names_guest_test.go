//go:build guest

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// lab up records its server by PID, start time and boot id; lab down stops
// exactly that process. lab up over a namespace someone else made fails and
// leaves it, with nothing of its own behind.
func TestGuestLabDownStopsItsServer(t *testing.T) {
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	name := "labown"
	defer lbd(t, "lab", "down", "--name", name)
	if out, code := lbd(t, "lab", "up", "--name", name); code != 0 {
		t.Fatalf("lab up = exit %d:\n%s", code, out)
	}
	rec, err := lab.LoadRecord(name)
	if err != nil || rec.Server == nil || len(rec.Netns) != 4 {
		t.Fatalf("after lab up, the record = %+v, %v; want 4 namespaces and the server", rec, err)
	}
	if err := rec.Server.Check(); err != nil {
		t.Fatalf("after lab up, server %d: %v", rec.Server.PID, err)
	}
	out, code := lbd(t, "lab", "down", "--name", name)
	if want := fmt.Sprintf("removed server process %d", rec.Server.PID); code != 0 || !strings.Contains(out, want) || strings.Count(out, "removed netns") != 4 {
		t.Fatalf("lab down = exit %d, want %q and 4 namespaces:\n%s", code, want, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for err := rec.Server.Check(); !errors.Is(err, lab.ErrGone); err = rec.Server.Check() {
		if time.Now().After(deadline) {
			t.Fatalf("5s after lab down, server %d: %v; want it gone", rec.Server.PID, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	taken := "labtaken"
	theirs, err := netns.Create(taken + "-lb")
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Delete()
	if out, code := lbd(t, "lab", "up", "--name", taken); code == 0 || !strings.Contains(out, "left netns "+taken+"-lb") {
		t.Errorf("lab up over a taken %s-lb = exit %d, want a failure that leaves it:\n%s", taken, code, out)
	}
	if got, err := netns.Resolve(taken + "-lb"); err != nil || got.Inode != theirs.Inode {
		t.Errorf("after lab up failed, %s-lb = %+v, %v; want inode %d", taken, got, err, theirs.Inode)
	}
	if m, _ := filepath.Glob(filepath.Join(netns.RunDir, taken+"-*")); len(m) != 1 {
		t.Errorf("after lab up failed: %v remain, want only %s-lb", m, taken)
	}
	if _, err := os.Stat(lab.RecordPath(taken)); !os.IsNotExist(err) {
		t.Errorf("after lab up failed, its record remains (%v)", err)
	}
}

// teardown leaves a service it made once someone added a real server to it:
// deleting the service would delete that real too.
func TestGuestTeardownLeavesAServiceWithForeignReals(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	if out, code := lbd(t, "setup", "--netns", l.LB.Name, "--vip", vip.String(), "--real", netip.AddrPortFrom(l.RealIP, 8085).String()); code != 0 {
		t.Fatalf("setup = exit %d:\n%s", code, out)
	}
	testkit.Run(t, l.LB, "ipvsadm", "-a", "-t", vip.String(), "-r", "10.1.0.51:8085", "-m")
	out, code := lbd(t, "teardown", "--netns", l.LB.Name)
	want := fmt.Sprintf("left ipvs service tcp %s in netns %s: it has real servers lbdoctor did not add (10.1.0.51:8085)", vip, l.LB.Name)
	if code != 0 || !strings.Contains(out, want) {
		t.Errorf("teardown = exit %d, want %q:\n%s", code, want, out)
	}
	ipvs := testkit.Run(t, l.LB, "ipvsadm", "-Ln")
	if !strings.Contains(ipvs, vip.String()) || !strings.Contains(ipvs, "10.1.0.51:8085") || strings.Contains(ipvs, l.RealIP.String()+":8085") {
		t.Errorf("after teardown, IPVS = \n%s\nwant the service with only the real lbdoctor did not add", ipvs)
	}
}
