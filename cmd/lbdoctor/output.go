package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// errOutputBlocked is a write that did not end in the time left to it:
// nobody reads the pipe or terminal it goes to.
var errOutputBlocked = errors.New("output blocked: nobody reads it")

// signalGrace is how long a write may still take once a signal ended the
// command: with the rest of the way out, the process ends within 200 ms of
// SIGINT or SIGTERM even when nobody reads its output.
const signalGrace = 50 * time.Millisecond

// guardedWriter writes to w from its own goroutine, so that a write the
// reader of w does not take cannot hold the command past a signal (ctx) or
// past a deadline the command set: the write is then abandoned (it goes on,
// and the process may end under it) and this and every later write fail
// with errOutputBlocked until it ends. main wraps stdout and stderr in one.
type guardedWriter struct {
	w        io.Writer
	ctx      context.Context
	deadline atomic.Int64 // unix ns after which a write gives up (after signalGrace at least); 0: none
	dmu      sync.Mutex
	moved    chan struct{} // closed (and replaced) when the deadline is set

	mu    sync.Mutex
	stuck chan struct{} // closed when the abandoned write ends; nil: none
}

func newGuardedWriter(ctx context.Context, w io.Writer) *guardedWriter {
	return &guardedWriter{w: w, ctx: ctx, moved: make(chan struct{})}
}

// SetDeadline bounds every write from now on: one still waiting at t gives
// up (each write is given signalGrace at least).
// A write under way when it is set is bound by it too.
func (g *guardedWriter) SetDeadline(t time.Time) {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	g.deadline.Store(t.UnixNano())
	close(g.moved)
	g.moved = make(chan struct{})
}

func (g *guardedWriter) deadlineMoved() <-chan struct{} {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	return g.moved
}

func (g *guardedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stuck != nil {
		select {
		case <-g.stuck:
			g.stuck = nil
		default:
			return 0, errOutputBlocked
		}
	}
	// The caller may reuse p once Write returns, and the write may outlive
	// the call.
	buf := bytes.Clone(p)
	done := make(chan struct{})
	var n int
	var err error
	go func() {
		n, err = g.w.Write(buf)
		close(done)
	}()
	select {
	case <-done:
		return n, err
	default:
	}
	for {
		moved := g.deadlineMoved()
		var deadline <-chan time.Time
		if d := g.deadline.Load(); d != 0 {
			t := time.NewTimer(max(time.Until(time.Unix(0, d)), signalGrace))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-done:
			return n, err
		case <-moved:
			continue
		case <-deadline:
		case <-g.ctx.Done():
			t := time.NewTimer(signalGrace)
			defer t.Stop()
			select {
			case <-done:
				return n, err
			case <-t.C:
			}
		}
		break
	}
	g.stuck = done
	return 0, errOutputBlocked
}

// setOutputDeadline bounds the writes to w, when w is a guardedWriter (the
// process's stdout and stderr; tests may pass plain buffers).
func setOutputDeadline(w io.Writer, t time.Time) {
	if g, ok := w.(*guardedWriter); ok {
		g.SetDeadline(t)
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

func newLineQueue(w io.Writer, period time.Duration, maxBytes int) *lineQueue {
	q := &lineQueue{w: w, max: maxBytes, closing: make(chan struct{}), done: make(chan struct{})}
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
		q.pending, q.lines, q.inflight = q.spare[:0], 0, n
		q.mu.Unlock()
		if len(buf) == 0 {
			if closing {
				return
			}
			continue
		}
		_, err := q.w.Write(buf)
		q.mu.Lock()
		if err != nil {
			q.notWritten += n
			if q.err == nil {
				q.err = err
			}
		}
		q.inflight, q.spare = 0, buf
		q.mu.Unlock()
	}
}

// Close writes what is queued, waiting at most bound, and returns how many
// lines were not written (refused while the output blocked, or still queued
// or being written when the bound passed) and the first write error.
func (q *lineQueue) Close(bound time.Duration) (notWritten uint64, err error) {
	close(q.closing)
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C:
	}
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
