package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// tmuxTUI is `lbdoctor tui` running in a real terminal: a tmux session of
// its own (its own server socket), w×h.
type tmuxTUI struct {
	t        testing.TB
	sock     string
	dir      string // the process's working directory
	exitFile string // the exit code, once it ended
}

func requireTmux(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		if testkit.InCI() {
			t.Fatal("tmux is not installed (.ci/run installs it)")
		}
		t.Skip("tmux is not installed")
	}
}

func startTUI(t testing.TB, w, h int, args ...string) *tmuxTUI {
	t.Helper()
	return startTUIEnv(t, w, h, nil, args...)
}

// startTUIEnv is startTUI with environment variables (NAME=VALUE) added.
func startTUIEnv(t testing.TB, w, h int, env []string, args ...string) *tmuxTUI {
	t.Helper()
	requireTmux(t)
	x := &tmuxTUI{t: t, sock: testkit.UniqueName("tui"), dir: t.TempDir()}
	x.exitFile = filepath.Join(x.dir, "exit-code")
	// The TUI runs as at an engineer's terminal: without the CI
	// variable, which termenv takes to mean "no terminal, no colour"
	// (CI=true runs these tests).
	argv := append(append(append([]string{"env", "-u", "CI"}, env...), testkit.LbdoctorBinary(t), "tui"), args...)
	line := shellquote.Command(argv) + "; echo $? > " + shellquote.Quote(x.exitFile)
	x.tmux("new-session", "-d", "-s", "tui", "-x", strconv.Itoa(w), "-y", strconv.Itoa(h), "-c", x.dir, line)
	t.Cleanup(func() { exec.Command("tmux", "-L", x.sock, "kill-server").Run() })
	return x
}

func (x *tmuxTUI) tmux(args ...string) string {
	x.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", x.sock}, args...)...).CombinedOutput()
	if err != nil {
		x.t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// screen is what the terminal shows; escapes keeps the colours.
func (x *tmuxTUI) screen(escapes bool) string {
	args := []string{"capture-pane", "-p", "-t", "tui"}
	if escapes {
		args = append(args, "-e")
	}
	out, _ := exec.Command("tmux", append([]string{"-L", x.sock}, args...)...).Output()
	return string(out)
}

// waitFor polls the screen until it holds want, and says how long that took.
func (x *tmuxTUI) waitFor(want string, within time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < within {
		if strings.Contains(x.screen(false), want) {
			return time.Since(start), true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start), false
}

func (x *tmuxTUI) keys(k ...string) { x.tmux(append([]string{"send-keys", "-t", "tui"}, k...)...) }

// pid is the lbdoctor process: the child of the pane's shell.
func (x *tmuxTUI) pid() int {
	x.t.Helper()
	shell := strings.TrimSpace(x.tmux("display-message", "-p", "-t", "tui", "#{pane_pid}"))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile("/proc/" + shell + "/task/" + shell + "/children")
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.Atoi(f[0])
			return n
		}
		if comm, _ := os.ReadFile("/proc/" + shell + "/comm"); strings.TrimSpace(string(comm)) == "lbdoctor" {
			n, _ := strconv.Atoi(shell) // the shell exec'd it
			return n
		}
	}
	x.t.Fatal("no lbdoctor process under the tmux pane")
	return 0
}

// exitCode waits for the process to end and returns its exit code.
func (x *tmuxTUI) exitCode(within time.Duration) (int, bool) {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(x.exitFile); err == nil && strings.HasSuffix(string(b), "\n") {
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			return n, err == nil
		}
	}
	return 0, false
}

// red is the ✗ line drawn in red (SGR 31, bold or not).
var red = regexp.MustCompile(`\x1b\[(?:[0-9;]*;)?31(?:;[0-9;]*)?m[^\x1b]*✗ ip_error IP_INADDRERRORS`)

// End to end in a real terminal: `lbdoctor tui` on a live one-arm LB whose
// VIP is DNATed by nft while forwarding is off (the host has no IPVS), with
// a client trying the VIP: the Path pane shows the red ✗ at ip_error with
// its reason within 5 s; w writes the panes (0600) and the report as JSON;
// q exits 0 and leaves no BPF program loaded.
func TestTUIShowsWherePacketsDie(t *testing.T) {
	testkit.RequireRoot(t)
	requireTmux(t)
	l, vip := testkit.DNATLab(t, 2)
	tr := testkit.StartTraffic(t, 100*time.Millisecond, func() lab.ProbeResult {
		return lab.Probe(context.Background(), l.Client, vip, 200*time.Millisecond)
	})
	defer tr.Stop()
	x := startTUI(t, 80, 24, "--netns", l.LB.Name, "--vip", vip.String())
	pid := x.pid()
	const mark = "✗ ip_error IP_INADDRERRORS"
	took, ok := x.waitFor(mark, 5*time.Second)
	if !ok {
		t.Fatalf("lbdoctor tui did not show %q within 5s:\n%s", mark, x.screen(false))
	}
	t.Logf("the mark appeared after %s", took.Round(time.Millisecond))
	time.Sleep(2500 * time.Millisecond) // the next window: its drops header and rates too
	t.Logf("screen:\n%s", x.screen(false))
	if _, ok := x.waitFor("net.ipv4.ip_forward=0", time.Second); !ok {
		t.Errorf("lbdoctor tui shows %q without its reason (ip_forward=0):\n%s", mark, x.screen(false))
	}
	if s := x.screen(true); !red.MatchString(s) {
		t.Errorf("lbdoctor tui does not draw %q in red:\n%q", mark, s)
	}

	x.keys("w")
	if _, ok := x.waitFor("write to", time.Second); !ok {
		t.Fatalf("w asked for no file name:\n%s", x.screen(false))
	}
	x.keys("C-u", "panes", "Enter")
	if _, ok := x.waitFor("wrote panes.txt and panes.json", 2*time.Second); !ok {
		t.Fatalf("w wrote nothing:\n%s", x.screen(false))
	}
	for _, name := range []string{"panes.txt", "panes.json"} {
		st, err := os.Stat(filepath.Join(x.dir, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("w wrote %s: %v, mode %v, want a file of mode 0600", name, err, st.Mode().Perm())
		}
	}
	txt, _ := os.ReadFile(filepath.Join(x.dir, "panes.txt"))
	if !strings.Contains(string(txt), mark) || !strings.Contains(string(txt), "== Drops") {
		t.Errorf("panes.txt = %s, want the panes with %q", txt, mark)
	}
	var r report.Report
	js, _ := os.ReadFile(filepath.Join(x.dir, "panes.json"))
	if err := json.Unmarshal(js, &r); err != nil || r.Schema != report.Schema || findingOf(r, "drops.vip_flows").Status != "fail" {
		t.Errorf("panes.json = %v %s, want check's JSON with drops.vip_flows failing", err, js)
	}

	x.keys("q")
	code, ok := x.exitCode(2 * time.Second)
	if !ok || code != 0 {
		t.Fatalf("q: lbdoctor tui ended %v with %d, want exit 0 within 2s", ok, code)
	}
	// The kernel frees a released program after an RCU grace period.
	name := drops.ProgramName(pid)
	for deadline := time.Now().Add(3 * time.Second); len(testkit.LoadedPrograms(name)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("3s after q, BPF program %s of lbdoctor is still loaded", name)
		}
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("after q, lbdoctor (pid %d) is still running", pid)
	}
}

// Without a terminal, or with a flag it does not take, tui is a usage
// error: one line, exit 2, nothing drawn.
func TestTUIUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no terminal", []string{"tui"}, "lbdoctor: tui needs a terminal on stdin and stdout (use check or inspect --watch for a log)\n"},
		{"a bad VIP", []string{"tui", "--vip", "10.1.0.6"}, "lbdoctor: --vip \"10.1.0.6\": want ADDR:PORT ([ADDR]:PORT for IPv6)\n"},
		{"-o json", []string{"tui", "-o", "json"}, "lbdoctor: --output: lbdoctor tui prints text only\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := testkit.RunLbdoctor(t, tt.args...)
			if code != exitUsage || out != tt.want {
				t.Errorf("lbdoctor %v = exit %d, %q; want exit 2, %q", tt.args, code, out, tt.want)
			}
		})
	}
}

// colour is an SGR sequence that sets a colour (30-37, 90-97, 38;…).
var colour = regexp.MustCompile(`\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m`)

// NO_COLOR: the same screen without a colour, its marks still there.
func TestTUINoColor(t *testing.T) {
	testkit.RequireRoot(t)
	for _, tt := range []struct {
		name       string
		env        []string
		wantColour bool
	}{
		{"colour", nil, true},
		{"NO_COLOR", []string{"NO_COLOR=1"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := startTUIEnv(t, 80, 24, tt.env)
			if _, ok := x.waitFor("verdict ", 10*time.Second); !ok {
				t.Fatalf("no window in 10s:\n%s", x.screen(false))
			}
			s := x.screen(true)
			if got := colour.MatchString(s); got != tt.wantColour || !strings.Contains(s, "›") || !regexp.MustCompile(`[✓✗!-] kernel\.ipvs`).MatchString(x.screen(false)) {
				t.Errorf("lbdoctor tui with %v: colour %v, want %v, and the marks:\n%q", tt.env, got, tt.wantColour, s)
			}
			x.keys("q")
			if code, ok := x.exitCode(2 * time.Second); !ok || code != 0 {
				t.Errorf("q: ended %v, exit %d; want exit 0", ok, code)
			}
		})
	}
}
