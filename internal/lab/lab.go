// Package lab builds the seed's hosts as network namespaces — a client, an
// IPVS load balancer and a real server, on one L2 segment (one-arm) or on two
// with the LB as the real server's gateway (two-arm) — and tears them down.
// Tests build their topologies with it; `lbdoctor lab` will too.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Topology is the shape of the lab network.
type Topology string

const (
	// OneArm puts client, LB and real server on one segment: replies from the
	// real server reach the client directly unless the LB also does SNAT.
	OneArm Topology = "one-arm"
	// TwoArm puts the real server behind the LB, which is its gateway.
	TwoArm Topology = "two-arm"
)

// Lab is a built topology. Addresses follow the seed: client 10.1.0.3, LB
// 10.1.0.5 with VIP 10.1.0.6, real 10.1.0.50 (two-arm: real 10.2.0.50 behind
// the LB's 10.2.0.1).
type Lab struct {
	Topology Topology
	Prefix   string // namespace names start with it
	Client   netns.Target
	LB       netns.Target
	Real     netns.Target
	Switch   netns.Target // holds the bridges of the segments

	ClientIP, LBIP, VIP, RealIP, RealGateway netip.Addr

	created []netns.Target
}

// Roles are the namespaces of a lab, NAME-ROLE, in the order they are made.
var Roles = []string{"sw", "client", "lb", "real"}

// Build creates the namespaces, links and addresses of a topology. prefix
// must be unique among labs alive at once; "" picks a random one. On error
// nothing is left behind.
func Build(topo Topology, prefix string) (*Lab, error) {
	if prefix == "" {
		b := make([]byte, 3)
		rand.Read(b)
		prefix = "lbd-" + hex.EncodeToString(b)
	}
	return build(topo, prefix, nil)
}

// BuildRecorded is Build for `lab up`: each namespace goes into rec (saved)
// after it exists and before it has its name, so `lab down` can prove every
// namespace it deletes was made here, also after a crash mid-way.
func BuildRecorded(rec *Record) (*Lab, error) {
	if err := ValidName(rec.Name); err != nil {
		return nil, err
	}
	return build(rec.Topology, rec.Name, rec)
}

func build(topo Topology, prefix string, rec *Record) (l *Lab, err error) {
	if topo != OneArm && topo != TwoArm {
		return nil, fmt.Errorf("unknown topology %q (want %s or %s)", topo, OneArm, TwoArm)
	}
	l = addressed(topo, prefix)
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	for _, h := range []struct {
		t    *netns.Target
		role string
	}{{&l.Switch, "sw"}, {&l.Client, "client"}, {&l.LB, "lb"}, {&l.Real, "real"}} {
		name := prefix + "-" + h.role
		var record func(uint64) error
		if rec != nil {
			record = func(inode uint64) error {
				cookie, err := netns.ThreadCookie() // run inside the new namespace
				if err != nil {
					return err
				}
				rec.Netns = append(rec.Netns, Made{Name: name, Inode: inode, Cookie: cookie})
				return rec.Save()
			}
		}
		t, err := netns.CreateRecorded(name, record)
		if err != nil {
			return l, err
		}
		l.created = append(l.created, t)
		*h.t = t
	}
	if err := l.Switch.Do(func() error { return addBridge("br0") }); err != nil {
		return l, err
	}
	if err := l.plug(l.Client, "client0", "br0", cidr(l.ClientIP, 24)); err != nil {
		return l, err
	}
	if err := l.plug(l.LB, "lb0", "br0", cidr(l.LBIP, 24), cidr(l.VIP, 32)); err != nil {
		return l, err
	}
	if topo == OneArm {
		return l, l.plug(l.Real, "real0", "br0", cidr(l.RealIP, 24))
	}
	if err := l.Switch.Do(func() error { return addBridge("br1") }); err != nil {
		return l, err
	}
	if err := l.plug(l.LB, "lb1", "br1", cidr(l.RealGateway, 24)); err != nil {
		return l, err
	}
	if err := l.plug(l.Real, "real1", "br1", cidr(l.RealIP, 24)); err != nil {
		return l, err
	}
	return l, l.Real.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Gw: net.IP(l.RealGateway.AsSlice())})
	})
}

// addressed is a lab of topo with its addresses: the one place they are set.
func addressed(topo Topology, prefix string) *Lab {
	l := &Lab{Topology: topo, Prefix: prefix,
		ClientIP: netip.MustParseAddr("10.1.0.3"), LBIP: netip.MustParseAddr("10.1.0.5"),
		VIP: netip.MustParseAddr("10.1.0.6"), RealIP: netip.MustParseAddr("10.1.0.50")}
	if topo == TwoArm {
		l.RealIP, l.RealGateway = netip.MustParseAddr("10.2.0.50"), netip.MustParseAddr("10.2.0.1")
	}
	return l
}

func cidr(a netip.Addr, bits int) string { return netip.PrefixFrom(a, bits).String() }

// Close deletes every namespace the lab made (a name that now holds another
// namespace is left); their links go with them.
func (l *Lab) Close() error {
	var errs []error
	for i := len(l.created) - 1; i >= 0; i-- {
		errs = append(errs, l.created[i].Delete())
	}
	l.created = nil
	return errors.Join(errs...)
}

func addBridge(name string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// plug connects host to a bridge of the switch with a veth pair: swPort on the
// bridge side, eth0/eth1 (by order) on the host side, with the given addresses.
func (l *Lab) plug(host netns.Target, swPort, bridge string, cidrs ...string) error {
	hostHandle, err := host.Handle()
	if err != nil {
		return err
	}
	defer hostHandle.Close()
	hostIf := "eth0"
	if bridge == "br1" {
		hostIf = "eth1"
	}
	err = l.Switch.Do(func() error {
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("find bridge %s: %w", bridge, err)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: swPort, MasterIndex: br.Attrs().Index},
			PeerName:      hostIf,
			PeerNamespace: netlink.NsFd(int(hostHandle)),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s in %s: %w", swPort, l.Switch, err)
		}
		return netlink.LinkSetUp(veth)
	})
	if err != nil {
		return err
	}
	return host.Do(func() error {
		link, err := netlink.LinkByName(hostIf)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", hostIf, host, err)
		}
		for _, c := range cidrs {
			a, err := netlink.ParseAddr(c)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(link, a); err != nil {
				return fmt.Errorf("add %s to %s in %s: %w", c, hostIf, host, err)
			}
		}
		return netlink.LinkSetUp(link)
	})
}

// AddReal adds one more real server host, PREFIX-realN, with addr on the
// real servers' segment: the VIP's (one-arm) or the LB's second one, with
// the LB as its gateway (two-arm). It goes with the lab on Close. For tests
// of services with several reals; `lab up` records only the four Roles.
func (l *Lab) AddReal(addr netip.Addr) (netns.Target, error) {
	n := 2
	for _, t := range l.created {
		if strings.HasPrefix(t.Name, l.Prefix+"-real") && t.Name != l.Prefix+"-real" {
			n++
		}
	}
	t, err := netns.Create(fmt.Sprintf("%s-real%d", l.Prefix, n))
	if err != nil {
		return netns.Target{}, err
	}
	l.created = append(l.created, t)
	bridge := "br0"
	if l.Topology == TwoArm {
		bridge = "br1"
	}
	if err := l.plug(t, fmt.Sprintf("real%d", n), bridge, cidr(addr, 24)); err != nil {
		return t, err
	}
	if l.Topology == OneArm {
		return t, nil
	}
	return t, t.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Gw: net.IP(l.RealGateway.AsSlice())})
	})
}
