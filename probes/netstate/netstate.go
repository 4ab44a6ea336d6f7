// Package netstate reads the interfaces, addresses, routes and neighbours of
// a network namespace, and answers route lookups such as "how would the
// real server's reply to this client leave?" — the return-path question
// behind one-arm NAT.
package netstate

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Snapshot is the L2/L3 state of one namespace.
type Snapshot struct {
	Links      []Link      `json:"links"`
	Routes     []Route     `json:"routes"`
	Neighbours []Neighbour `json:"neighbours"`
	// Omitted counts, by list, the entries a capped copy left out
	// (see probes.Snapshot.Capped).
	Omitted map[string]int `json:"omitted,omitempty"`
}

// RouteTo is the most specific route to a among the snapshot's routes
// (the main table's), and whether there is one.
func (s Snapshot) RouteTo(a netip.Addr) (Route, bool) {
	best, found := Route{}, false
	for _, r := range s.Routes {
		if r.Dst.Contains(a) && (!found || r.Dst.Bits() > best.Dst.Bits()) {
			best, found = r, true
		}
	}
	return best, found
}

// HasAddr reports whether a is an address of one of the snapshot's
// interfaces (a local address), whether the interface is up or not.
func (s Snapshot) HasAddr(a netip.Addr) bool {
	for _, l := range s.Links {
		for _, p := range l.Addrs {
			if p.Addr() == a {
				return true
			}
		}
	}
	return false
}

// Link is one interface with its addresses.
type Link struct {
	Index  int            `json:"index"`
	Name   string         `json:"name"`
	Type   string         `json:"type"`
	Up     bool           `json:"up"`
	MTU    int            `json:"mtu"`
	MAC    string         `json:"mac,omitempty"`
	Master string         `json:"master,omitempty"`
	Addrs  []netip.Prefix `json:"addrs"`
}

// Route is one IPv4/IPv6 route of the main table (and local ones).
type Route struct {
	Dst   netip.Prefix `json:"dst"`
	Gw    netip.Addr   `json:"gw,omitzero"`
	Dev   string       `json:"dev,omitempty"`
	Src   netip.Addr   `json:"src,omitzero"`
	Table int          `json:"table"`
	Scope string       `json:"scope"`
}

// Neighbour is one ARP/NDP entry.
type Neighbour struct {
	IP    netip.Addr `json:"ip"`
	MAC   string     `json:"mac,omitempty"`
	Dev   string     `json:"dev"`
	State string     `json:"state"`
}

// Read returns the state of ns.
func Read(ns netns.Target) (Snapshot, error) {
	var s Snapshot
	err := ns.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		names := map[int]string{}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		for _, l := range links {
			a := l.Attrs()
			link := Link{Index: a.Index, Name: a.Name, Type: l.Type(), Up: a.Flags&net.FlagUp != 0, MTU: a.MTU, Master: names[a.MasterIndex], Addrs: []netip.Prefix{}}
			if len(a.HardwareAddr) > 0 {
				link.MAC = a.HardwareAddr.String()
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return fmt.Errorf("list addresses of %s: %w", a.Name, err)
			}
			for _, ad := range addrs {
				if p, ok := prefix(ad.IPNet); ok {
					link.Addrs = append(link.Addrs, p)
				}
			}
			s.Links = append(s.Links, link)
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			s.Routes = append(s.Routes, route(r, names))
		}
		neighs, err := netlink.NeighList(0, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			nb := Neighbour{IP: ip.Unmap(), Dev: names[n.LinkIndex], State: neighState(n.State)}
			if len(n.HardwareAddr) > 0 {
				nb.MAC = n.HardwareAddr.String()
			}
			s.Neighbours = append(s.Neighbours, nb)
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("read network state of %s: %w", ns, err)
	}
	return s, nil
}

// Decision is where the kernel would send a packet.
type Decision struct {
	Dst   netip.Addr `json:"dst"`
	Dev   string     `json:"dev"`
	Gw    netip.Addr `json:"gw,omitzero"` // zero: on-link, delivered directly
	Src   netip.Addr `json:"src,omitzero"`
	Local bool       `json:"local,omitempty"` // delivered to this host
	// NextHop is the address the packet goes to on the link: Gw, or Dst itself.
	NextHop netip.Addr `json:"next_hop"`
}

// Lookup asks the kernel of ns how it would route a packet to dst
// (`ip route get DST [from SRC]`). src may be the zero Addr.
func Lookup(ns netns.Target, dst, src netip.Addr) (Decision, error) {
	d := Decision{Dst: dst}
	err := ns.Do(func() error {
		opts := &netlink.RouteGetOptions{}
		if src.IsValid() {
			opts.SrcAddr = net.IP(src.AsSlice())
		}
		rs, err := netlink.RouteGetWithOptions(net.IP(dst.AsSlice()), opts)
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			return fmt.Errorf("no route")
		}
		r := rs[0]
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			d.Dev = l.Attrs().Name
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			d.Gw = gw.Unmap()
		}
		if s, ok := netip.AddrFromSlice(r.Src); ok {
			d.Src = s.Unmap()
		}
		d.Local = r.Type == unix.RTN_LOCAL
		return nil
	})
	if err != nil {
		return d, fmt.Errorf("route lookup to %s in %s: %w", dst, ns, err)
	}
	d.NextHop = d.Dst
	if d.Gw.IsValid() {
		d.NextHop = d.Gw
	}
	return d, nil
}

func route(r netlink.Route, names map[int]string) Route {
	out := Route{Dev: names[r.LinkIndex], Table: r.Table, Scope: r.Scope.String()}
	if p, ok := prefix(r.Dst); ok {
		out.Dst = p
	} else if r.Family == unix.AF_INET6 {
		out.Dst = netip.MustParsePrefix("::/0")
	} else {
		out.Dst = netip.MustParsePrefix("0.0.0.0/0")
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		out.Gw = gw.Unmap()
	}
	if s, ok := netip.AddrFromSlice(r.Src); ok {
		out.Src = s.Unmap()
	}
	return out
}

func prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func neighState(s int) string {
	switch s {
	case netlink.NUD_REACHABLE:
		return "REACHABLE"
	case netlink.NUD_STALE:
		return "STALE"
	case netlink.NUD_DELAY:
		return "DELAY"
	case netlink.NUD_PROBE:
		return "PROBE"
	case netlink.NUD_FAILED:
		return "FAILED"
	case netlink.NUD_INCOMPLETE:
		return "INCOMPLETE"
	case netlink.NUD_NOARP:
		return "NOARP"
	case netlink.NUD_PERMANENT:
		return "PERMANENT"
	}
	return fmt.Sprintf("0x%x", s)
}
