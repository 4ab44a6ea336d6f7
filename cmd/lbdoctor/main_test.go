package main

import (
	"io"
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
	// help COMMAND is the command's help, on every level.
	for _, args := range [][]string{{"help", "check"}, {"help", "lab", "probe"}, {"help"}} {
		code, out, stderr := runCLI(args...)
		_, direct, _ := runCLI(append(args[1:], "--help")...)
		if code != 0 || out == "" || out != direct || stderr != "" {
			t.Errorf("lbdoctor %v = exit %d, stdout %.60q, stderr %q; want 0 and the same help as %v --help", args, code, out, stderr, args[1:])
		}
	}
	// version -o json is JSON, not text that ignores the flag.
	code, out, _ := runCLI("version", "-o", "json")
	var v struct{ Version string }
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Version == "" {
		t.Errorf("lbdoctor version -o json = %d, %q; want 0 and {\"version\": …}", code, out)
	}
}

// setup -f - reads the services from stdin, like every other - on a Unix
// command line; a bad file there is named "stdin" in the one error line.
func TestSetupFileFromStdin(t *testing.T) {
	root := newRootCmd(io.Discard, io.Discard)
	var errb bytes.Buffer
	root.SetErr(&errb)
	root.SetIn(strings.NewReader("services:\n  - vip: 10.1.0.6:0\n"))
	root.SetArgs([]string{"setup", "-f", "-", "--dry-run"})
	err := root.ExecuteContext(context.Background())
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "stdin") {
		t.Errorf("lbdoctor setup -f - with a bad file on stdin = %v; want a usage error naming stdin", err)
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

// cliResult is what one in-process command line printed and returned.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLIWithout runs a command line on a thread without capability c.
// Capabilities are per thread: the thread is locked and never unlocked, so
// it dies with its dropped capability instead of serving other goroutines.
func runCLIWithout(t *testing.T, c uintptr, args ...string) cliResult {
	t.Helper()
	type result struct {
		cliResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- result{err: err}
			return
		}
		data[c/32].Effective &^= 1 << (c % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- result{err: err}
			return
		}
		code, out, errs := runCLI(args...)
		done <- result{cliResult: cliResult{code: code, stdout: out, stderr: errs}}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.cliResult
}

// Without CAP_NET_ADMIN check names the capability and exits 3.
func TestCheckWithoutCapabilityExitsThree(t *testing.T) {
	testkit.RequireRoot(t)
	r := runCLIWithout(t, unix.CAP_NET_ADMIN, "check")
	if r.code != exitCannot || !strings.Contains(r.stderr, "CAP_NET_ADMIN") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("lbdoctor check without CAP_NET_ADMIN = exit %d, stderr %q; want exit 3 and one line naming CAP_NET_ADMIN", r.code, r.stderr)
	}
}

// One meaning per exit code, per verb: every usage error is exit 2 with
// exactly one stderr line and nothing on stdout, whatever the verb and
// whatever the kind (unknown flag, stray argument, bad value).
func TestUsageErrorsExitTwoOnEveryVerb(t *testing.T) {
	verbs := []struct {
		path     []string
		badValue []string // a flag value the verb refuses
	}{
		{[]string{"check"}, []string{"--vip", "10.1.0.6:0"}},
		{[]string{"inspect"}, []string{"--vip", "0.0.0.0"}},
		{[]string{"drops"}, []string{"--vip", "224.0.0.1:80", "--duration", "1s"}}, // bounded: today it traces
		{[]string{"setup"}, []string{"--vip", "[::]:80", "--real", "10.1.0.50:80"}},
		{[]string{"teardown"}, []string{"--vip", "10.1.0.6"}},
		{[]string{"lab", "up"}, []string{"--topology", "three-arm"}},
		{[]string{"lab", "down"}, []string{"--name", ""}},
		{[]string{"lab", "status"}, []string{"--name", ""}},
		{[]string{"lab", "probe"}, []string{"-n", "0"}},
		{[]string{"version"}, []string{"-o", "yaml"}},
		{[]string{"completion", "bash"}, []string{"--no-descriptions=maybe"}},
		{[]string{"help"}, []string{"nosuchverb"}},
	}
	for _, v := range verbs {
		for _, k := range []struct {
			kind string
			args []string
		}{
			{"bad flag", []string{"--bogus"}},
			{"stray argument", []string{"extra"}},
			{"bad value", v.badValue},
		} {
			if v.path[0] == "help" && k.kind == "stray argument" {
				continue // help takes a command: "extra" is the bad value's kind
			}
			args := append(append([]string{}, v.path...), k.args...)
			t.Run(strings.Join(v.path, " ")+"/"+k.kind, func(t *testing.T) {
				assertUsage(t, args)
			})
		}
	}
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"completion for an unknown shell", []string{"completion", "tcsh"}},
		{"completion with an extra argument", []string{"completion", "bash", "extra"}},
		{"unknown lab verb", []string{"lab", "bogus"}},
		{"help for an unknown lab verb", []string{"help", "lab", "bogus"}},
		{"netns name longer than a file name", []string{"check", "--netns", strings.Repeat("n", 300)}},
		{"netns name longer than a file name, drops", []string{"drops", "--netns", strings.Repeat("n", 300)}},
		{"netns path through a file", []string{"inspect", "--netns", "/etc/hostname/x"}},
		{"vip port 0, drops", []string{"drops", "--vip", "10.1.0.6:0", "--duration", "1s"}},
		{"vip unspecified IPv6", []string{"check", "--vip", "[::]:80"}},
		{"vip multicast IPv6", []string{"inspect", "--vip", "[ff02::1]:80"}},
		{"vip broadcast", []string{"teardown", "--vip", "255.255.255.255:80"}},
		{"vip IPv6 without brackets and a port", []string{"check", "--vip", "fd00::1:80:1"}},
		{"empty --host", []string{"drops", "--host", "", "--duration", "1s"}},
		{"empty --proto", []string{"drops", "--proto", "", "--duration", "1s"}},
		{"empty --ignore-reason", []string{"drops", "--ignore-reason", "", "--duration", "1s"}},
		{"empty check --proto", []string{"check", "--proto", ""}},
		{"empty --vip", []string{"check", "--vip", ""}},
		{"--top without --summary", []string{"drops", "--top", "5", "--duration", "1s"}},
		{"check --drops 0s", []string{"check", "--drops", "0s"}},
		{"inspect --watch 0s", []string{"inspect", "--watch", "0s"}},
		{"drops --duration 0s", []string{"drops", "--duration", "0s"}},
		{"-o json where only text is printed", []string{"setup", "-o", "json", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80"}},
		{"--netns on lab", []string{"lab", "status", "--netns", "lb"}},
		{"--netns on version", []string{"version", "--netns", "lb"}},
	} {
		t.Run(tt.name, func(t *testing.T) { assertUsage(t, tt.args) })
	}
}

func assertUsage(t *testing.T, args []string) {
	t.Helper()
	code, stdout, stderr := runCLI(args...)
	if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "lbdoctor: ") || stdout != "" {
		t.Errorf("lbdoctor %q = exit %d, stderr %q, stdout %.80q; want exit 2, one stderr line, no stdout", args, code, stderr, stdout)
	}
}
