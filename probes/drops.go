package probes

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
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
	// Sets beside the lists: an LB of 1,000 services has 11,000 addresses.
	seenAddr, seenPort := map[netip.Addr]bool{}, map[uint16]bool{}
	add := func(a netip.AddrPort) {
		if !seenAddr[a.Addr()] {
			seenAddr[a.Addr()] = true
			addrs = append(addrs, a.Addr())
		}
		if a.Port() != 0 && !seenPort[a.Port()] {
			seenPort[a.Port()] = true
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

// DropTrace is the drop tracer of a window, attached, for the selected
// services' flows.
type DropTrace struct {
	tr    *drops.Tracer
	addrs []netip.Addr // the services' addresses and ports, selected
	ports []uint16     // from the kernel's count when wide
	wide  bool
	// vipOnly says why not every packet of a DNAT VIP's flows is traced
	// (no backend known, or a DNAT rule's map unread: VIPOnly); "" when
	// they are.
	vipOnly string
}

// VIPOnly says why the tracer does not follow every packet of the
// selected VIP's flows, one that IPVS does not serve: no conntrack flow or
// DNAT rule showed a backend (its drops before the DNAT — a raw or
// prerouting rule, reverse-path filtering — are traced, those after it are
// not), or a DNAT rule of it chooses backends from a map (those no flow
// showed are not traced), so a quiet window proves nothing about them.
// "" when every packet of its flows is traced.
func (d *DropTrace) VIPOnly() string { return d.vipOnly }

// StartDrops loads the drop tracer that prepare gives (it may wait for a
// preparation under way; it is not called when there is nothing to trace)
// with the filter of the selected services' flows in s (the window's first
// read: its services and reals, and for a VIP IPVS does not serve the
// backends its conntrack flows and DNAT rules show: DNATBackends) and attaches it. The error says why nothing is
// traced (nothing to trace, a tracer that could not load, ctx ended first),
// for s.Errors[ProbeDrops].
func StartDrops(ctx context.Context, ns netns.Target, sel Selector, s *Snapshot, prepare func(context.Context) (*drops.Prepared, error)) (*DropTrace, error) {
	cfg, d, err := dropConfig(ns, sel, s)
	if err != nil {
		return nil, err
	}
	prep, err := prepare(ctx)
	if err != nil {
		return nil, err
	}
	tr, err := prep.LoadContext(ctx, cfg)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("nothing traced: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, err
	}
	d.tr = tr
	return d, nil
}

// Refilter sets the attached tracer's filter in place to the selected
// services' flows in s (a later window's first read: services and reals
// added or gone, a namespace replaced), as StartDrops would have loaded
// it. The error says why the next window traces nothing; the tracer keeps
// its old filter then.
func (d *DropTrace) Refilter(ns netns.Target, sel Selector, s *Snapshot) error {
	cfg, nd, err := dropConfig(ns, sel, s)
	if err != nil {
		return err
	}
	if err := d.tr.SetFilter(cfg); err != nil {
		return err
	}
	d.addrs, d.ports, d.wide, d.vipOnly = nd.addrs, nd.ports, nd.wide, nd.vipOnly
	return nil
}

// WatchFrom is Watch for a tracer kept across windows: the drops counted
// since b's read (see drops.Tracer.WatchFrom); the tracer stays attached.
func (d *DropTrace) WatchFrom(ctx context.Context, until time.Time, h drops.Hooks, b *drops.Baseline) (*drops.Sample, error) {
	smp, err := d.tr.WatchFrom(ctx, until, h, b)
	if err != nil {
		return nil, err
	}
	if d.wide {
		smp.Split(OutsideDrops(d.addrs, d.ports))
	}
	return smp, nil
}

// Tracer is the attached tracer (its baseline, program id; Close).
func (d *DropTrace) Tracer() *drops.Tracer { return d.tr }

// dropConfig is the tracer's configuration for the selected services'
// flows in s, and the DropTrace (without its tracer) that selects them.
func dropConfig(ns netns.Target, sel Selector, s *Snapshot) (drops.Config, *DropTrace, error) {
	addrs, ports := DropFilter(sel, s.IPVS.Services)
	var vipOnly string
	if sel.VIP.IsValid() && !ServesVIP(sel, s.IPVS.Services) {
		// Not an IPVS service (nft or iptables DNAT): its packets carry
		// a backend's address once DNAT ran; conntrack's flows and the
		// DNAT rules name them. Without one, only the packets still
		// addressed to the VIP are traced (drops before its DNAT are
		// seen all the same): a quiet window proves nothing of the rest,
		// which VIPOnly says.
		bs := s.DNATBackends(sel)
		if len(bs) == 0 {
			why := "no conntrack flow to it and no DNAT rule shows a backend"
			var unread []string
			if e, ok := s.Errors[ProbeConntrack]; ok {
				unread = append(unread, "conntrack ("+e+")")
			}
			if e, ok := s.Errors[ProbeRules]; ok {
				unread = append(unread, "the rules ("+e+")")
			}
			if len(unread) > 0 {
				why += "; not read: " + strings.Join(unread, ", ")
			}
			vipOnly = fmt.Sprintf("%s is not an IPVS service and %s: only packets still addressed to it were traced, not those after its DNAT", sel.VIPString(), why)
		} else if un := UnreadDNATs(s.Rules.Rules, sel); len(un) > 0 {
			// Backends of other rules, or of flows, are known; those of
			// a map are not, unless a flow went to each.
			vipOnly = fmt.Sprintf("%s is not an IPVS service and its DNAT rule %s %q chooses backends from a map or an expression lbdoctor does not read: only the backends known were traced (%s), the others only while packets are still addressed to the VIP",
				sel.VIPString(), un[0].Place(), un[0].Spec, JoinBackends(bs))
		}
		addrs, ports = AddBackends(sel, addrs, ports, BackendAddrs(bs))
	}
	if len(addrs) == 0 {
		return drops.Config{}, nil, errors.New("nothing to trace: no IPVS service and no --vip")
	}
	// The tracer's bounds are a capture's (AttributorBounds), but it dumps
	// none of conntrack past them: its services are many (every one, with
	// no --vip), each filtered dump a walk of the whole table.
	b := AttributorBounds(s, Selector{}, nil)
	cfg := drops.Config{NetnsInode: uint32(ns.Inode), LB: ns, Addrs: addrs, Ports: ports, NoIPVSTable: b.NoIPVSTable, NoConntrackDump: b.NoConntrackDump}
	wide := WideDropFilter(addrs, ports)
	if wide {
		// More than the kernel's filter takes (an LB of many services):
		// the window still watches. The kernel counts every drop of the
		// namespace (of the ports, when they fit) and the services' drops
		// are selected here; the finding says so.
		cfg.Addrs, cfg.Select = nil, addrs
		if len(ports) > drops.MaxFilter {
			cfg.Ports = nil
		}
	}
	return cfg, &DropTrace{addrs: addrs, ports: ports, wide: wide, vipOnly: vipOnly}, nil
}

// AttributorBounds are what an attributor — the drop tracer's, a
// capture's joiner — leaves unread of the flow tables s's first read
// measured, the one rule for both: the IPVS connection table when IPVS's
// own counters hold more than MaxConnTable connections (its /proc file
// costs the square of its size), a whole conntrack dump when conntrack
// holds more than MaxFlowsRead entries. Past the latter the flows to the
// selected VIPs of svcs (sel, as a snapshot selects them) are still dumped,
// each filtered in the kernel, when they are at most maxFilteredDumps (a
// capture's VIP: one walk of the table in the kernel each); more, and
// none is.
func AttributorBounds(s *Snapshot, sel Selector, svcs []ipvs.Service) drops.Bounds {
	return attributorBounds(s.IPVS, s.Conntrack.Stats.Entries, sel, svcs, MaxConnTable, MaxFlowsRead)
}

func attributorBounds(v ipvs.Snapshot, entries uint32, sel Selector, svcs []ipvs.Service, maxConns, maxFlows int) drops.Bounds {
	var b drops.Bounds
	if n, over := connTableOver(v, maxConns); over {
		b.NoIPVSTable = fmt.Sprintf("IPVS connection table not read: %d connections (its reals' ActiveConn + InActConn), over %d: "+
			"the kernel walks /proc/net/ip_vs_conn from its start for every 4 KiB read (quadratic: ipvsadm -Lnc takes minutes on 100,000); "+
			"flows are known through conntrack alone", n, maxConns)
	}
	if int64(entries) > int64(maxFlows) {
		b.NoConntrackDump = fmt.Sprintf("conntrack not dumped whole: %d entries, over %d (a dump costs each one, and may be read again during the window)", entries, maxFlows)
		if fs, _ := vipFilters(sel, svcs); len(fs) <= maxFilteredDumps {
			b.DumpTo = fs
		}
	}
	return b
}

// Watch counts the drops from now until the deadline (or ctx's end) and
// returns them named and attributed against the tables of the namespace
// it was started in; the tracer is closed after.
func (d *DropTrace) Watch(ctx context.Context, until time.Time, h drops.Hooks) (*drops.Sample, error) {
	smp, err := d.tr.Watch(ctx, until, h)
	if err != nil {
		return nil, err
	}
	if d.wide {
		smp.Split(OutsideDrops(d.addrs, d.ports))
	}
	return smp, nil
}

// WideDropFilter reports whether a drop filter has more addresses or ports
// than the kernel's filter takes (drops.MaxFilter of each): WatchDrops then
// filters by namespace in the kernel and selects with OutsideDrops.
func WideDropFilter(addrs []netip.Addr, ports []uint16) bool {
	return len(addrs) > drops.MaxFilter || len(ports) > drops.MaxFilter
}

// OutsideDrops tells the drops the kernel's filter would have left out for
// addrs and ports: kept are those whose source or destination is one of
// addrs, and source or destination port one of ports. Drops counted by
// place alone (the flow map was full) name no flow: they cannot be told to
// be the services' and are left out; the sample's NotItemised counter
// still shows them. A wide filter's sample is split by it (Sample.Split).
func OutsideDrops(addrs []netip.Addr, ports []uint16) func(drops.Counted) bool {
	as := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		as[a.Unmap()] = true
	}
	ps := make(map[uint16]bool, len(ports))
	for _, p := range ports {
		ps[p] = true
	}
	return func(c drops.Counted) bool {
		return c.NotItemised || c.Family == 0 ||
			!as[c.Src.Addr()] && !as[c.Dst.Addr()] ||
			len(ps) > 0 && !ps[c.Src.Port()] && !ps[c.Dst.Port()]
	}
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
		_, err := conntrack.Scan(ns, conntrack.Filter{Field: conntrack.OrigDst, Addr: sel.VIP.Addr(), Port: sel.VIP.Port(), Proto: p}, func(h conntrack.Head, _ func() (conntrack.Flow, error)) error {
			c.tally(h)
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
