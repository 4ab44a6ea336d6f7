package capture

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Where a packet's metadata sits in a TPACKET_V3 ring (linux/if_packet.h,
// net/packet/af_packet.c tpacket_rcv): a struct tpacket3_hdr (48 bytes,
// aligned to 16), a struct sockaddr_ll right after it, then the frame at
// tp_mac = TPACKET_ALIGN(48 + 20 + 16) - 14 = 82 for a 14-byte link header
// (Ethernet, veth, loopback) with no tp_reserve, which afpacket never sets.
const (
	v3MacOff      = 82
	v3OffSnaplen  = 12 // tp_snaplen, uint32
	v3OffMac      = 24 // tp_mac, uint16
	v3OffSockaddr = 48 // struct sockaddr_ll
	llOffFamily   = 0  // sll_family, uint16
	llOffIfindex  = 4  // sll_ifindex, int32
	llOffPkttype  = 10 // sll_pkttype, uint8
)

// frameType reads the sll_pkttype the kernel stored beside a packet in the
// ring (PACKET_OUTGOING for what the host sent): gopacket's afpacket gives
// the frame but not its type. data must be a frame ZeroCopyReadPacketData
// just returned (it points into the ring). The header it finds is used
// only when it proves to be this frame's: tp_mac and tp_snaplen match,
// sll_family is AF_PACKET and sll_ifindex the packet's interface; else ok
// is false. The bytes read lie inside the ring's block whatever tp_mac is
// (a frame starts at least 68 bytes past a header that starts past the
// block's own).
func frameType(data []byte, ifindex int) (pkttype uint8, ok bool) {
	if len(data) == 0 {
		return 0, false
	}
	hdr := unsafe.Add(unsafe.Pointer(unsafe.SliceData(data)), -v3MacOff)
	ll := unsafe.Add(hdr, v3OffSockaddr)
	if *(*uint16)(unsafe.Add(hdr, v3OffMac)) != v3MacOff ||
		*(*uint32)(unsafe.Add(hdr, v3OffSnaplen)) != uint32(len(data)) ||
		*(*uint16)(unsafe.Add(ll, llOffFamily)) != unix.AF_PACKET ||
		*(*int32)(unsafe.Add(ll, llOffIfindex)) != int32(ifindex) {
		return 0, false
	}
	return *(*uint8)(unsafe.Add(ll, llOffPkttype)), true
}

// frameAddrs reads the source and destination addresses of a VLAN-less
// Ethernet frame's IPv4 or IPv6 header (the offsets Filter reads); ok is
// false for another EtherType or a frame too short to hold them.
func frameAddrs(frame []byte) (src, dst netip.Addr, ok bool) {
	if len(frame) < offEtherType+2 {
		return src, dst, false
	}
	switch binary.BigEndian.Uint16(frame[offEtherType:]) {
	case etherIPv4:
		if len(frame) < offV4Dst+4 {
			return src, dst, false
		}
		return netip.AddrFrom4([4]byte(frame[offV4Src : offV4Src+4])), netip.AddrFrom4([4]byte(frame[offV4Dst : offV4Dst+4])), true
	case etherIPv6:
		if len(frame) < offV6Dst+16 {
			return src, dst, false
		}
		return netip.AddrFrom16([16]byte(frame[offV6Src : offV6Src+16])), netip.AddrFrom16([16]byte(frame[offV6Dst : offV6Dst+16])), true
	}
	return src, dst, false
}
