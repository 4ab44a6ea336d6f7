package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// runBounded runs the real lbdoctor with stdin and a deadline, and returns
// its exit code, stderr and how long it took.
func runBounded(t *testing.T, stdin []byte, args ...string) (code int, stderr string, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testkit.LbdoctorBinary(t), args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("lbdoctor %v did not return within 10s (blocked)", args)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run lbdoctor %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), errb.String(), took
}

// Input files are regular files up to 1 MiB, or - for stdin: anything else
// is refused at once, before a byte is read, in one line and with exit 2.
func TestSetupInputIsBounded(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// 12.8 MB of valid services: the size that took 900 MB to parse.
	var big bytes.Buffer
	big.WriteString("services:\n")
	for i := 0; big.Len() < 12_800_000; i++ {
		big.WriteString("  - vip: 10." + strconv.Itoa(i>>16&255) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255) + ":80\n    reals:\n      - addr: 10.200.0.1:80\n")
	}
	bigYAML := write("big.yaml", big.Bytes())
	empty := write("empty.yaml", nil)
	longValue := write("long.yaml", []byte("services:\n  - vip: "+strings.Repeat("x", 512<<10)+"\n"))
	badIndent := []byte("services:\n  - vip: 10.1.0.6:80\n    reals:\n      - addr: 10.1.0.50:80\n     weight: 2\n")
	list := []byte("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nTCP  10.1.0.6:80 rr\n  -> 10.1.0.50:80                 Masq    1      0          0\n")
	const regular = "not a regular file: lbdoctor reads regular files only (or - for standard input)"
	tests := []struct {
		name  string
		stdin []byte
		args  []string
		want  string // the whole stderr line
	}{
		{"/dev/zero", nil, []string{"setup", "-f", "/dev/zero", "--dry-run"}, "lbdoctor: /dev/zero: is a character device, " + regular},
		{"fifo", nil, []string{"setup", "-f", fifo, "--dry-run"}, "lbdoctor: " + fifo + ": is a FIFO (named pipe), " + regular},
		{"directory", nil, []string{"setup", "--from-ipvsadm", dir}, "lbdoctor: " + dir + ": is a directory, " + regular},
		{"socket", nil, []string{"setup", "--from-keepalived", sock}, "lbdoctor: " + sock + ": is a socket, " + regular},
		{"12.8 MB yaml", nil, []string{"setup", "-f", bigYAML, "--dry-run"}, "lbdoctor: " + bigYAML + ": is 12.2 MiB, more than the 1 MiB lbdoctor reads from one input file"},
		{"size 0 but longer (/proc)", nil, []string{"setup", "--from-keepalived", "/proc/kallsyms"}, "lbdoctor: /proc/kallsyms: is larger than the 1 MiB lbdoctor reads from one input file"},
		{"empty file", nil, []string{"setup", "-f", empty}, "lbdoctor: " + empty + ": has no services: want services: with a vip and its reals (see README)"},
		{"missing file", nil, []string{"setup", "-f", dir + "/missing.yaml"}, "lbdoctor: " + dir + "/missing.yaml: no such file or directory"},
		{"long value", nil, []string{"setup", "-f", longValue}, "lbdoctor: " + longValue + `:2: vip "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…": want IPv4 ADDR:PORT, e.g. 10.1.0.6:8085`},
		{"stdin", badIndent, []string{"setup", "-f", "-", "--dry-run"}, "lbdoctor: stdin:5: this line's indentation does not fit the lines above (YAML: did not find expected key)"},
		{"stdin empty", []byte{}, []string{"setup", "--from-keepalived", "-"}, "lbdoctor: stdin: has no virtual_server block: lbdoctor builds the lb_kind NAT virtual_servers of a keepalived.conf"},
		{"stdin over the cap", big.Bytes(), []string{"setup", "-f", "-"}, "lbdoctor: stdin: is larger than the 1 MiB lbdoctor reads from one input file"},
		{"stdin ipvsadm -Ln", list, []string{"setup", "--from-ipvsadm", "-"}, "lbdoctor: stdin:1: this is `ipvsadm -L` (list) output: give `ipvsadm -Sn` (save, numeric) output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stderr, took := runBounded(t, tt.stdin, tt.args...)
			if code != exitUsage || stderr != tt.want+"\n" {
				t.Fatalf("lbdoctor %v = exit %d, stderr %q; want exit 2 and the one line %q", tt.args, code, stderr, tt.want)
			}
			if tt.stdin != nil {
				return
			}
			// Refused before reading, or read only up to the cap: at once,
			// and with little memory (the 12.8 MB file took 900 MB). The
			// child's peak RSS cannot be read (after vfork it counts the
			// parent's), so the same command runs in this process and its
			// allocations are counted.
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			icode, _, istderr := runCLI(tt.args...)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("took %v; in process: %d KiB allocated", took, alloc>>10)
			if took > 2*time.Second || alloc > 8<<20 || icode != exitUsage || istderr != tt.want+"\n" {
				t.Errorf("lbdoctor %v took %v and allocated %d KiB (exit %d, %q); want under 2s and 8 MiB", tt.args, took, alloc>>10, icode, istderr)
			}
		})
	}
}

// Reading stdin that never ends still ends on SIGTERM, with one line.
func TestSetupStdinEndsOnSignal(t *testing.T) {
	cmd := exec.Command(testkit.LbdoctorBinary(t), "setup", "-f", "-")
	w, err := cmd.StdinPipe() // kept open: stdin never ends
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("lbdoctor setup -f - ignored SIGTERM while reading stdin")
	}
	// The interrupt rule (main.go): interrupted before anything changed → 130.
	want := "lbdoctor: setup: interrupted by SIGTERM before anything changed\n"
	if code := cmd.ProcessState.ExitCode(); code != exitInterrupted || errb.String() != want {
		t.Errorf("lbdoctor setup -f - after SIGTERM = exit %d, stderr %q; want exit 130 and %q", code, errb.String(), want)
	}
}
