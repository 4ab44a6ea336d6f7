package capture

import (
	"container/heap"
	"time"
)

// SortHorizon is how much older than the newest packet seen a packet may
// still come: each socket has its own ring, whose TPACKET_V3 block is
// handed over when full or after blockTimeout, and each ring has its own
// reader, so a packet received on one interface reaches the sink after
// later ones of another (a client's SYN on eth0 after the SYN the LB sent
// on to the real on eth1). The file is written in time order within it.
const SortHorizon = 100 * time.Millisecond

// sortBytes bounds what a Sorter holds (the packets' bytes and comments):
// under a flood the oldest are written sooner, sorted over less than
// SortHorizon.
const sortBytes = 4 << 20

// Sorter writes packets to a pcapng Writer in the order of their
// timestamps, as tcpdump's single socket writes them: Wireshark and
// `tshark -r` list a file's packets in its order, and one written as the
// rings of several interfaces hand them over would show a request leave
// the LB before it came in. A packet is held until one SortHorizon newer
// was added (or sortBytes are held), then written; Drain writes the rest.
// Not safe for concurrent use (Watch calls its sink from one goroutine).
type Sorter struct {
	w      *Writer
	held   heldPackets
	seq    uint64
	newest time.Time
	bytes  int
	err    error
}

// NewSorter is a Sorter writing to w.
func NewSorter(w *Writer) *Sorter { return &Sorter{w: w} }

// Add holds p, a packet of interface iface with its comment (see
// WritePacket), and writes those it now knows the place of. p.Data must be
// p's own (Watch's sink hands over copies): it is written later. The
// error is the first write's that failed; no packet is written after it.
func (s *Sorter) Add(p Packet, iface int, comment string) error {
	if s.err != nil {
		return s.err
	}
	if iface < 0 || iface >= s.w.ifaces {
		// Said now, by the packet that has it wrong.
		return s.w.WritePacket(p, iface, comment)
	}
	s.seq++
	heap.Push(&s.held, heldPacket{p: p, iface: iface, comment: comment, seq: s.seq})
	s.bytes += heldSize(p, comment)
	if p.Time.After(s.newest) {
		s.newest = p.Time
	}
	cut := s.newest.Add(-SortHorizon)
	for len(s.held) > 0 && (!s.held[0].p.Time.After(cut) || s.bytes > sortBytes) {
		if err := s.writeOldest(); err != nil {
			return err
		}
	}
	return nil
}

// Drain writes every packet held, in time order: call it once the capture
// ended, before the Writer's Close.
func (s *Sorter) Drain() error {
	for len(s.held) > 0 && s.err == nil {
		s.writeOldest()
	}
	return s.err
}

func (s *Sorter) writeOldest() error {
	h := heap.Pop(&s.held).(heldPacket)
	s.bytes -= heldSize(h.p, h.comment)
	if err := s.w.WritePacket(h.p, h.iface, h.comment); err != nil {
		s.err = err
		s.held, s.bytes = nil, 0 // never written: let them go
	}
	return s.err
}

// heldSize is what a held packet counts against sortBytes: its bytes, its
// comment and its place in the heap.
func heldSize(p Packet, comment string) int { return cap(p.Data) + len(comment) + 96 }

type heldPacket struct {
	p       Packet
	iface   int
	comment string
	seq     uint64 // the order added: packets of one instant keep it
}

// heldPackets is a min-heap by time, then by the order added.
type heldPackets []heldPacket

func (h heldPackets) Len() int { return len(h) }
func (h heldPackets) Less(i, j int) bool {
	if !h[i].p.Time.Equal(h[j].p.Time) {
		return h[i].p.Time.Before(h[j].p.Time)
	}
	return h[i].seq < h[j].seq
}
func (h heldPackets) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *heldPackets) Push(x any)   { *h = append(*h, x.(heldPacket)) }
func (h *heldPackets) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = heldPacket{}
	*h = old[:len(old)-1]
	return x
}
