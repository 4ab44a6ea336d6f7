package sysctl_test

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

func TestReadIsPerNamespace(t *testing.T) {
	a, b := testkit.Netns(t, "sysa"), testkit.Netns(t, "sysb")
	testkit.Sysctl(t, a, "net.ipv4.ip_forward", "1")
	testkit.Sysctl(t, b, "net.ipv4.ip_forward", "0")
	testkit.Sysctl(t, a, "net.ipv4.conf.lo.rp_filter", "2")
	for _, tt := range []struct {
		name string
		ns   interface{ String() string }
		want map[string]string
	}{
		{"a", a, map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.lo.rp_filter": "2"}},
		{"b", b, map[string]string{"net.ipv4.ip_forward": "0"}},
	} {
		ns := a
		if tt.name == "b" {
			ns = b
		}
		snap, err := sysctl.Read(ns, "net.ipv4.ip_forward", "net.ipv4.conf.lo.rp_filter")
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range tt.want {
			if v := snap[k]; !v.Present || v.Value != want {
				t.Errorf("Read(%s)[%s] = %+v, want %s", tt.ns, k, v, want)
			}
		}
	}
}

func TestReadSaysWhyAKeyIsAbsent(t *testing.T) {
	ns := testkit.Netns(t, "sysc")
	snap, err := sysctl.Read(ns, "net.ipv4.vs.conntrack", "net.ipv4.no_such_key")
	if err != nil {
		t.Fatal(err)
	}
	vs := snap["net.ipv4.vs.conntrack"]
	if vs.Present && vs.Value == "" {
		t.Errorf("Read(vs.conntrack) = %+v: present without a value", vs)
	}
	if !vs.Present && vs.Absent != "net.ipv4.vs.* exists only once the ip_vs module is loaded" {
		t.Errorf("Read(vs.conntrack) = %+v, want the ip_vs explanation", vs)
	}
	if v := snap["net.ipv4.no_such_key"]; v.Present || v.Absent != "no such key" {
		t.Errorf("Read(no_such_key) = %+v, want absent: no such key", v)
	}
}

func TestReadAllCoversEveryInterface(t *testing.T) {
	ns := vethNetns(t, "sysall", "d0")
	testkit.Sysctl(t, ns, "net.ipv4.conf.d0.send_redirects", "0")
	snap, err := sysctl.ReadAll(ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.arp_ignore", "net.ipv4.conf.lo.forwarding", "net.ipv4.conf.d0.arp_announce"} {
		if v := snap[k]; !v.Present {
			t.Errorf("ReadAll()[%s] = %+v, want present", k, v)
		}
	}
	if v := snap["net.ipv4.conf.d0.send_redirects"]; v.Value != "0" {
		t.Errorf("ReadAll()[d0.send_redirects] = %+v, want 0", v)
	}
	if v := snap["net.netfilter.nf_conntrack_max"]; !v.Present && v.Absent == "" {
		t.Errorf("ReadAll()[nf_conntrack_max] = %+v: neither present nor explained", v)
	}
}

// An interface name may hold dots (a VLAN, eth0.100): ReadAll reads its
// keys from its own directory (/proc/sys/net/ipv4/conf/d0.100), named as
// the interface is, and Arg gives the key sysctl(8) reads the same file by.
func TestReadAllInterfaceWithADot(t *testing.T) {
	ns := vethNetns(t, "sysdot", "d0.100")
	const key = "net.ipv4.conf.d0.100.rp_filter"
	for _, want := range []string{"2", "1"} {
		testkit.Sysctl(t, ns, key, want)
		snap, err := sysctl.ReadAll(ns)
		if err != nil {
			t.Fatal(err)
		}
		if v := snap[key]; !v.Present || v.Value != want {
			t.Errorf("ReadAll()[%s] = %+v, want %s", key, v, want)
		}
		if got := strings.TrimSpace(testkit.Run(t, ns, "sysctl", "-n", sysctl.Arg(key))); got != want {
			t.Errorf("sysctl -n %s = %q, want %s", sysctl.Arg(key), got, want)
		}
	}
}

func TestPathAndArg(t *testing.T) {
	tests := []struct{ key, path, arg string }{
		{"net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"},
		{"net.ipv4.conf.eth0.rp_filter", "/proc/sys/net/ipv4/conf/eth0/rp_filter", "net.ipv4.conf.eth0.rp_filter"},
		{"net.ipv4.conf.eth0.100.rp_filter", "/proc/sys/net/ipv4/conf/eth0.100/rp_filter", "net.ipv4.conf.eth0/100.rp_filter"},
		{"net.ipv6.conf.bond0.7.forwarding", "/proc/sys/net/ipv6/conf/bond0.7/forwarding", "net.ipv6.conf.bond0/7.forwarding"},
		{"net.ipv4.vs.conntrack", "/proc/sys/net/ipv4/vs/conntrack", "net.ipv4.vs.conntrack"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := sysctl.Path(tt.key); got != tt.path {
				t.Errorf("Path(%q) = %q, want %q", tt.key, got, tt.path)
			}
			if got := sysctl.Arg(tt.key); got != tt.arg {
				t.Errorf("Arg(%q) = %q, want %q", tt.key, got, tt.arg)
			}
		})
	}
}

// vethNetns is a test namespace holding a veth pair, one end named name.
func vethNetns(t *testing.T, role, name string) netns.Target {
	t.Helper()
	ns := testkit.Netns(t, role)
	if err := ns.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	}); err != nil {
		t.Fatal(err)
	}
	return ns
}
