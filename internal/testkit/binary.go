package testkit

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
	var out bytes.Buffer
	code := runLbdoctor(t, nil, 0, &out, &out, args)
	return out.String(), code
}

// RunLbdoctorEnv runs the lbdoctor binary with env added to the test's
// environment and returns its stdout, its stderr and its exit code. A run
// that outlives bound (0: no bound) is ended with SIGQUIT and fails the
// test: the failure shows where each goroutine was, not only that the
// suite timed out.
func RunLbdoctorEnv(t testing.TB, env []string, bound time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runLbdoctor(t, env, bound, &out, &errb, args)
	return out.String(), errb.String(), code
}

func runLbdoctor(t testing.TB, env []string, bound time.Duration, stdout, stderr io.Writer, args []string) int {
	t.Helper()
	cmd := exec.Command(LbdoctorBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("run lbdoctor %v: %v", args, err)
	}
	var timer *time.Timer
	if bound > 0 {
		timer = time.AfterFunc(bound, func() { cmd.Process.Signal(syscall.SIGQUIT) })
	}
	err := cmd.Wait()
	if timer != nil && !timer.Stop() {
		t.Fatalf("lbdoctor %s ran longer than %s; ended with SIGQUIT:\n%s", strings.Join(args, " "), bound, stderr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("run lbdoctor %v: %v", args, err)
	}
	return 0
}
