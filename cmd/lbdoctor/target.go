package main

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// parseVIP is the one parser of --vip for every verb. It takes ADDR:PORT
// ([ADDR]:PORT for IPv6) and, unless needPort, ADDR alone (every port of that
// address). Port 0 is refused rather than read as "any port", and so are
// addresses no virtual service can have (setup.AddrFault, the rule input
// files follow too).
func parseVIP(s string, needPort bool) (netip.AddrPort, error) {
	want := "want ADDR:PORT ([ADDR]:PORT for IPv6)"
	if !needPort {
		want = "want ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)"
	}
	var ap netip.AddrPort
	if p, err := netip.ParseAddrPort(s); err == nil {
		ap = p
		if ap.Port() == 0 {
			return ap, usageErrorf("--vip %s: port 0 is no service port: %s with PORT 1-65535", input.Quote(s), want)
		}
	} else {
		a, aerr := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
		if aerr != nil || needPort {
			return ap, usageErrorf("--vip %s: %s", input.Quote(s), want)
		}
		ap = netip.AddrPortFrom(a, 0)
	}
	a := ap.Addr()
	if why := setup.AddrFault(a, "a VIP"); why != "" {
		return ap, usageErrorf("--vip %s: %s", input.Quote(s), why)
	}
	return netip.AddrPortFrom(a.Unmap(), ap.Port()), nil
}

// parseServiceProto reads --proto of check, inspect, setup and lab: tcp or
// udp in any case; "" (where allowed) means any protocol.
func parseServiceProto(p string, allowAny bool) (string, error) {
	switch lp := strings.ToLower(p); {
	case lp == "tcp" || lp == "udp":
		return lp, nil
	case p == "" && allowAny:
		return "", nil
	default:
		return "", usageErrorf("--proto %s: want tcp or udp", input.Quote(p))
	}
}

// selector parses --vip and --proto. needPort: ADDR:PORT is required;
// otherwise ADDR alone selects every port of that address. An empty proto
// selects the service at the VIP whatever its protocol.
func selector(vip, proto string, needPort bool) (probes.Selector, error) {
	p, err := parseServiceProto(proto, true)
	if err != nil {
		return probes.Selector{}, err
	}
	sel := probes.Selector{Proto: p}
	if vip == "" {
		if proto != "" {
			// The protocol of --vip's service: alone it would select
			// nothing less than every service, silently.
			return sel, usageErrorf("--proto %s needs --vip: it is the protocol of the VIP's service", input.Quote(proto))
		}
		return sel, nil
	}
	sel.VIP, err = parseVIP(vip, needPort)
	return sel, err
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

// positiveWindow is the one rule of the window flags (check --drops, inspect
// --watch, drops --duration): given, a window is > 0; left out, the verb does
// its default (no tracing, one reading, until Ctrl-C).
func positiveWindow(cmd *cobra.Command, flag string, d time.Duration, without string) error {
	if d < 0 || d == 0 && cmd.Flags().Changed(flag) {
		return usageErrorf("--%s %s: want a window > 0 (leave the flag out for %s)", flag, d, without)
	}
	return nil
}
