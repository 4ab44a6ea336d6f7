package window

import (
	"time"

	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// SetTracerPreparation replaces how the window prepares its drop tracer
// and how long it waits for it to attach, until the returned func undoes it.
func SetTracerPreparation(prepare func() (*drops.Prepared, error), budget time.Duration) (undo func()) {
	oldPrepare, oldBudget := prepareTracer, tracerLoadBudget
	prepareTracer, tracerLoadBudget = prepare, budget
	return func() { prepareTracer, tracerLoadBudget = oldPrepare, oldBudget }
}

// FailTracer drops w's tracer as a failed read would: the next window
// loads one again.
func FailTracer(w *Watcher, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failTracer(why, nil)
}
