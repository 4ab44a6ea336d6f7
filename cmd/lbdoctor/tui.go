package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/tui"
	"github.com/lbdoctor/lbdoctor/probes"
)

func newTUICmd(g *globalFlags) *cobra.Command {
	var vip, proto string
	cmd := &cobra.Command{
		Use:   "tui",
		Short: "Watch a load balancer live: where packets die, the findings, drops, flows, reals, rules",
		Long: `tui is the incident view of one load balancer: the path of the selected
services' flows leg by leg with their rates and a ✗ where packets die (the
kernel's reason, its function, the hook and the rule or policy), the doctor's
findings re-run on every window (enter opens one: evidence, causal chain, fix
commands), and the live drops, flows, reals and rule counters. It watches in
windows of 2 s (drops traced in the kernel's aggregate mode, the reals probed
as check does) and changes nothing.

Keys: ? help, : command (:vip ADDR:PORT, :proto tcp|udp, :netns NAME),
/ filter, tab next pane, enter open, esc back, p pause, w write the panes to
NAME.txt and NAME.json, q quit.`,
		Example: `  sudo lbdoctor tui --netns lb --vip 10.1.0.6:8085`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := selector(vip, proto, true)
			if err != nil {
				return err
			}
			if !isTerminal(os.Stdin) || !isTerminal(os.Stdout) {
				return usageErrorf("tui needs a terminal on stdin and stdout (use check or inspect --watch for a log)")
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			err = tui.Run(cmd.Context(), tui.Config{In: os.Stdin, Out: os.Stdout, Options: tui.Options{
				Target: tui.Target{Netns: t, Sel: sel},
				Select: func(vip, proto string) (probes.Selector, error) { return selector(vip, proto, true) },
				Resolve: func(spec string) (netns.Target, error) {
					t, err := netns.Resolve(spec)
					if err != nil {
						return t, err
					}
					return t, requireCaps(t)
				},
			}})
			if interruptedBy(cmd.Context()) != "" {
				return context.Cause(cmd.Context()) // "interrupted by SIGTERM", 130
			}
			return err
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "watch one virtual service, `ADDR:PORT` ([ADDR]:PORT for IPv6; default: all)")
	cmd.Flags().StringVar(&proto, "proto", "", "protocol of --vip: `tcp|udp` (default: the service at the VIP whatever its protocol)")
	return cmd
}
