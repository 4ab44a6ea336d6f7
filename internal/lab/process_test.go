package lab_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/lab"
)

// A process is known by PID, start time and boot: its start time is read
// after the last ')' of /proc/PID/stat, so a command name with spaces and
// parentheses cannot shift the fields.
func TestProcessIdentity(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(t.TempDir(), "a) 1 2 (b")
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(odd, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(odd, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p, err := lab.Identify(cmd.Process.Pid)
	if err != nil || p.StartTicks == 0 || p.BootID == "" {
		t.Fatalf("Identify(%d) = %+v, %v; want a start time and boot id", cmd.Process.Pid, p, err)
	}
	self, _ := lab.Identify(os.Getpid())
	if p.StartTicks < self.StartTicks {
		t.Errorf("Identify(child) start %d < Identify(self) start %d: fields misread", p.StartTicks, self.StartTicks)
	}
	tests := []struct {
		name string
		p    lab.Process
		want error
	}{
		{"itself", p, nil},
		{"other start time", lab.Process{PID: p.PID, StartTicks: p.StartTicks + 1, BootID: p.BootID}, lab.ErrNotOurs},
		{"other boot", lab.Process{PID: p.PID, StartTicks: p.StartTicks, BootID: "x"}, lab.ErrOtherBoot},
		{"no start time", lab.Process{PID: p.PID}, lab.ErrNotOurs},
		{"no such pid", lab.Process{PID: 1 << 30, StartTicks: 1, BootID: p.BootID}, lab.ErrGone},
	}
	for _, tt := range tests {
		if err := tt.p.Check(); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
			t.Errorf("%s: Check(%+v) = %v, want %v", tt.name, tt.p, err, tt.want)
		}
	}
}
