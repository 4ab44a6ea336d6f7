package drops

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/proto"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// Flow is the load-balanced connection a dropped packet belonged to.
type Flow struct {
	Client    netip.AddrPort `json:"client"`
	VIP       netip.AddrPort `json:"vip"`
	Real      netip.AddrPort `json:"real"`
	Direction string         `json:"direction"` // request or reply
	Stage     string         `json:"stage"`     // where on the NAT path the packet was
	Source    string         `json:"source"`    // conntrack or ipvs
}

func (f Flow) String() string {
	return fmt.Sprintf("%s of %s → VIP %s via real %s (%s)", f.Direction, f.Client, f.VIP, f.Real, f.Stage)
}

// Attributor maps dropped packets — whose addresses NAT may have rewritten —
// back to flows, using the conntrack and IPVS tables of the load balancer's
// namespace.
//
// It never asks the kernel per drop: a refresher reads both tables in one
// batch (one conntrack dump over a socket opened once in the namespace, one
// read of ip_vs_conn opened once there), at most once per Interval and only
// when a drop missed, and indexes every place a packet of each flow can have
// on the NAT path. A lookup is a map read. A drop that misses waits for the
// next batch only while its caller's context allows (the window is still
// open); otherwise it is counted as not attributed. Flows once attributed stay
// known (bounded) after they leave the tables; misses are never kept, so a
// flow that appears later is found by the next batch. Safe for concurrent use.
type Attributor struct {
	LB       netns.Target
	Interval time.Duration // least time between two batches

	filters []conntrack.Filter // what one batch dumps; the zero Filter: every flow
	keep    func(netip.Addr) bool

	mu        sync.Mutex
	index     map[tupleKey]*Flow // from the newest batch
	prev      map[tupleKey]*Flow // from the one before: a flow may leave the tables between drop and lookup
	known     map[tupleKey]*Flow // attributed before: survives batches, bounded
	batchAt   int64              // CLOCK_MONOTONIC ns when the newest batch started (0: none yet)
	batchDone chan struct{}      // closed when the batch after the newest one is in
	wanted    bool
	errs      map[string]string // table → why it could not be read
	ct        *conntrack.Dumper
	vs        *ipvs.ConnTable
	vsTried   bool

	wake                      chan struct{}
	stop                      chan struct{}
	stopped                   sync.Once
	attributed, notAttributed atomic.Uint64
	batches                   atomic.Uint64
}

// Bounds of the attributor's memory: keys of one batch's index (six per
// conntrack flow, four per IPVS connection) and flows kept across batches.
const (
	MaxIndexKeys = 1 << 18
	MaxKnown     = 1 << 14
	// DefaultInterval is the least time between two batches.
	DefaultInterval = 50 * time.Millisecond
)

type tupleKey struct {
	s, d  netip.AddrPort
	proto uint8
}

// NewAttributor attributes against the tables of lb. With addrs, a batch
// reads only the conntrack flows that touch one of them (the tracer's own
// address filter: no other drop is reported); proto narrows it further.
func NewAttributor(lb netns.Target, addrs []netip.Addr, proto uint8) *Attributor {
	a := &Attributor{LB: lb, Interval: DefaultInterval, index: map[tupleKey]*Flow{}, known: map[tupleKey]*Flow{},
		batchDone: make(chan struct{}), errs: map[string]string{}, wake: make(chan struct{}, 1), stop: make(chan struct{})}
	switch {
	case len(addrs) == 0 || len(addrs) > 2:
		// One dump of the whole table beats 4 kernel-side walks per address.
		a.filters = []conntrack.Filter{{}}
		if len(addrs) > 0 {
			a.keep = func(x netip.Addr) bool { return slices.Contains(addrs, x) }
		}
	default:
		for _, x := range addrs {
			a.filters = append(a.filters, conntrack.Touching(x, 0, proto)...)
		}
	}
	go a.refresher()
	return a
}

// Close stops the refresher and closes what it opened in the namespace.
func (a *Attributor) Close() {
	a.stopped.Do(func() { close(a.stop) })
}

// Counts says how many drops were attributed and how many were not (no
// flow in the tables, or none known by the time the window closed).
func (a *Attributor) Counts() (attributed, notAttributed uint64) {
	return a.attributed.Load(), a.notAttributed.Load()
}

// Batches is how many times the tables were read.
func (a *Attributor) Batches() uint64 { return a.batches.Load() }

// Errors names the tables that could not be read, with why. IPVS not being
// loaded is not an error: there is nothing to attribute from.
func (a *Attributor) Errors() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.errs)
}

// Attribute returns the flow p belongs to, or nil when none is known. at is
// when the packet was dropped (CLOCK_MONOTONIC ns, 0 for "now"); a miss
// waits for a batch read after at while ctx is live, and gives up when ctx
// ends. weight is how many drops p stands for (an aggregate's count).
func (a *Attributor) Attribute(ctx context.Context, p Packet, at int64, weight uint64) *Flow {
	if weight == 0 {
		weight = 1
	}
	f := a.attribute(ctx, p, at)
	if f != nil {
		a.attributed.Add(weight)
	} else {
		a.notAttributed.Add(weight)
	}
	return f
}

func (a *Attributor) attribute(ctx context.Context, p Packet, at int64) *Flow {
	if p.Family == 0 {
		return nil
	}
	if at == 0 {
		at = monotonicNow()
	}
	key := tupleKey{p.Src, p.Dst, p.Proto}
	for {
		a.mu.Lock()
		f, ok := a.index[key]
		if !ok {
			f, ok = a.prev[key]
		}
		if !ok {
			f, ok = a.known[key]
		}
		if ok {
			if len(a.known) >= MaxKnown {
				clear(a.known) // the flows still dropping come back from the next lookups
			}
			a.known[key] = f
			a.mu.Unlock()
			return f
		}
		if a.batchAt > at || ctx.Err() != nil {
			// The tables were read after this drop and the flow was not in
			// them, or the window is over.
			a.mu.Unlock()
			return nil
		}
		a.wanted = true
		done := a.batchDone
		a.mu.Unlock()
		select {
		case a.wake <- struct{}{}:
		default:
		}
		select {
		case <-done:
		case <-ctx.Done():
			return nil
		case <-a.stop:
			return nil
		}
	}
}

// Prefetch starts a batch now (rate limited), so that a later lookup finds
// the tables of about this moment.
func (a *Attributor) Prefetch() {
	a.mu.Lock()
	a.wanted = true
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *Attributor) refresher() {
	defer func() {
		if a.ct != nil {
			a.ct.Close()
		}
		if a.vs != nil {
			a.vs.Close()
		}
	}()
	// Open both tables now, off the path of any lookup.
	a.open(map[string]string{})
	var last time.Time
	for {
		select {
		case <-a.wake:
		case <-a.stop:
			return
		}
		if d := time.Until(last.Add(a.Interval)); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-a.stop:
				t.Stop()
				return
			}
		}
		a.mu.Lock()
		wanted := a.wanted
		a.wanted = false
		a.mu.Unlock()
		if !wanted {
			continue
		}
		last = time.Now()
		a.batch()
	}
}

// open opens what is not open yet: the conntrack socket in the namespace,
// and (once: without ip_vs there is no IPVS connection to attribute to) its
// IPVS connection table.
func (a *Attributor) open(errs map[string]string) {
	if a.ct == nil {
		d, err := conntrack.NewDumper(a.LB)
		if err != nil {
			errs["conntrack"] = err.Error()
		}
		a.ct = d
	}
	if !a.vsTried {
		a.vsTried = true
		a.vs, _ = ipvs.OpenConns(a.LB)
	}
}

// batch reads both tables once and installs the new index.
func (a *Attributor) batch() {
	start := monotonicNow()
	index := map[tupleKey]*Flow{}
	errs := map[string]string{}
	add := func(k tupleKey, f *Flow) {
		// The first place that fits names the packet: without NAT, the
		// tuples coincide and "as the client sent it" is the truth.
		if _, ok := index[k]; !ok && len(index) < MaxIndexKeys {
			index[k] = f
		}
	}
	a.open(errs)
	if a.ct != nil {
		for _, flt := range a.filters {
			_, err := a.ct.Tuples(flt, func(proto uint8, o, r conntrack.Tuple) {
				if a.keep != nil && !a.keep(o.Src.Addr()) && !a.keep(o.Dst.Addr()) && !a.keep(r.Src.Addr()) && !a.keep(r.Dst.Addr()) {
					return
				}
				fl := conntrack.Flow{Orig: o, Reply: r}
				for _, pl := range conntrackPlaces {
					if f := pl.place(fl); f != nil {
						add(tupleKey{f.s, f.d, proto}, &f.Flow)
					}
				}
			})
			if err != nil {
				errs["conntrack"] = err.Error()
				a.ct.Close() // a broken dump leaves the socket in an unknown state
				a.ct = nil
				break
			}
		}
	}
	if a.vs != nil {
		err := a.vs.Read(func(c ipvs.Conn) {
			p, ok := proto.Parse(c.Proto)
			if !ok {
				return
			}
			for _, pl := range ipvsPlaces {
				if f := pl.place(c); f != nil {
					add(tupleKey{f.s, f.d, p}, &f.Flow)
				}
			}
		})
		if err != nil {
			errs["ipvs"] = err.Error()
		}
	}
	a.batches.Add(1)
	a.mu.Lock()
	a.prev, a.index, a.batchAt, a.errs = a.index, index, start, errs
	close(a.batchDone)
	a.batchDone = make(chan struct{})
	a.mu.Unlock()
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// placed is a flow together with the packet s → d it names.
type placed struct {
	Flow
	s, d netip.AddrPort
}

// A place is one point of the NAT path: the packet a flow has there, and
// what it is called.
type ctPlace struct {
	direction, stage string
	pkt              func(o, r conntrack.Tuple) (s, d netip.AddrPort)
}

var conntrackPlaces = []ctPlace{
	{"request", "as the client sent it, before NAT", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Src, o.Dst }},
	{"request", "after DNAT to the real server", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Src, r.Src }},
	{"request", "after DNAT and SNAT", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Dst, r.Src }},
	{"reply", "as the real server sent it, before de-NAT", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Src, r.Dst }},
	{"reply", "after SNAT reverse, before the VIP is restored", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Src, o.Src }},
	{"reply", "after full de-NAT, back to the client", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Dst, o.Src }},
}

func (pl ctPlace) place(fl conntrack.Flow) *placed {
	s, d := pl.pkt(fl.Orig, fl.Reply)
	return &placed{Flow{Client: fl.Orig.Src, VIP: fl.Orig.Dst, Real: fl.Reply.Src, Direction: pl.direction, Stage: pl.stage, Source: "conntrack"}, s, d}
}

type vsPlace struct {
	direction, stage string
	pkt              func(c ipvs.Conn) (s, d netip.AddrPort)
}

var ipvsPlaces = []vsPlace{
	{"request", "as the client sent it, before IPVS", func(c ipvs.Conn) (netip.AddrPort, netip.AddrPort) { return c.Client, c.VIP }},
	{"request", "after IPVS DNAT to the real server", func(c ipvs.Conn) (netip.AddrPort, netip.AddrPort) { return c.Client, c.Dest }},
	{"reply", "straight from the real server, never de-NATed by IPVS", func(c ipvs.Conn) (netip.AddrPort, netip.AddrPort) { return c.Dest, c.Client }},
	{"reply", "after IPVS de-NAT, back to the client", func(c ipvs.Conn) (netip.AddrPort, netip.AddrPort) { return c.VIP, c.Client }},
}

func (pl vsPlace) place(c ipvs.Conn) *placed {
	s, d := pl.pkt(c)
	return &placed{Flow{Client: c.Client, VIP: c.VIP, Real: c.Dest, Direction: pl.direction, Stage: pl.stage, Source: "ipvs"}, s, d}
}

// MatchConntrack places a packet s → d on conntrack flow fl (original o,
// reply r), or returns nil.
func MatchConntrack(s, d netip.AddrPort, fl conntrack.Flow) *Flow {
	for _, pl := range conntrackPlaces {
		if p := pl.place(fl); p.s == s && p.d == d {
			return &p.Flow
		}
	}
	return nil
}

// MatchIPVS places a packet s → d on an IPVS connection, or returns nil.
func MatchIPVS(s, d netip.AddrPort, c ipvs.Conn) *Flow {
	for _, pl := range ipvsPlaces {
		if p := pl.place(c); p.s == s && p.d == d {
			return &p.Flow
		}
	}
	return nil
}
