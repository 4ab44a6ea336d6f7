package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// errOutputBlocked is a write that stopped being taken: nobody reads the
// pipe or terminal it goes to (the error names what it accepted).
var errOutputBlocked = errors.New("output blocked: nobody reads it")

// blockedError is a write given up: what of it the reader took, and why.
type blockedError struct {
	name            string // stdout or stderr
	accepted, total int
	why             string
}

func (e *blockedError) Error() string {
	return fmt.Sprintf("output blocked: %s accepted %d of %d bytes, then %s", e.name, e.accepted, e.total, e.why)
}

func (e *blockedError) Unwrap() error { return errOutputBlocked }

// signalGrace is how long a write may still take once a signal ended the
// command: with the rest of the way out, the process ends within 200 ms of
// SIGINT or SIGTERM even when nobody reads its output.
const signalGrace = 50 * time.Millisecond

// writeChunk is the most handed to the reader in one go: progress is seen
// (and a slow reader is told from none) at this grain.
const writeChunk = 16 << 10

// guardedWriter writes to w from its own goroutine, so that a write the
// reader of w does not take cannot hold the command past a signal (ctx) or,
// once the command set a stall bound, past that long with nothing taken:
// the write is then abandoned (it goes on, and the process may end under
// it) and this and every later write fail with errOutputBlocked until it
// ends. A reader that keeps taking bytes, however slowly, gets them all:
// a document is never cut because its reader is slow. main wraps stdout
// and stderr in one.
type guardedWriter struct {
	w     io.Writer
	name  string
	ctx   context.Context
	stall atomic.Int64 // ns a write may go without progress; 0: no bound
	since atomic.Int64 // unix ns the bound was set: progress is counted from then at the earliest
	dmu   sync.Mutex
	moved chan struct{} // closed (and replaced) when the bound is set

	mu    sync.Mutex
	stuck chan struct{} // closed when the abandoned write ends; nil: none
}

func newGuardedWriter(ctx context.Context, name string, w io.Writer) *guardedWriter {
	return &guardedWriter{w: w, name: name, ctx: ctx, moved: make(chan struct{})}
}

// SetStallBound bounds every write from now on, and the one under way: it
// gives up once the reader took nothing for d.
func (g *guardedWriter) SetStallBound(d time.Duration) {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	g.since.Store(time.Now().UnixNano())
	g.stall.Store(int64(d))
	close(g.moved)
	g.moved = make(chan struct{})
}

func (g *guardedWriter) boundMoved() <-chan struct{} {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	return g.moved
}

func (g *guardedWriter) Write(p []byte) (int, error) {
	n, _, err := g.write(p, false)
	return n, err
}

// WriteOwned is Write of a buffer its caller never uses again
// (report.OwningWriter): a write that outlives the call needs no copy.
func (g *guardedWriter) WriteOwned(p []byte) (int, error) {
	n, _, err := g.write(p, true)
	return n, err
}

// WriteLent is Write with no copy of p (lendingWriter): held says the write
// was given up and goes on, reading p; otherwise p is the caller's again.
func (g *guardedWriter) WriteLent(p []byte) (n int, held bool, err error) { return g.write(p, true) }

// write writes p (a copy of it unless owned); held says the write was given
// up and goes on in the background with the buffer.
func (g *guardedWriter) write(p []byte, owned bool) (int, bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stuck != nil {
		select {
		case <-g.stuck:
			g.stuck = nil
		default:
			return 0, false, &blockedError{g.name, 0, len(p), "nothing: an earlier write is still blocked"}
		}
	}
	// The caller may reuse p once Write returns, and the write may outlive
	// the call.
	buf := p
	if !owned {
		buf = bytes.Clone(p)
	}
	done := make(chan struct{})
	var accepted atomic.Int64
	var last atomic.Int64 // unix ns of the last progress
	last.Store(time.Now().UnixNano())
	var err error
	go func() {
		defer close(done)
		for len(buf) > 0 {
			c := buf[:min(len(buf), writeChunk)]
			n, werr := g.w.Write(c)
			accepted.Add(int64(n))
			last.Store(time.Now().UnixNano())
			buf = buf[n:]
			if werr != nil {
				err = werr
				return
			}
		}
	}()
	select {
	case <-done:
		return int(accepted.Load()), false, err
	default:
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var why string
wait:
	for {
		select {
		case <-done:
			return int(accepted.Load()), false, err
		case <-g.boundMoved():
		case <-tick.C:
		case <-g.ctx.Done():
			t := time.NewTimer(signalGrace)
			defer t.Stop()
			select {
			case <-done:
				return int(accepted.Load()), false, err
			case <-t.C:
			}
			why = fmt.Sprintf("nothing more within %d ms of the signal", signalGrace.Milliseconds())
			break wait
		}
		if stall := time.Duration(g.stall.Load()); stall > 0 {
			from := max(last.Load(), g.since.Load())
			if idle := time.Since(time.Unix(0, from)); idle >= stall {
				why = fmt.Sprintf("nothing for %d ms", idle.Milliseconds())
				break wait
			}
		}
	}
	g.stuck = done
	return int(accepted.Load()), true, &blockedError{g.name, int(accepted.Load()), len(p), why}
}

// pipeSignals takes the SIGPIPEs of a verb that changes the host
// (changesHost); nobody reads them.
var pipeSignals = make(chan os.Signal, 1)

// changesHost readies cmd, a verb that changes the host (setup, teardown,
// check --fix, lab up and down), for a reader of its output that goes away
// (`lbdoctor setup … | head -1`): its transaction is finished or rolled
// back, its record saved, and it exits as it would have; what it writes
// after its reader left is lost. A read-only verb dies by SIGPIPE at its
// next write instead, as tcpdump does: it has nothing to leave half-done.
func changesHost(cmd *cobra.Command) {
	// Go ends the process by SIGPIPE at a write to a closed pipe on fd 1
	// or 2 unless SIGPIPE is handled; handled, the write fails with EPIPE.
	signal.Notify(pipeSignals, syscall.SIGPIPE)
	cmd.SetOut(&readerGone{w: cmd.OutOrStdout()})
	cmd.SetErr(&readerGone{w: cmd.ErrOrStderr()})
}

// readerGone writes to w until w's reader is gone (EPIPE), and takes every
// write from then on without writing it: output nobody can read any more
// is no failure of the change it describes.
type readerGone struct {
	w    io.Writer
	gone atomic.Bool
}

func (r *readerGone) Write(p []byte) (int, error) {
	if r.gone.Load() {
		return len(p), nil
	}
	n, err := r.w.Write(p)
	if errors.Is(err, syscall.EPIPE) {
		r.gone.Store(true)
		return len(p), nil
	}
	return n, err
}

// setOutputStall bounds the writes to w, when w is a guardedWriter (the
// process's stdout and stderr; tests may pass plain buffers): from now on a
// write gives up once its reader took nothing for d.
func setOutputStall(w io.Writer, d time.Duration) {
	if g, ok := w.(*guardedWriter); ok {
		g.SetStallBound(d)
	}
}

// lineQueue hands a stream of lines (one Write each, e.g. a drop event) to
// its own writer goroutine, which writes them to w in batches every period:
// one write per period, not per line, and a writer that blocks never holds
// whoever adds lines. What does not fit in the bounded buffer while w blocks
// is not written, and counted.
type lineQueue struct {
	w       io.Writer
	max     int // bytes the buffer holds
	closing chan struct{}
	done    chan struct{}

	mu              sync.Mutex
	pending, spare  []byte
	lines, inflight uint64 // lines in pending, and in the write under way
	notWritten      uint64 // refused (buffer full) or whose write failed
	err             error  // the first failed write
}

// A lendingWriter writes p with no copy of its own, and says whether it
// still reads p once it returned (a write given up that goes on): p is its
// caller's again only when it does not.
type lendingWriter interface {
	WriteLent(p []byte) (n int, held bool, err error)
}

// lineQueueRoom is the room each of a lineQueue's two buffers starts with:
// a flood's 50 ms of event lines (thousands of lines, hundreds of KiB) fit
// without growing it copy by copy. Untouched room costs no memory.
const lineQueueRoom = 1 << 20

func newLineQueue(w io.Writer, period time.Duration, maxBytes int) *lineQueue {
	room := min(maxBytes, lineQueueRoom)
	q := &lineQueue{w: w, max: maxBytes, closing: make(chan struct{}), done: make(chan struct{}),
		pending: make([]byte, 0, room), spare: make([]byte, 0, room)}
	go q.run(period)
	return q
}

// Write queues p as one line; it never blocks and never fails: a line the
// buffer has no room for is counted as not written.
func (q *lineQueue) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending)+len(p) > q.max {
		q.notWritten++
		return len(p), nil
	}
	q.pending = append(q.pending, p...)
	q.lines++
	return len(p), nil
}

func (q *lineQueue) run(period time.Duration) {
	defer close(q.done)
	t := time.NewTicker(period)
	defer t.Stop()
	closing := false
	for {
		if !closing {
			select {
			case <-t.C:
			case <-q.closing:
				closing = true
			}
		}
		q.mu.Lock()
		buf, n := q.pending, q.lines
		if len(buf) > 0 {
			// The spare buffer fills while this one is written: it is
			// no one's spare until its write is over. (An empty one stays
			// where it is: handed round, it would be both.)
			q.pending, q.spare, q.lines, q.inflight = q.spare[:0], nil, 0, n
		}
		q.mu.Unlock()
		if len(buf) == 0 {
			if closing {
				return
			}
			continue
		}
		// The buffers take turns; one is written while the other fills, with
		// no copy made of it unless a write given up still reads it.
		var err error
		held := false
		if lw, ok := q.w.(lendingWriter); ok {
			_, held, err = lw.WriteLent(buf)
		} else {
			_, err = q.w.Write(buf)
		}
		if held {
			buf = nil
		}
		q.mu.Lock()
		if err != nil {
			q.notWritten += n
			if q.err == nil {
				q.err = err
			}
		}
		q.inflight, q.spare = 0, buf[:0]
		q.mu.Unlock()
	}
}

// Close writes what is queued and returns how many lines were not written
// (refused while the output blocked, or whose write failed) and the first
// write error. It waits for the writer as long as its output takes the
// lines: w must bound its writes (a guardedWriter with a stall bound gives
// up once nothing is taken, and soon after a signal).
func (q *lineQueue) Close() (notWritten uint64, err error) {
	close(q.closing)
	<-q.done
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.notWritten + q.lines + q.inflight
	// Whatever the writer does from now on is not counted again.
	q.notWritten, q.lines, q.inflight = n, 0, 0
	q.pending = q.pending[:0]
	if n > 0 && q.err == nil {
		q.err = errOutputBlocked
	}
	return n, q.err
}
