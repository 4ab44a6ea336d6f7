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

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// Exit codes shared by every command.
const (
	exitOK       = 0 // success, no failing finding
	exitFindings = 1 // at least one failing finding
	exitUsage    = 2 // bad usage or bad input
	exitCannot   = 3 // cannot inspect: missing privilege or kernel feature
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(stderr, "lbdoctor: internal error: %v (please report it)\n", p)
			code = exitCannot
		}
	}()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintln(stderr, "lbdoctor: "+ee.msg)
		}
		return ee.code
	case errors.Is(err, netns.ErrNotFound), errors.Is(err, netns.ErrNotNetns), errors.Is(err, apply.ErrCorrupt), errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "lbdoctor: "+err.Error())
		return exitUsage
	case errors.Is(err, kernel.ErrNotSupported), errors.Is(err, errPrivilege):
		fmt.Fprintln(stderr, "lbdoctor: "+err.Error())
		return exitCannot
	default:
		fmt.Fprintln(stderr, "lbdoctor: "+err.Error())
		return exitCannot
	}
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
