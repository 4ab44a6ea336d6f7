package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// closedPipe is the write end of a pipe whose reader is gone, as a verb's
// stdout is in `lbdoctor teardown | head -1` once head has exited.
func closedPipe(t *testing.T) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	t.Cleanup(func() { w.Close() })
	return w
}

// A verb that changes the host finishes its transaction when the reader of
// its output went away (`lbdoctor teardown | head -1`) and exits as it
// would have: its output is lost, never the host's state half-changed by
// a SIGPIPE at the next line it writes.
func TestHostChangesOutliveAClosedPipe(t *testing.T) {
	testkit.RequireRoot(t)
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	t.Setenv("LBDOCTOR_LAB_DIR", t.TempDir())
	tests := []struct {
		name         string
		stderrClosed bool
		// run prepares what the verb changes and returns its arguments and
		// a check of the host after it.
		run func(t *testing.T) (args []string, changed func(t *testing.T))
	}{
		{name: "teardown, stdout closed", run: teardownObjects},
		{name: "teardown, stdout and stderr closed", stderrClosed: true, run: teardownObjects},
		{name: "lab down, stdout closed", run: func(t *testing.T) ([]string, func(*testing.T)) {
			name := testkit.UniqueName("lbd-pipe")
			crashedLab(t, name)
			t.Cleanup(func() { lab.Down(name, forgetSetup) })
			return []string{"lab", "down", "--name", name}, func(t *testing.T) {
				if m, _ := filepath.Glob(filepath.Join(netns.RunDir, name+"-*")); len(m) != 0 {
					t.Errorf("after lab down %v remain, want the lab's namespaces removed", m)
				}
				if _, err := lab.LoadRecord(name); !errors.Is(err, lab.ErrNoLab) {
					t.Errorf("after lab down, LoadRecord(%s) = %v, want no lab", name, err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, changed := tt.run(t)
			cmd := exec.Command(testkit.LbdoctorBinary(t), args...)
			var stderr strings.Builder
			cmd.Stdout, cmd.Stderr = closedPipe(t), &stderr
			if tt.stderrClosed {
				cmd.Stderr = closedPipe(t)
			}
			err := cmd.Run()
			var ee *exec.ExitError
			switch {
			case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled():
				t.Errorf("lbdoctor %s with its stdout's reader gone: killed by %v, want exit 0 once its change is done", strings.Join(args, " "), ee.Sys().(syscall.WaitStatus).Signal())
			case err != nil:
				t.Errorf("lbdoctor %s with its stdout's reader gone: %v (stderr %q), want exit 0", strings.Join(args, " "), err, stderr.String())
			}
			changed(t)
		})
	}
}

// teardownObjects makes what setup makes on a host without IPVS, with its
// record, and returns teardown's arguments and the check that it undid it.
func teardownObjects(t *testing.T) ([]string, func(*testing.T)) {
	name := testkit.UniqueName("lbd-pipe")
	ns := stateNetns(t, name)
	setupObjects(t, ns, true)
	return []string{"teardown", "--netns", name}, func(t *testing.T) {
		fwd, err := sysctl.Read(ns, "net.ipv4.ip_forward")
		if err != nil {
			t.Fatal(err)
		}
		after := testkit.HostState(t, ns)
		if got := fwd["net.ipv4.ip_forward"].Value; got != "0" || strings.Contains(after, "lbdoctor_tcp_10_1_0_6_80") {
			t.Errorf("after teardown ip_forward = %s and the host holds:\n%s\nwant 0 and no lbdoctor table", got, after)
		}
		if _, err := os.Stat(apply.StatePath(ns)); err == nil {
			t.Errorf("after teardown the record at %s is still there", apply.StatePath(ns))
		}
	}
}
