package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
)

func newCheckCmd(g *globalFlags) *cobra.Command {
	var vip, proto string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a load balancer and report findings with evidence and fixes",
		Long: `check reads IPVS, sysctls and packet-filter rules in the target network
namespace and runs the doctor's checks on them. It changes nothing.`,
		Example: `  # the host's own namespace
  sudo lbdoctor check
  # one virtual service in the LB's namespace, for a CI job
  sudo lbdoctor check --netns lb --vip 10.1.0.6:8085 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel := probes.Selector{Proto: proto}
			if proto != "tcp" && proto != "udp" {
				return usageErrorf("--proto %q: want tcp or udp", proto)
			}
			if vip != "" {
				ap, err := netip.ParseAddrPort(vip)
				if err != nil {
					return usageErrorf("--vip %q: want ADDR:PORT, e.g. 10.1.0.6:8085", vip)
				}
				sel.VIP = ap
			}
			target, err := netns.Resolve(g.netns)
			if err != nil {
				return err
			}
			if err := requireCaps(target); err != nil {
				return err
			}
			snap := probes.Gather(target)
			fs := checks.Run(snap, sel)
			t := report.Target{Netns: target, Kernel: snap.Kernel}
			if sel.VIP.IsValid() {
				t.VIP, t.Proto = sel.VIP.String(), sel.Proto
			}
			r := report.New(t, fs, snap.Errors)
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

// requireCaps names the capability lbdoctor lacks instead of letting a probe
// fail deep inside with EPERM.
func requireCaps(t netns.Target) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(uint(c)%32)) != 0 }
	if !has(unix.CAP_NET_ADMIN) {
		return fmt.Errorf("%w: reading IPVS and rules needs CAP_NET_ADMIN (run as root)", errPrivilege)
	}
	if !t.IsCurrent() && !has(unix.CAP_SYS_ADMIN) {
		return fmt.Errorf("%w: entering %s needs CAP_SYS_ADMIN (run as root)", errPrivilege, t)
	}
	return nil
}
