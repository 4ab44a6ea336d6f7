package tui

import (
	"fmt"
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	"github.com/lbdoctor/lbdoctor/internal/report"
)

// The tones' colours. Without colour (NO_COLOR, a dumb terminal, the
// tests' pinned profile) they render as plain text: every tone has a mark
// of its own (✓ ✗ ! ?) and the selected row a ›, so nothing is told by
// colour alone.
var tones = map[tone]lipgloss.Style{
	plain: lipgloss.NewStyle(),
	good:  lipgloss.NewStyle().Foreground(lipgloss.Color("2")),
	bad:   lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
	warn:  lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
	dim:   lipgloss.NewStyle().Faint(true),
	head:  lipgloss.NewStyle().Bold(true),
}

var selected = lipgloss.NewStyle().Reverse(true)

const keysLine = "? help  : cmd  / filter  tab  ⏎ open  p pause  w write  q quit"

// View draws the screen: the keys, the Path pane, the tabs and the focused
// pane, the status line and the prompt. It fits width×height exactly.
func (m Model) View() string {
	w, h := max(20, m.width), max(8, m.height)
	var out []string
	title := fmt.Sprintf("lbdoctor tui · %s", keysLine)
	out = append(out, render(fit(text(title, head), w)))
	body := m.bodyHeight()
	switch m.mode {
	case detail:
		ls := m.detailWrapped()
		out = append(out, m.box(ls, max(0, min(m.detailTop, len(ls)-body)), body, w)...)
	default:
		path := m.pathBlock(w, body)
		out = append(out, path...)
		out = append(out, render(fit(m.tabs(), w)))
		rest := body - len(path) - 1
		for _, hd := range m.paneHeader(m.pane) {
			if rest > 1 {
				out = append(out, render(fit(hd, w)))
				rest--
			}
		}
		rows := m.rows(m.pane)
		top := max(0, min(m.top[m.pane], len(rows)-rest))
		for i := 0; i < rest; i++ {
			j := top + i
			if j >= len(rows) {
				if i == 0 && len(rows) == 0 {
					out = append(out, render(fit(m.emptyPane(), w)))
					continue
				}
				out = append(out, "")
				continue
			}
			if j == m.cursor[m.pane] {
				out = append(out, selected.Render(fit(append(line{{"›", plain}}, rows[j].line...), w).String()))
				continue
			}
			out = append(out, render(fit(append(line{{" ", plain}}, rows[j].line...), w)))
		}
	}
	for _, l := range m.statusLines() {
		out = append(out, render(fit(l, w)))
	}
	out = append(out, render(fit(m.footer(), w)))
	if len(out) > h {
		out = out[:h]
	}
	return strings.Join(out, "\n")
}

// detailWrapped is the open row's details as the screen shows them.
func (m Model) detailWrapped() []line {
	ls := []line{text(m.detailTitle+"  (esc back, ↑↓ scroll)", head)}
	for _, l := range m.detailLines {
		ls = append(ls, wrap(l, max(20, m.width), "    ")...)
	}
	return ls
}

// bodyHeight is what the panes share: the screen less the keys line, the
// two status lines and the prompt line.
func (m Model) bodyHeight() int { return max(8, m.height) - 4 }

// pathBlock is the Path pane: its title and at most about half the body.
func (m Model) pathBlock(w, body int) []string {
	var ls []line
	for _, l := range m.paths {
		ls = append(ls, wrap(l, w, "      ")...)
	}
	room := max(2, body/2-1)
	hidden := 0
	if len(ls) > room {
		hidden = len(ls) - room + 1
		ls = ls[:room-1]
	}
	out := []string{render(fit(line{{"─ Path ", head}, {strings.Repeat("─", max(0, w-7)), dim}}, w))}
	for _, l := range ls {
		out = append(out, render(l))
	}
	if hidden > 0 {
		out = append(out, render(fit(text(fmt.Sprintf("  … %d more line(s): w writes them all", hidden), dim), w)))
	}
	return out
}

// paneHeight is the rows the focused pane shows.
func (m Model) paneHeight() int {
	w := max(20, m.width)
	body := m.bodyHeight()
	n := body - len(m.pathBlock(w, body)) - 1
	for range m.paneHeader(m.pane) {
		if n > 1 {
			n--
		}
	}
	return max(1, n)
}

func (m Model) tabs() line {
	var l line
	for p := range numPanes {
		name := fmt.Sprintf(" %d %s ", p+1, p)
		if p == m.pane {
			l = append(l, span{"[" + name[1:len(name)-1] + "]", head})
		} else {
			l = append(l, span{name, dim})
		}
	}
	if m.filter != "" {
		l = append(l, span{"  /" + m.filter, warn})
	}
	return l
}

func (m Model) emptyPane() line {
	if m.snap == nil {
		return text("  (waiting for the first window)", dim)
	}
	if m.filter != "" {
		return text("  (nothing matches /"+m.filter+"; esc clears it)", dim)
	}
	return text("  (nothing)", dim)
}

func (m Model) footer() line {
	switch m.mode {
	case command:
		return line{{":", head}, {m.input.View(), raw}}
	case filtering:
		return line{{"/", head}, {m.input.View(), raw}}
	case writing:
		return line{{"write to (NAME.txt and NAME.json): ", head}, {m.input.View(), raw}}
	}
	if m.flash != "" {
		t := plain
		if strings.HasPrefix(m.flash, "✗") {
			t = bad
		}
		return text(m.flash, t)
	}
	return nil
}

// box shows lines from top in a body of n lines.
func (m Model) box(ls []line, top, n, w int) []string {
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		if top+i < len(ls) {
			out = append(out, render(fit(ls[top+i], w)))
		} else {
			out = append(out, "")
		}
	}
	return out
}

// helpLines are the keys, and under them the whole of what is
// unavailable (the status line shortens it).
func (m Model) helpLines() []line {
	keys := [][2]string{
		{"?", "this help (esc closes it)"},
		{":vip ADDR:PORT", "watch one service (:vip all: every service)"},
		{":proto tcp|udp", "the protocol of :vip (:proto any)"},
		{":netns NAME", "watch another namespace (NAME, PATH or pid:N)"},
		{"/TEXT", "show the pane's rows holding TEXT (/!TEXT: those without; esc clears)"},
		{"tab, shift+tab, 1-5", "next, previous, n-th pane"},
		{"↑ ↓ pgup pgdn g G", "move in the pane"},
		{"enter", "open the row: a finding's evidence, causal chain and fix commands"},
		{"esc", "back"},
		{"p", "pause: keep the panes as they are (windows stop until p again)"},
		{"w", "write what the panes show to NAME.txt and NAME.json (check -o json)"},
		{"q, ctrl+c", "quit"},
	}
	out := []line{text("keys", head)}
	for _, k := range keys {
		out = append(out, line{{"  " + pad(k[0], 22), head}, {k[1], plain}})
	}
	out = append(out, nil, text("Path: ✓ packets crossed the leg (rate) · 0/s nothing counted · ? no layer could tell · ✗ where packets die", dim),
		text("The TUI only reads; fixes are commands to copy. Windows re-run the doctor's checks.", dim))
	if u := m.unavailable(); len(u) > 0 {
		out = append(out, nil, text("unavailable", head))
		for _, s := range u {
			out = append(out, text("  "+s, warn))
		}
	}
	return out
}

// clean shows what a terminal would act on as its escape (report.Printable)
// and a newline as a space: names (namespaces, rules, interfaces) are the
// user's. The prompt's own rendering (raw) is kept.
func clean(s span) span {
	if s.tone == raw {
		return s
	}
	return span{strings.ReplaceAll(report.Printable(s.text), "\n", " "), s.tone}
}

// fit cuts a line to w cells.
func fit(l line, w int) line {
	var out line
	used := 0
	for _, s := range l {
		s = clean(s)
		sw := ansi.StringWidth(s.text)
		if used+sw <= w {
			out = append(out, s)
			used += sw
			continue
		}
		out = append(out, span{ansi.Truncate(s.text, w-used, "…"), s.tone})
		break
	}
	return out
}

// wrap breaks a line into lines of at most w cells at spaces; the lines
// after the first start with indent.
func wrap(l line, w int, indent string) []line {
	var out []line
	cur, used := line{}, 0
	for _, s := range l {
		s = clean(s)
		for _, word := range splitKeep(s.text) {
			ww := ansi.StringWidth(word)
			if used+ww > w && used > ansi.StringWidth(indent) {
				out = append(out, cur)
				cur, used = line{{indent, plain}}, ansi.StringWidth(indent)
				word = strings.TrimLeft(word, " ")
				ww = ansi.StringWidth(word)
			}
			if ww > w-used {
				word = ansi.Truncate(word, w-used, "…")
				ww = ansi.StringWidth(word)
			}
			cur = append(cur, span{word, s.tone})
			used += ww
		}
	}
	if len(cur) > 0 || len(out) == 0 {
		out = append(out, cur)
	}
	for i := range out {
		out[i] = merge(out[i])
	}
	return out
}

// merge joins neighbouring spans of one tone: one escape sequence per run
// of a colour, not per word.
func merge(l line) line {
	var out line
	for _, s := range l {
		if n := len(out); n > 0 && out[n-1].tone == s.tone {
			out[n-1].text += s.text
			continue
		}
		out = append(out, s)
	}
	return out
}

// splitKeep splits s after each space, keeping the spaces.
func splitKeep(s string) []string {
	var out []string
	for s != "" {
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			out = append(out, s)
			break
		}
		out = append(out, s[:i+1])
		s = s[i+1:]
	}
	return out
}

func render(l line) string {
	var b strings.Builder
	for _, s := range l {
		if s.tone == plain || s.tone == raw {
			b.WriteString(s.text)
			continue
		}
		b.WriteString(tones[s.tone].Render(s.text))
	}
	return b.String()
}
