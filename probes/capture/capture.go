// Package capture reads the packets of the selected services' flows in a
// load balancer's network namespace — AF_PACKET sockets (TPACKET_V3,
// gopacket/gopacket's pure-Go afpacket) opened inside the namespace on the
// interfaces the flows cross, filtered in the kernel by classic BPF built
// from the addresses and ports lbdoctor knows (never from a user-typed
// expression) — and writes them as pcapng. It counts what the kernel lost
// (PACKET_STATISTICS, kept as running totals) and never hides it.
//
// One socket per interface keeps the order in which the kernel saw that
// interface's packets, both ways; a packet's direction is the sll_pkttype
// the kernel stored beside it (PACKET_OUTGOING: sent). Packets of
// different interfaces come from different rings: their relative order is
// their timestamps', not the handler's calls'.
//
// Which leg of a flow a packet is (client→VIP, LB→real, real→LB,
// LB→client) is not decided here: see Legs.
package capture

import (
	"net/netip"
	"time"

	"github.com/lbdoctor/lbdoctor/flowpath"
)

// Direction is whether the LB received or sent a packet on an interface
// (sll_pkttype PACKET_OUTGOING is Out).
type Direction uint8

const (
	In Direction = iota
	Out
)

// String is "in" or "out".
func (d Direction) String() string {
	if d == Out {
		return "out"
	}
	return "in"
}

// MarshalText writes a direction as "in" or "out" (JSON).
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Packet is one captured packet. Data is the first snaplen bytes starting
// at the network header's link layer (Ethernet on veth); it is valid only
// during the handler's call.
type Packet struct {
	Time      time.Time
	Interface string
	IfIndex   int
	Direction Direction
	Length    int // on the wire
	Data      []byte
	Socket    int // which socket saw it: an index into (*Capture).Stats
}

// Match selects packets in the kernel: IP packets of Proto (0: TCP and
// UDP) whose source or destination address is one of Addrs and whose
// source or destination port is one of Ports (none: any port).
type Match struct {
	Proto uint8
	Addrs []netip.Addr
	Ports []uint16
}

// Options choose what is captured.
type Options struct {
	Interfaces []string // none: every interface of the namespace that is up
	Match      Match
	Snaplen    int // bytes kept per packet (default DefaultSnaplen)
	RingBytes  int // ring size per socket (default DefaultRingBytes, not afpacket's 64 MiB)
}

// DefaultSnaplen keeps the headers the legs need and a little payload.
const DefaultSnaplen = 256

// Stats is what the kernel counted on one socket since it was opened
// (running totals: each PACKET_STATISTICS read resets the kernel's).
type Stats struct {
	Interface string `json:"interface"` // one socket per interface
	Packets   uint64 `json:"packets"`   // accepted by the socket's filter, drops included
	Drops     uint64 `json:"drops"`     // lost: the ring was full
	Freezes   uint64 `json:"queue_freezes"`
	// Unknown counts packets whose direction could not be read from the
	// ring (see frameType): they are given In.
	Unknown uint64 `json:"direction_unknown,omitempty"`
	// Unread counts packets the kernel put in the ring that were never
	// delivered: still queued while the capture runs; after Close, left
	// behind when it ended (the handler said stop, or the context's end
	// came with more than the rings could give in its grace).
	Unread uint64 `json:"unread"`
	// Outside counts packets the kernel's filter took on their ports
	// alone that had none of the match's addresses (Capture.Widened):
	// read and left out, never handled.
	Outside uint64 `json:"outside,omitempty"`
	Ended   string `json:"ended,omitempty"` // why the socket stopped before the capture did
}

// LegOf is what a packet was on the NAT path: its flow and leg. Kind is
// one of flowpath.Request (client→VIP), flowpath.ToReal (LB→real),
// flowpath.Reply (real→LB), flowpath.ToClient (LB→client).
type LegOf struct {
	Client netip.AddrPort
	VIP    netip.AddrPort
	Real   netip.AddrPort
	Kind   flowpath.LegKind
}
