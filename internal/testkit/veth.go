package testkit

import (
	"fmt"
	"net"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// VethEnd is one end of a veth pair: its namespace, name, addresses (CIDR)
// and, optionally, its MAC address.
type VethEnd struct {
	NS    netns.Target
	Name  string
	Addrs []string
	MAC   net.HardwareAddr
}

// Veth joins two namespaces with a veth pair, addressed and up. The pair
// goes with the namespaces when the test ends.
func Veth(t testing.TB, a, b VethEnd) {
	t.Helper()
	bh, err := b.NS.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer bh.Close()
	err = a.NS.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.Name}, PeerName: b.Name, PeerNamespace: netlink.NsFd(int(bh))})
	})
	if err != nil {
		t.Fatalf("veth %s/%s: %v", a.Name, b.Name, err)
	}
	for _, end := range []VethEnd{a, b} {
		err := end.NS.Do(func() error {
			l, err := netlink.LinkByName(end.Name)
			if err != nil {
				return err
			}
			if end.MAC != nil {
				if err := netlink.LinkSetHardwareAddr(l, end.MAC); err != nil {
					return err
				}
			}
			for _, c := range end.Addrs {
				ad, err := netlink.ParseAddr(c)
				if err != nil {
					return err
				}
				if err := netlink.AddrAdd(l, ad); err != nil {
					return fmt.Errorf("add %s: %w", c, err)
				}
			}
			return netlink.LinkSetUp(l)
		})
		if err != nil {
			t.Fatalf("veth end %s in %s: %v", end.Name, end.NS, err)
		}
	}
}
