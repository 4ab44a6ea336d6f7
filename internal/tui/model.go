// Package tui is `lbdoctor tui`: the incident view of one load balancer —
// the path of the selected services' flows with a mark where packets die,
// the doctor's findings re-run on every window, the live drops, flows,
// reals and rules — as a bubbletea program. It is one more consumer of the
// window package: a feeder goroutine loops window.Run and hands the program
// a frame a few times a second and a snapshot per window (never a message
// per drop: the tracer aggregates in the kernel). Update never does I/O;
// whatever reads or writes (a window, resolving a namespace, writing the
// panes to a file) runs in a tea.Cmd or in the feeder. Nothing here reads
// the kernel on its own.
package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/cursor"
	"github.com/charmbracelet/bubbles/textinput"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/window"
)

// Pane is one of the lower panes, in tab order.
type Pane int

const (
	Findings Pane = iota
	Drops
	Flows
	Reals
	Rules
	numPanes
)

var paneNames = [...]string{"Findings", "Drops", "Flows", "Reals", "Rules"}

func (p Pane) String() string { return paneNames[p] }

// Target is what the TUI watches: a namespace and the selected services.
type Target struct {
	Netns netns.Target
	Sel   probes.Selector
}

// Control is what the program asks the feeder: watch this target (Gen
// numbers the asks: frames of an older one are dropped), or pause.
type Control struct {
	Gen    int
	Target Target
	Paused bool
}

// WindowMsg is one finished window and the catalog's findings on it.
type WindowMsg struct {
	Gen, Seq int // the target's ask, and the window's number
	Snap     *probes.Snapshot
	Findings []checks.Finding
	Err      error
}

// FrameMsg is a running window's frame (window.Progress).
type FrameMsg struct {
	Gen, Seq int
	Progress window.Progress
}

// OpenedMsg says a window opened (its first read is done).
type OpenedMsg struct {
	Gen    int
	Seq    int
	Length time.Duration
}

// retargetMsg is the answer of a :netns, :vip or :proto command.
type retargetMsg struct {
	target Target
	err    error
}

// wroteMsg is the answer of a write.
type wroteMsg struct {
	files []string
	err   error
}

// mode is what the keyboard drives.
type mode int

const (
	normal mode = iota
	command
	filtering
	writing
	detail // an opened row, or the help
)

// Options configure a Model.
type Options struct {
	Target Target
	// Length is each window's length (for the status line; the feeder runs
	// them), Every the frame period.
	Length, Every time.Duration
	// Select parses the values of :vip and :proto as the command line's
	// --vip and --proto; Resolve opens the namespace of :netns. Both run in
	// a tea.Cmd, never in Update. Nil: the command is refused.
	Select  func(vip, proto string) (probes.Selector, error)
	Resolve func(spec string) (netns.Target, error)
	// Control, when not nil, carries the program's asks to the feeder
	// (one slot: a newer ask replaces one not taken yet).
	Control chan Control
	// Now names the file `w` suggests; nil: time.Now.
	Now func() time.Time
}

// Model is the program's state. Build it with New.
type Model struct {
	opt    Options
	target Target
	gen    int

	snap     *probes.Snapshot // the last finished window
	findings []checks.Finding
	frame    *window.Progress // the running window's last frame
	windows  int              // windows finished for this target
	doneSeq  int              // the number of the last window finished
	lastErr  string
	opened   bool // the running window opened (its first read is done)

	paused bool
	mode   mode
	pane   Pane
	cursor [numPanes]int
	top    [numPanes]int
	filter string

	detailTitle string
	detailLines []line
	detailTop   int

	input textinput.Model
	flash string

	width, height int

	// What refresh built from the data above: the panes' rows and the
	// Path pane's lines (slices replaced, never changed in place).
	rowsOf [numPanes][]row
	paths  []line
}

// New returns the model of a TUI watching opt.Target.
func New(opt Options) Model {
	in := textinput.New()
	in.Prompt = ""
	in.CharLimit = 256
	// A cursor that does not blink: a blink is a message and a render
	// every half second.
	in.Cursor.SetMode(cursor.CursorStatic)
	m := Model{opt: opt, target: opt.Target, input: in, width: 80, height: 24}
	m.refresh()
	return m
}

// Init asks the feeder for the first target.
func (m Model) Init() tea.Cmd { return m.control() }

// control hands the current target and pause state to the feeder, from a
// Cmd: a full slot is replaced, never waited for.
func (m Model) control() tea.Cmd {
	ch := m.opt.Control
	if ch == nil {
		return nil
	}
	c := Control{Gen: m.gen, Target: m.target, Paused: m.paused}
	return func() tea.Msg {
		for {
			select {
			case ch <- c:
				return nil
			default:
			}
			select {
			case <-ch:
			default:
			}
		}
	}
}

// Update applies one message. It never reads or writes anything outside
// the model: reads and writes are Cmds.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		return m, nil
	case WindowMsg:
		if msg.Gen != m.gen || m.paused {
			return m, nil
		}
		m.doneSeq = msg.Seq
		m.opened = false
		m.frame = nil
		if msg.Err != nil {
			m.lastErr = msg.Err.Error()
			m.refresh()
			return m, nil
		}
		m.lastErr = ""
		m.snap, m.findings = msg.Snap, msg.Findings
		m.windows++
		m.refresh()
		m.clamp()
		return m, nil
	case FrameMsg:
		if msg.Gen == m.gen && msg.Seq > m.doneSeq && !m.paused {
			p := msg.Progress
			m.frame = &p
			m.refresh(Reals) // its rates are the frame's
		}
		return m, nil
	case OpenedMsg:
		if msg.Gen == m.gen && msg.Seq > m.doneSeq {
			m.opened = true
			m.paths = m.pathLines()
		}
		return m, nil
	case retargetMsg:
		if msg.err != nil {
			m.flash = "✗ " + msg.err.Error()
			return m, nil
		}
		m.target = msg.target
		m.gen++
		m.snap, m.findings, m.frame, m.windows, m.doneSeq, m.lastErr, m.opened = nil, nil, nil, 0, 0, "", false
		m.cursor, m.top = [numPanes]int{}, [numPanes]int{}
		m.flash = "watching " + describeTarget(m.target)
		m.refresh()
		return m, m.control()
	case wroteMsg:
		if msg.err != nil {
			m.flash = "✗ write: " + msg.err.Error()
		} else {
			m.flash = "wrote " + strings.Join(msg.files, " and ")
		}
		return m, nil
	case tea.KeyMsg:
		return m.key(msg)
	}
	return m, nil
}

func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if k.Type == tea.KeyCtrlC {
		return m, tea.Quit
	}
	switch m.mode {
	case command, filtering, writing:
		return m.prompt(k)
	case detail: // an opened row, or the help
		switch k.String() {
		case "q":
			return m, tea.Quit
		case "esc", "enter", "backspace", "?":
			m.mode = normal
		case "up", "k":
			m.detailTop = max(0, m.detailTop-1)
		case "down", "j":
			m.detailTop++
		case "pgup":
			m.detailTop = max(0, m.detailTop-m.bodyHeight())
		case "pgdown", " ":
			m.detailTop += m.bodyHeight()
		case "home", "g":
			m.detailTop = 0
		}
		m.detailTop = max(0, min(m.detailTop, len(m.detailWrapped())-m.bodyHeight()))
		return m, nil
	}
	m.flash = ""
	switch k.String() {
	case "q":
		return m, tea.Quit
	case "?":
		m.detailTitle, m.detailLines, m.detailTop = "help", m.helpLines(), 0
		m.mode = detail
	case ":":
		return m.startPrompt(command, "")
	case "/":
		return m.startPrompt(filtering, m.filter)
	case "w":
		return m.startPrompt(writing, m.defaultFile())
	case "tab", "right", "l":
		m.pane = (m.pane + 1) % numPanes
	case "shift+tab", "left", "h":
		m.pane = (m.pane + numPanes - 1) % numPanes
	case "1", "2", "3", "4", "5":
		m.pane = Pane(k.String()[0] - '1')
	case "up", "k":
		m.cursor[m.pane]--
	case "down", "j":
		m.cursor[m.pane]++
	case "pgup":
		m.cursor[m.pane] -= m.paneHeight()
	case "pgdown":
		m.cursor[m.pane] += m.paneHeight()
	case "home", "g":
		m.cursor[m.pane] = 0
	case "end", "G":
		m.cursor[m.pane] = 1 << 30
	case "enter":
		rows := m.rows(m.pane)
		if c := m.cursor[m.pane]; c >= 0 && c < len(rows) {
			m.detailTitle, m.detailLines = m.details(m.pane, rows[c])
			m.detailTop = 0
			m.mode = detail
		}
	case "esc":
		m.filter = ""
		m.refresh()
	case "p":
		m.paused = !m.paused
		m.gen++ // what the window under way sends is dropped
		if m.paused {
			m.flash = "paused: the panes hold the last window (p resumes)"
		} else {
			m.frame, m.opened = nil, false
		}
		m.refresh()
		return m, m.control()
	}
	m.clamp()
	return m, nil
}

func (m Model) startPrompt(md mode, value string) (tea.Model, tea.Cmd) {
	m.mode = md
	m.input.SetValue(value)
	m.input.CursorEnd()
	return m, m.input.Focus()
}

// prompt drives the command, filter and file-name line.
func (m Model) prompt(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.Type {
	case tea.KeyEsc:
		m.mode = normal
		m.input.Blur()
		return m, nil
	case tea.KeyEnter:
		v := strings.TrimSpace(m.input.Value())
		md := m.mode
		m.mode = normal
		m.input.Blur()
		switch md {
		case filtering:
			m.filter = v
			m.cursor[m.pane], m.top[m.pane] = 0, 0
			m.refresh()
			return m, nil
		case writing:
			if v == "" {
				m.flash = "✗ write: no file name"
				return m, nil
			}
			return m, Write(v, m.Export())
		default:
			return m.run(v)
		}
	}
	var cmd tea.Cmd
	m.input, cmd = m.input.Update(k)
	if m.mode == filtering { // the filter applies as it is typed
		m.filter = strings.TrimSpace(m.input.Value())
		m.cursor[m.pane], m.top[m.pane] = 0, 0
		m.refresh()
	}
	return m, cmd
}

// run runs a `:` command.
func (m Model) run(line string) (tea.Model, tea.Cmd) {
	verb, arg, _ := strings.Cut(line, " ")
	arg = strings.TrimSpace(arg)
	cur := m.target
	switch verb {
	case "q", "quit", "q!":
		return m, tea.Quit
	case "vip", "proto":
		if m.opt.Select == nil {
			m.flash = "✗ :" + verb + " is not available here"
			return m, nil
		}
		vip, proto := "", cur.Sel.Proto
		if cur.Sel.VIP.IsValid() {
			vip = cur.Sel.VIPString()
		}
		if verb == "vip" {
			vip = arg
			if arg == "-" || arg == "all" {
				vip = ""
			}
		} else {
			proto = arg
			if arg == "-" || arg == "any" {
				proto = ""
			}
		}
		sel := m.opt.Select
		return m, func() tea.Msg {
			s, err := sel(vip, proto)
			return retargetMsg{target: Target{Netns: cur.Netns, Sel: s}, err: err}
		}
	case "netns":
		if m.opt.Resolve == nil {
			m.flash = "✗ :netns is not available here"
			return m, nil
		}
		resolve := m.opt.Resolve
		return m, func() tea.Msg {
			t, err := resolve(arg)
			return retargetMsg{target: Target{Netns: t, Sel: cur.Sel}, err: err}
		}
	case "":
		return m, nil
	case "findings", "drops", "flows", "reals", "rules":
		for p := range numPanes {
			if strings.EqualFold(p.String(), verb) {
				m.pane = p
			}
		}
		return m, nil
	}
	m.flash = fmt.Sprintf("✗ unknown command :%s (want :vip ADDR:PORT, :proto tcp|udp, :netns NAME, :q)", verb)
	return m, nil
}

func (m Model) defaultFile() string {
	now := time.Now
	if m.opt.Now != nil {
		now = m.opt.Now
	}
	return "lbdoctor-tui-" + now().UTC().Format("20060102-150405")
}

// clamp keeps each cursor on a row and the focused pane's row in view.
func (m *Model) clamp() {
	h := max(1, m.paneHeight())
	for p := range numPanes {
		n := len(m.rows(p))
		m.cursor[p] = max(0, min(m.cursor[p], n-1))
		if m.cursor[p] < m.top[p] {
			m.top[p] = m.cursor[p]
		}
		if m.cursor[p] >= m.top[p]+h {
			m.top[p] = m.cursor[p] - h + 1
		}
		m.top[p] = max(0, min(m.top[p], n-h))
	}
}

func describeTarget(t Target) string {
	s := t.Netns.String()
	if t.Sel.VIP.IsValid() {
		p := "any protocol"
		if t.Sel.Proto != "" {
			p = strings.ToUpper(t.Sel.Proto)
		}
		s += ", " + p + " " + t.Sel.VIPString()
	} else {
		s += ", every service"
	}
	return s
}
