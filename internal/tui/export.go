package tui

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	tea "github.com/charmbracelet/bubbletea"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/report"
)

// Export is what `w` writes: the panes as text, whole (not cut to the
// screen, the filter applied), and the check report of the last window.
type Export struct {
	Text   string
	Report *report.Report // nil before the first window
}

// Export builds what the panes show now. Pure.
func (m Model) Export() Export {
	var b strings.Builder
	fmt.Fprintf(&b, "lbdoctor tui: %s\n", describeTarget(m.target))
	for _, l := range m.statusLines() {
		fmt.Fprintln(&b, l.String())
	}
	fmt.Fprintln(&b, "\n== Path")
	for _, l := range m.paths {
		fmt.Fprintln(&b, l.String())
	}
	for p := range numPanes {
		fmt.Fprintf(&b, "\n== %s", p)
		if m.filter != "" {
			fmt.Fprintf(&b, " (filter /%s)", m.filter)
		}
		fmt.Fprintln(&b)
		for _, h := range m.paneHeader(p) {
			fmt.Fprintln(&b, h.String())
		}
		for _, r := range m.rows(p) {
			fmt.Fprintln(&b, r.line.String())
		}
	}
	e := Export{Text: report.Printable(b.String())}
	if m.snap != nil {
		rt := report.Target{Netns: m.target.Netns, Kernel: m.snap.Kernel}
		if m.target.Sel.VIP.IsValid() {
			rt.VIP, rt.Proto = m.target.Sel.VIP.String(), m.target.Sel.Proto
		}
		e.Report = report.New(rt, m.findings, m.snap.Errors)
	}
	return e
}

// Write writes e to NAME.txt (the panes, then the check report as text)
// and NAME.json (the report as `check -o json` prints it), from a Cmd.
func Write(name string, e Export) tea.Cmd {
	return func() tea.Msg {
		files, err := e.WriteFiles(name)
		return wroteMsg{files: files, err: err}
	}
}

// WriteFiles writes NAME.txt and NAME.json. A file is created 0600; an
// existing one is overwritten only when it is a regular file (not a link,
// a FIFO, a device, a directory).
func (e Export) WriteFiles(name string) ([]string, error) {
	var txt, js bytes.Buffer
	txt.WriteString(e.Text)
	if e.Report != nil {
		txt.WriteString("\n")
		if err := report.Text(&txt, e.Report); err != nil {
			return nil, err
		}
		if err := report.JSON(&js, e.Report); err != nil {
			return nil, err
		}
	} else {
		js.WriteString("null\n") // no window finished yet: no report
	}
	var done []string
	for _, f := range []struct {
		path string
		data []byte
	}{{name + ".txt", txt.Bytes()}, {name + ".json", js.Bytes()}} {
		if err := writeRegular(f.path, f.data); err != nil {
			return done, err
		}
		done = append(done, f.path)
	}
	return done, nil
}

// errNotRegular refuses to write over what is not a regular file.
var errNotRegular = errors.New("not a regular file: not overwritten")

// writeRegular writes data to path, created 0600, refusing anything but a
// regular file, by its lstat and then (what was opened may have been
// replaced since) by the opened file's: O_NOFOLLOW refuses a symbolic
// link, O_NONBLOCK keeps a FIFO from holding the open, and nothing is
// truncated before the check.
func writeRegular(path string, data []byte) error {
	// Refused before it is opened: opening a device may act on it, and a
	// FIFO with no reader does not open at all (ENXIO).
	if st, err := os.Lstat(path); err == nil && !st.Mode().IsRegular() {
		if st.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s: a symbolic link, %w", path, errNotRegular)
		}
		return fmt.Errorf("%s: %w", path, errNotRegular)
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0o600)
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%s: a symbolic link, %w", path, errNotRegular)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: %w", path, errNotRegular)
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
