package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket/afpacket"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// ErrNoInterface reports an interface asked for that the namespace does
// not have: bad input.
var ErrNoInterface = errors.New("no such interface")

// DefaultRingBytes is the ring of one socket when Options leave it out:
// 4 MiB, about 11,000 packets of DefaultSnaplen — a few tenths of a second
// of a flood at the rates a veth carries on one core, where afpacket's
// default would map 64 MiB per interface.
const DefaultRingBytes = 4 << 20

// Limits of the options (bad input outside them).
const (
	MaxSnaplen   = 65535
	minRingBytes = 2 * 4096
	MaxRingBytes = 1 << 30
)

const (
	// pollTimeout bounds how long a reader waits in poll(2) before it looks
	// at whether the capture ended: a cancelled context ends Run within it
	// (and the readers' last handler calls).
	pollTimeout = 20 * time.Millisecond
	// blockTimeout is TPACKET_V3's retire timer: a block holding packets
	// is handed over at the latest this long after it was opened, so a
	// quiet link's packets arrive within it, and a drain that waited
	// pollTimeout (longer) has seen every packet queued before it began.
	blockTimeout = 10 * time.Millisecond
	maxBlockSize = 128 << 10
)

// Skip is an interface of the namespace that is not captured, and why.
type Skip struct {
	Interface string `json:"interface"`
	Reason    string `json:"reason"`
}

// Capture is a set of AF_PACKET sockets opened in one namespace: one per
// interface, each with its own ring and the same filter.
type Capture struct {
	ns      netns.Target
	opt     Options
	socks   []*socket
	skipped []Skip
	// addrs, when set, are the match's addresses, selected here: the
	// kernel's filter takes the ports alone (see Widened).
	addrs   map[netip.Addr]struct{}
	widened string

	runMu   sync.Mutex // one Run at a time
	closed  bool
	handleM sync.Mutex // handler calls are serialised
}

type socket struct {
	iface   string
	ifindex int
	tp      *afpacket.TPacket

	mu    sync.Mutex // guards below
	stats Stats
	last  [3]uint32 // afpacket's running uint32 totals at the last read

	// since is when the reject-all filter was on: a packet stamped before
	// it passed no filter, and is never delivered, should the drain have
	// missed it (a block the kernel's retire timer handed over late, on a
	// loaded machine). The ring's stamps are CLOCK_REALTIME, as time.Now.
	since time.Time

	delivered atomic.Uint64 // packets read from the ring: given to the handler, or outside
	outside   atomic.Uint64 // of those, not the match's (a ports-only kernel filter): not given
	done      bool          // the reader ended for good (Ended set) or the ring is closed
}

// testAfterBind, when set (tests only), runs on each socket after it is
// bound, before any filter: what arrives then must never be delivered.
var testAfterBind func(iface string)

// Open opens the capture's sockets inside ns (a locked OS thread that
// joined it): on opt.Interfaces, or on every Ethernet interface of ns that
// is up (loopback only when asked for, or when the match names a loopback
// address), one socket each — packets the namespace received and sent, in
// the order the kernel saw them on that interface — with a ring of
// opt.RingBytes. Each socket gets
// a reject-all filter first, is drained, then gets the filter built from
// opt.Match (Filter): packets that reached it before are never delivered
// (nor any the drain missed: stamped before the reject-all filter was on).
// Errors: ErrBadOptions and ErrNoInterface (bad input), a missing
// privilege as unix.EPERM (CAP_NET_RAW; CAP_SYS_ADMIN to enter ns).
func Open(ns netns.Target, opt Options) (*Capture, error) {
	if opt.Snaplen == 0 {
		opt.Snaplen = DefaultSnaplen
	}
	if opt.RingBytes == 0 {
		opt.RingBytes = DefaultRingBytes
	}
	if opt.Snaplen < 0 || opt.Snaplen > MaxSnaplen {
		return nil, fmt.Errorf("snaplen %d: want 1 to %d bytes: %w", opt.Snaplen, MaxSnaplen, ErrBadOptions)
	}
	if opt.RingBytes < minRingBytes || opt.RingBytes > MaxRingBytes {
		return nil, fmt.Errorf("ring of %d bytes: want %d to %d: %w", opt.RingBytes, minRingBytes, MaxRingBytes, ErrBadOptions)
	}
	c := &Capture{ns: ns, opt: opt}
	body, err := Filter(opt.Match, opt.Snaplen)
	if errors.Is(err, ErrFilterTooLong) && len(opt.Match.Ports) > 0 {
		// Too many addresses to compare one by one in the kernel (an LB
		// of many services): it filters on the ports, the addresses are
		// selected here — as the drop tracer does past its bound.
		ports := opt.Match
		ports.Addrs = nil
		if body, err = Filter(ports, opt.Snaplen); err == nil {
			c.addrs = make(map[netip.Addr]struct{}, len(opt.Match.Addrs))
			for _, a := range opt.Match.Addrs {
				c.addrs[a.Unmap()] = struct{}{}
			}
			c.widened = fmt.Sprintf("the kernel's filter takes the ports alone (%d addresses are more than its %d instructions compare): the addresses are selected in user space", len(opt.Match.Addrs), maxInsns)
		}
	}
	if err != nil {
		return nil, err
	}
	filter, err := socketFilter(body)
	if err != nil {
		return nil, fmt.Errorf("capture filter: %w", err)
	}
	err = ns.Do(func() error {
		links, skipped, err := pickLinks(opt)
		if err != nil {
			return err
		}
		c.skipped = skipped
		for _, l := range links {
			s, err := openSocket(l, opt)
			if err != nil {
				return err
			}
			c.socks = append(c.socks, s)
		}
		return nil
	})
	if err != nil {
		c.closeSockets()
		return nil, err
	}
	// Drain each socket (outside the namespace: a socket, once open, is
	// read from anywhere), all at once: each waits pollTimeout.
	errs := make([]error, len(c.socks))
	var wg sync.WaitGroup
	for i, s := range c.socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.arm(filter)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.closeSockets()
		return nil, err
	}
	return c, nil
}

// pickLinks finds the interfaces to open, in the current namespace.
func pickLinks(opt Options) ([]netlink.Link, []Skip, error) {
	all, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list interfaces: %w", err)
	}
	byName := map[string]netlink.Link{}
	for _, l := range all {
		byName[l.Attrs().Name] = l
	}
	var out []netlink.Link
	var skipped []Skip
	if len(opt.Interfaces) > 0 {
		seen := map[string]bool{}
		for _, name := range opt.Interfaces {
			l, ok := byName[name]
			if !ok {
				return nil, nil, fmt.Errorf("interface %q: %w", name, ErrNoInterface)
			}
			if !ethernetLike(l) {
				return nil, nil, fmt.Errorf("interface %q has link type %s: only Ethernet, veth and loopback links are captured: %w", name, l.Attrs().EncapType, ErrBadOptions)
			}
			if !seen[name] {
				seen[name] = true
				out = append(out, l)
			}
		}
		return out, nil, nil
	}
	wantLo := false
	for _, a := range opt.Match.Addrs {
		wantLo = wantLo || a.IsLoopback()
	}
	for _, l := range all {
		at := l.Attrs()
		switch {
		case at.Flags&net.FlagUp == 0:
			// A link that is down carries nothing; named so the user knows.
			skipped = append(skipped, Skip{Interface: at.Name, Reason: "down"})
		case at.Flags&net.FlagLoopback != 0 && !wantLo:
			skipped = append(skipped, Skip{Interface: at.Name, Reason: "loopback: only the LB's own traffic crosses it, no client's"})
		case !ethernetLike(l):
			skipped = append(skipped, Skip{Interface: at.Name, Reason: "link type " + at.EncapType + ": not Ethernet"})
		default:
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, skipped, fmt.Errorf("no interface to capture on: none is up and Ethernet: %w", ErrNoInterface)
	}
	return out, skipped, nil
}

// ethernetLike reports whether the link's frames start with a 14-byte
// Ethernet header (Ethernet, veth, bridges, dummy; loopback fakes one).
func ethernetLike(l netlink.Link) bool {
	switch l.Attrs().EncapType {
	case "ether", "loopback":
		return true
	}
	return false
}

// ringGeometry splits a ring into TPACKET_V3 blocks: at most 128 KiB each
// (a full block is handed over at once), at least two.
func ringGeometry(ring int) (blockSize, blocks int) {
	page := unix.Getpagesize()
	blockSize = min(maxBlockSize, ring/2)
	blockSize -= blockSize % page
	blockSize = max(blockSize, page)
	return blockSize, max(2, ring/blockSize)
}

// openSocket opens one socket on l, in the current namespace, with the
// reject-all filter on.
func openSocket(l netlink.Link, opt Options) (*socket, error) {
	name := l.Attrs().Name
	blockSize, blocks := ringGeometry(opt.RingBytes)
	frame := min(blockSize, 4096)
	tp, err := afpacket.NewTPacket(
		afpacket.OptInterface(name),
		afpacket.TPacketVersion3,
		afpacket.OptFrameSize(frame),
		afpacket.OptBlockSize(blockSize),
		afpacket.OptNumBlocks(blocks),
		afpacket.OptBlockTimeout(blockTimeout),
		afpacket.OptPollTimeout(pollTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("open packet socket on %s: %w", name, err)
	}
	if testAfterBind != nil {
		testAfterBind(name)
	}
	if err := tp.SetBPF(rejectAll); err != nil {
		tp.Close()
		return nil, fmt.Errorf("packet socket on %s: attach filter: %w", name, err)
	}
	return &socket{iface: name, ifindex: l.Attrs().Index, tp: tp, stats: Stats{Interface: name}, since: time.Now()}, nil
}

// arm empties the ring of what came in before the reject-all filter, then
// puts the real filter on: libpcap's answer to the attach race.
func (s *socket) arm(filter []bpf.RawInstruction) error {
	for {
		_, _, err := s.tp.ZeroCopyReadPacketData()
		if errors.Is(err, afpacket.ErrTimeout) {
			break
		}
		if err != nil {
			return fmt.Errorf("packet socket on %s: drain: %w", s.iface, err)
		}
	}
	// Nothing passes the reject-all filter, so these totals stand still
	// until the real filter goes on: what the socket counts from here on
	// is the capture's.
	if _, err := s.readStats(); err != nil {
		return fmt.Errorf("packet socket on %s: %w", s.iface, err)
	}
	s.mu.Lock()
	s.stats.Packets, s.stats.Drops, s.stats.Freezes = 0, 0, 0
	s.mu.Unlock()
	if err := s.tp.SetBPF(filter); err != nil {
		return fmt.Errorf("packet socket on %s: attach filter: %w", s.iface, err)
	}
	return nil
}

// readStats reads PACKET_STATISTICS (which resets the kernel's counters;
// afpacket keeps uint32 totals) into the socket's uint64 running totals.
func (s *socket) readStats() (Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tp == nil {
		return s.stats, nil
	}
	_, v3, err := s.tp.SocketStats()
	if err != nil {
		return s.stats, fmt.Errorf("read PACKET_STATISTICS: %w", err)
	}
	now := [3]uint32{uint32(v3.Packets()), uint32(v3.Drops()), uint32(v3.QueueFreezes())}
	// Differences of uint32 totals are right across a wrap.
	s.stats.Packets += uint64(now[0] - s.last[0])
	s.stats.Drops += uint64(now[1] - s.last[1])
	s.stats.Freezes += uint64(now[2] - s.last[2])
	s.last = now
	// What reached the ring (the kernel's count less its drops) and was
	// not delivered: still queued, or left when the capture ended. (A
	// packet stamped before the filter and counted after it is counted
	// here too: an overcount of a rare few, never a loss hidden.)
	s.stats.Outside = s.outside.Load()
	s.stats.Unread = 0
	if in, read := s.stats.Packets-s.stats.Drops, s.delivered.Load(); in > read {
		s.stats.Unread = in - read
	}
	return s.stats, nil
}

// Stats returns each socket's running totals, read now, in socket order
// (Packet.Socket indexes it).
func (c *Capture) Stats() []Stats {
	out := make([]Stats, len(c.socks))
	for i, s := range c.socks {
		out[i], _ = s.readStats()
	}
	return out
}

// Skipped lists the namespace's interfaces left out, and why.
func (c *Capture) Skipped() []Skip { return c.skipped }

// Snaplen is the number of bytes kept of each packet.
func (c *Capture) Snaplen() int { return c.opt.Snaplen }

// Run reads every socket until ctx ends, handle returns false, or every
// socket has ended; handle is called for one packet at a time (never
// concurrently), and p.Data is valid only during the call. A socket whose
// interface went away or down ends alone, saying why in its Stats.Ended;
// the others go on. When ctx ends, what the rings already hold is still
// delivered for up to endGrace (a quiet ring ends sooner: two polls), so
// Run returns within about 50 ms (plus the handler's call under way); what
// was left unread is counted in Stats.Unread. Run returns an error only
// when every socket ended on its own.
func (c *Capture) Run(ctx context.Context, handle func(Packet) bool) error {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	if c.closed {
		return errors.New("capture: run after close")
	}
	var st runState
	ctxDone := context.AfterFunc(ctx, func() {
		st.endAt.Store(time.Now().UnixNano())
		st.ending.Store(true)
	})
	defer ctxDone()
	var wg sync.WaitGroup
	for i, s := range c.socks {
		s.mu.Lock()
		ended := s.done
		s.mu.Unlock()
		if ended {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.read(i, s, &st, handle)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil || st.halt.Load() {
		return nil
	}
	var why []error
	for _, s := range c.socks {
		s.mu.Lock()
		if s.stats.Ended != "" {
			why = append(why, fmt.Errorf("%s: %s", s.iface, s.stats.Ended))
		}
		s.mu.Unlock()
	}
	return fmt.Errorf("capture: every socket ended: %w", errors.Join(why...))
}

// endGrace is how long the readers go on delivering what the rings hold
// after the context ended.
const endGrace = 50 * time.Millisecond

// runState is how a Run ends: halt (the handler said stop: no packet
// more), or ending (the context ended: the rings are emptied first).
type runState struct {
	halt, ending atomic.Bool
	endAt        atomic.Int64 // when ending began, UnixNano
}

// over reports whether a reader in ending mode must stop now.
func (st *runState) over() bool {
	return st.ending.Load() && time.Since(time.Unix(0, st.endAt.Load())) > endGrace
}

// read is one socket's reader loop.
func (c *Capture) read(i int, s *socket, st *runState, handle func(Packet) bool) {
	quiet := 0 // polls that timed out since the context ended
	for !st.halt.Load() && !st.over() {
		data, ci, err := s.tp.ZeroCopyReadPacketData()
		switch {
		case err == nil:
		case errors.Is(err, afpacket.ErrTimeout):
			// The second quiet poll began after the end: any block the
			// kernel held then was handed over within it (blockTimeout).
			if st.ending.Load() {
				if quiet++; quiet == 2 {
					return
				}
			}
			continue
		default:
			c.end(s, err)
			return
		}
		if ci.Timestamp.Before(s.since) {
			continue
		}
		if c.addrs != nil && !c.selects(data) {
			// Taken by the ports-only filter, not the match's: read,
			// counted apart, never handled.
			s.delivered.Add(1)
			s.outside.Add(1)
			continue
		}
		c.handleM.Lock()
		if st.halt.Load() {
			c.handleM.Unlock()
			return
		}
		dir := In
		if pkttype, ok := frameType(data, ci.InterfaceIndex); !ok {
			s.mu.Lock()
			s.stats.Unknown++
			s.mu.Unlock()
		} else if pkttype == unix.PACKET_OUTGOING {
			dir = Out
		}
		s.delivered.Add(1)
		more := handle(Packet{Time: ci.Timestamp, Interface: s.iface, IfIndex: ci.InterfaceIndex, Direction: dir,
			Length: ci.Length, Data: data, Socket: i})
		if !more {
			st.halt.Store(true)
		}
		c.handleM.Unlock()
	}
}

// selects reports whether an Ethernet frame's IPv4 or IPv6 source or
// destination is one of the match's addresses (Capture.addrs).
func (c *Capture) selects(frame []byte) bool {
	src, dst, ok := frameAddrs(frame)
	if !ok {
		return false
	}
	_, s := c.addrs[src]
	_, d := c.addrs[dst]
	return s || d
}

// Widened says why the kernel's filter takes more than the match (its
// ports alone), the rest selected in user space; "" when it takes the
// match whole.
func (c *Capture) Widened() string { return c.widened }

// end records why a socket stopped on its own: its interface went away
// (unregistered: the kernel set ENETDOWN and unhooked the socket) or went
// down, or another error of poll(2).
func (c *Capture) end(s *socket, err error) {
	why := err.Error()
	if errors.Is(err, afpacket.ErrPoll) {
		why = "poll error on the socket"
		gone := c.ns.Do(func() error {
			l, err := netlink.LinkByIndex(s.ifindex)
			if err == nil && l.Attrs().Name != s.iface {
				return errors.New("renamed")
			}
			if err == nil && l.Attrs().Flags&net.FlagUp == 0 {
				why = fmt.Sprintf("interface %s went down", s.iface)
			}
			return err
		})
		if gone != nil {
			why = fmt.Sprintf("interface %s went away", s.iface)
		}
	}
	s.readStats()
	s.mu.Lock()
	s.stats.Ended = why
	s.done = true
	s.mu.Unlock()
}

// Close reads each socket's statistics a last time and closes it. Call it
// after Run returned (a reader still in poll(2) would read an unmapped
// ring); it waits for a Run under way to end.
func (c *Capture) Close() []Stats {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	st := c.Stats()
	c.closed = true
	c.closeSockets()
	return st
}

func (c *Capture) closeSockets() {
	for _, s := range c.socks {
		s.mu.Lock()
		if s.tp != nil {
			s.tp.Close()
			s.tp = nil
		}
		s.mu.Unlock()
	}
}
