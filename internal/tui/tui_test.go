package tui

import (
	"os"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/muesli/termenv"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
)

// The goldens are plain text: the colour profile is pinned to none, as
// NO_COLOR gives a user (the marks carry the meaning, not the colours).
// This package's -update is charmbracelet golden's (teatest's); it does not
// import testkit, whose -update would be a second definition.
func TestMain(m *testing.M) {
	lipgloss.SetColorProfile(termenv.Ascii)
	os.Exit(m.Run())
}

var lbNetns = netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb", Inode: 4026532511}

func keys(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

// screen runs the program in teatest with one window's message, then the
// given keys, quits, and returns the last screen.
func screen(t *testing.T, msg WindowMsg, sel probes.Selector, w, h int, press ...tea.Msg) string {
	t.Helper()
	opt := Options{Target: Target{Netns: lbNetns, Sel: sel}, Length: DefaultLength, Every: DefaultEvery}
	if msg.Snap != nil && msg.Snap.Target.Path != "" {
		opt.Target.Netns = msg.Snap.Target
	}
	tm := teatest.NewTestModel(t, New(opt), teatest.WithInitialTermSize(w, h))
	tm.Send(msg)
	for _, k := range press {
		tm.Send(k)
	}
	tm.Send(keys("q"))
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second))
	return fm.View()
}

// The main screens at 80×24, as goldens (go test ./internal/tui -update
// rewrites them): what a user sees on a healthy LB, on the seed's stage 3,
// behind a FORWARD policy drop and on a kernel without IPVS, with the
// finding or drop point enter opens.
func TestGoldenScreens(t *testing.T) {
	tests := []struct {
		name    string
		fixture string
		press   []tea.Msg
		want    []string // also asserted, so that an -update cannot bless a regression
	}{
		{"healthy", "healthy", nil, []string{"client→VIP ✓ 6.0/s", "reply real→LB ✓ 6.0/s", "verdict warn: 0 fail", "traced: drops (tp_btf; lost 0, missed 0), reals probed"}},
		{"healthy-reals", "healthy", []tea.Msg{keys("4")}, []string{"10.2.0.50:8085", "✓ connect 180µs"}},
		{"seed-stage3", "seed-stage3", nil, []string{"✗ ip_error IP_INADDRERRORS 2.0/s — 10.1.0.3 not local, forwarding off", "✗ sysctl.ip_forward"}},
		{"seed-stage3-finding", "seed-stage3", []tea.Msg{tea.KeyMsg{Type: tea.KeyEnter}}, []string{"causal chain", "sysctl -w net.ipv4.ip_forward=1"}},
		{"forward-policy-drop", "forward-policy-drop", nil, []string{"✗ nf_hook_slow NETFILTER_DROP 4.5/s in forward — iptables-nft filter FORWARD", "policy DROP, +9 packets"}},
		{"forward-policy-drop-drops", "forward-policy-drop", []tea.Msg{keys("2")}, []string{"lost 0 · missed 0", "NETFILTER_DROP at nf_hook_slow in forward"}},
		{"forward-policy-drop-rules", "forward-policy-drop", []tea.Msg{tea.KeyMsg{Type: tea.KeyTab}, tea.KeyMsg{Type: tea.KeyTab}, tea.KeyMsg{Type: tea.KeyTab}, tea.KeyMsg{Type: tea.KeyTab}}, []string{"+9", "policy DROP of iptables-nft filter FORWARD"}},
		{"no-ipvs", "no-ipvs", nil, []string{"no IPVS: IPVS is not in this kernel", "✗ kernel.ipvs", "unavailable: "}},
		{"help", "healthy", []tea.Msg{keys("?")}, []string{":vip ADDR:PORT", "q, ctrl+c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, sel := fixture(t, tt.fixture)
			got := screen(t, msg, sel, 80, 24, tt.press...)
			assertScreen(t, got, 80, 24)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("screen %s does not show %q:\n%s", tt.name, w, got)
				}
			}
			golden.RequireEqual(t, []byte(got))
		})
	}
}

// assertScreen: exactly h lines, none wider than w.
func assertScreen(t *testing.T, got string, w, h int) {
	t.Helper()
	lines := strings.Split(got, "\n")
	if len(lines) != h {
		t.Errorf("View() = %d lines, want %d", len(lines), h)
	}
	for i, l := range lines {
		if n := ansi.StringWidth(l); n > w {
			t.Errorf("View() line %d is %d cells wide, want at most %d: %q", i+1, n, w, l)
		}
	}
}
