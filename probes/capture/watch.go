package capture

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// Sink takes each packet once its flow and leg are known (ok false: no
// flow claimed it): the pcapng writer, with a comment naming them.
type Sink func(p Packet, leg LegOf, ok bool) error

// WatchOptions bound a Watch.
type WatchOptions struct {
	Count int           // stop after this many packets (0: no bound)
	Grace time.Duration // after the capture ends, how long packets still queued may wait for the tables (default 100 ms)
	// Stop, done when the capture ends (Ctrl-C), cuts Grace to 30 ms:
	// an interrupted command has 200 ms in all.
	Stop context.Context
	Sink Sink // nil: packets are only counted
}

// Watched is what a Watch saw.
type Watched struct {
	Packets uint64 // delivered by the sockets' filters
	// NotProcessed counts packets delivered while the queue to the joiner
	// was full: counted, not classified nor written (lbdoctor's own loss,
	// beside the kernel's ring drops).
	NotProcessed uint64
	SinkErr      error // the first error of the sink: it is not called again
	Elapsed      time.Duration
	CountReached bool
}

// queueBytes bounds the packets waiting between the capture's readers and
// the joiner (copies of their first snaplen bytes).
const queueBytes = 32 << 20

// Watch reads c until ctx ends (or opt.Count packets), joins every packet
// to its flow's leg with j, and hands it to opt.Sink. The readers never
// wait for the join: packets are copied into a bounded queue, and those
// that find it full are counted in NotProcessed. When the capture ends,
// packets still queued get opt.Grace to be joined (a flow confirmed just
// before the end is read from the tables), then are joined from what is
// known. A packet is in the table and the sink in capture order.
func Watch(ctx context.Context, c *Capture, j *Joiner, opt WatchOptions) (Watched, error) {
	if opt.Grace == 0 {
		opt.Grace = 100 * time.Millisecond
	}
	depth := max(1024, queueBytes/max(c.Snaplen(), 64))
	type queued struct {
		Packet
		seen int64 // CLOCK_MONOTONIC, taken from the ring
	}
	queue := make(chan queued, depth)
	var w Watched
	var packets, dropped atomic.Uint64
	// joinCtx outlives the capture by Grace: a packet's flow may be
	// confirmed, and read, just after the packet.
	joinCtx, endJoin := context.WithCancel(context.Background())
	defer endJoin()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for p := range queue {
			leg, _, ok := j.Join(joinCtx, p.Packet, p.seen)
			if opt.Sink != nil && w.SinkErr == nil {
				if err := opt.Sink(p.Packet, leg, ok); err != nil {
					w.SinkErr = fmt.Errorf("write packet: %w", err)
				}
			}
		}
	}()
	start := time.Now()
	err := c.Run(ctx, func(p Packet) bool {
		n := packets.Add(1)
		p.Data = append([]byte(nil), p.Data...) // the ring's bytes go back to the kernel
		select {
		case queue <- queued{p, monotonicNow()}:
		default:
			dropped.Add(1)
		}
		return opt.Count == 0 || n < uint64(opt.Count)
	})
	w.Elapsed = time.Since(start)
	close(queue)
	grace := opt.Grace
	if opt.Stop != nil && opt.Stop.Err() != nil {
		grace = min(grace, 30*time.Millisecond)
	}
	t := time.AfterFunc(grace, endJoin)
	defer t.Stop()
	wg.Wait()
	w.Packets, w.NotProcessed = packets.Load(), dropped.Load()
	w.CountReached = opt.Count > 0 && w.Packets >= uint64(opt.Count)
	return w, err
}

// Session is a capture opened for a window: its sockets filter and queue
// packets from Open on, so a window that opens after it misses none.
type Session struct {
	c *Capture
	j *Joiner
}

// OpenSession opens a capture in lb with opt and its joiner for the
// services captured within b (see NewServiceJoiner), the joiner first: the
// capture opens once the tables were read. ctx ending first is its error.
func OpenSession(ctx context.Context, lb netns.Target, opt Options, services []netip.AddrPort, b drops.Bounds) (*Session, error) {
	j, err := NewServiceJoiner(ctx, lb, opt.Match, services, b)
	if err != nil {
		return nil, err
	}
	c, err := Open(lb, opt)
	if err != nil {
		j.Close()
		return nil, err
	}
	return &Session{c: c, j: j}, nil
}

// Summarize reads the session until ctx ends, closes it and returns what
// it saw by service path (the doctor's window). stop is the command's
// context: cut short by it (Ctrl-C), packets still queued get less time to
// be joined.
func (s *Session) Summarize(ctx, stop context.Context) (*Summary, error) {
	defer s.j.Close()
	w, err := Watch(ctx, s.c, s.j, WatchOptions{Stop: stop})
	sum := &Summary{Paths: s.j.Table.ByPath(), Packets: w.Packets, NotProcessed: w.NotProcessed, Unclaimed: s.j.Table.Unclaimed, Own: s.j.Table.Own,
		Unlisted: s.j.Table.Unlisted, Interfaces: s.c.Close(), Unread: s.j.Unread()}
	if errs := s.j.Errors(); len(errs) > 0 {
		sum.Errors = errs
	}
	if len(sum.Unread) == 0 {
		sum.Unread = nil
	}
	sum.Widened = s.c.Widened()
	for _, st := range sum.Interfaces {
		sum.KernelDrops += st.Drops
		sum.Outside += st.Outside
	}
	if err != nil && sum.Packets == 0 {
		return nil, err
	}
	return sum, nil
}

// Close closes a session that was never read.
func (s *Session) Close() {
	s.c.Close()
	s.j.Close()
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
