package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// `lab down` removes what a crashed `lab up` left: namespaces without a record.
func TestLabDownAfterCrash(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	name := testkit.UniqueName("lbd-crash")
	// What lab up does before it can crash: record, then build; it never
	// gets to close.
	rec := lab.Record{Name: name, Topology: lab.OneArm, Proto: "tcp", Fault: lab.FaultNone}
	if err := rec.Save(); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.BuildRecorded(&rec); err != nil {
		t.Fatal(err)
	}
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
