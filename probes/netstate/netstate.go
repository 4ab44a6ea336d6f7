// Package netstate reads the interfaces, addresses, routes and neighbours of
// a network namespace, and answers route lookups such as "how would the
// real server's reply to this client leave?" — the return-path question
// behind one-arm NAT.
package netstate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Snapshot is the L2/L3 state of one namespace.
type Snapshot struct {
	Links      []Link      `json:"links"`
	Routes     []Route     `json:"routes"`
	Neighbours []Neighbour `json:"neighbours"`
	// Local are the destinations of the local table's routes of type
	// local: the addresses (and ranges, `ip route add local …`) this
	// namespace delivers to itself, whatever the state of the link that
	// holds them — an address on a DOWN dummy is local. IPVS sees only
	// packets routed to one of them. nil: not read (an older snapshot).
	Local []netip.Prefix `json:"local"`
	// Lookups are the route decisions the probes asked the kernel for
	// (`ip route get`, see probes.AskRoutes): nil when none was asked.
	Lookups []Decision `json:"lookups,omitempty"`
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

// Unroutable reports whether the main table read has no route to a, or
// one that leads nowhere (an unreachable, blackhole or prohibit route: no
// device, no gateway), with the route found.
func (s Snapshot) Unroutable(a netip.Addr) (Route, bool) {
	r, ok := s.RouteTo(a)
	return r, !ok || r.Dev == "" && !r.Gw.IsValid()
}

// LookedUp is the answer to the plain question `ip route get DST` (no
// source, no input interface) when a probe asked it (Lookups).
func (s Snapshot) LookedUp(dst netip.Addr) (Decision, bool) {
	for _, d := range s.Lookups {
		if d.Dst == dst && !d.From.IsValid() && d.Iif == "" {
			return d, true
		}
	}
	return Decision{}, false
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
		// The kernel keeps a local route for every address, also on a
		// DOWN link (fib_add_ifaddr adds it before it looks at the link).
		local, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
		if err != nil {
			return fmt.Errorf("list local routes: %w", err)
		}
		s.Local = []netip.Prefix{}
		for _, r := range local {
			if p, ok := prefix(r.Dst); ok && !slices.Contains(s.Local, p) {
				s.Local = append(s.Local, p)
			}
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
	Dst netip.Addr `json:"dst"`
	// From and Iif are what was asked besides Dst: a packet from From
	// (`ip route get DST from FROM`), arriving on Iif (`… iif IIF`: the
	// input route, which runs the reverse-path filter).
	From  netip.Addr `json:"from,omitzero"`
	Iif   string     `json:"iif,omitempty"`
	Dev   string     `json:"dev"`
	Gw    netip.Addr `json:"gw,omitzero"` // zero: on-link, delivered directly
	Src   netip.Addr `json:"src,omitzero"`
	Local bool       `json:"local,omitempty"` // delivered to this host
	// NextHop is the address the packet goes to on the link: Gw, or Dst itself.
	NextHop netip.Addr `json:"next_hop"`
	// Error is why the kernel gave no route (as `ip route get` says it);
	// Errno is its name: an input route (Iif) refused with EXDEV or EINVAL
	// is a source the interface takes for a martian (rp_filter).
	Error string `json:"error,omitempty"`
	Errno string `json:"errno,omitempty"`
}

// Query is one route question: where a packet to Dst goes, optionally from
// From and arriving on Iif.
type Query struct {
	Dst, From netip.Addr
	Iif       string
}

// LookupAll asks ns's kernel every query in one visit to the namespace.
// A query the kernel refuses is a Decision with Error set, not an error:
// the refusal is the answer (an error is returned only when ns could not
// be entered).
func LookupAll(ns netns.Target, qs []Query) ([]Decision, error) {
	out := make([]Decision, 0, len(qs))
	err := ns.Do(func() error {
		// One socket and one link list for every question: a request per
		// question, not three (the library looks names up on its own).
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer h.Close()
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		names, index := map[int]string{}, map[string]int{}
		for _, l := range links {
			names[l.Attrs().Index], index[l.Attrs().Name] = l.Attrs().Name, l.Attrs().Index
		}
		for _, q := range qs {
			d, err := lookupWith(h, q, names, index)
			if err != nil {
				d.Error = err.Error()
				var errno syscall.Errno
				if errors.As(err, &errno) {
					d.Errno = unix.ErrnoName(errno)
				}
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("route lookups in %s: %w", ns, err)
	}
	return out, nil
}

// Lookup asks the kernel of ns how it would route a packet to dst
// (`ip route get DST [from SRC]`). src may be the zero Addr.
func Lookup(ns netns.Target, dst, src netip.Addr) (Decision, error) {
	var d Decision
	err := ns.Do(func() error {
		var err error
		d, err = lookup(Query{Dst: dst, From: src})
		return err
	})
	if err != nil {
		return d, fmt.Errorf("route lookup to %s in %s: %w", dst, ns, err)
	}
	return d, nil
}

// lookup asks the kernel of the calling thread's namespace.
func lookup(q Query) (Decision, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Decision{Dst: q.Dst, From: q.From, Iif: q.Iif}, err
	}
	defer h.Close()
	names, index := map[int]string{}, map[string]int{}
	if q.Iif != "" {
		l, err := h.LinkByName(q.Iif)
		if err != nil {
			return Decision{Dst: q.Dst, From: q.From, Iif: q.Iif}, err
		}
		index[q.Iif] = l.Attrs().Index
	}
	return lookupWith(h, q, names, index)
}

// lookupWith asks through h; names and index map link indexes and names
// (a name not in names is asked for).
func lookupWith(h *netlink.Handle, q Query, names map[int]string, index map[string]int) (Decision, error) {
	d := Decision{Dst: q.Dst, From: q.From, Iif: q.Iif}
	opts := &netlink.RouteGetOptions{}
	if q.Iif != "" {
		i, ok := index[q.Iif]
		if !ok {
			return d, fmt.Errorf("no interface %s", q.Iif)
		}
		opts.IifIndex = i
	}
	if q.From.IsValid() {
		opts.SrcAddr = net.IP(q.From.AsSlice())
	}
	rs, err := h.RouteGetWithOptions(net.IP(q.Dst.AsSlice()), opts)
	if err != nil {
		return d, err
	}
	if len(rs) == 0 {
		return d, fmt.Errorf("no route")
	}
	r := rs[0]
	d.Dev = names[r.LinkIndex]
	if d.Dev == "" {
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			d.Dev = l.Attrs().Name
		}
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		d.Gw = gw.Unmap()
	}
	if s, ok := netip.AddrFromSlice(r.Src); ok {
		d.Src = s.Unmap()
	}
	d.Local = r.Type == unix.RTN_LOCAL
	d.NextHop = d.Dst
	if d.Gw.IsValid() {
		d.NextHop = d.Gw
	}
	return d, nil
}

// LookupHere is Lookup in the namespace of the calling thread: for code
// already running inside one (netns.Target.Do), which must not enter it
// again per lookup.
func LookupHere(dst, src netip.Addr) (Decision, error) {
	return lookup(Query{Dst: dst, From: src})
}

// NeighbourHere is the ARP/NDP entry of ip on dev in the namespace of the
// calling thread (netns.Target.Do), with ok false when there is none.
func NeighbourHere(ip netip.Addr, dev string) (n Neighbour, ok bool, err error) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return n, false, fmt.Errorf("find link %s: %w", dev, err)
	}
	family := netlink.FAMILY_V4
	if ip.Is6() && !ip.Is4In6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := netlink.NeighList(l.Attrs().Index, family)
	if err != nil {
		return n, false, fmt.Errorf("list neighbours on %s: %w", dev, err)
	}
	for _, x := range neighs {
		a, good := netip.AddrFromSlice(x.IP)
		if !good || a.Unmap() != ip.Unmap() {
			continue
		}
		n = Neighbour{IP: a.Unmap(), Dev: dev, State: neighState(x.State)}
		if len(x.HardwareAddr) > 0 {
			n.MAC = x.HardwareAddr.String()
		}
		return n, true, nil
	}
	return n, false, nil
}

// String is the decision the way `ip route get` says it.
func (d Decision) String() string {
	q := d.Dst.String()
	if d.From.IsValid() {
		q += " from " + d.From.String()
	}
	if d.Iif != "" {
		q += " iif " + d.Iif
	}
	switch {
	case d.Error != "":
		return q + ": " + d.Error
	case d.Local:
		return q + ": local"
	case d.Gw.IsValid():
		return fmt.Sprintf("%s: via %s dev %s", q, d.Gw, d.Dev)
	}
	return fmt.Sprintf("%s: dev %s", q, d.Dev)
}

// Holds reports whether a local route of the snapshot covers a (a
// snapshot read before Local existed says false, ok false).
func (s Snapshot) Holds(a netip.Addr) (local, ok bool) {
	if s.Local == nil {
		return false, false
	}
	for _, p := range s.Local {
		if p.Contains(a) {
			return true, true
		}
	}
	return false, true
}

// WithAddr is s as it will be once p is added on dev (ip addr add): p on
// the link's addresses and its address among the local routes. s is not
// changed. What would change besides — a connected route of p, lookups
// already made — is not guessed.
func (s Snapshot) WithAddr(dev string, p netip.Prefix) Snapshot {
	s.Links = slices.Clone(s.Links)
	for i := range s.Links {
		if s.Links[i].Name == dev {
			s.Links[i].Addrs = append(slices.Clone(s.Links[i].Addrs), p)
		}
	}
	if s.Local != nil {
		s.Local = append(slices.Clone(s.Local), netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
	}
	return s
}

// LocalSet is Holds for many addresses: the local routes of a single
// address in a set, the wider ones (`ip route add local 10.9.0.0/24 …`)
// searched. 1,000 VIPs on lo are each found at once, not after a walk
// of 1,000 routes.
type LocalSet struct {
	read bool
	one  map[netip.Addr]bool
	wide []netip.Prefix
}

// LocalSet indexes the snapshot's local routes.
func (s Snapshot) LocalSet() LocalSet {
	l := LocalSet{read: s.Local != nil, one: make(map[netip.Addr]bool, len(s.Local))}
	for _, p := range s.Local {
		if p.IsSingleIP() {
			l.one[p.Addr()] = true
		} else {
			l.wide = append(l.wide, p)
		}
	}
	return l
}

// Holds is Snapshot.Holds.
func (l LocalSet) Holds(a netip.Addr) (local, ok bool) {
	if !l.read {
		return false, false
	}
	if l.one[a] {
		return true, true
	}
	for _, p := range l.wide {
		if p.Contains(a) {
			return true, true
		}
	}
	return false, true
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
