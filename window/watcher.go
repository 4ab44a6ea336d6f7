package window

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// Watcher runs windows one after another over one namespace and selector,
// and keeps what is costly between them: the drop tracer (BTF, kallsyms,
// the program through the verifier, its maps and its link) is loaded once,
// with the first window that traces, and stays attached until Close. Each
// window's drops are what the tracer counted since the previous window's
// end (the first: since it attached) — a delta of the kernel's running
// counts, so no drop is counted in two windows and none between two
// windows is left out (drops.Tracer.WatchFrom says the one exception,
// while the flow map is full); its lost and missed counts are the
// window's too.
// The tracer's filter (namespace, addresses, ports) is set in place from
// each window's first read, so a service added between windows is traced
// in the next. A tracer that failed (a load that did not finish, a map
// read that failed, a namespace replaced) is loaded again by the next
// window, which says so in Snapshot.Errors and Window.Skipped.
//
// The TUI and the exporter run one Watcher each; Run is one window of a
// fresh Watcher. A Watcher runs one window at a time: Next waits for a
// running one.
type Watcher struct {
	mu  sync.Mutex // one window at a time; guards what follows
	ns  netns.Target
	sel probes.Selector
	opt Options
	tr  *keptTracer // nil: not loaded (or dropped after a failure)
	// loads counts the tracer's loads (tests: one across windows).
	loads int
	// failed says why the last tracer was dropped, until one is loaded
	// again (the window that does says so).
	failed string
	closed bool
	// single is set by Run: the watcher's one window stops its tracer and
	// reads it whole, detaching it while the last read runs.
	single bool
}

// keptTracer is the drop tracer a watcher keeps across windows, and what
// it had counted at the last window's read.
type keptTracer struct {
	dt   *probes.DropTrace
	base *drops.Baseline
}

// dropTracer detaches and unloads the kept tracer, if any.
func (w *Watcher) dropTracer() error {
	if w.tr == nil {
		return nil
	}
	err := w.tr.dt.Tracer().Close()
	w.tr = nil
	return err
}

// failTracer drops the kept tracer for why: the next window loads one
// again. busy, when not nil, is a read of it still under way: it is closed
// once that read is done.
func (w *Watcher) failTracer(why string, busy <-chan tracedResult) {
	w.failed = why
	if busy == nil || w.tr == nil {
		w.dropTracer()
		return
	}
	kt := w.tr
	w.tr = nil
	go func() {
		<-busy
		kt.dt.Tracer().Close()
	}()
}

// follow sees that a named namespace was replaced (deleted and made again
// under its name: a new inode) and watches the new one from this window
// on; the tracer's filter follows with the window's first read. It says
// so ("" when nothing changed).
func (w *Watcher) follow() string {
	if w.ns.Spec == "" {
		return ""
	}
	t, err := netns.Resolve(w.ns.Spec)
	if err != nil || t.Inode == w.ns.Inode {
		return "" // gone: the window's reads say so
	}
	was := w.ns.Inode
	w.ns = t
	return fmt.Sprintf("%s was replaced (inode %d, now %d): this window watches the new one", t, was, t.Inode)
}

// NewWatcher returns a watcher of ns for the services sel selects, with
// opt's layers (opt.Length is ignored: each Next says its own). Nothing is
// read or loaded before the first Next.
func NewWatcher(ns netns.Target, sel probes.Selector, opt Options) *Watcher {
	return &Watcher{ns: ns, sel: sel, opt: opt}
}

// ErrClosed is returned by Next once the watcher is closed.
var ErrClosed = errors.New("window watcher is closed")

// Next runs one window of length (0: one read, nothing watched, as Run
// with Options.Length 0) and returns its snapshot, as Run does: cut short
// by ctx after the first read, what was measured with Window.CutShort set;
// before, ErrInterrupted. The drop tracer stays attached after it returns.
func (w *Watcher) Next(ctx context.Context, length time.Duration) (*probes.Snapshot, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, ErrClosed
	}
	opt := w.opt
	opt.Length = length
	return w.next(ctx, opt)
}

// Loads is how many times the watcher loaded the drop tracer: 1 over any
// number of windows unless one failed (a reload).
func (w *Watcher) Loads() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.loads
}

// Close detaches and unloads the drop tracer; a running Next is waited for
// (cut it short with its ctx). It is safe to call more than once.
func (w *Watcher) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return w.dropTracer()
}
