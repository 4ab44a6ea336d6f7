package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/window"
)

func newInspectCmd(g *globalFlags) *cobra.Command {
	var vip, proto string
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Show every layer of the NAT path: IPVS, sysctls, rules, conntrack, counters",
		Long: `inspect prints what lbdoctor's probes read in the target namespace, ordered
along a packet's path: virtual services and real servers, the IPVS connection
table, sysctls, packet-filter rules with their counters, conntrack flows,
SNMP counters, interfaces and routes, and what the kernel supports. With
--watch, counters are shown as what moved during the window. The JSON output
is the snapshot the checks judge.`,
		Example: `  sudo lbdoctor inspect --netns lb
  sudo lbdoctor inspect --netns lb --vip 10.1.0.6:8085 --watch 5s
  sudo lbdoctor inspect -o json | jq .conntrack.stats`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := selector(vip, proto, false)
			if err != nil {
				return err
			}
			if err := positiveWindow(cmd, "watch", watch, "one reading"); err != nil {
				return err
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			// One read, or a window between two: the same window check
			// runs (drops traced, counters, paths), but passive: no
			// probe of the reals. The feature probes, which count
			// nothing, run after the first read's counters.
			snap, err := window.Run(ctx, t, sel, window.Options{Length: watch, Features: true, Drops: true, Counters: true})
			if errors.Is(err, window.ErrInterrupted) {
				return notMeasured(ctx)
			}
			if err != nil {
				return err
			}
			in := &report.Inspection{Snapshot: snap}
			if w := snap.Window; w != nil {
				if _, once := w.Skipped["counters"]; !once {
					in.Deltas = &w.Deltas
				}
			}
			if sig := interruptedBy(ctx); sig != "" && watch > 0 {
				in.Interrupted = true
				elapsed := time.Duration(0)
				if snap.Window != nil {
					elapsed = snap.Window.Elapsed
				}
				if in.Deltas == nil {
					elapsed = time.Since(snap.Time)
				}
				in.CutShort = cutShortLine(sig, elapsed, watch)
				if in.Deltas == nil {
					in.CutShort += " (no second read in time: the counters are the first read's)"
				}
			}
			if g.output == "json" {
				return report.InspectJSON(cmd.OutOrStdout(), in)
			}
			return report.InspectText(cmd.OutOrStdout(), in)
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "show one virtual service: `ADDR[:PORT]` ([ADDR]:PORT for IPv6; default: all)")
	cmd.Flags().StringVar(&proto, "proto", "", "protocol of --vip: `tcp|udp` (default: any)")
	cmd.Flags().DurationVar(&watch, "watch", 0, "show counters as deltas over this `WINDOW` (> 0), e.g. 5s (default: one reading)")
	return cmd
}
