package drops

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/proto"
)

// Packet is what the kernel side saw of one dropped packet.
type Packet struct {
	Netns    uint32         `json:"netns"`
	Reason   uint32         `json:"reason_code"`
	Location uint64         `json:"location"`
	Family   uint8          `json:"family"` // 4, 6, or 0 when not IP
	Proto    uint8          `json:"proto"`
	Src      netip.AddrPort `json:"src"`
	Dst      netip.AddrPort `json:"dst"`
	// Caller is, for a NETFILTER_DROP in aggregate mode, the return address
	// in the function that ran the netfilter hook (0: not known); HookOf
	// names the hook from its symbol.
	Caller uint64 `json:"caller,omitempty"`
	// ICMPType and ICMPCode are an ICMP (IPv4) or ICMPv6 message's type
	// and code, read from its header by the kernel side; 0 for other
	// protocols (and left out of JSON when 0: an echo reply's are 0 too).
	ICMPType uint8 `json:"icmp_type,omitempty"`
	ICMPCode uint8 `json:"icmp_code,omitempty"`
}

// ICMP message types lbdoctor tells apart (RFC 792, RFC 4443).
const (
	ICMPRedirect   = 5   // IPv4 Redirect
	ICMPv6Redirect = 137 // NDISC Redirect
)

// Redirect reports whether the packet is an ICMP redirect (IPv4 type 5,
// ICMPv6 type 137): a router telling a host of a better first hop.
func (p Packet) Redirect() bool {
	switch {
	case p.Family == 4 && p.Proto == unix.IPPROTO_ICMP:
		return p.ICMPType == ICMPRedirect
	case p.Family == 6 && p.Proto == unix.IPPROTO_ICMPV6:
		return p.ICMPType == ICMPv6Redirect
	}
	return false
}

// ICMPMessage names an ICMP or ICMPv6 packet's message as IANA does (from
// golang.org/x/net's tables), with its type and code: "redirect, type 5
// code 1"; "" for other protocols.
func (p Packet) ICMPMessage() string {
	var name string
	switch {
	case p.Family == 4 && p.Proto == unix.IPPROTO_ICMP:
		name = ipv4.ICMPType(p.ICMPType).String()
	case p.Family == 6 && p.Proto == unix.IPPROTO_ICMPV6:
		name = ipv6.ICMPType(p.ICMPType).String()
	default:
		return ""
	}
	tc := "type " + strconv.Itoa(int(p.ICMPType)) + " code " + strconv.Itoa(int(p.ICMPCode))
	if name == "<nil>" { // a type IANA has not named
		return tc
	}
	return name + ", " + tc
}

// RawEvent is the per-packet detail only event mode has.
type RawEvent struct {
	TimeNs   uint64 `json:"time_ns"` // CLOCK_MONOTONIC
	Ifindex  uint32 `json:"ifindex"`
	Ifname   string `json:"ifname,omitempty"`
	Len      uint32 `json:"len"`
	CPU      uint32 `json:"cpu"`
	TCPFlags uint8  `json:"tcp_flags"`
	// Stack is the kernel stack at the drop (with Config.Stack), innermost first.
	Stack []uint64 `json:"-"`
}

// Aggregate is one row of aggregate mode.
type Aggregate struct {
	Packet
	Count uint64 `json:"count"`
	// NotItemised marks the drops at one place of flows the aggregate map
	// had no room for: Packet has the place (netns, reason, location) only.
	NotItemised bool `json:"not_itemised,omitempty"`
}

func packetOf(netns, reason uint32, loc uint64, family, proto uint8, s, d [16]uint8, sport, dport uint16) Packet {
	p := Packet{Netns: netns, Reason: reason, Location: loc, Family: family, Proto: proto}
	if family != 0 {
		sa, da := netip.AddrFrom16(s).Unmap(), netip.AddrFrom16(d).Unmap()
		p.Src, p.Dst = netip.AddrPortFrom(sa, sport), netip.AddrPortFrom(da, dport)
	}
	return p
}

// Endpoints are the packet's source and destination the way people write
// them: ADDR:PORT, or the address alone for a protocol without ports.
func (p Packet) Endpoints() (src, dst string) {
	if !proto.HasPorts(p.Proto) {
		return p.Src.Addr().String(), p.Dst.Addr().String()
	}
	return p.Src.String(), p.Dst.String()
}

// TCPFlags renders TCP flags the way tcpdump's readers know them. Each
// event of a TCP flood names its flags: the 256 texts are made once.
func TCPFlags(f uint8) string { return tcpFlagTexts()[f] }

var tcpFlagTexts = sync.OnceValue(func() *[256]string {
	var t [256]string
	for f := range t {
		t[f] = tcpFlags(uint8(f))
	}
	return &t
})

func tcpFlags(f uint8) string {
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// Kind names a TCP segment by its flags: "SYN", "SYN-ACK", "RST", …
func Kind(flags uint8) string {
	switch {
	case flags&0x02 != 0 && flags&0x10 != 0:
		return "SYN-ACK"
	case flags&0x02 != 0:
		return "SYN"
	case flags&0x04 != 0:
		return "RST"
	case flags&0x01 != 0:
		return "FIN"
	case flags&0x10 != 0:
		return "ACK"
	}
	return "segment"
}
