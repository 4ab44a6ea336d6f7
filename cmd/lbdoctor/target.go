package main

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// selector parses --vip and --proto. needPort: ADDR:PORT is required;
// otherwise ADDR alone selects every port of that address.
func selector(vip, proto string, needPort bool) (probes.Selector, error) {
	sel := probes.Selector{Proto: proto}
	if proto != "tcp" && proto != "udp" {
		return sel, usageErrorf("--proto %q: want tcp or udp", proto)
	}
	if vip == "" {
		return sel, nil
	}
	if ap, err := netip.ParseAddrPort(vip); err == nil {
		sel.VIP = ap
		return sel, nil
	}
	if a, err := netip.ParseAddr(vip); err == nil && !needPort {
		sel.VIP = netip.AddrPortFrom(a, 0)
		return sel, nil
	}
	if needPort {
		return sel, usageErrorf("--vip %q: want ADDR:PORT, e.g. 10.1.0.6:8085", vip)
	}
	return sel, usageErrorf("--vip %q: want ADDR or ADDR:PORT, e.g. 10.1.0.6:8085", vip)
}

// target resolves --netns and checks the capabilities reading it needs.
func target(g *globalFlags) (netns.Target, error) {
	t, err := netns.Resolve(g.netns)
	if err != nil {
		return t, err
	}
	return t, requireCaps(t)
}

// requireCaps names the capability lbdoctor lacks instead of letting a probe
// fail deep inside with EPERM.
func requireCaps(t netns.Target) error {
	if !kernel.HasCapability(unix.CAP_NET_ADMIN) {
		return fmt.Errorf("%w: reading IPVS and rules needs CAP_NET_ADMIN (run as root)", errPrivilege)
	}
	if !t.IsCurrent() && !kernel.HasCapability(unix.CAP_SYS_ADMIN) {
		return fmt.Errorf("%w: entering %s needs CAP_SYS_ADMIN (run as root)", errPrivilege, t)
	}
	return nil
}
