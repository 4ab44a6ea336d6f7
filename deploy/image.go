// Package deploy holds what runs lbdoctor in a fleet — the Kubernetes
// manifests (kubernetes/), the Prometheus alerting rules (prometheus/) — and
// lays out the userland of the container image (Containerfile at the
// repository's root). Its tests decode every manifest strictly into the
// Kubernetes API types, run the binary with exactly the DaemonSet's
// capabilities, and build the image.
package deploy

import (
	"context"
	"os"
	"path/filepath"

	"github.com/lbdoctor/lbdoctor/internal/guest"
)

// ImagePackages are the Debian packages of the image's userland: iptables
// (both backends, through xtables-legacy-multi and xtables-nft-multi, which
// the rules probe finds by name) and nftables, with every library they load;
// netbase gives /etc/protocols and /etc/services, from which both print
// protocol and port names. Without these tools every rule backend is unread
// in the pod, and each check that rests on the rules is skipped.
var ImagePackages = []string{
	"libc6", "netbase",
	"iptables", "libip4tc2", "libip6tc2", "libxtables12", "libmnl0", "libnetfilter-conntrack3",
	"libnfnetlink0", "libnftnl11",
	"nftables", "libnftables1", "libedit2", "libgmp10", "libjansson4", "libbsd0", "libmd0", "libtinfo6",
}

// BuildImageRoot lays out the image's userland afresh in dir (a folder left
// from another package list must not leak files into the image): the
// packages come from the machine's Debian sources (apt-get download, dpkg
// -x, cached with the guest's packages); nothing is installed into /.
func BuildImageRoot(ctx context.Context, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	debs := filepath.Join(guest.CacheDir(), "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return err
	}
	if err := guest.Download(ctx, debs, ImagePackages); err != nil {
		return err
	}
	if err := guest.Unpack(ctx, debs, dir, ImagePackages...); err != nil {
		return err
	}
	guest.Prune(dir)
	// iptables takes its lock under /run before it writes (lbdoctor only
	// reads); the runtime mounts /proc, /sys and /dev itself.
	for _, d := range []string{"run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	return guest.CheckLibraries(dir)
}
