package main

import (
	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
)

func newCheckCmd(g *globalFlags) *cobra.Command {
	var vip, proto string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a load balancer and report findings with evidence and fixes",
		Long: `check reads IPVS, sysctls, packet-filter rules, conntrack and counters in the
target network namespace and runs the doctor's checks on them. It changes nothing.`,
		Example: `  # the host's own namespace
  sudo lbdoctor check
  # one virtual service in the LB's namespace, for a CI job
  sudo lbdoctor check --netns lb --vip 10.1.0.6:8085 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := selector(vip, proto, true)
			if err != nil {
				return err
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			snap := probes.Gather(t, sel, probes.Options{})
			fs := checks.Run(snap, sel)
			rt := report.Target{Netns: t, Kernel: snap.Kernel}
			if sel.VIP.IsValid() {
				rt.VIP, rt.Proto = sel.VIP.String(), sel.Proto
			}
			r := report.New(rt, fs, snap.Errors)
			out := cmd.OutOrStdout()
			if g.output == "json" {
				err = report.JSON(out, r)
			} else {
				err = report.Text(out, r)
			}
			if err != nil {
				return err
			}
			if r.Verdict == checks.Fail {
				return &exitError{code: exitFindings}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "look at one virtual service, ADDR:PORT (default: all)")
	cmd.Flags().StringVar(&proto, "proto", "tcp", "protocol of --vip: tcp or udp")
	return cmd
}
