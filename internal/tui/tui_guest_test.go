//go:build guest

package tui

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/exp/teatest"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// The TUI on real IPVS with live probes: the seed's stage 3 (full NAT,
// then forwarding off) while a client tries the VIP. The feeder runs real
// windows; the Path pane shows the ✗ at ip_error with its reason, q ends
// the program, and once the feeder is stopped no tracer stays loaded.
//
//	sudo make guest-test RUN=TestGuestTUI GUEST_PKGS=./internal/tui/
func TestGuestTUI(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := testkit.FullNAT(t)
	testkit.Connect(t, l, vip, 2) // the path works first
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	tr := testkit.StartTraffic(t, 200*time.Millisecond, func() lab.ProbeResult {
		return lab.Probe(context.Background(), l.Client, vip, 300*time.Millisecond)
	})
	defer tr.Stop()

	ctl := make(chan Control, 1)
	opt := Options{Target: Target{Netns: l.LB, Sel: probes.Selector{VIP: vip, Proto: "tcp"}}, Length: DefaultLength, Every: DefaultEvery, Control: ctl}
	tm := teatest.NewTestModel(t, New(opt), teatest.WithInitialTermSize(80, 24))
	ctx, cancel := context.WithCancel(context.Background())
	fed := make(chan struct{})
	go func() { defer close(fed); Feed(ctx, opt, ctl, tm.Send) }()
	defer func() { cancel(); <-fed }()

	const mark = "✗ ip_error IP_INADDRERRORS"
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return bytes.Contains(b, []byte(mark)) && bytes.Contains(b, []byte("forwarding off"))
	}, teatest.WithDuration(90*time.Second), teatest.WithCheckInterval(100*time.Millisecond))
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	m := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	t.Logf("last screen:\n%s", m.View())
	var f *checks.Finding
	for i := range m.findings {
		if m.findings[i].ID == "sysctl.ip_forward" {
			f = &m.findings[i]
		}
	}
	if f == nil || f.Status != "fail" {
		t.Errorf("the TUI's findings on stage 3 = %+v, want sysctl.ip_forward failing", f)
	}
	cancel()
	<-fed
	name := drops.ProgramName(os.Getpid())
	for deadline := time.Now().Add(3 * time.Second); len(testkit.LoadedPrograms(name)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("3s after the feeder stopped, the tracer %s is still loaded", name)
		}
	}
}
