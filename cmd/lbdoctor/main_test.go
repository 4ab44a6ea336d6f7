package main

import (
	"io"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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
		{"bad vip", []string{"check", "--vip", "10.1.0.6:http"}, `--vip "10.1.0.6:http": want ADDR or ADDR:PORT`},
		{"vip port 0", []string{"check", "--vip", "10.1.0.6:0"}, `--vip "10.1.0.6:0": port 0 is no service port`},
		{"bad proto", []string{"check", "--proto", "icmp"}, `--proto "icmp": want tcp or udp`},
		{"proto without vip", []string{"check", "--proto", "tcp"}, `--proto "tcp" needs --vip`},
		{"proto without vip, inspect", []string{"inspect", "--proto", "udp"}, `--proto "udp" needs --vip`},
		{"vip twice", []string{"check", "--vip", "10.1.0.6:80", "--vip", "10.1.0.7:80"}, `--vip given twice ("10.1.0.6:80", then "10.1.0.7:80"): give it once`},
		{"netns twice, global and local", []string{"--netns", "a", "check", "--netns", "b"}, `--netns given twice ("a", then "b")`},
		{"output twice", []string{"inspect", "-o", "json", "-o", "text"}, `-o/--output given twice`},
		{"duration twice", []string{"drops", "--duration", "1s", "--duration", "2s"}, `--duration given twice`},
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
	for _, args := range [][]string{{"check", "--watch", "0", "-o", "json"}, {"check", "--watch", "0", "--netns", ns.Name, "-o", "json"}} {
		code, out, stderr := runCLI(args...)
		var r report.Report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("lbdoctor %v: not JSON (%v): %s %s", args, err, out, stderr)
		}
		always := 0 // the checks that run unasked (ipvs.drift needs --expect)
		for _, c := range checks.Catalog {
			if c.Asked == nil {
				always++
			}
		}
		if r.Schema != 1 || len(r.Findings) != always {
			t.Fatalf("lbdoctor %v: schema %d with %d findings, want schema 1 with %d", args, r.Schema, len(r.Findings), always)
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
	code, out, _ := runCLI("check", "--watch", "0", "--netns", ns.Name)
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
func runCLIWithout(t *testing.T, c uint, args ...string) cliResult {
	t.Helper()
	var r cliResult
	testkit.WithoutCaps(t, func() { r.code, r.stdout, r.stderr = runCLI(args...) }, c)
	return r
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
		{"vip IPv6 with two ::", []string{"check", "--vip", "fd00::1::80"}},
		{"empty --host", []string{"drops", "--host", "", "--duration", "1s"}},
		{"empty --proto", []string{"drops", "--proto", "", "--duration", "1s"}},
		{"empty --ignore-reason", []string{"drops", "--ignore-reason", "", "--duration", "1s"}},
		{"empty check --proto", []string{"check", "--proto", ""}},
		{"empty --vip", []string{"check", "--vip", ""}},
		{"--top without --summary", []string{"drops", "--top", "5", "--duration", "1s"}},
		{"check --drops 0s", []string{"check", "--drops", "0s"}},
		{"check --watch negative", []string{"check", "--watch", "-1s"}},
		{"check --watch and --drops", []string{"check", "--watch", "1s", "--drops", "1s"}},
		{"inspect --watch 0s", []string{"inspect", "--watch", "0s"}},
		{"drops --duration 0s", []string{"drops", "--duration", "0s"}},
		{"-o json where only text is printed", []string{"setup", "-o", "json", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80"}},
		{"--netns on lab", []string{"lab", "status", "--netns", "lb"}},
		{"--netns on version", []string{"version", "--netns", "lb"}},
		{"--top out of range", []string{"drops", "--summary", "--top", "99999999999999999999", "--duration", "1s"}},
		{"--top not a number", []string{"drops", "--summary", "--top", "many", "--duration", "1s"}},
		{"--port not a number", []string{"drops", "--port", "http", "--duration", "1s"}},
		{"lab probe -n not a number", []string{"lab", "probe", "-n", "abc"}},
		{"lab probe -n out of range", []string{"lab", "probe", "-n", "99999999999"}},
		{"lab probe --timeout 0s", []string{"lab", "probe", "--timeout", "0s"}},
		{"lab probe --timeout -1s", []string{"lab", "probe", "--timeout", "-1s"}},
		{"lab probe --timeout 2h", []string{"lab", "probe", "--timeout", "2h"}},
		{"lab probe --timeout without a unit", []string{"lab", "probe", "--timeout", "5"}},
		{"check --drops without a unit", []string{"check", "--drops", "5"}},
		{"check --watch without a unit", []string{"check", "--watch", "5"}},
		{"inspect --watch without a unit", []string{"inspect", "--watch", "5"}},
		{"drops --duration without a unit", []string{"drops", "--duration", "5"}},
		{"long duration value", []string{"check", "--drops", strings.Repeat("9", 200)}},
		{"--dry-run not a bool", []string{"setup", "--dry-run=maybe", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80"}},
		{"lbdoctor alone", []string{}},
		{"lab alone", []string{"lab"}},
		{"completion alone", []string{"completion"}},
	} {
		t.Run(tt.name, func(t *testing.T) { assertUsage(t, tt.args) })
	}
}

// goWords are words of Go's parsers that a usage line must never show.
var goWords = []string{"strconv.", "ParseInt", "ParseUint", "ParseBool", "time:", "invalid argument", `" flag: `}

func assertUsage(t *testing.T, args []string) {
	t.Helper()
	code, stdout, stderr := runCLI(args...)
	if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "lbdoctor: ") || stdout != "" {
		t.Errorf("lbdoctor %q = exit %d, stderr %q, stdout %.80q; want exit 2, one stderr line, no stdout", args, code, stderr, stdout)
	}
	for _, w := range goWords {
		if strings.Contains(stderr, w) {
			t.Errorf("lbdoctor %q: stderr %q shows Go internals (%q)", args, stderr, w)
		}
	}
	if len(stderr) > 200 {
		t.Errorf("lbdoctor %q: stderr is %d bytes, want values cut: %.100q…", args, len(stderr), stderr)
	}
}

// Flag errors say what the flag wants, in the user's terms.
func TestFlagValueErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"drops", "--summary", "--top", "99999999999999999999"}, `lbdoctor: --top "99999999999999999999": want a whole number, at most 9223372036854775807`},
		{[]string{"lab", "probe", "-n", "abc"}, `lbdoctor: -n/--count "abc": want a whole number`},
		{[]string{"check", "--watch", "5"}, `lbdoctor: --watch "5": want a duration with a unit, e.g. 5s, 500ms or 2m`},
		{[]string{"drops", "--port", "x"}, `lbdoctor: --port "x": want a port 1-65535`},
		{[]string{"drops", "--port", "-1"}, `lbdoctor: --port "-1": want a port 1-65535`},
		{[]string{"drops", "--port", " 80"}, `lbdoctor: --port " 80": want a port 1-65535`},
		{[]string{"drops", "--port", "0"}, `lbdoctor: --port "0": want a port 1-65535`},
		{[]string{"drops", "--port", "70000"}, `lbdoctor: --port "70000": want a port 1-65535`},
		{[]string{"drops", "--port", "80,0"}, `lbdoctor: --port "80,0": want a port 1-65535`},
		{[]string{"drops", "--port", "99999999999999999999"}, `lbdoctor: --port "99999999999999999999": want a port 1-65535`},
		{[]string{"completion", "bash", "--no-descriptions=maybe"}, `lbdoctor: --no-descriptions "maybe": want true or false`},
		{[]string{"inspect", "--watch", "99999999999h"}, `lbdoctor: --watch "99999999999h": want a duration of at most 2562047h`},
		{[]string{"drops", "--duration", "5 sec"}, `lbdoctor: --duration "5 sec": want a duration such as 5s, 500ms or 2m (units: ns, us, ms, s, m, h)`},
		{[]string{"check", "--netns"}, `lbdoctor: --netns needs a value`},
		{[]string{"check", "-o"}, `lbdoctor: -o/--output needs a value`},
		{[]string{"lab", "probe", "-n", "99999999999"}, `lbdoctor: -n/--count 99999999999: want 1-1000`},
		{[]string{"lab", "probe", "--timeout", "-1s"}, `lbdoctor: --timeout -1s: want a timeout > 0, at most 1m0s`},
		{[]string{"lab"}, `lbdoctor: lbdoctor lab needs a command: down, probe, status, up (see lbdoctor lab --help)`},
		{[]string{"completion"}, `lbdoctor: lbdoctor completion needs a command: bash, fish, powershell, zsh (see lbdoctor completion --help)`},
	}
	for _, tt := range tests {
		code, _, stderr := runCLI(tt.args...)
		if code != exitUsage || strings.TrimSuffix(stderr, "\n") != tt.want {
			t.Errorf("lbdoctor %q = exit %d, %q; want exit 2, %q", tt.args, code, stderr, tt.want)
		}
	}
}

// No flag of any command shows a bare Go type as its placeholder
// ("--proto string", "-n, --count int"): each names what it takes; nor
// Go's empty-slice default "(default [])".
func TestFlagPlaceholders(t *testing.T) {
	goTypes := map[string]bool{}
	for _, ty := range []string{"string", "strings", "stringArray", "int", "ints", "int8", "int16", "int32", "int64",
		"uint", "uints", "uint8", "uint16", "uint32", "uint64", "duration", "durations", "float32", "float64", "count"} {
		goTypes[ty] = true
	}
	placeholder := regexp.MustCompile(`--[a-z-]+ (string|strings|stringArray|int|ints|int64|uint|uints|uint16|duration|durations|float64)\b`)
	var walk func(c *cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.InheritedFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				seen++
				if name, _ := pflag.UnquoteUsage(f); goTypes[name] {
					t.Errorf("%s --%s: placeholder %q is a Go type; want a backquoted name in its usage (%q)", c.CommandPath(), f.Name, name, f.Usage)
				}
			})
			for _, line := range strings.Split(fs.FlagUsages(), "\n") {
				if m := placeholder.FindString(line); m != "" {
					t.Errorf("%s help shows %q: %s", c.CommandPath(), m, strings.TrimSpace(line))
				}
				if strings.Contains(line, "(default [])") {
					t.Errorf("%s help shows Go's empty default: %s", c.CommandPath(), strings.TrimSpace(line))
				}
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(io.Discard, io.Discard))
	if seen < 30 {
		t.Errorf("walked %d flags, want every command's (at least 30)", seen)
	}
}
