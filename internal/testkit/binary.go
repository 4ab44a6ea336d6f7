package testkit

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// LbdoctorBinary returns a static lbdoctor binary: the one on PATH inside
// the guest, else one built from this module once per test process.
func LbdoctorBinary(t testing.TB) string {
	t.Helper()
	if InGuest() {
		p, err := exec.LookPath("lbdoctor")
		if err != nil {
			t.Fatal("no lbdoctor binary in the guest: run guest tests with `make guest-test`")
		}
		return p
	}
	buildOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "lbdoctor-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "lbdoctor")
		cmd := exec.Command("go", "build", "-o", builtBin, "./cmd/lbdoctor")
		cmd.Dir = strings.TrimSpace(string(out))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = &buildError{err, string(b)}
		}
	})
	if buildErr != nil {
		t.Fatalf("build lbdoctor: %v", buildErr)
	}
	return builtBin
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// RunLbdoctor runs the lbdoctor binary and returns its combined output and
// exit code; an error starting it fails the test.
func RunLbdoctor(t testing.TB, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(LbdoctorBinary(t), args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("run lbdoctor %v: %v", args, err)
	}
	return string(out), 0
}
