package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/exporter"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// serveGrace is how long open scrapes may finish once serve is told to
// stop: the interrupt rule gives a command 200 ms in all.
const serveGrace = 50 * time.Millisecond

func newServeCmd() *cobra.Command {
	var nss []string
	var vip, proto, listen string
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the doctor continuously and serve its findings and drops to Prometheus",
		Long: `serve runs check's window back to back in each namespace (--netns, repeated;
default: lbdoctor's own), every window as long as --interval, runs the
checks at the end of each, and serves:
  /metrics   the findings, drops, tracer, IPVS and counter metrics (Prometheus)
  /healthz   200 when every namespace's last interval ran, 503 naming why not
  /findings  the last check -o json document (?netns=NAME picks one; with
             several namespaces and none picked, a list of them)
It listens on 127.0.0.1:9469 unless told otherwise and changes nothing on the
host. SIGINT or SIGTERM stop it (exit 0).`,
		Example: `  sudo lbdoctor serve
  sudo lbdoctor serve --netns lb --vip 10.1.0.6:8085 --listen 0.0.0.0:9469 --interval 30s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// ADDR alone watches every port of the address: the
			// services there are told apart by their own series.
			sel, err := selector(vip, proto, false)
			if err != nil {
				return err
			}
			if interval < time.Second {
				return usageErrorf("--interval %s: want a window of at least 1s", interval)
			}
			if err := checkListen(listen); err != nil {
				return err
			}
			if len(nss) == 0 {
				nss = []string{""}
			}
			for i, spec := range nss {
				if slices.Contains(nss[:i], spec) {
					return usageErrorf("--netns %q given twice", spec)
				}
			}
			for _, spec := range nss {
				// Resolved here to refuse a bad name at once, and again
				// before each window: it may go and come back.
				if _, err := target(&globalFlags{netns: spec}); err != nil {
					return err
				}
			}
			if !kernel.HasCapability(unix.CAP_BPF) && !kernel.HasCapability(unix.CAP_SYS_ADMIN) {
				return fmt.Errorf("%w: serve traces drops, which needs CAP_BPF (or CAP_SYS_ADMIN; run as root)", errPrivilege)
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			printf(cmd.ErrOrStderr(), "serving http://%s/metrics (/healthz, /findings), a window of %s\n", l.Addr(), interval)
			ctx, stop := context.WithCancel(cmd.Context())
			defer stop()
			vipLabel := ""
			if sel.VIP.IsValid() {
				vipLabel = sel.VIPString()
			}
			e := exporter.New(nss, vipLabel)
			done := make(chan struct{})
			go func() {
				defer close(done)
				exporter.Run(ctx, exporter.Config{Netns: nss, Sel: sel, Interval: interval}, e)
			}()
			// Healthy while the last interval is younger than two windows
			// and what a window adds to its length (reads, the tracer's load).
			err = exporter.Serve(ctx, l, exporter.Handler(e, 2*interval+30*time.Second), serveGrace)
			stop()
			<-done
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("serve: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&nss, "netns", nil, "watch this network namespace: a /run/netns `NAME`, a PATH, or pid:N; repeat for several (default: the current one)")
	cmd.Flags().StringVar(&vip, "vip", "", "watch one virtual service, `ADDR:PORT` ([ADDR]:PORT for IPv6), or every port of ADDR (default: all)")
	cmd.Flags().StringVar(&proto, "proto", "", "protocol of --vip: `tcp|udp` (default: the service at the VIP whatever its protocol)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9469", "serve HTTP on this `ADDR:PORT` (port 0: any free one, printed on stderr)")
	cmd.Flags().DurationVar(&interval, "interval", 15*time.Second, "watch in windows of `WINDOW` back to back; the checks run at the end of each")
	return cmd
}

// checkListen refuses a --listen that is no ADDR:PORT before anything runs.
func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return usageErrorf("--listen %q: want ADDR:PORT, e.g. 127.0.0.1:9469 or [::1]:9469", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usageErrorf("--listen %q: want a port 0-65535", s)
	}
	if host != "" && net.ParseIP(host) == nil {
		return usageErrorf("--listen %q: want an IP address, not a name", s)
	}
	return nil
}
