package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
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
			in := &report.Inspection{}
			if !measure(ctx, func() { in.Snapshot = probes.Gather(t, sel, probes.Options{Features: true}) }) {
				return notMeasured(ctx)
			}
			if watch > 0 {
				// The window runs from the first counter read (the feature
				// probes, which count nothing, come after it).
				start := in.Snapshot.Time
				timer := time.NewTimer(watch - time.Since(start))
				select {
				case <-ctx.Done():
					timer.Stop()
				case <-timer.C:
				}
				// The second read leaves out the feature probes (slow, and no
				// counter): the window is the time between the two reads. Cut
				// short, it gets what is left of the 200 ms an interrupt may
				// take; if it cannot finish, the first read is what was measured.
				before := in.Snapshot
				rctx := context.Background()
				if ctx.Err() != nil {
					var cancel context.CancelFunc
					rctx, cancel = context.WithTimeout(rctx, 120*time.Millisecond)
					defer cancel()
				}
				var after *probes.Snapshot
				if measure(rctx, func() { after = probes.Gather(t, sel, probes.Options{}) }) {
					after.Features = before.Features
					in.Snapshot = after
					d := probes.Delta(before, after)
					in.Deltas = &d
				}
				if sig := interruptedBy(ctx); sig != "" {
					in.Interrupted = true
					in.CutShort = cutShortLine(sig, time.Since(start), watch)
					if in.Deltas == nil {
						in.CutShort += " (no second read in time: the counters are the first read's)"
					}
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
