package main

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/probes"
)

func newCheckCmd(g *globalFlags) *cobra.Command {
	var vip, proto string
	var fix, yes bool
	var dropWindow time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a load balancer and report findings with evidence and fixes",
		Long: `check reads IPVS, sysctls, packet-filter rules, conntrack and counters in the
target network namespace and runs the doctor's checks on them. It changes nothing.`,
		Example: `  # the host's own namespace
  sudo lbdoctor check
  # one virtual service in the LB's namespace, for a CI job
  sudo lbdoctor check --netns lb --vip 10.1.0.6:8085 -o json
  # also trace for 5 s where the kernel drops the VIP's packets (while traffic flows)
  sudo lbdoctor check --netns lb --vip 10.1.0.6:8085 --drops 5s
  # apply the fixes of failing findings (asks first; --yes does not)
  sudo lbdoctor check --netns lb --fix`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := selector(vip, proto, true)
			if err != nil {
				return err
			}
			if fix && g.output != "text" {
				return usageErrorf("--fix prints a plan and asks: it needs -o text")
			}
			if yes && !fix {
				return usageErrorf("--yes only goes with --fix")
			}
			if err := positiveWindow(cmd, "drops", dropWindow, "no drop tracing"); err != nil {
				return err
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			var started func()
			if g.output == "text" {
				started = func() { printf(cmd.ErrOrStderr(), "tracing drops of the selected flows for %s…\n", dropWindow) }
			}
			snap, fs, r, err := checkOnce(cmd.Context(), t, sel, dropWindow, started)
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
				return fixFindings(cmd, t, sel, snap, fs, yes)
			}
			if r.Verdict == checks.Fail {
				return &exitError{code: exitFindings}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "look at one virtual service, `ADDR:PORT` ([ADDR]:PORT for IPv6; default: all)")
	cmd.Flags().StringVar(&proto, "proto", "", "protocol of --vip: `tcp|udp` (default: the service at the VIP whatever its protocol)")
	cmd.Flags().BoolVar(&fix, "fix", false, "apply the fixes of failing findings (prints the plan, asks, rolls back on error)")
	cmd.Flags().BoolVar(&yes, "yes", false, "with --fix: do not ask")
	cmd.Flags().DurationVar(&dropWindow, "drops", 0, "also trace for this `WINDOW` (> 0) where the kernel drops packets of the selected flows (eBPF, needs CAP_BPF; default: no tracing)")
	return cmd
}

// checkOnce gathers a snapshot (and traces drops for dropWindow, if > 0),
// runs the catalog and builds the report. Interrupted while gathering, it
// returns the interrupt rule's error; interrupted during the drop window, a
// report on what was measured, marked as cut short.
// started is called when the drop window opens (never without one).
func checkOnce(ctx context.Context, t netns.Target, sel probes.Selector, dropWindow time.Duration, started func()) (*probes.Snapshot, []checks.Finding, *report.Report, error) {
	var snap *probes.Snapshot
	if !measure(ctx, func() { snap = probes.Gather(t, sel, probes.Options{}) }) {
		return nil, nil, nil, notMeasured(ctx)
	}
	start := time.Now()
	if dropWindow > 0 {
		probes.WatchDrops(ctx, t, sel, snap, dropWindow, started)
	}
	fs := checks.Run(snap, sel)
	rt := report.Target{Netns: t, Kernel: snap.Kernel}
	if sel.VIP.IsValid() {
		rt.VIP, rt.Proto = sel.VIP.String(), sel.Proto
	}
	r := report.New(rt, fs, snap.Errors)
	if sig := interruptedBy(ctx); sig != "" {
		r.Interrupted = true
		elapsed := time.Since(start)
		if snap.Drops != nil {
			elapsed = snap.Drops.Window // the window the evidence counts, from attach
		}
		r.CutShort = cutShortLine(sig, elapsed, dropWindow)
		if dropWindow == 0 {
			r.CutShort = fmt.Sprintf("! interrupted by %s after the probes read the namespace", sig)
		}
	}
	return snap, fs, r, nil
}

// fixFindings applies the remedies of the failing findings through the
// transactional engine, records them for teardown, and checks again.
func fixFindings(cmd *cobra.Command, t netns.Target, sel probes.Selector, snap *probes.Snapshot, fs []checks.Finding, yes bool) error {
	out := cmd.OutOrStdout()
	var remedies []checks.Remedy
	var manual []string
	for _, f := range fs {
		if f.Status != checks.Fail {
			continue
		}
		if len(f.Remedies) == 0 {
			manual = append(manual, f.ID)
		}
		remedies = append(remedies, f.Remedies...)
	}
	fmt.Fprintln(out)
	for _, id := range manual {
		fmt.Fprintf(out, "--fix cannot repair %s: follow its fix by hand\n", id)
	}
	if len(remedies) == 0 {
		fmt.Fprintln(out, "nothing for --fix to change")
		if len(manual) > 0 {
			return &exitError{code: exitFindings}
		}
		return nil
	}
	steps, err := setup.RemedySteps(t, snap, remedies)
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
	if err := runPlanConfirm(cmd, t, steps, false, "fix", recordOwned, confirm); err != nil {
		return err
	}
	_, _, r2, err := checkOnce(cmd.Context(), t, sel, 0, nil)
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
