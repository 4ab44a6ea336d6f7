package tui

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// update applies msgs in order, running the Cmds they return the way the
// program would, and applying what those answer.
func update(m Model, msgs ...tea.Msg) Model {
	for _, msg := range msgs {
		for depth := 0; msg != nil && depth < 4; depth++ {
			next, cmd := m.Update(msg)
			m, msg = next.(Model), nil
			if cmd != nil {
				msg = cmd()
			}
		}
	}
	return m
}

func loaded(t *testing.T, name string) Model {
	msg, sel := fixture(t, name)
	return update(New(Options{Target: Target{Netns: lbNetns, Sel: sel}, Length: DefaultLength, Every: DefaultEvery}), msg)
}

func TestFilter(t *testing.T) {
	tests := []struct {
		name, filter string
		want         []string
	}{
		{"none", "", []string{"sysctl.ip_forward", "drops.vip_flows", "kernel.ipvs"}},
		{"substring, any case", "IP_FORWARD", []string{"sysctl.ip_forward"}},
		{"inverse", "!sysctl", []string{"drops.vip_flows", "kernel.ipvs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loaded(t, "seed-stage3")
			m = update(m, keys("/"))
			for _, r := range tt.filter {
				m = update(m, keys(string(r)))
			}
			m = update(m, tea.KeyMsg{Type: tea.KeyEnter})
			var got []string
			for _, r := range m.rows(Findings) {
				got = append(got, r.finding.ID)
			}
			for _, w := range tt.want {
				if !strings.Contains(strings.Join(got, " "), w) {
					t.Errorf("rows(Findings) with /%s = %v, want %s among them", tt.filter, got, w)
				}
			}
			if tt.filter != "" && len(got) >= len(m.findings) {
				t.Errorf("rows(Findings) with /%s = %d rows, want fewer than %d", tt.filter, len(got), len(m.findings))
			}
			if tt.filter == "!sysctl" && strings.Contains(strings.Join(got, " "), "sysctl.") {
				t.Errorf("rows(Findings) with /!sysctl = %v, want none holding sysctl", got)
			}
		})
	}
}

// Resized, the screen fills the terminal exactly and nothing is wider.
func TestResize(t *testing.T) {
	for _, sz := range [][2]int{{80, 24}, {120, 40}, {60, 16}, {200, 60}} {
		m := update(loaded(t, "seed-stage3"), tea.WindowSizeMsg{Width: sz[0], Height: sz[1]})
		for _, k := range []tea.Msg{nil, keys("2"), tea.KeyMsg{Type: tea.KeyEnter}, keys("?")} {
			if k != nil {
				m = update(m, k)
			}
			assertScreen(t, m.View(), sz[0], sz[1])
		}
	}
}

// In colour the ✗ of a stop is red; without (NO_COLOR gives the ASCII
// profile) it is plain text with its mark.
func TestColour(t *testing.T) {
	defer lipgloss.SetColorProfile(termenv.Ascii)
	for _, tt := range []struct {
		name    string
		profile termenv.Profile
		want    string
	}{
		{"ANSI", termenv.ANSI, "\x1b[1;31m  ✗ ip_error IP_INADDRERRORS"},
		{"no colour", termenv.Ascii, "\n  ✗ ip_error IP_INADDRERRORS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lipgloss.SetColorProfile(tt.profile)
			got := loaded(t, "seed-stage3").View()
			if !strings.Contains(got, tt.want) {
				t.Errorf("View() with the %s profile does not hold %q:\n%q", tt.name, tt.want, got)
			}
			if tt.profile == termenv.Ascii && strings.Contains(got, "\x1b") {
				t.Errorf("View() without colour holds an escape:\n%q", got)
			}
		})
	}
}

// Names are the user's: a namespace named with an escape sequence is shown
// escaped, never sent to the terminal.
func TestNamesCannotDriveTheTerminal(t *testing.T) {
	m := loaded(t, "no-ipvs")
	m.target.Netns = netns.Target{Spec: "x\x1b]0;pwned\x07", Name: "x\x1b]0;pwned\x07"}
	got := m.View()
	if strings.Contains(got, "\x1b]") || !strings.Contains(got, `x\x1b]0;pwned\a`) {
		t.Errorf("View() with a namespace named with an OSC sequence = %q, want it escaped", got)
	}
}

// Messages of an older target, or of a window finished before, change
// nothing; :vip asks the feeder for the new target; p pauses.
func TestTargetsAndPause(t *testing.T) {
	ctl := make(chan Control, 1)
	m := New(Options{Target: Target{Netns: lbNetns}, Control: ctl, Length: DefaultLength, Every: DefaultEvery,
		Select: func(vip, proto string) (probes.Selector, error) {
			if vip == "bad" {
				return probes.Selector{}, errors.New(`--vip "bad": want ADDR:PORT`)
			}
			return probes.Selector{VIP: netip.MustParseAddrPort(vip), Proto: proto}, nil
		}})
	m.Init()()
	if c := <-ctl; c.Gen != 0 || c.Paused {
		t.Fatalf("Init() asked %+v, want generation 0, running", c)
	}
	msg, _ := fixture(t, "seed-stage3")
	m = update(m, msg)
	if m.windows != 1 {
		t.Fatalf("a window of the current target: windows = %d, want 1", m.windows)
	}
	typed := []tea.Msg{keys(":")}
	for _, r := range "vip 10.1.0.9:80" {
		typed = append(typed, keys(string(r)))
	}
	m = update(m, append(typed, tea.KeyMsg{Type: tea.KeyEnter})...)
	if m.target.Sel.VIP.String() != "10.1.0.9:80" || m.gen != 1 || m.snap != nil {
		t.Fatalf(":vip 10.1.0.9:80 = target %v gen %d snap %v, want the new VIP, generation 1, no snapshot", m.target.Sel.VIP, m.gen, m.snap != nil)
	}
	if c := <-ctl; c.Gen != 1 || c.Target.Sel.VIP.String() != "10.1.0.9:80" {
		t.Errorf(":vip asked the feeder %+v, want generation 1 for 10.1.0.9:80", c)
	}
	m = update(m, msg) // generation 0's window, late
	if m.snap != nil {
		t.Errorf("a window of the old target was shown")
	}
	typed = []tea.Msg{keys(":")}
	for _, r := range "vip bad" {
		typed = append(typed, keys(string(r)))
	}
	m = update(m, append(typed, tea.KeyMsg{Type: tea.KeyEnter})...)
	if !strings.Contains(m.flash, `--vip "bad"`) || m.gen != 1 {
		t.Errorf(":vip bad = flash %q gen %d, want the parser's error and the target kept", m.flash, m.gen)
	}
	m = update(m, keys("p"))
	if c := <-ctl; !c.Paused || !m.paused {
		t.Errorf("p asked the feeder %+v, want paused", c)
	}
	msg.Gen = m.gen
	if m = update(m, msg); m.snap != nil {
		t.Errorf("paused, a window was shown")
	}
	if !strings.Contains(m.View(), "PAUSED") {
		t.Errorf("paused, the status line does not say so:\n%s", m.View())
	}
}

// w writes NAME.txt and NAME.json created 0600, overwrites a regular
// file, and refuses a link, a FIFO or a directory.
func TestWriteFiles(t *testing.T) {
	e := loaded(t, "seed-stage3").Export()
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, filepath.Join(dir, "link.txt"))
	syscall.Mkfifo(filepath.Join(dir, "fifo.txt"), 0o600)
	os.Mkdir(filepath.Join(dir, "dir.txt"), 0o755)
	os.WriteFile(filepath.Join(dir, "old.txt"), []byte(strings.Repeat("x", 100000)), 0o600)
	for _, tt := range []struct {
		name    string
		wantErr string
	}{
		{"new", ""},
		{"old", ""},
		{"link", "a symbolic link, not a regular file: not overwritten"},
		{"fifo", "not a regular file: not overwritten"},
		{"dir", "not a regular file: not overwritten"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			files, err := e.WriteFiles(filepath.Join(dir, tt.name))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("WriteFiles(%s) = %v, want an error saying %q", tt.name, err, tt.wantErr)
				}
				return
			}
			if err != nil || len(files) != 2 {
				t.Fatalf("WriteFiles(%s) = %v, %v, want two files", tt.name, files, err)
			}
			for _, f := range files {
				st, _ := os.Stat(f)
				if st.Mode().Perm() != 0o600 {
					t.Errorf("WriteFiles(%s) wrote %s with mode %v, want 0600", tt.name, f, st.Mode().Perm())
				}
			}
			txt, _ := os.ReadFile(files[0])
			js, _ := os.ReadFile(files[1])
			if !strings.Contains(string(txt), "✗ ip_error IP_INADDRERRORS") || !strings.Contains(string(txt), "verdict: fail") ||
				strings.Contains(string(txt), "xxxx") || !strings.Contains(string(js), `"schema": 1`) {
				t.Errorf("WriteFiles(%s) wrote\n%s\n%s\nwant the panes and the report, in text and JSON", tt.name, txt, js)
			}
		})
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("the link's target was written: %q", b)
	}
}

// BenchmarkView is the UI goroutine's cost of one screen and of one key
// on a busy LB's window (500 IPVS connections and 500 conntrack flows
// listed, the Flows pane focused): what a frame or a key press costs
// between two reads of the terminal.
//
//	go test -run '^$' -bench View ./internal/tui/
func BenchmarkView(b *testing.B) {
	msg, sel := fixture(&testing.T{}, "seed-stage3")
	s := msg.Snap
	for i := range 500 {
		c := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.3"), uint16(30000+i))
		s.IPVS.Conns = append(s.IPVS.Conns, ipvs.Conn{Proto: "tcp", Client: c, VIP: vip, Dest: netip.MustParseAddrPort("10.1.0.50:8085"), State: "SYN_RECV", Expires: 50})
		s.Conntrack.Flows = append(s.Conntrack.Flows, conntrack.Flow{Proto: "tcp", Orig: conntrack.Tuple{Src: c, Dst: vip}, State: "SYN_SENT", Status: []string{"CONFIRMED"}, Timeout: 100})
	}
	m := update(New(Options{Target: Target{Netns: lbNetns, Sel: sel}, Length: DefaultLength, Every: DefaultEvery}), msg, keys("3"))
	b.Run("view", func(b *testing.B) {
		for b.Loop() {
			_ = m.View()
		}
	})
	b.Run("key", func(b *testing.B) {
		for b.Loop() {
			next, _ := m.Update(tea.KeyMsg{Type: tea.KeyDown})
			_ = next.(Model).View()
		}
	})
}

// :netns resolves the namespace in a Cmd and watches it; one it cannot
// open is one line, the target kept; an unknown command says what is.
func TestNetnsCommand(t *testing.T) {
	m := New(Options{Target: Target{Netns: lbNetns}, Length: DefaultLength, Every: DefaultEvery,
		Resolve: func(spec string) (netns.Target, error) {
			if spec == "lb2" {
				return netns.Target{Spec: "lb2", Name: "lb2", Path: "/run/netns/lb2"}, nil
			}
			return netns.Target{}, errors.New(`no such network namespace "` + spec + `"`)
		}})
	typeLine := func(m Model, s string) Model {
		msgs := []tea.Msg{keys(":")}
		for _, r := range s {
			msgs = append(msgs, keys(string(r)))
		}
		return update(m, append(msgs, tea.KeyMsg{Type: tea.KeyEnter})...)
	}
	m = typeLine(m, "netns lb2")
	if m.target.Netns.Name != "lb2" || m.gen != 1 || !strings.Contains(m.View(), "netns lb2, every service") {
		t.Errorf(":netns lb2 = target %v gen %d, want lb2 watched", m.target.Netns, m.gen)
	}
	m = typeLine(m, "netns nope")
	if m.target.Netns.Name != "lb2" || !strings.Contains(m.View(), `✗ no such network namespace "nope"`) {
		t.Errorf(":netns nope = target %v, screen\n%s\nwant lb2 kept and the error", m.target.Netns, m.View())
	}
	m = typeLine(m, "frob")
	if !strings.Contains(m.flash, "unknown command :frob") {
		t.Errorf(":frob = flash %q, want it named as unknown", m.flash)
	}
}
