// Command lbdoctor sets up and diagnoses Linux IPVS NAT load balancers.
// This package only wires: flags → config → run → exit code.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
	"github.com/lbdoctor/lbdoctor/window"
)

// Exit codes shared by every command: one mapping, in run, documented in the
// README and the root help.
const (
	exitOK       = 0 // success, no failing finding
	exitFindings = 1 // at least one failing finding
	exitUsage    = 2 // bad usage or bad input
	exitCannot   = 3 // cannot inspect: a named missing privilege or kernel feature
	exitFailed   = 4 // an operation failed for another reason (named on stderr)
	// exitInterrupted: SIGINT or SIGTERM ended the command before it had
	// measured anything (or, for a command that changes the host, before it
	// finished: every change was undone). 128 + SIGINT, as shells report it.
	exitInterrupted = 130
)

func main() {
	// The first SIGINT or SIGTERM cancels the command's context with the
	// signal as its cause; later ones are caught too, so a second Ctrl-C
	// cannot kill a rollback half-way.
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		cancel(&interruptedError{sig: sig.(syscall.Signal)})
	}()
	stop := startProfile(os.Stderr)
	// A write nobody reads must not hold a signal: see guardedWriter.
	code := run(ctx, os.Args[1:], newGuardedWriter(ctx, "stdout", os.Stdout), newGuardedWriter(ctx, "stderr", os.Stderr))
	stop()
	os.Exit(code)
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if p := recover(); p != nil {
			say(stderr, fmt.Sprintf("internal error: %v (please report it)", p))
			code = exitFailed
		}
	}()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	var ie *interruptedError
	switch {
	case errors.As(err, &ie):
		say(stderr, err.Error())
		return exitInterrupted
	case errors.As(err, &ee):
		if ee.msg != "" {
			say(stderr, ee.msg)
		}
		return ee.code
	case errors.Is(err, netns.ErrNotFound), errors.Is(err, netns.ErrNotNetns), errors.Is(err, apply.ErrCorrupt),
		errors.Is(err, apply.ErrOtherNamespace), errors.Is(err, errUsage):
		say(stderr, err.Error())
		return exitUsage
	case errors.Is(err, kernel.ErrNotSupported), errors.Is(err, errPrivilege),
		// The kernel refused lbdoctor (the error names what): a privilege.
		errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		say(stderr, err.Error())
		return exitCannot
	default:
		// Not a missing privilege or feature lbdoctor could name: a read or a
		// change that failed (and was rolled back).
		say(stderr, err.Error())
		return exitFailed
	}
}

// say writes one line on stderr, its control characters escaped: errors
// name namespaces and files as the user spelled them.
func say(stderr io.Writer, msg string) {
	fmt.Fprintln(stderr, "lbdoctor: "+report.Printable(msg))
}

// printf is fmt.Fprintf for text meant for people: the names it prints
// (namespaces, interfaces, rules, files) are the user's, escaped.
func printf(w io.Writer, format string, a ...any) {
	io.WriteString(w, report.Printable(fmt.Sprintf(format, a...)))
}

var (
	errUsage     = errors.New("usage")
	errPrivilege = errors.New("missing privilege")
)

// exitError carries an exit code chosen by a command (1 for findings).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is bad usage or input: exit 2 with its one line.
type usageError struct{ msg string }

func (e *usageError) Error() string        { return e.msg }
func (e *usageError) Is(target error) bool { return target == errUsage }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// The interrupt rule, the same for every command: a command interrupted
// after it measured something prints what it measured, says it was cut
// short (text: a line starting "! cut short by SIGINT"; JSON: "interrupted":
// true) and exits as it would have (0 or 1); one interrupted before it
// measured anything — or one that was changing the host, whose changes were
// undone — returns an error wrapping interruptedError: exit 130.

// interruptedError is the cause of the command context when a signal ends it.
type interruptedError struct{ sig syscall.Signal }

func (e *interruptedError) Error() string { return "interrupted by " + signalName(e.sig) }

func signalName(s syscall.Signal) string {
	if s == syscall.SIGTERM {
		return "SIGTERM"
	}
	return "SIGINT"
}

// interruptedBy names the signal that ended ctx, or "" when none did (the
// context is live, or a window's own timeout ended it).
func interruptedBy(ctx context.Context) string {
	var ie *interruptedError
	if errors.As(context.Cause(ctx), &ie) {
		return signalName(ie.sig)
	}
	return ""
}

// notMeasured is the rule's error for a command interrupted before it
// measured anything: exit 130.
func notMeasured(ctx context.Context) error {
	var ie *interruptedError
	if !errors.As(context.Cause(ctx), &ie) {
		ie = &interruptedError{sig: syscall.SIGINT}
	}
	return fmt.Errorf("%w before anything was measured", ie)
}

// notChanged is the rule's error for a command that changes the host,
// interrupted before it changed anything: exit 130.
func notChanged(ctx context.Context, verb string) error {
	var ie *interruptedError
	if !errors.As(context.Cause(ctx), &ie) {
		ie = &interruptedError{sig: syscall.SIGINT}
	}
	return fmt.Errorf("%s: %w before anything changed", verb, ie)
}

// cutShortLine is the text line of a command cut short after it measured
// something.
func cutShortLine(sig string, ran, length time.Duration) string {
	if length > 0 {
		return fmt.Sprintf("! cut short by %s after %s of %s: the results cover that much", sig, ran.Round(time.Millisecond), length)
	}
	return fmt.Sprintf("! cut short by %s after %s", sig, ran.Round(time.Millisecond))
}

// measure runs read (which cannot be cancelled: a probe that reads the
// kernel) and returns whether it finished before ctx ended (window.Measure).
// A panic in read reaches run's recover.
func measure(ctx context.Context, read func()) bool { return window.Measure(ctx, read) }

// isTerminal reports whether w is a terminal: a person watches, even when
// the document goes elsewhere.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
