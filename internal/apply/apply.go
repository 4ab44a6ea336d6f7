// Package apply changes a host transactionally: a plan of steps, each of
// which knows whether it is needed, how to do it and how to undo it; a
// failure at any step undoes every step already done; what was done is
// recorded so that a teardown removes only what lbdoctor made.
package apply

import (
	"context"
	"errors"
	"fmt"
)

// Step is one change to the host.
type Step interface {
	// Describe is the change as the command an operator would type.
	Describe() string
	// Needed reports whether the host lacks this change (false: already there).
	Needed(ctx context.Context) (bool, error)
	// Apply makes the change.
	Apply(ctx context.Context) error
	// Undo reverses Apply.
	Undo(ctx context.Context) error
	// Owned is what the state file remembers of it for teardown; nil for
	// steps that remove things.
	Owned() *Object
}

// Plan is the steps a run would take, in order: only the needed ones.
type Plan struct {
	Steps []Step
	Left  []string // what steps found no longer lbdoctor's, and leave
}

// Leaver is a step that may find its object is no longer what lbdoctor made
// (Needed false): Left says what it leaves and why.
type Leaver interface{ Left() string }

// Build keeps the steps that are needed.
func Build(ctx context.Context, steps []Step) (*Plan, error) {
	p := &Plan{}
	for _, s := range steps {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		need, err := s.Needed(ctx)
		if err != nil {
			return nil, fmt.Errorf("check %q: %w", s.Describe(), err)
		}
		if need {
			p.Steps = append(p.Steps, s)
		} else if l, ok := s.(Leaver); ok && l.Left() != "" {
			p.Left = append(p.Left, l.Left())
		}
	}
	return p, nil
}

// Empty reports whether nothing would change.
func (p *Plan) Empty() bool { return len(p.Steps) == 0 }

// Commands lists the plan as commands.
func (p *Plan) Commands() []string {
	out := make([]string, 0, len(p.Steps))
	for _, s := range p.Steps {
		out = append(out, s.Describe())
	}
	return out
}

// Hooks let tests inject a failure after a given step (1-based).
type Hooks struct {
	AfterStep func(n int) error
}

// ErrRolledBack wraps the failure of a run whose changes were all undone.
var ErrRolledBack = errors.New("rolled back")

// Run applies the plan. On the first failure — or when ctx ends (Ctrl-C)
// before the last step — it undoes the steps already applied, newest first,
// and returns an error wrapping ErrRolledBack and the cause (or, if an undo
// failed too, naming what is left behind). A step under way is finished
// first, so that it can be undone whole; the undo is not cancelled.
func Run(ctx context.Context, p *Plan, h Hooks) ([]Step, error) {
	var done []Step
	for i, s := range p.Steps {
		var err error
		interrupted := ctx.Err() != nil
		if interrupted {
			err = context.Cause(ctx)
		} else {
			err = s.Apply(context.WithoutCancel(ctx))
		}
		if err == nil {
			done = append(done, s)
			if h.AfterStep != nil {
				err = h.AfterStep(i + 1)
			}
		}
		if err != nil {
			var undoErrs []error
			for j := len(done) - 1; j >= 0; j-- {
				if uerr := done[j].Undo(context.WithoutCancel(ctx)); uerr != nil {
					undoErrs = append(undoErrs, fmt.Errorf("undo %q: %w", done[j].Describe(), uerr))
				}
			}
			if interrupted && len(undoErrs) == 0 {
				return nil, fmt.Errorf("%w before step %d %q, %d earlier step(s) undone: %w", err, i+1, s.Describe(), len(done), ErrRolledBack)
			}
			if len(undoErrs) > 0 {
				return nil, fmt.Errorf("step %d %q failed: %w; and the rollback left changes behind: %w", i+1, s.Describe(), err, errors.Join(undoErrs...))
			}
			return nil, fmt.Errorf("step %d %q failed, %d earlier step(s) undone: %w: %w", i+1, s.Describe(), len(done), ErrRolledBack, err)
		}
	}
	return done, nil
}
