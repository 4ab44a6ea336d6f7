package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/expect"
	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/window"
)

func newCheckCmd(g *globalFlags) *cobra.Command {
	var vip, proto, expectFile string
	var fix, yes, noProbe, capturePackets bool
	var watch, dropWindow time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a load balancer and report findings with evidence and fixes",
		Long: `check reads IPVS, sysctls, packet-filter rules, conntrack and counters in the
target network namespace, watches the selected services' traffic for a window
(3s by default: drops, rule and chain counters, IPVS, conntrack, SNMP, and a
health probe of each real server) and runs the doctor's checks on what it saw.
It changes nothing on the host; the health probes are TCP connects to the real
servers IPVS already sends clients to (--no-probe turns them off).`,
		Example: `  # the host's own namespace
  sudo lbdoctor check
  # one virtual service in the LB's namespace, for a CI job
  sudo lbdoctor check --netns lb --vip 10.1.0.6:8085 -o json
  # watch 10 s instead of 3 (while traffic flows)
  sudo lbdoctor check --netns lb --vip 10.1.0.6:8085 --watch 10s
  # a static snapshot only, for a CI job without traffic
  sudo lbdoctor check --watch 0
  # apply the fixes of failing findings (asks first; --yes does not)
  sudo lbdoctor check --netns lb --fix
  # compare IPVS with what keepalived.conf (or ipvsadm -Sn output) says: ipvs.drift
  sudo lbdoctor check --expect /etc/keepalived/keepalived.conf --watch 0`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := selector(vip, proto, false)
			if err != nil {
				return err
			}
			if fix && g.output != "text" {
				return usageErrorf("--fix prints a plan and asks: it needs -o text")
			}
			if yes && !fix {
				return usageErrorf("--yes only goes with --fix")
			}
			if fix {
				changesHost(cmd)
			}
			if cmd.Flags().Changed("drops") { // the old name of the window
				if err := positiveWindow(cmd, "drops", dropWindow, "the default window"); err != nil {
					return err
				}
				if cmd.Flags().Changed("watch") {
					return usageErrorf("--drops is the old name of --watch: give one of them")
				}
				watch = dropWindow
			}
			if watch < 0 {
				return usageErrorf("--watch %s: want a window >= 0 (0: a static snapshot, nothing watched)", watch)
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			if capturePackets && watch == 0 {
				return usageErrorf("--capture captures during the window: it cannot go with --watch 0")
			}
			// The file is read and judged before anything is watched:
			// bad input ends the command at once.
			var expected *expect.Config
			if cmd.Flags().Changed("expect") { // "" too: refused, naming it
				cfg, err := readExpected(cmd.Context(), expectFile, cmd.InOrStdin())
				if err != nil {
					return err
				}
				expected = &cfg
			}
			opt := windowOptions(watch, noProbe)
			opt.Capture = capturePackets
			if g.output == "text" || isTerminal(cmd.ErrOrStderr()) {
				opt.Opened = func(d time.Duration) {
					printf(cmd.ErrOrStderr(), "watching %s for %s (Ctrl-C ends it early)…\n", watchedWhat(sel, noProbe), d)
				}
			}
			ctx := cmd.Context()
			if g.netns != "" && t.Path != "" {
				// A namespace deleted during the window ends it, said as
				// such: its last read would find nothing to read.
				var gone context.CancelCauseFunc
				ctx, gone = context.WithCancelCause(ctx)
				defer gone(nil)
				go watchNetns(ctx, t, gone)
			}
			snap, fs, r, err := checkOnce(ctx, t, sel, opt, expected)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch g.output {
			case "json":
				err = report.JSON(out, r)
			case "junit":
				err = report.JUnit(out, r)
			default:
				err = report.Text(out, r)
			}
			if err != nil {
				return err
			}
			if fix && !r.Interrupted {
				fopt := windowOptions(watch, noProbe)
				fopt.Capture = capturePackets
				return fixFindings(cmd, t, sel, snap, fs, yes, fopt, expected)
			}
			if r.Verdict == checks.Fail {
				return &exitError{code: exitFindings}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "look at one virtual service, `ADDR:PORT` ([ADDR]:PORT for IPv6), or every port of ADDR (default: all)")
	cmd.Flags().StringVar(&proto, "proto", "", "protocol of --vip: `tcp|udp` (default: the service at the VIP whatever its protocol)")
	cmd.Flags().BoolVar(&fix, "fix", false, "apply the fixes of failing findings (prints the plan, asks, rolls back on error)")
	cmd.Flags().BoolVar(&yes, "yes", false, "with --fix: do not ask")
	cmd.Flags().DurationVar(&watch, "watch", window.DefaultLength, "watch the selected services' traffic for this `WINDOW` before judging (0: a static snapshot, nothing watched)")
	cmd.Flags().BoolVar(&noProbe, "no-probe", false, "do not probe the real servers (a TCP connect to each, as a health checker would)")
	cmd.Flags().BoolVar(&capturePackets, "capture", false, "also capture the services' packets during the window (AF_PACKET): each path's legs get the packets seen on the wire")
	cmd.Flags().StringVar(&expectFile, "expect", "", "compare IPVS with what this `FILE` says (keepalived.conf, `ipvsadm -Sn` output or lbdoctor's services YAML; - for standard input): ipvs.drift")
	cmd.Flags().DurationVar(&dropWindow, "drops", 0, "old name of --watch `WINDOW`")
	_ = cmd.Flags().MarkHidden("drops")
	return cmd
}

// windowOptions is check's window: drops traced and reals probed unless
// turned off; length 0 is a static snapshot.
func windowOptions(length time.Duration, noProbe bool) window.Options {
	return window.Options{Length: length, Drops: true, Probe: !noProbe}
}

// watchedWhat names what the window watches, for the line that says so.
func watchedWhat(sel probes.Selector, noProbe bool) string {
	what := "every service"
	if sel.VIP.IsValid() {
		what = sel.VIPString()
	}
	if noProbe {
		return what + " (drops, counters, IPVS, conntrack)"
	}
	return what + " (drops, counters, IPVS, conntrack, a probe of each real)"
}

// checkOnce runs the window (or reads one snapshot, for length 0), runs the
// catalog and builds the report. Interrupted before the first read, it
// returns the interrupt rule's error; during the window, a report on what
// was measured, marked as cut short.
func checkOnce(ctx context.Context, t netns.Target, sel probes.Selector, opt window.Options, expected *expect.Config) (*probes.Snapshot, []checks.Finding, *report.Report, error) {
	start := time.Now()
	snap, err := window.Run(ctx, t, sel, opt)
	if cause := context.Cause(ctx); errors.Is(err, window.ErrInterrupted) && errors.Is(cause, errNetnsGone) {
		return nil, nil, nil, fmt.Errorf("%w before anything was measured", cause)
	}
	if errors.Is(err, window.ErrInterrupted) {
		return nil, nil, nil, notMeasured(ctx)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	snap.Expected = expected
	checkStart := time.Now()
	fs := checks.Run(snap, sel)
	if l := profileLine(snap, time.Since(checkStart)); l != "" {
		fmt.Fprintln(os.Stderr, l)
	}
	rt := report.Target{Netns: t, Kernel: snap.Kernel}
	if sel.VIP.IsValid() {
		rt.VIP, rt.Proto = sel.VIPString(), sel.Proto
	}
	r := report.New(rt, fs, snap.Errors)
	elapsed := time.Since(start)
	if snap.Window != nil {
		elapsed = snap.Window.Elapsed
	}
	if snap.Drops != nil {
		elapsed = snap.Drops.Window // the window the drop evidence counts, from attach
	}
	if sig := interruptedBy(ctx); sig != "" {
		r.Interrupted = true
		r.CutShort = cutShortLine(sig, elapsed, opt.Length)
		if opt.Length == 0 {
			r.CutShort = fmt.Sprintf("! interrupted by %s after the probes read the namespace", sig)
		}
	} else if cause := context.Cause(ctx); errors.Is(cause, errNetnsGone) {
		// Said in every output: the layers its last read could not read
		// are errors already; this one says why.
		r.CutShort = fmt.Sprintf("! cut short after %s of %s: %v; the results cover that much", elapsed.Round(time.Millisecond), opt.Length, cause)
		if r.Errors == nil {
			r.Errors = map[string]string{}
		}
		r.Errors["netns"] = fmt.Sprintf("%v during the window, after %s of %s", cause, elapsed.Round(time.Millisecond), opt.Length)
	}
	return snap, fs, r, nil
}

// fixFindings applies the remedies of the failing findings through the
// transactional engine, records them for teardown, and checks again.
func fixFindings(cmd *cobra.Command, t netns.Target, sel probes.Selector, snap *probes.Snapshot, fs []checks.Finding, yes bool, opt window.Options, expected *expect.Config) error {
	out := cmd.OutOrStdout()
	var remedies []checks.Remedy
	var manual []checks.Finding
	// The services each change is made for: a sysctl several findings
	// need is made for all their services (none named: every service's).
	services := map[checks.Remedy][]string{}
	everyone := map[checks.Remedy]bool{}
	for _, f := range fs {
		if f.Status != checks.Fail {
			continue
		}
		if len(f.Remedies) == 0 {
			manual = append(manual, f)
		}
		remedies = append(remedies, f.Remedies...)
		keys := checks.FindingServices(snap, sel, f)
		for _, r := range f.Remedies {
			everyone[r] = everyone[r] || len(keys) == 0
			for _, k := range keys {
				if !slices.Contains(services[r], k) {
					services[r] = append(services[r], k)
				}
			}
		}
	}
	for r := range everyone {
		if everyone[r] {
			delete(services, r)
		}
	}
	fmt.Fprintln(out)
	for _, f := range manual {
		why := ""
		if f.FixByHand != "" {
			why = " (" + f.FixByHand + ")"
		}
		fmt.Fprintf(out, "--fix cannot repair %s%s: follow its fix by hand\n", f.ID, why)
	}
	if len(remedies) == 0 {
		fmt.Fprintln(out, "nothing for --fix to change")
		if len(manual) > 0 {
			return &exitError{code: exitFindings}
		}
		return nil
	}
	steps, err := setup.RemedySteps(t, snap, remedies, services)
	if err != nil {
		return err
	}
	confirm := func(n int) bool {
		if yes {
			return true
		}
		fmt.Fprintf(out, "apply these %d change(s)? [y/N] ", n)
		// A read of a terminal cannot be cancelled: Ctrl-C abandons it.
		answer := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
			answer <- strings.TrimSpace(strings.ToLower(line))
		}()
		select {
		case a := <-answer:
			return a == "y" || a == "yes"
		case <-cmd.Context().Done():
			fmt.Fprintln(out)
			return false
		}
	}
	if err := runPlanConfirm(cmd, t, steps, false, "fix", recordShared(steps), confirm); err != nil {
		return err
	}
	// The same window again: a fix is proven by traffic that now passes.
	_, _, r2, err := checkOnce(cmd.Context(), t, sel, opt, expected)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\nafter --fix:")
	if err := report.Text(out, r2); err != nil {
		return err
	}
	if r2.Verdict == checks.Fail {
		return &exitError{code: exitFindings}
	}
	return nil
}

// readExpected reads check --expect's file (at most input.MaxSize, or
// stdin for -) and what it says IPVS should run; any fault is a usage
// error of one line naming the place.
func readExpected(ctx context.Context, path string, stdin io.Reader) (expect.Config, error) {
	data, err := input.Read(ctx, path, stdin)
	if err != nil {
		return expect.Config{}, usageErrorf("--expect %v", err)
	}
	cfg, err := setup.ParseExpected(input.Name(path), data)
	if err != nil {
		return expect.Config{}, usageErrorf("--expect %v", err)
	}
	return cfg, nil
}
