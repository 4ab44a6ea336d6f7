// Package conntrack reads the connection-tracking table of a network
// namespace: the flows that touch a VIP, a real server or a client, with
// both tuples, TCP state and NAT status, streamed so that memory does not
// grow with the table; the per-CPU and global statistics; and the event stream.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
)

// Flow is one conntrack entry as lbdoctor shows it.
type Flow struct {
	ID      uint32   `json:"id"`
	Proto   string   `json:"proto"`
	Orig    Tuple    `json:"orig"`
	Reply   Tuple    `json:"reply"`
	State   string   `json:"state,omitempty"` // TCP state, e.g. SYN_RECV
	Status  []string `json:"status"`          // SEEN_REPLY, ASSURED, SRC_NAT, DST_NAT, …
	Timeout uint32   `json:"timeout"`         // seconds left
	Mark    uint32   `json:"mark,omitempty"`
	Zone    uint16   `json:"zone,omitempty"`
}

// Tuple is one direction of a flow.
type Tuple struct {
	Src netip.AddrPort `json:"src"`
	Dst netip.AddrPort `json:"dst"`
}

func (t Tuple) String() string { return t.Src.String() + " → " + t.Dst.String() }

// HasStatus reports whether the flow carries a status flag (e.g. "ASSURED").
func (f Flow) HasStatus(name string) bool {
	for _, s := range f.Status {
		if s == name {
			return true
		}
	}
	return false
}

// Field picks the address a Filter compares.
type Field uint8

const (
	OrigSrc  Field = iota + 1 // the client, as it sent the packet
	OrigDst                   // the VIP, before DNAT
	ReplySrc                  // the real server, after DNAT
	ReplyDst                  // the address replies go to: the client, or the LB after SNAT
)

// Filter selects flows by one address (and optionally port and protocol) in
// one place of the tuples.
type Filter struct {
	Field Field
	Addr  netip.Addr
	Port  uint16 // 0: any
	Proto uint8  // 0: any (unix.IPPROTO_TCP, unix.IPPROTO_UDP)
}

// DumpStats says how much of the table one dump crossed.
type DumpStats struct {
	Received int `json:"received"` // entries the kernel sent
	Matched  int `json:"matched"`  // entries that matched the filter
	// KernelFiltered is true when the kernel applied the filter itself
	// (CTA_FILTER, Linux 5.8+); otherwise every entry crossed to user space.
	KernelFiltered bool `json:"kernel_filtered"`
}

// Netlink constants of ctnetlink (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig   = 1
	ctaTupleReply  = 2
	ctaFilter      = 25
	ctaTupleIP     = 1
	ctaTupleProto  = 2
	ctaIPv4Src     = 1
	ctaIPv4Dst     = 2
	ctaIPv6Src     = 3
	ctaIPv6Dst     = 4
	ctaProtoNum    = 1
	ctaProtoSrc    = 2
	ctaProtoDst    = 3
	ctaFilterOrig  = 1
	ctaFilterReply = 2

	filterIPSrc    = 1 << 0
	filterIPDst    = 1 << 1
	filterProtoNum = 1 << 3
	filterSrcPort  = 1 << 4
	filterDstPort  = 1 << 5

	ctGet = 1
)

// Dump streams the flows of ns that match f to fn, one at a time: memory
// stays flat however large the table is. The kernel filters when it can;
// every entry is checked again on its raw attributes before it is decoded.
func Dump(ns netns.Target, f Filter, fn func(Flow) error) (DumpStats, error) {
	if f.Field == 0 {
		return DumpStats{}, errors.New("conntrack filter needs an address and a tuple field")
	}
	return Scan(ns, f, func(_ Head, decode func() (Flow, error)) error {
		fl, err := decode()
		if err != nil {
			return err
		}
		return fn(fl)
	})
}

// Head is what a dump reads of every flow without decoding the whole
// entry: protocol, both tuples, status bits and TCP state — enough to count
// flows and to pick the few worth decoding.
type Head struct {
	Proto    uint8
	Orig     Tuple
	Reply    Tuple
	Status   uint32 // IPS_* bits, as statusBits names them
	TCPState uint8  // conntrack's TCP state; 0 (NONE) for other protocols
}

// Status bits Head.Has tests (enum ip_conntrack_status).
const (
	StatusSeenReply = 1 << 1
	StatusAssured   = 1 << 2
)

// Has reports whether every bit of bits is set.
func (h Head) Has(bits uint32) bool { return h.Status&bits == bits }

// State names the TCP state ("" for other protocols), as Flow.State does.
func (h Head) State() string {
	if h.Proto != unix.IPPROTO_TCP || h.TCPState == 0 {
		return ""
	}
	return TCPState(h.TCPState)
}

// Scan streams the flows of ns that match f (the zero Filter: every flow,
// both families) to fn as Heads; decode gives the whole Flow, decoded only
// for the flows fn asks it of. One dump, matched in user space, costs the
// kernel one walk of the table however many VIPs a caller selects, where a
// filtered dump per VIP walks it once each.
func Scan(ns netns.Target, f Filter, fn func(h Head, decode func() (Flow, error)) error) (DumpStats, error) {
	if f.Field != 0 && (!f.Addr.IsValid() || f.Field > ReplyDst) {
		return DumpStats{}, errors.New("conntrack filter needs an address and a tuple field")
	}
	sock, err := openDump(ns)
	if err != nil {
		return DumpStats{}, err
	}
	defer unix.Close(sock)
	return dumpOn(sock, ns, f, 1, func(m syscall.NetlinkMessage) error {
		h, err := rawHead(m.Data)
		if err != nil {
			return fmt.Errorf("dump conntrack in %s: %w", ns, err)
		}
		return fn(h, func() (Flow, error) {
			var ev ct.Event
			nm := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(m.Header.Type), Flags: netlink.HeaderFlags(m.Header.Flags)}, Data: m.Data}
			if err := ev.Unmarshal(nm); err != nil {
				return Flow{}, fmt.Errorf("decode conntrack entry: %w", err)
			}
			return convert(ev.Flow), nil
		})
	})
}

// Netlink attributes of a ctnetlink entry that a Head reads.
const (
	ctaStatus       = 3
	ctaProtoinfo    = 4
	ctaProtoinfoTCP = 1
	ctaTCPState     = 1
)

// rawHead reads a Head from a ctnetlink message in place.
func rawHead(data []byte) (Head, error) {
	var h Head
	if len(data) < 4 {
		return h, errors.New("short ctnetlink message")
	}
	var orig, reply rawTupleT
	var err error
	at := nlAttrs(data[4:])
	for at.next() {
		switch at.typ {
		case ctaTupleOrig:
			orig, err = rawTuple(at.val)
		case ctaTupleReply:
			reply, err = rawTuple(at.val)
		case ctaStatus:
			if len(at.val) == 4 {
				h.Status = binary.BigEndian.Uint32(at.val)
			}
		case ctaProtoinfo:
			for pi := nlAttrs(at.val); pi.next(); {
				if pi.typ != ctaProtoinfoTCP {
					continue
				}
				for tcp := nlAttrs(pi.val); tcp.next(); {
					if tcp.typ == ctaTCPState && len(tcp.val) == 1 {
						h.TCPState = tcp.val[0]
					}
				}
			}
		}
		if err != nil {
			return h, err
		}
	}
	h.Proto = orig.proto
	h.Orig = Tuple{netip.AddrPortFrom(orig.src.Unmap(), orig.srcPort), netip.AddrPortFrom(orig.dst.Unmap(), orig.dstPort)}
	h.Reply = Tuple{netip.AddrPortFrom(reply.src.Unmap(), reply.srcPort), netip.AddrPortFrom(reply.dst.Unmap(), reply.dstPort)}
	return h, at.err
}

// dumpOn runs one dump of f (the zero Filter: every flow, both families) on
// an open ctnetlink socket and hands each matching entry, undecoded, to fn.
func dumpOn(sock int, ns netns.Target, f Filter, seq uint32, fn func(syscall.NetlinkMessage) error) (DumpStats, error) {
	var st DumpStats
	req, err := dumpRequest(f)
	if err != nil {
		return st, err
	}
	req.Header.Length = uint32(unix.NLMSG_HDRLEN + len(req.Data))
	req.Header.Sequence = seq
	wire, err := req.MarshalBinary()
	if err != nil {
		return st, err
	}
	if err := unix.Sendto(sock, wire, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return st, fmt.Errorf("dump conntrack in %s: %w", ns, err)
	}
	st.KernelFiltered = f.Field != 0
	// One buffer for the whole dump: the kernel fills it with as many
	// entries as fit, and each is judged before the next read.
	buf := make([]byte, 256*1024)
	for {
		n, _, err := unix.Recvfrom(sock, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return st, fmt.Errorf("dump conntrack in %s: %w", ns, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return st, fmt.Errorf("dump conntrack in %s: parse: %w", ns, err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue // the rest of an earlier, abandoned dump
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return st, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return st, fmt.Errorf("dump conntrack in %s: %w", ns, unix.Errno(errno))
					}
				}
				continue
			}
			st.Received++
			if f.Field != 0 {
				ok, err := rawMatch(m.Data, f)
				if err != nil {
					return st, fmt.Errorf("dump conntrack in %s: %w", ns, err)
				}
				if !ok {
					st.KernelFiltered = false // the kernel sent what it should have filtered
					continue
				}
			}
			st.Matched++
			if err := fn(m); err != nil {
				return st, err
			}
		}
	}
}

// Dumper dumps the table of one namespace again and again over one socket
// opened once in it: a dump costs no namespace switch, no thread and no new
// socket. It is for one goroutine at a time.
type Dumper struct {
	ns   netns.Target
	sock int
	seq  uint32
}

// NewDumper opens a ctnetlink socket in ns.
func NewDumper(ns netns.Target) (*Dumper, error) {
	sock, err := openDump(ns)
	if err != nil {
		return nil, err
	}
	return &Dumper{ns: ns, sock: sock, seq: 1}, nil
}

// Close closes the socket.
func (d *Dumper) Close() error { return unix.Close(d.sock) }

// Tuples streams the original and reply tuples (and the protocol number) of
// the flows that match f — the zero Filter takes every flow — without
// decoding the rest of each entry.
func (d *Dumper) Tuples(f Filter, fn func(proto uint8, orig, reply Tuple)) (DumpStats, error) {
	if f.Field != 0 && (!f.Addr.IsValid() || f.Field > ReplyDst) {
		return DumpStats{}, errors.New("conntrack filter needs an address and a tuple field")
	}
	d.seq++
	return dumpOn(d.sock, d.ns, f, d.seq, func(m syscall.NetlinkMessage) error {
		o, r, err := rawTuples(m.Data)
		if err != nil {
			return fmt.Errorf("dump conntrack in %s: %w", d.ns, err)
		}
		fn(o.proto, Tuple{netip.AddrPortFrom(o.src, o.srcPort), netip.AddrPortFrom(o.dst, o.dstPort)},
			Tuple{netip.AddrPortFrom(r.src, r.srcPort), netip.AddrPortFrom(r.dst, r.dstPort)})
		return nil
	})
}

// rawTuples reads both tuples of a ctnetlink message.
func rawTuples(data []byte) (orig, reply rawTupleT, err error) {
	if len(data) < 4 {
		return orig, reply, errors.New("short ctnetlink message")
	}
	at := nlAttrs(data[4:])
	for at.next() {
		switch at.typ {
		case ctaTupleOrig:
			orig, err = rawTuple(at.val)
		case ctaTupleReply:
			reply, err = rawTuple(at.val)
		}
		if err != nil {
			return orig, reply, err
		}
	}
	return orig, reply, at.err
}

// openRaw opens a ctnetlink socket that belongs to ns, bound to the
// multicast groups given (0 for none: a socket for dumps). A plain socket,
// not a netlink library's connection: those collect a whole multi-part dump
// in memory before returning it.
func openRaw(ns netns.Target, groups uint32) (int, error) {
	sock := -1
	err := ns.Do(func() error {
		var err error
		sock, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		if err := unix.Bind(sock, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
			unix.Close(sock)
			return err
		}
		return nil
	})
	return sock, err
}

// openDump opens a socket for one dump in ns.
func openDump(ns netns.Target) (int, error) {
	sock, err := openRaw(ns, 0)
	if err != nil {
		return -1, fmt.Errorf("open conntrack netlink in %s: %w", ns, err)
	}
	// A dump must never hang a probe.
	tv := unix.Timeval{Sec: 10}
	unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	return sock, nil
}

// Flows returns the flows matching any of the filters, each once.
func Flows(ns netns.Target, filters ...Filter) ([]Flow, error) {
	seen := map[uint32]bool{}
	out := []Flow{}
	for _, f := range filters {
		_, err := Dump(ns, f, func(fl Flow) error {
			if !seen[fl.ID] {
				seen[fl.ID] = true
				out = append(out, fl)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Touching returns the filters for "any tuple touches addr" (port 0: any).
func Touching(addr netip.Addr, port uint16, proto uint8) []Filter {
	var fs []Filter
	for _, fld := range []Field{OrigSrc, OrigDst, ReplySrc, ReplyDst} {
		fs = append(fs, Filter{Field: fld, Addr: addr, Port: port, Proto: proto})
	}
	return fs
}

func dumpRequest(f Filter) (netlink.Message, error) {
	if f.Field == 0 {
		return netfilter.MarshalNetlink(netfilter.Header{
			SubsystemID: netfilter.NFSubsysCTNetlink,
			MessageType: ctGet,
			Family:      netfilter.ProtoUnspec,
			Flags:       netlink.Request | netlink.Dump,
		}, nil)
	}
	family := netfilter.ProtoIPv4
	ipSrc, ipDst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if f.Addr.Is6() && !f.Addr.Is4In6() {
		family, ipSrc, ipDst = netfilter.ProtoIPv6, ctaIPv6Src, ctaIPv6Dst
	}
	addr := f.Addr.Unmap().AsSlice()
	src := f.Field == OrigSrc || f.Field == ReplySrc
	var flags uint32
	ip := netfilter.Attribute{Type: ctaTupleIP, Nested: true}
	proto := netfilter.Attribute{Type: ctaTupleProto, Nested: true}
	if src {
		flags |= filterIPSrc
		ip.Children = append(ip.Children, netfilter.Attribute{Type: ipSrc, Data: addr})
	} else {
		flags |= filterIPDst
		ip.Children = append(ip.Children, netfilter.Attribute{Type: ipDst, Data: addr})
	}
	tuple := netfilter.Attribute{Type: ctaTupleOrig, Nested: true, Children: []netfilter.Attribute{ip}}
	if f.Field == ReplySrc || f.Field == ReplyDst {
		tuple.Type = ctaTupleReply
	}
	if f.Proto != 0 {
		flags |= filterProtoNum
		proto.Children = append(proto.Children, netfilter.Attribute{Type: ctaProtoNum, Data: []byte{f.Proto}})
		if f.Port != 0 {
			pt, pflag := uint16(ctaProtoDst), uint32(filterDstPort)
			if src {
				pt, pflag = ctaProtoSrc, filterSrcPort
			}
			flags |= pflag
			proto.Children = append(proto.Children, netfilter.Attribute{Type: pt, Data: binary.BigEndian.AppendUint16(nil, f.Port)})
		}
		tuple.Children = append(tuple.Children, proto)
	}
	var origFlags, replyFlags uint32
	if tuple.Type == ctaTupleOrig {
		origFlags = flags
	} else {
		replyFlags = flags
	}
	filter := netfilter.Attribute{Type: ctaFilter, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaFilterOrig, Data: binary.NativeEndian.AppendUint32(nil, origFlags)},
		{Type: ctaFilterReply, Data: binary.NativeEndian.AppendUint32(nil, replyFlags)},
	}}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ctGet,
		Family:      family,
		Flags:       netlink.Request | netlink.Dump,
	}, []netfilter.Attribute{tuple, filter})
}

// rawMatch checks a ctnetlink message against f by walking its tuple
// attributes, without decoding the whole entry.
func rawMatch(data []byte, f Filter) (bool, error) {
	if len(data) < 4 {
		return false, errors.New("short ctnetlink message")
	}
	want := uint16(ctaTupleOrig)
	if f.Field == ReplySrc || f.Field == ReplyDst {
		want = ctaTupleReply
	}
	at := nlAttrs(data[4:])
	for at.next() {
		if at.typ != want {
			continue
		}
		t, err := rawTuple(at.val)
		if err != nil {
			return false, err
		}
		return t.matches(f), nil
	}
	return false, at.err
}

type rawTupleT struct {
	src, dst         netip.Addr
	proto            uint8
	srcPort, dstPort uint16
}

func (t rawTupleT) matches(f Filter) bool {
	addr, port := t.dst, t.dstPort
	if f.Field == OrigSrc || f.Field == ReplySrc {
		addr, port = t.src, t.srcPort
	}
	return addr == f.Addr.Unmap() && (f.Proto == 0 || f.Proto == t.proto) && (f.Port == 0 || f.Port == port)
}

// rawTuple decodes one CTA_TUPLE_* attribute. It walks the attribute
// headers in place: events and dumps decode one per flow, and a decoder
// object per attribute cost more than the rest of attribution.
func rawTuple(b []byte) (rawTupleT, error) {
	var t rawTupleT
	at := nlAttrs(b)
	for at.next() {
		var inner nlAttr
		switch at.typ {
		case ctaTupleIP:
			for inner = nlAttrs(at.val); inner.next(); {
				a, _ := netip.AddrFromSlice(inner.val)
				switch inner.typ {
				case ctaIPv4Src, ctaIPv6Src:
					t.src = a
				case ctaIPv4Dst, ctaIPv6Dst:
					t.dst = a
				}
			}
		case ctaTupleProto:
			for inner = nlAttrs(at.val); inner.next(); {
				switch inner.typ {
				case ctaProtoNum:
					if len(inner.val) != 1 {
						return t, fmt.Errorf("netlink: attribute %d: want 1 byte, got %d", inner.typ, len(inner.val))
					}
					t.proto = inner.val[0]
				case ctaProtoSrc:
					t.srcPort = port(inner.val)
				case ctaProtoDst:
					t.dstPort = port(inner.val)
				}
			}
		}
		if inner.err != nil {
			return t, inner.err
		}
	}
	return t, at.err
}

func port(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// nlAttr walks a run of netlink attributes in place: next moves to the
// following one (typ without the nested/byte-order flags, val its payload)
// and reports false at the end or on a malformed header (err).
type nlAttr struct {
	rest []byte
	typ  uint16
	val  []byte
	err  error
}

func nlAttrs(b []byte) nlAttr { return nlAttr{rest: b} }

func (a *nlAttr) next() bool {
	if len(a.rest) == 0 || a.err != nil {
		return false
	}
	if len(a.rest) < unix.SizeofNlAttr {
		a.err = errors.New("netlink: short attribute header")
		return false
	}
	l := int(binary.NativeEndian.Uint16(a.rest))
	if l < unix.SizeofNlAttr || l > len(a.rest) {
		a.err = fmt.Errorf("netlink: attribute length %d out of range", l)
		return false
	}
	a.typ = binary.NativeEndian.Uint16(a.rest[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	a.val = a.rest[unix.SizeofNlAttr:l]
	a.rest = a.rest[min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(a.rest)):]
	return true
}

func convert(f *ct.Flow) Flow {
	out := Flow{
		ID:      f.ID,
		Proto:   proto.Name(f.TupleOrig.Proto.Protocol),
		Orig:    tuple(f.TupleOrig),
		Reply:   tuple(f.TupleReply),
		Status:  statusNames(f.Status),
		Timeout: f.Timeout,
		Mark:    f.Mark,
		Zone:    f.Zone,
	}
	if f.TupleOrig.Proto.Protocol == unix.IPPROTO_TCP && f.ProtoInfo.TCP != nil {
		out.State = TCPState(f.ProtoInfo.TCP.State)
	}
	return out
}

func tuple(t ct.Tuple) Tuple {
	return Tuple{
		Src: netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort),
		Dst: netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort),
	}
}

var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

// TCPState names conntrack's TCP state number (enum tcp_conntrack).
func TCPState(s uint8) string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return fmt.Sprintf("STATE_%d", s)
}

var statusBits = []string{"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
	"SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE", "UNTRACKED",
	"HELPER", "OFFLOAD", "HW_OFFLOAD"}

func statusNames(s ct.Status) []string {
	out := []string{}
	for i, n := range statusBits {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// String renders a flow like conntrack -L does, with lbdoctor's names.
func (f Flow) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", f.Proto, f.Orig)
	if f.State != "" {
		fmt.Fprintf(&b, " %s", f.State)
	}
	fmt.Fprintf(&b, " reply %s [%s] timeout %ds", f.Reply, strings.Join(f.Status, ","), f.Timeout)
	return b.String()
}

// nfnlgrpConntrackNew is the multicast group of confirmed flows
// (NFNLGRP_CONNTRACK_NEW).
const nfnlgrpConntrackNew = 1

// ErrEventsLost says the kernel dropped events because the socket buffer
// was full: flows confirmed meanwhile were not seen.
var ErrEventsLost = errors.New("conntrack events lost (socket buffer full)")

// NewFlows is a subscription to the flows conntrack confirms in one
// namespace, read raw: a flow costs one message, decoded to its tuples only.
// It is for one goroutine at a time.
type NewFlows struct {
	ns netns.Target
	// The socket is non-blocking and never waits: its reader reads what is
	// queued when it chooses (on a period, or when a drop needs it). It is
	// not handed to Go's netpoller: registered there, each flow confirmed
	// (thousands a second under a flood) woke the runtime's idle thread in
	// epoll_wait for an event nobody waited for.
	sock int
	// One recvmmsg reads up to len(msgs) events (a flood queues thousands),
	// each into its own slot of buf.
	buf  []byte
	iov  []unix.Iovec
	msgs []mmsghdr
}

// mmsghdr is struct mmsghdr: the kernel pads it to msghdr's alignment, as
// Go does.
type mmsghdr struct {
	Hdr unix.Msghdr
	Len uint32
}

// Sizes of a batched read: an event is one flow (a few hundred bytes; the
// kernel sizes it to what the flow has), so a slot holds any of them.
const (
	eventSlot  = 8 << 10
	eventBatch = 64
)

// SubscribeNew subscribes to the flows ns confirms from now on. Reads never
// wait: Read takes what is queued.
func SubscribeNew(ns netns.Target) (*NewFlows, error) {
	sock, err := openRaw(ns, 1<<(nfnlgrpConntrackNew-1))
	if err != nil {
		return nil, fmt.Errorf("subscribe to conntrack events in %s: %w", ns, err)
	}
	// A flood confirms thousands of flows a second, each event a few KiB
	// of socket memory: room for some seconds of them (root may exceed
	// rmem_max). Only what is queued takes memory.
	if unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20) != nil {
		unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<20)
	}
	s := &NewFlows{ns: ns, sock: sock, buf: make([]byte, eventSlot*eventBatch), iov: make([]unix.Iovec, eventBatch), msgs: make([]mmsghdr, eventBatch)}
	for i := range s.msgs {
		s.iov[i].Base = &s.buf[i*eventSlot]
		s.iov[i].SetLen(eventSlot)
		s.msgs[i].Hdr.Iov = &s.iov[i]
		s.msgs[i].Hdr.SetIovlen(1)
	}
	return s, nil
}

// Close ends the subscription. Not while a Read runs.
func (s *NewFlows) Close() error {
	if s.sock < 0 {
		return nil
	}
	err := unix.Close(s.sock)
	s.sock = -1
	return err
}

// Read hands the tuples of what has arrived to fn. It returns drained =
// true when the socket held nothing more (everything the kernel queued
// before the return was read); ErrEventsLost when the kernel dropped some
// (or an event did not fit its slot: it is lost all the same).
func (s *NewFlows) Read(fn func(proto uint8, orig, reply Tuple)) (drained bool, err error) {
	if s.sock < 0 {
		return false, fmt.Errorf("read conntrack events in %s: %w", s.ns, os.ErrClosed)
	}
	n, err := recvmmsg(s.sock, s.msgs, unix.MSG_DONTWAIT)
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		return true, nil
	case errors.Is(err, unix.ENOBUFS):
		return false, ErrEventsLost
	case err != nil:
		return false, fmt.Errorf("read conntrack events in %s: %w", s.ns, err)
	}
	truncated := false
	for i := range s.msgs[:n] {
		if s.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
			truncated = true
			continue
		}
		b := s.buf[i*eventSlot : i*eventSlot+int(s.msgs[i].Len)]
		for len(b) >= unix.NLMSG_HDRLEN {
			h := (*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
			l := int(h.Len)
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return false, fmt.Errorf("read conntrack events in %s: parse: netlink message length %d out of range", s.ns, l)
			}
			if h.Type != unix.NLMSG_ERROR && h.Type != unix.NLMSG_DONE {
				if o, r, err := rawTuples(b[unix.NLMSG_HDRLEN:l]); err == nil { // else: not a flow
					fn(o.proto, Tuple{netip.AddrPortFrom(o.src, o.srcPort), netip.AddrPortFrom(o.dst, o.dstPort)},
						Tuple{netip.AddrPortFrom(r.src, r.srcPort), netip.AddrPortFrom(r.dst, r.dstPort)})
				}
			}
			b = b[min(nlmsgAlign(l), len(b)):]
		}
	}
	if truncated {
		return false, ErrEventsLost
	}
	return false, nil
}

func nlmsgAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// recvmmsg receives up to len(msgs) datagrams in one system call, which
// must not wait (MSG_DONTWAIT): it is made raw, unknown to Go's scheduler.
// A batch of events takes the kernel tens of microseconds to copy out; as
// a system call the runtime knew of, its monitor took the P away from the
// reader meanwhile (a thread woken to hold it, the reader waiting to get it
// back), once per read under a flood.
func recvmmsg(fd int, msgs []mmsghdr, flags int) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
