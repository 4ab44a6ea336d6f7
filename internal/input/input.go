// Package input reads the files a user gives lbdoctor (setup -f,
// --from-ipvsadm, --from-keepalived): regular files up to MaxSize, or
// standard input when the name is "-". Anything else — a FIFO, a device
// such as /dev/zero, a directory, a socket — is refused before a byte is
// read, so a wrong path can neither block lbdoctor nor make it read forever.
// Errors are one line in the user's terms, and Quote cuts the values they
// echo.
package input

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"syscall"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// MaxSize is the most lbdoctor reads from one input file: a spec of
// thousands of services fits in a fraction of it, and it bounds the memory
// a parse may take.
const MaxSize = 1 << 20

// Stdin is the name that reads standard input; it must be given explicitly.
const Stdin = "-"

// Error is why an input could not be read, as one line: "NAME: why".
type Error struct {
	Name string // the path, or "stdin"
	Msg  string
}

func (e *Error) Error() string { return e.Name + ": " + e.Msg }

// Name is how messages name an input: the path, or "stdin" for "-".
func Name(path string) string {
	if path == Stdin {
		return "stdin"
	}
	return path
}

// Read returns the contents of path, or of stdin when path is "-". A read
// of stdin ends when ctx does (Ctrl-C), even if stdin never does.
func Read(ctx context.Context, path string, stdin io.Reader) ([]byte, error) {
	if path == Stdin {
		return readStdin(ctx, stdin)
	}
	if path == "" {
		return nil, &Error{Name: `""`, Msg: "no file named: give a path, or - for standard input"}
	}
	// O_NONBLOCK: opening a FIFO without a writer would otherwise wait
	// forever, before fstat could tell what it is.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, openError(path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &Error{Name: path, Msg: "cannot stat: " + errnoText(err)}
	}
	if kind := FileKind(st.Mode); kind != "" {
		return nil, &Error{Name: path, Msg: "is " + kind + ", not a regular file: lbdoctor reads regular files only (or - for standard input)"}
	}
	if st.Size > MaxSize {
		return nil, tooBig(path, st.Size)
	}
	// The file can grow after fstat: read at most one byte past the cap
	// and refuse when that byte comes.
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, &Error{Name: path, Msg: "cannot read: " + errnoText(err)}
	}
	if len(data) > MaxSize {
		return nil, tooBig(path, -1)
	}
	return data, nil
}

func readStdin(ctx context.Context, stdin io.Reader) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	// A blocked read cannot be cancelled portably; the reader goroutine is
	// left behind when ctx ends first, and the command exits.
	go func() {
		data, err := io.ReadAll(io.LimitReader(stdin, MaxSize+1))
		done <- result{data, err}
	}()
	select {
	case <-ctx.Done():
		return nil, &Error{Name: "stdin", Msg: "interrupted before standard input ended; nothing was read"}
	case r := <-done:
		if r.err != nil {
			return nil, &Error{Name: "stdin", Msg: "cannot read: " + errnoText(r.err)}
		}
		if len(r.data) > MaxSize {
			return nil, tooBig("stdin", -1)
		}
		return r.data, nil
	}
}

func tooBig(name string, size int64) error {
	have := "is larger than"
	if size >= 0 {
		have = "is " + humanSize(size) + ", more than"
	}
	return &Error{Name: name, Msg: have + " the " + humanSize(MaxSize) + " lbdoctor reads from one input file"}
}

// FileKind names a file type other than regular (a mode from stat(2)), ""
// for a regular file: what lbdoctor says when it refuses a file.
func FileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return ""
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO (named pipe)"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return "not a regular file"
}

// openError words a failed open; a socket (which open refuses with ENXIO)
// is named by what it is.
func openError(path string, err error) error {
	var st unix.Stat_t
	if errors.Is(err, unix.ENXIO) && unix.Stat(path, &st) == nil {
		if kind := FileKind(st.Mode); kind != "" {
			return &Error{Name: path, Msg: "is " + kind + ", not a regular file: lbdoctor reads regular files only (or - for standard input)"}
		}
	}
	return &Error{Name: path, Msg: errnoText(err)}
}

// errnoText is the system's words for err without Go's wrapping
// ("open x: " and the like).
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// MaxValue is how many characters of a user's value a message echoes.
const MaxValue = 40

// Quote quotes a value from the user's input for a message, cut to
// MaxValue characters with "…", so a 5 MB value is not echoed whole.
func Quote(s string) string {
	return strconv.Quote(Cut(s))
}

// Cut shortens s to MaxValue characters, ending in "…" when cut.
func Cut(s string) string {
	if utf8.RuneCountInString(s) <= MaxValue {
		return s
	}
	n := 0
	for i := range s {
		if n == MaxValue-1 {
			return s[:i] + "…"
		}
		n++
	}
	return s
}

// BinaryText says why b is not text, "" when it is: the first control
// character (other than tab, carriage return and newline; a NUL byte above
// all) or byte that is not UTF-8. Every input format refuses the same
// bytes, so a binary file, or text with a NUL in it, is named instead of
// being half read.
func BinaryText(b []byte) string {
	_, why := BinaryLine(b)
	return why
}

// BinaryLine is BinaryText for a whole file: the line (from 1) of the first
// byte that is not text, and why; 0 and "" when the file is text.
func BinaryLine(data []byte) (int, string) {
	line := 1
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			return line, fmt.Sprintf("binary content (byte 0x%02x is not UTF-8): want a text file", data[i])
		case r == '\n':
			line++
		case r == 0:
			return line, "binary content (a NUL byte): want a text file"
		case r < 0x20 && r != '\t' && r != '\r', r == 0x7f:
			return line, fmt.Sprintf("binary content (control character 0x%02x): want a text file", r)
		}
		i += n
	}
	return 0, ""
}
