package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time: -ldflags "-X main.version=v0.1.0".
var version = ""

type globalFlags struct {
	netns  string
	output string
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "lbdoctor",
		Short: "Set up and diagnose Linux IPVS NAT load balancers",
		Long: `lbdoctor finds where packets die on a Linux IPVS load balancer and builds
the NAT path correctly. check and inspect read IPVS, sysctls, packet-filter
rules, conntrack and counters in any network namespace; drops traces where
the kernel drops packets and which VIP flow they belonged to; setup, teardown,
check --fix and lab change the host, and print their plan first.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or input, 3 cannot inspect
(missing privilege or kernel feature), 130 interrupted before anything was
measured (or a change was undone).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case g.output == "junit" && cmd.Name() != "check":
				return usageErrorf("--output junit is for check only")
			case g.output != "text" && g.output != "json" && g.output != "junit":
				return usageErrorf("--output %q: want text or json (or junit, for check)", g.output)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.netns, "netns", "", "network namespace: a /run/netns name, a path, or pid:N (default: the current one)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output format: text or json (check also: junit)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErrorf("%v", err) })
	root.AddCommand(newCheckCmd(g), newInspectCmd(g), newDropsCmd(g), newSetupCmd(g), newTeardownCmd(g), newLabCmd(), newVersionCmd())
	root.SetHelpCommand(&cobra.Command{Hidden: true})
	// Unknown subcommands and stray arguments are usage errors too.
	root.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageErrorf("unknown command %q (see lbdoctor --help)", args[0])
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the lbdoctor version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "lbdoctor "+versionString())
			return nil
		},
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v = strings.TrimSuffix(v, "(devel)") + "devel-" + s.Value[:12]
			}
		}
		if v != "" {
			return v
		}
	}
	return "devel"
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}
