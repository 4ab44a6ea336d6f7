package probes

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// ProbeDrops is the key of Snapshot.Errors for the drop tracer.
const ProbeDrops = "drops"

// DropFilter returns what the drop tracer must match for the selected
// services: the VIPs and their real servers (the VIP is gone from a packet
// once IPVS rewrote it) and their ports. With no VIP selected it takes every
// service in svcs.
func DropFilter(sel Selector, svcs []ipvs.Service) (addrs []netip.Addr, ports []uint16) {
	add := func(a netip.AddrPort) {
		if !slices.Contains(addrs, a.Addr()) {
			addrs = append(addrs, a.Addr())
		}
		if a.Port() != 0 && !slices.Contains(ports, a.Port()) {
			ports = append(ports, a.Port())
		}
	}
	if sel.VIP.IsValid() {
		add(sel.VIP)
	}
	for _, svc := range svcs {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		add(svc.Addr)
		for _, r := range svc.Reals {
			add(r.Addr)
		}
	}
	return addrs, ports
}

// AddBackends adds to a drop filter the backends a VIP that IPVS does not
// serve was DNATed to (conntrack learned them): after the DNAT its packets
// carry a backend's address. A backend's port is added only when the VIP
// has one: a VIP without a port is traced on every port.
func AddBackends(sel Selector, addrs []netip.Addr, ports []uint16, backends []netip.AddrPort) ([]netip.Addr, []uint16) {
	for _, b := range backends {
		if !slices.Contains(addrs, b.Addr()) {
			addrs = append(addrs, b.Addr())
		}
		if b.Port() != 0 && sel.VIP.Port() != 0 && !slices.Contains(ports, b.Port()) {
			ports = append(ports, b.Port())
		}
	}
	return addrs, ports
}

// WatchDrops traces the drops of the selected services' flows in ns until
// the deadline (aggregate mode: counted in the kernel) and puts them, named and
// attributed, in s.Drops. A tracer that cannot load is recorded in s.Errors.
func WatchDrops(ctx context.Context, ns netns.Target, sel Selector, s *Snapshot, until time.Time, h drops.Hooks) {
	addrs, ports := DropFilter(sel, s.IPVS.Services)
	if sel.VIP.IsValid() && !ServesVIP(sel, s.IPVS.Services) {
		// Not an IPVS service (nft or iptables DNAT): its packets carry
		// a backend's address once DNAT ran, and only conntrack knows
		// which. Without one, a quiet window would prove nothing.
		if len(s.Conntrack.Backends) == 0 {
			why := "no conntrack flow to it shows a backend"
			if e, ok := s.Errors[ProbeConntrack]; ok {
				why = "conntrack could not be read (" + e + ")"
			}
			s.Errors[ProbeDrops] = fmt.Sprintf("%s is not an IPVS service and %s: drops after its DNAT cannot be traced", sel.VIPString(), why)
			return
		}
		addrs, ports = AddBackends(sel, addrs, ports, s.Conntrack.Backends)
	}
	if len(addrs) == 0 {
		s.Errors[ProbeDrops] = "nothing to trace: no IPVS service and no --vip"
		return
	}
	if len(addrs) > drops.MaxFilter || len(ports) > drops.MaxFilter {
		s.Errors[ProbeDrops] = fmt.Sprintf("the selected services have %d addresses and %d ports, the drop filter takes %d of each: select one service with --vip", len(addrs), len(ports), drops.MaxFilter)
		return
	}
	smp, err := drops.Watch(ctx, ns, drops.Config{NetnsInode: uint32(ns.Inode), Addrs: addrs, Ports: ports}, until, h)
	if err != nil && ctx.Err() != nil {
		s.Errors[ProbeDrops] = "interrupted before the tracer was attached: nothing traced"
		return
	}
	if err != nil {
		s.Errors[ProbeDrops] = err.Error()
		return
	}
	s.Drops = smp
}

// LearnBackends dumps the conntrack flows to the selected VIP in ns and
// returns the addresses that answered them in its place (DNAT): the
// backends of a VIP that IPVS does not serve.
func LearnBackends(ns netns.Target, sel Selector) ([]netip.AddrPort, error) {
	protos := []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} // no --proto: the VIP's flows of both
	switch sel.Proto {
	case "tcp":
		protos = protos[:1]
	case "udp":
		protos = protos[1:]
	}
	var c Conntrack
	for _, p := range protos {
		_, err := conntrack.Dump(ns, conntrack.Filter{Field: conntrack.OrigDst, Addr: sel.VIP.Addr(), Port: sel.VIP.Port(), Proto: p}, func(f conntrack.Flow) error {
			c.tally(f)
			return nil
		})
		if err != nil {
			return c.Backends, err
		}
	}
	return c.Backends, nil
}

// ServesVIP reports whether an IPVS service is the selected VIP.
func ServesVIP(sel Selector, svcs []ipvs.Service) bool {
	return slices.ContainsFunc(svcs, func(svc ipvs.Service) bool { return sel.Matches(svc.Addr, svc.Proto) })
}
