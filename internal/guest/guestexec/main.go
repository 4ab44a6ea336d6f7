// Command guestexec runs a program inside the IPVS test guest. It is the
// `go test -exec` wrapper for guest tests:
//
//	go test -tags guest -exec guestexec -run '^TestGuest' ./internal/lab/
//
// Other modes: `guestexec -check` tells whether this machine can run the guest
// (exit 0 yes, 10 skip with the reason, 1 when CI=true and it cannot), and
// `guestexec -prepare` builds the cached image ahead of time.
//
// LBDOCTOR_GUEST_FILES=host:guest[,host:guest] adds files to the guest (the
// Makefile adds bin/lbdoctor); LBDOCTOR_GUEST_TIMEOUT overrides the 15 min limit,
// LBDOCTOR_GUEST_MEMORY the guest's memory (qemu -m, e.g. 1G; default 512M).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/guest"
)

const exitSkip = 10

func main() {
	os.Exit(run())
}

func run() int {
	check := flag.Bool("check", false, "report whether the guest can run here")
	prepare := flag.Bool("prepare", false, "build the cached guest image and exit")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: guestexec [-check | -prepare | PROGRAM [ARGS...]]")
	}
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	inCI := os.Getenv("CI") == "true"

	if err := guest.Check(); err != nil {
		if inCI {
			fmt.Fprintf(os.Stderr, "guest tests cannot run in CI: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "guest tests skipped: %v\n", err)
		return exitSkip
	}
	if *check {
		return 0
	}
	start := time.Now()
	img, err := guest.Prepare(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
		return 1
	}
	if *prepare {
		fmt.Fprintf(os.Stderr, "guest: image ready for %s in %s (%s)\n", img.KernelVer, img.Dir, time.Since(start).Round(time.Millisecond))
		return 0
	}
	if flag.NArg() == 0 {
		flag.Usage()
		return 2
	}

	r := guest.Run{
		Program: flag.Arg(0),
		Args:    flag.Args()[1:],
		Env:     map[string]string{},
		Files:   map[string]string{},
		Dirs:    map[string]string{},
		Stdout:  os.Stdout,
		Timeout: 60 * time.Minute, // as go test -timeout in the Makefile
	}
	if s := os.Getenv("LBDOCTOR_GUEST_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "guest: LBDOCTOR_GUEST_TIMEOUT=%q: %v\n", s, err)
			return 2
		}
		r.Timeout = d
	}
	r.Memory = os.Getenv("LBDOCTOR_GUEST_MEMORY") // a scale benchmark's tables need more
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if k == "CI" || k == "GOTRACEBACK" || (strings.HasPrefix(k, "LBDOCTOR_") && !strings.HasPrefix(k, "LBDOCTOR_GUEST")) {
			r.Env[k] = v
		}
	}
	if spec := os.Getenv("LBDOCTOR_GUEST_FILES"); spec != "" {
		for _, pair := range strings.Split(spec, ",") {
			host, g, ok := strings.Cut(pair, ":")
			if !ok {
				fmt.Fprintf(os.Stderr, "guest: LBDOCTOR_GUEST_FILES entry %q is not host:guest\n", pair)
				return 2
			}
			r.Files[g] = host
		}
	}
	// go test runs a test binary in its package folder: bring testdata along.
	if fi, err := os.Stat("testdata"); err == nil && fi.IsDir() {
		abs, _ := filepath.Abs("testdata")
		r.Dirs["/lbdoctor-run/wd/testdata"] = abs
	}
	res, err := img.Execute(ctx, r)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
		if errors.Is(err, guest.ErrStaticBinary) {
			return 2
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "guest: kernel %s, first output after %s, whole run %s, exit %d\n",
		img.KernelVer, res.Boot.Round(10*time.Millisecond), res.Total.Round(10*time.Millisecond), res.ExitCode)
	if res.Log != "" {
		fmt.Fprintf(os.Stderr, "guest: serial log kept at %s\n", res.Log)
	}
	return res.ExitCode
}
