package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

var closingRE = regexp.MustCompile(`(?m)^(\d+) drops matched in [^:]+: (\d+) reported, (\d+) lost`)

// A stdout nobody reads holds neither a drops window nor a signal: during a
// flood whose lines fill the pipe, the window still ends on time and SIGINT
// still ends the process within 200 ms; the lines that could not be
// written are counted and said on stderr, and matched = reported + lost
// still holds.
func TestDropsStdoutBlocked(t *testing.T) {
	p := testkit.NewDropPair(t)
	ports := testkit.Ports(20000, 5000) // 5,000 lines: far more than a pipe holds
	const window = 3 * time.Second
	for _, tc := range []struct {
		name      string
		args      []string
		startLine string
		signal    bool // SIGINT once the flood is over (stdout long blocked)
		code      int  // lost event lines are counted (0); a summary not written whole fails (4)
		want      []string
	}{
		{"window ends", nil, "tracing drops", false, exitOK, []string{"drops reported were not written: the output blocked"}},
		{"sigint", nil, "tracing drops", true, exitOK, []string{"drops reported were not written: the output blocked", "! cut short (interrupted by SIGINT)"}},
		{"json window ends", []string{"-o", "json"}, "", false, exitFailed, []string{"lbdoctor: the JSON summary was not written whole: output blocked: stdout accepted 0 of ", "drops reported were not written: the output blocked"}},
		{"json sigint", []string{"-o", "json"}, "", true, exitFailed, []string{"lbdoctor: the JSON summary was not written whole: output blocked: stdout accepted 0 of ", "drops reported were not written: the output blocked"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close() // never read
			args := append([]string{"drops", "--netns", p.B.Name, "--host", p.AddrA.String(), "--duration", window.String()}, tc.args...)
			lp := startLbdoctorTo(t, "", w, tc.startLine, args...)
			w.Close()
			start := lp.waitStart(t)
			p.Flood(t, ports, time.Second)
			var limit time.Duration
			from := start
			if tc.signal {
				time.Sleep(200 * time.Millisecond)
				from = time.Now()
				lp.cmd.Process.Signal(syscall.SIGINT)
				limit = 200 * time.Millisecond
			} else {
				limit = window + 300*time.Millisecond
				if tc.startLine == "" {
					// Started from the program's loading, before it is
					// attached and the tables read: up to ~0.5 s earlier.
					limit += time.Second
				}
			}
			lp.wait(t, window+10*time.Second)
			took := lp.ended.Sub(from)
			errText := lp.errText()
			ok := lp.code == tc.code && took <= limit
			for _, want := range tc.want {
				ok = ok && strings.Contains(errText, want)
			}
			if !ok {
				t.Errorf("lbdoctor %v, stdout never read = exit %d after %s:\n%.3000s\nwant exit %d within %s, with %q", args, lp.code, took, errText, tc.code, limit, tc.want)
			}
			if m := closingRE.FindStringSubmatch(errText); tc.startLine != "" {
				if m == nil {
					t.Fatalf("lbdoctor %v said no closing line:\n%s", args, errText)
				}
				matched, _ := strconv.Atoi(m[1])
				reported, _ := strconv.Atoi(m[2])
				lost, _ := strconv.Atoi(m[3])
				if matched != reported+lost || matched == 0 {
					t.Errorf("lbdoctor %v: %d matched, %d reported, %d lost; want matched = reported + lost > 0", args, matched, reported, lost)
				}
			}
			t.Logf("ended %s after the %s", took.Round(time.Millisecond), map[bool]string{true: "signal", false: "window opened"}[tc.signal])
		})
	}
}

// fullPipe returns a pipe whose buffer is already full: the first write to
// w blocks until someone reads r (nobody does).
func fullPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	fd := int(w.Fd())
	unix.SetNonblock(fd, true)
	chunk := make([]byte, 4096)
	for {
		if _, err := unix.Write(fd, chunk); err != nil {
			break // EAGAIN: full
		}
	}
	unix.SetNonblock(fd, false) // the child shares the file description
	return r, w
}

// Every verb ends within 200 ms of SIGINT or SIGTERM even while it is
// blocked writing its result to a stdout nobody reads, and says why its
// output is missing.
func TestSignalEndsBlockedWrite(t *testing.T) {
	ns := testkit.Netns(t, "blk")
	for _, tc := range []struct {
		name string
		args []string
		sig  syscall.Signal
	}{
		{"check", []string{"check", "--watch", "0", "--netns", ns.Name}, syscall.SIGINT},
		{"check json", []string{"check", "--watch", "0", "--netns", ns.Name, "-o", "json"}, syscall.SIGTERM},
		{"inspect", []string{"inspect", "--netns", ns.Name}, syscall.SIGINT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, w := fullPipe(t)
			lp := startLbdoctorTo(t, "", w, "exec", tc.args...)
			w.Close()
			lp.waitStart(t)
			// Long enough for the verb to be blocked in its final write.
			time.Sleep(3 * time.Second)
			select {
			case <-lp.done:
				t.Fatalf("lbdoctor %v ended (exit %d) with its stdout full and never read:\n%s", tc.args, lp.code, lp.errText())
			default:
			}
			sent := time.Now()
			lp.cmd.Process.Signal(tc.sig)
			lp.wait(t, 10*time.Second)
			took := lp.ended.Sub(sent)
			if took > 200*time.Millisecond || !strings.Contains(lp.errText(), "output blocked") {
				t.Errorf("lbdoctor %v, blocked on stdout, %s = exit %d after %s:\n%s\nwant an end within 200ms saying the output blocked", tc.args, tc.sig, lp.code, took, lp.errText())
			}
		})
	}
	// drops does not wait for a signal: its window's end bounds the writes.
	t.Run("drops summary", func(t *testing.T) {
		_, w := fullPipe(t)
		args := []string{"drops", "--netns", ns.Name, "--summary", "--duration", "300ms"}
		lp := startLbdoctorTo(t, "", w, "tracing drops", args...)
		w.Close()
		start := lp.waitStart(t)
		lp.wait(t, 10*time.Second)
		took := lp.ended.Sub(start)
		wantRE := regexp.MustCompile(`lbdoctor: the summary table was not written whole: output blocked: stdout accepted 0 of \d+ bytes, then nothing for 1\d\d ms`)
		if lp.code != exitFailed || took > 600*time.Millisecond || !wantRE.MatchString(lp.errText()) {
			t.Errorf("lbdoctor %v, stdout full = exit %d %s after its window opened:\n%s\nwant exit 4 within 600ms, with %q", args, lp.code, took, lp.errText(), wantRE)
		}
	})
}

// slowReader reads r as a slow consumer does (64 KB every 20 ms) until EOF,
// and hands back everything it read.
func slowReader(r *os.File) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		var all []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		got <- all
	}()
	return got
}

// A reader that is slow but reads gets the whole of what drops writes
// after its window, however long it takes: the --summary document of a
// flood (thousands of rows, megabytes) arrives whole and parses, exit 0;
// so do all the event lines queued when the window ends. Only a reader that
// takes nothing for the stall bound is given up on.
func TestDropsSlowReaderGetsAll(t *testing.T) {
	p := testkit.NewDropPair(t)
	for _, tc := range []struct {
		name  string
		args  []string
		flows int // lines: what the window's 8 MB queue holds, so none is refused
		// late: reading starts once the flood is over, so megabytes of
		// lines are still queued when the window ends.
		late bool
	}{
		{"json summary", []string{"--summary", "-o", "json"}, 30000, false},
		{"json lines", []string{"-o", "json"}, 12000, true},
	} {
		ports := testkit.Ports(20000, tc.flows)
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			args := append([]string{"drops", "--netns", p.B.Name, "--host", p.AddrA.String(), "--duration", "2s"}, tc.args...)
			lp := startLbdoctorTo(t, "", w, "", args...)
			w.Close()
			start := lp.waitStart(t)
			var got <-chan []byte
			if !tc.late {
				got = slowReader(r)
			}
			p.Flood(t, ports, time.Second)
			if tc.late {
				got = slowReader(r)
			}
			lp.wait(t, 60*time.Second)
			out := <-got
			errText := lp.errText()
			if lp.code != exitOK || strings.Contains(errText, "not written") {
				t.Fatalf("lbdoctor %v, read 64 KB every 20 ms = exit %d, %d bytes read:\n%.3000s\nwant exit 0, all written", args, lp.code, len(out), errText)
			}
			var rows int
			if tc.args[0] == "--summary" {
				var s report.DropsSummary
				if err := json.Unmarshal(out, &s); err != nil {
					t.Fatalf("lbdoctor %v, read 64 KB every 20 ms: %d bytes that do not parse (%v), ending %q", args, len(out), err, out[max(0, len(out)-200):])
				}
				rows = len(s.Aggregates)
			} else {
				lines := bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n"))
				for i, l := range lines {
					if !json.Valid(l) {
						t.Fatalf("lbdoctor %v: line %d of %d is not JSON: %.200q", args, i+1, len(lines), l)
					}
				}
				var s report.DropsSummary
				if err := json.Unmarshal(lines[len(lines)-1], &s); err != nil || s.Type != "summary" {
					t.Fatalf("lbdoctor %v: last line is no summary (%v): %.300q", args, err, lines[len(lines)-1])
				}
				if rows = len(lines) - 1; uint64(rows) != s.Delivered || s.NotWritten != 0 {
					t.Errorf("lbdoctor %v: %d event lines, summary says %d delivered, %d not written; want all delivered written", args, rows, s.Delivered, s.NotWritten)
				}
			}
			if rows < 2000 {
				t.Errorf("lbdoctor %v: %d rows in %d bytes; want thousands (the flood sent %d flows)", args, rows, len(out), len(ports))
			}
			t.Logf("%d rows, %d bytes, read whole; ended %s after the window", rows, len(out), lp.ended.Sub(start).Round(time.Millisecond))
		})
	}
}

// A guardedWriter with a stall bound hands a slow reader the whole of a
// write many pipe buffers long, and gives up on a reader that takes
// nothing, saying what it took, within the bound (and a tick).
func TestGuardedWriterStall(t *testing.T) {
	doc := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for _, tc := range []struct {
		name string
		read bool
		want string // the error; "": none
	}{
		{"slow reader", true, ""},
		{"never read", false, "output blocked: stdout accepted 0 of 1048576 bytes, then nothing for 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r, w *os.File
			var got <-chan []byte
			if tc.read {
				var err error
				if r, w, err = os.Pipe(); err != nil {
					t.Fatal(err)
				}
				got = slowReader(r)
			} else {
				_, w = fullPipe(t) // nothing more is taken
			}
			defer w.Close()
			g := newGuardedWriter(t.Context(), "stdout", w)
			g.SetStallBound(stallBound)
			start := time.Now()
			n, err := g.Write(doc)
			took := time.Since(start)
			if tc.want == "" {
				w.Close()
				if b := <-got; err != nil || n != len(doc) || !bytes.Equal(b, doc) {
					t.Errorf("Write(1 MiB) to a reader of 64 KB every 20 ms = %d, %v, %d bytes read; want all %d written and read", n, err, len(b), len(doc))
				}
				return
			}
			if err == nil || !errors.Is(err, errOutputBlocked) || !strings.HasPrefix(err.Error(), tc.want) || took > stallBound+50*time.Millisecond {
				t.Errorf("Write(1 MiB) to a full pipe = %d, %v after %s; want %q… within %s", n, err, took, tc.want, stallBound+50*time.Millisecond)
			}
		})
	}
}

// A batch of lines whose write was given up (nobody read stdout for the
// stall bound) is still being written when the reader comes back: the
// lines queued after it must not be written into its buffer, or the reader
// would get them in its place.
func TestLineQueueKeepsAGivenUpBatch(t *testing.T) {
	r, w := fullPipe(t)
	defer w.Close()
	g := newGuardedWriter(t.Context(), "stdout", w)
	g.SetStallBound(30 * time.Millisecond)
	q := newLineQueue(g, 10*time.Millisecond, 1<<20)
	first := bytes.Repeat([]byte(strings.Repeat("a", 99)+"\n"), 100)
	later := []byte(strings.Repeat("b", 99) + "\n")
	for l := range bytes.Lines(first) {
		q.Write(l)
	}
	time.Sleep(100 * time.Millisecond) // the first batch's write is given up
	for range 200 {
		q.Write(later)
	}
	time.Sleep(50 * time.Millisecond) // … and the later lines are taken
	notWritten, err := q.Close()
	// The reader comes back: the given-up write goes on.
	var got []byte
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(2 * time.Second)
	for len(got) < len(first) && time.Now().Before(deadline) {
		r.SetReadDeadline(deadline)
		n, rerr := r.Read(buf)
		got = append(got, bytes.TrimLeft(buf[:n], "\x00")...) // fullPipe's filler is zeros
		if rerr != nil {
			break
		}
	}
	if !bytes.Equal(got, first) || notWritten != 100+200 || !errors.Is(err, errOutputBlocked) {
		t.Errorf("lineQueue given up on, then read = %d bytes (%q…), %d not written, %v; want the first batch's %d bytes as queued, 300 not written, errOutputBlocked",
			len(got), got[:min(len(got), 120)], notWritten, err, len(first))
	}
}

// slowLender is a lendingWriter that takes its time over each write and
// notes whether the buffer it was lent changed meanwhile.
type slowLender struct {
	took    time.Duration
	mu      sync.Mutex
	got     []byte
	changed int
}

func (s *slowLender) Write(p []byte) (int, error) { n, _, err := s.WriteLent(p); return n, err }

func (s *slowLender) WriteLent(p []byte) (int, bool, error) {
	before := bytes.Clone(p)
	time.Sleep(s.took)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !bytes.Equal(p, before) {
		s.changed++
	}
	s.got = append(s.got, before...)
	return len(p), false, nil
}

// The buffer a batch of lines is written from is never the one the next
// lines are queued in, also after a period with no line (the buffers are
// handed round only when there is something to write).
func TestLineQueueWritesWhatWasQueued(t *testing.T) {
	w := &slowLender{took: 20 * time.Millisecond}
	q := newLineQueue(w, 5*time.Millisecond, 1<<20)
	var want []byte
	line := func(i int) {
		l := fmt.Appendf(nil, "line %d\n", i)
		q.Write(l)
		want = append(want, l...)
	}
	i := 0
	for range 3 {
		line(i) // written alone…
		i++
		time.Sleep(50 * time.Millisecond) // … then periods with nothing to write
		for end := time.Now().Add(60 * time.Millisecond); time.Now().Before(end); i++ {
			line(i) // lines queued while a batch is written
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}
	notWritten, err := q.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changed != 0 || !bytes.Equal(w.got, want) || notWritten != 0 || err != nil {
		t.Errorf("lineQueue of %d lines through a writer that takes 20 ms a batch: %d batches changed while written, %d of %d bytes as queued, %d not written, %v; want none changed, all as queued",
			i, w.changed, commonPrefix(w.got, want), len(want), notWritten, err)
	}
}

// commonPrefix is how many bytes a and b begin with alike.
func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
