// Command imageroot lays out the userland of lbdoctor's container image in a
// folder (deploy.BuildImageRoot: Debian's iptables and nftables with their
// libraries); the Containerfile copies it onto an empty base beside the
// static binary. `make image` runs it:
//
//	go run ./deploy/imageroot DIR
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/lbdoctor/lbdoctor/deploy"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" || os.Args[1][0] == '-' {
		fmt.Fprintln(os.Stderr, "usage: imageroot DIR")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := deploy.BuildImageRoot(ctx, os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "imageroot %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
