package tui

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/window"
)

// Defaults of `lbdoctor tui`: a window every 2 s (k9s refreshes every 2 s;
// IPVS folds its counters every 2 s), a frame every 250 ms within it.
const (
	DefaultLength = 2 * time.Second
	DefaultEvery  = 250 * time.Millisecond
)

// retryAfter is the pause after a window that failed, before the next.
const retryAfter = time.Second

// Config is a whole TUI: the model's options and the terminal.
type Config struct {
	Options
	In  io.Reader
	Out io.Writer
	// ProgramOptions are added to the program's (tests: a fixed size).
	ProgramOptions []tea.ProgramOption
}

// Run shows the TUI until the user quits (nil) or ctx ends (ctx's cause).
// A feeder goroutine runs the windows; the program hears from it through
// Send, a frame every Every and a snapshot per window: a few messages a
// second whatever the drop rate. On the way out the running window is cut
// short and waited for, so that its tracer is detached before Run returns.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Length <= 0 {
		cfg.Length = DefaultLength
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	cfg.Control = make(chan Control, 1)
	// The renderer paints what changed at most FPS times a second: 120 (its
	// most) answers a key within ~8 ms instead of ~17; what the feeder sends
	// changes the screen only a few times a second, so it paints no more.
	opts := append([]tea.ProgramOption{tea.WithContext(ctx), tea.WithInput(cfg.In), tea.WithOutput(cfg.Out),
		tea.WithAltScreen(), tea.WithoutSignalHandler(), tea.WithFPS(120)}, cfg.ProgramOptions...)
	p := tea.NewProgram(New(cfg.Options), opts...)
	fctx, stop := context.WithCancel(ctx)
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		Feed(fctx, cfg.Options, cfg.Control, p.Send)
	}()
	_, err := p.Run()
	stop()
	<-fed
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// Feed runs windows on what the program asks through ctl (nothing until
// its first ask) and sends what they saw until ctx ends. A new ask cuts
// the running window short and throws it away; a pause stops the windows.
// The windows of a target are one window.Watcher's, with the drop tracer
// in aggregate mode (loaded once, kept attached while the target stays)
// and the reals probed; a new target, a pause and the end detach it. send
// is called from here and from the window's frame goroutine, a few times
// a second in all.
func Feed(ctx context.Context, opt Options, ctl <-chan Control, send func(tea.Msg)) {
	var c Control
	seq := 0
	// The window's frames name their ask and window: the watcher's
	// callbacks read them here (set before each window, read within it).
	var cur atomic.Pointer[[2]int]
	var w *window.Watcher
	var watched Target
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	select {
	case c = <-ctl:
	case <-ctx.Done():
		return
	}
	for {
		if w != nil && (c.Paused || c.Target != watched) {
			w.Close()
			w = nil
		}
		if c.Paused {
			select {
			case c = <-ctl:
				continue
			case <-ctx.Done():
				return
			}
		}
		gen := c.Gen
		started := time.Now()
		seq++
		seq := seq
		cur.Store(&[2]int{gen, seq})
		if w == nil {
			watched = c.Target
			w = window.NewWatcher(c.Target.Netns, c.Target.Sel, window.Options{Drops: true, Probe: true, Every: opt.Every,
				Opened: func(d time.Duration) {
					at := cur.Load()
					send(OpenedMsg{Gen: at[0], Seq: at[1], Length: d})
				},
				Progress: func(p window.Progress) {
					at := cur.Load()
					send(FrameMsg{Gen: at[0], Seq: at[1], Progress: p})
				}})
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan WindowMsg, 1)
		go func(c Control, w *window.Watcher) {
			snap, err := w.Next(wctx, opt.Length)
			if err != nil {
				done <- WindowMsg{Gen: gen, Seq: seq, Err: err}
				return
			}
			done <- WindowMsg{Gen: gen, Seq: seq, Snap: snap, Findings: checks.Run(snap, c.Target.Sel)}
		}(c, w)
		var msg WindowMsg
		select {
		case msg = <-done:
		case nc := <-ctl:
			cancel()
			<-done
			c = nc
			continue
		case <-ctx.Done():
			cancel()
			<-done
			return
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		send(msg)
		// A window that ended early (nothing to watch) or failed is not
		// run again at once: windows start at most once a Length.
		wait := time.Until(started.Add(opt.Length))
		if msg.Err != nil {
			wait = max(wait, retryAfter)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case nc := <-ctl:
				c = nc
			case <-ctx.Done():
				t.Stop()
				return
			}
			t.Stop()
		}
	}
}
