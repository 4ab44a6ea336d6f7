package capture

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
)

var (
	macA = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// frame builds an Ethernet frame around an IP packet with a TCP or UDP
// header (proto 6 or 17) or an ICMP one (1 or 58).
func frame(t *testing.T, src, dst string, proto uint8, sport, dport uint16, edit func(ip4 *layers.IPv4, ip6 *layers.IPv6)) []byte {
	t.Helper()
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB}
	var ls []gopacket.SerializableLayer
	var netl gopacket.NetworkLayer
	if s.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: s.AsSlice(), DstIP: d.AsSlice(), Protocol: layers.IPProtocol(proto)}
		if edit != nil {
			edit(ip, nil)
		}
		ls, netl = []gopacket.SerializableLayer{eth, ip}, ip
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: s.AsSlice(), DstIP: d.AsSlice(), NextHeader: layers.IPProtocol(proto)}
		if edit != nil {
			edit(nil, ip)
		}
		ls, netl = []gopacket.SerializableLayer{eth, ip}, ip
	}
	switch proto {
	case 6:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Window: 1024}
		tcp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, tcp)
	case 17:
		udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		udp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, udp)
	case 1:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})
	case 58:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
		icmp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, icmp)
	}
	ls = append(ls, gopacket.Payload("lbdoctor"))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// TestFilter runs Filter's programs in x/net/bpf's userland VM (the same
// classic BPF semantics as the kernel's) over crafted frames.
func TestFilter(t *testing.T) {
	const snaplen = 200
	vipFlow := Match{Addrs: addrs("10.1.0.10", "10.2.0.40", "2001:db8::10"), Ports: []uint16{80, 8080}}
	tcpOnly := Match{Proto: 6, Addrs: addrs("10.1.0.10"), Ports: []uint16{80}}
	anyAddr := Match{Proto: 17, Ports: []uint16{53}}
	v6Only := Match{Addrs: addrs("2001:db8::10")}
	var many []netip.Addr
	for i := 0; i < 300; i++ {
		many = append(many, netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}))
	}
	manyAddrs := Match{Addrs: many, Ports: []uint16{80}}
	withOptions := func(ip4 *layers.IPv4, _ *layers.IPv6) {
		ip4.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	}
	firstFragment := func(ip4 *layers.IPv4, _ *layers.IPv6) { ip4.Flags = layers.IPv4MoreFragments }
	laterFragment := func(ip4 *layers.IPv4, _ *layers.IPv6) { ip4.FragOffset = 185 }
	hopByHop := func(_ *layers.IPv4, ip6 *layers.IPv6) { ip6.NextHeader = layers.IPProtocolIPv6HopByHop }

	cases := []struct {
		name   string
		m      Match
		pkt    func(t *testing.T) []byte
		accept bool
	}{
		{"client to VIP", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 6, 41234, 80, nil) }, true},
		{"VIP to client", vipFlow, func(t *testing.T) []byte { return frame(t, "10.1.0.10", "192.0.2.7", 6, 80, 41234, nil) }, true},
		{"LB to real, UDP", vipFlow, func(t *testing.T) []byte { return frame(t, "10.2.0.1", "10.2.0.40", 17, 41234, 8080, nil) }, true},
		{"real to LB", vipFlow, func(t *testing.T) []byte { return frame(t, "10.2.0.40", "10.2.0.1", 6, 8080, 41234, nil) }, true},
		{"IPv4 with options", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 6, 41234, 80, withOptions) }, true},
		{"IPv4 first fragment", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 17, 41234, 80, firstFragment) }, true},
		{"IPv6 client to VIP", vipFlow, func(t *testing.T) []byte { return frame(t, "2001:db8::7", "2001:db8::10", 6, 41234, 80, nil) }, true},
		{"IPv6 VIP to client, UDP", vipFlow, func(t *testing.T) []byte { return frame(t, "2001:db8::10", "2001:db8::7", 17, 8080, 41234, nil) }, true},
		{"other port of the VIP", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 6, 41234, 443, nil) }, false},
		{"matching port, other addresses", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.11", 6, 41234, 80, nil) }, false},
		{"ICMP to the VIP", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 1, 0, 0, nil) }, false},
		{"IPv4 later fragment", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 17, 41234, 80, laterFragment) }, false},
		{"IPv6 other address", vipFlow, func(t *testing.T) []byte { return frame(t, "2001:db8::7", "2001:db8::11", 6, 41234, 80, nil) }, false},
		{"IPv6 address differing in the last word", vipFlow, func(t *testing.T) []byte { return frame(t, "2001:db8::7", "2001:db8::1:10", 6, 41234, 80, nil) }, false},
		{"IPv6 extension header", vipFlow, func(t *testing.T) []byte { return frame(t, "2001:db8::7", "2001:db8::10", 6, 41234, 80, hopByHop) }, false},
		{"ICMPv6 to the VIP", vipFlow, func(t *testing.T) []byte { return frame(t, "2001:db8::7", "2001:db8::10", 58, 0, 0, nil) }, false},
		{"ARP", vipFlow, func(t *testing.T) []byte {
			return serialize(t, &layers.Ethernet{SrcMAC: macA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
				&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, Operation: 1,
					SourceHwAddress: macA, SourceProtAddress: []byte{192, 0, 2, 7}, DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 1, 0, 10}})
		}, false},
		{"VLAN-tagged in the frame", vipFlow, func(t *testing.T) []byte {
			return serialize(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeDot1Q},
				&layers.Dot1Q{VLANIdentifier: 100, Type: layers.EthernetTypeIPv4},
				&layers.IPv4{Version: 4, TTL: 64, SrcIP: net.IP{192, 0, 2, 7}, DstIP: net.IP{10, 1, 0, 10}, Protocol: 6},
				&layers.TCP{SrcPort: 41234, DstPort: 80})
		}, false},
		{"truncated after the Ethernet header", vipFlow, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 6, 41234, 80, nil)[:20] }, false},
		{"TCP only: TCP", tcpOnly, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 6, 41234, 80, nil) }, true},
		{"TCP only: UDP", tcpOnly, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 17, 41234, 80, nil) }, false},
		{"any address: IPv4", anyAddr, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "198.51.100.1", 17, 41234, 53, nil) }, true},
		{"any address: IPv6", anyAddr, func(t *testing.T) []byte { return frame(t, "2001:db8::7", "2001:db8::99", 17, 53, 41234, nil) }, true},
		{"any address: other port", anyAddr, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "198.51.100.1", 17, 41234, 54, nil) }, false},
		{"IPv6 only: IPv4", v6Only, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.1.0.10", 6, 41234, 80, nil) }, false},
		{"IPv6 only: any port", v6Only, func(t *testing.T) []byte { return frame(t, "2001:db8::10", "2001:db8::7", 6, 9, 41234, nil) }, true},
		{"300 addresses: the last", manyAddrs, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.9.1.43", 6, 41234, 80, nil) }, true},
		{"300 addresses: none", manyAddrs, func(t *testing.T) []byte { return frame(t, "192.0.2.7", "10.9.2.0", 6, 41234, 80, nil) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prog, err := Filter(tc.m, snaplen)
			if err != nil {
				t.Fatalf("Filter(%+v) = %v", tc.m, err)
			}
			vm, err := bpf.NewVM(prog)
			if err != nil {
				t.Fatalf("bpf.NewVM: %v", err)
			}
			pkt := tc.pkt(t)
			got, err := vm.Run(pkt)
			if err != nil {
				t.Fatalf("vm.Run: %v", err)
			}
			want := 0
			if tc.accept {
				want = snaplen
			}
			if got != want {
				t.Errorf("Filter(%s) keeps %d bytes, want %d", tc.name, got, want)
			}
		})
	}
}

func TestFilterBadMatch(t *testing.T) {
	var huge []netip.Addr
	for i := 0; i < 300; i++ {
		huge = append(huge, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8)}))
	}
	cases := []struct {
		name    string
		m       Match
		snaplen int
	}{
		{"ICMP", Match{Proto: 1}, 100},
		{"zero snaplen", Match{}, 0},
		{"zoned address", Match{Addrs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}}, 100},
		{"invalid address", Match{Addrs: []netip.Addr{{}}}, 100},
		{"too many IPv6 addresses", Match{Addrs: huge}, 100},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Filter(tc.m, tc.snaplen); !errors.Is(err, ErrBadOptions) {
				t.Errorf("Filter(%s) = %v, want ErrBadOptions", tc.name, err)
			}
		})
	}
}
