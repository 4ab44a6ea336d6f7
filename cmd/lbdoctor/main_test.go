package main

import (
	"runtime"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadInputExitsTwoWithOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the one stderr line
	}{
		{"missing netns", []string{"check", "--netns", "nope"}, `netns "nope": no such network namespace`},
		{"netns path that is not one", []string{"check", "--netns", "/etc/hostname"}, "is a regular file, not a network namespace"},
		{"bad pid", []string{"check", "--netns", "pid:x"}, "pid:N needs a positive process id"},
		{"unknown flag", []string{"check", "--bogus"}, "unknown flag: --bogus"},
		{"bad vip", []string{"check", "--vip", "10.1.0.6"}, `--vip "10.1.0.6": want ADDR:PORT`},
		{"bad proto", []string{"check", "--proto", "icmp"}, `--proto "icmp": want tcp or udp`},
		{"bad output", []string{"check", "-o", "yaml"}, `--output "yaml": want text or json`},
		{"junit outside check", []string{"inspect", "-o", "junit"}, `--output junit is for check only`},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"stray argument", []string{"check", "extra"}, `takes no arguments`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(tt.args...)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code != exitUsage || len(lines) != 1 || !strings.Contains(stderr, tt.want) || stdout != "" {
				t.Errorf("lbdoctor %v = exit %d, stderr %q, stdout %q; want exit 2, one line containing %q, no stdout",
					tt.args, code, stderr, stdout, tt.want)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := runCLI("version"); code != 0 || !strings.HasPrefix(out, "lbdoctor ") {
		t.Errorf("lbdoctor version = %d, %q; want 0, lbdoctor …", code, out)
	}
	if code, out, _ := runCLI("check", "--help"); code != 0 || !strings.Contains(out, "--vip") || !strings.Contains(out, "Examples:") {
		t.Errorf("lbdoctor check --help = %d, %q; want 0 with flags and examples", code, out)
	}
	if code, out, _ := runCLI("completion", "bash"); code != 0 || !strings.Contains(out, "bash completion") {
		t.Errorf("lbdoctor completion bash = %d; want 0 and a bash completion script", code)
	}
}

// On a kernel without IPVS (this host's) check says so plainly, exits 1 and
// still reports the rest; on a kernel with IPVS, kernel.ipvs passes.
func TestCheckOnThisKernel(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "chk")
	for _, args := range [][]string{{"check", "-o", "json"}, {"check", "--netns", ns.Name, "-o", "json"}} {
		code, out, stderr := runCLI(args...)
		var r report.Report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("lbdoctor %v: not JSON (%v): %s %s", args, err, out, stderr)
		}
		if r.Schema != 1 || len(r.Findings) != len(checks.Catalog) {
			t.Fatalf("lbdoctor %v: schema %d with %d findings, want schema 1 with %d", args, r.Schema, len(r.Findings), len(checks.Catalog))
		}
		ipvsErr := kernel.IPVS()
		f := r.Findings[0]
		switch {
		case errors.Is(ipvsErr, kernel.ErrNotSupported):
			if code != exitFindings || f.ID != "kernel.ipvs" || f.Status != "fail" || !strings.Contains(f.Reason, "IPVS") {
				t.Errorf("lbdoctor %v without IPVS = exit %d, first finding %+v; want exit 1, kernel.ipvs fail naming IPVS", args, code, f)
			}
		case ipvsErr == nil:
			if f.Status != "pass" {
				t.Errorf("lbdoctor %v with IPVS: kernel.ipvs = %s, want pass", args, f.Status)
			}
		}
		if r.Target.Netns.Inode == 0 {
			t.Errorf("lbdoctor %v: target has no netns inode", args)
		}
	}
	code, out, _ := runCLI("check", "--netns", ns.Name)
	if code == exitUsage || !strings.Contains(out, "netns "+ns.Name) || !strings.Contains(out, "verdict:") {
		t.Errorf("lbdoctor check --netns %s (text) = exit %d:\n%s", ns.Name, code, out)
	}
}

// Without CAP_NET_ADMIN check names the capability and exits 3. Capabilities
// are per thread: drop them on a thread that is thrown away afterwards.
func TestCheckWithoutCapabilityExitsThree(t *testing.T) {
	testkit.RequireRoot(t)
	type result struct {
		code           int
		stdout, stderr string
		err            error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its dropped capabilities
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- result{err: err}
			return
		}
		data[unix.CAP_NET_ADMIN/32].Effective &^= 1 << (unix.CAP_NET_ADMIN % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- result{err: err}
			return
		}
		code, out, errs := runCLI("check")
		done <- result{code: code, stdout: out, stderr: errs}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.code != exitCannot || !strings.Contains(r.stderr, "CAP_NET_ADMIN") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("lbdoctor check without CAP_NET_ADMIN = exit %d, stderr %q; want exit 3 and one line naming CAP_NET_ADMIN", r.code, r.stderr)
	}
}
