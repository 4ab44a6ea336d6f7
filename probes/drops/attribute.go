package drops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
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
	// EarlierReal is the real of an earlier flow of the same client
	// address and port to the same VIP that this one replaced while the
	// drops were counted (the earlier connection ended — IPVS expired it —
	// and the client's next packet got a new real). Aggregated drops carry
	// no time: a drop of this pair may be the earlier flow's.
	EarlierReal netip.AddrPort `json:"earlier_real,omitzero"`
}

func (f Flow) String() string {
	return fmt.Sprintf("%s of %s → VIP %s via real %s (%s)", f.Direction, f.Client, f.VIP, f.Real, f.Stage)
}

// Attributor maps dropped packets — whose addresses NAT may have rewritten —
// back to flows, using the conntrack and IPVS tables of the load balancer's
// namespace.
//
// It never asks the kernel per drop. Conntrack: it subscribes to the flows
// the namespace confirms (one event per flow, decoded to its tuples) and
// dumps the table once at the start for the flows already there — again only
// if events were lost. IPVS, which has no events: one read of ip_vs_conn
// (opened once in the namespace) at most once per Interval, and only when a
// drop missed. Each flow is indexed in a bounded cache (two generations: the
// older one is dropped when the newer fills; hits move forward) by the
// address pairs its packets have on the NAT path, either way round — two
// for a flow that only DNAT rewrote, three with SNAT — so a lookup is a map
// read and the place on the path is told from the packet's direction.
// Misses are never cached. A drop that misses reads the queued conntrack
// events itself and waits — only while its caller's context allows, i.e.
// while the window is open — until the tables are known to be read past
// the moment it was dropped; otherwise it is counted as not attributed.
// Safe for concurrent use.
type Attributor struct {
	LB       netns.Target
	Interval time.Duration // least time between two batched reads

	filters []conntrack.Filter // what a dump reads; the zero Filter: every flow
	keep    func(netip.Addr) bool
	noVS    string // why the IPVS connection table is never read ("": it is)
	noCT    string // why conntrack is never dumped ("": it is): events alone

	mu       sync.Mutex
	cur, old map[pairKey]*cached
	progress chan struct{} // closed (and replaced) whenever the tables are read further
	// CLOCK_MONOTONIC ns: when the newest conntrack dump and IPVS read
	// started, when the event socket was last found empty, when events were
	// last lost (0: never), when the cache last let flows go that only
	// events had named (0: never). Events prove a flow absent only when a
	// dump started after both loss and eviction.
	dumpAt, vsAt, drainedAt, lostAt, evictedAt int64
	maxKeys                                    int  // keys of one cache generation
	dumping                                    bool // a dump's flows are being cached: what they evict, the dump re-read
	subscribed                                 bool
	wantDump, wantVS                           bool
	errs                                       map[string]string // table → why it could not be read
	ct                                         *conntrack.Dumper
	vs                                         *ipvs.ConnTable

	ev                        events
	read                      chan struct{} // closed once the first read of the tables is done
	readOnce                  sync.Once
	wake                      chan struct{}
	stop                      chan struct{}
	stopped                   sync.Once
	attributed, notAttributed atomic.Uint64
	batches                   atomic.Uint64
}

// Bounds of the attributor's memory: keys of one generation of the cache
// (three per conntrack flow at most, two per IPVS connection).
const (
	MaxCacheKeys = 1 << 18
	// DefaultInterval is the least time between two batched reads.
	DefaultInterval = 50 * time.Millisecond
	// eventPeriod is how often the conntrack events are read when no
	// drop waits for them: a flood confirms thousands of flows a second,
	// and a read woken by each would cost more than the flow's caching.
	// A drop that misses has them read at once.
	eventPeriod = 20 * time.Millisecond
)

// pairKey is the two endpoints of a packet, either way round, flat: hashed
// and compared as 38 bytes with no pointer in them (a netip.Addr holds one),
// so that the cache — a flood's hundreds of thousands of keys — costs the
// collector nothing to scan and a lookup less to hash. One key stands for
// both directions of a leg of the NAT path: a flow's request and reply
// between the same two endpoints are one key, not two.
type pairKey struct {
	a, b   [16]byte // a, ap is the lesser endpoint
	ap, bp uint16
	proto  uint8
	v6     bool // IPv4 addresses are stored mapped: this keeps them apart
}

func pairOf(s, d netip.AddrPort, proto uint8) pairKey {
	k := pairKey{a: s.Addr().As16(), b: d.Addr().As16(), ap: s.Port(), bp: d.Port(), proto: proto, v6: s.Addr().Is6()}
	if c := bytes.Compare(k.a[:], k.b[:]); c > 0 || c == 0 && k.ap > k.bp {
		k.a, k.b, k.ap, k.bp = k.b, k.a, k.bp, k.ap
	}
	return k
}

// cached is one flow in the cache: its tuples (for an IPVS connection,
// client → VIP and real → client) and the flows of its places, named when a
// drop first asks (under the attributor's lock).
type cached struct {
	o, r    conntrack.Tuple
	places  []place // conntrackPlaces or ipvsPlaces
	named   [6]*Flow
	earlier netip.AddrPort // the real of the flow of the same client–VIP pair this one replaced
}

// name returns the flow of the first place of c that is the packet s → d,
// or nil.
func (c *cached) name(s, d netip.AddrPort) *Flow {
	for i, pl := range c.places {
		if ps, pd := pl.pkt(c.o, c.r); ps == s && pd == d {
			if c.named[i] == nil {
				f := pl.flow(c.o, c.r)
				f.EarlierReal = c.earlier
				c.named[i] = &f
			}
			return c.named[i]
		}
	}
	return nil
}

// NewAttributor attributes against the tables of lb. With addrs, it reads
// only the conntrack flows that touch one of them (the tracer's own address
// filter: no other drop is reported); proto narrows the first dump further.
func NewAttributor(lb netns.Target, addrs []netip.Addr, proto uint8) *Attributor {
	return newAttributor(lb, addrs, proto, "", "")
}

// newAttributor is NewAttributor; noVS and noCT, when set, say why the
// IPVS connection table is never read, and why conntrack is never dumped
// (Config.NoIPVSTable, Config.NoConntrackDump: a big LB's tables, which a
// window cannot read). The tables within those bounds are read at once,
// whether or not a drop will ask: a flow that ends before a drop asks is
// known only from a read made while it was there.
func newAttributor(lb netns.Target, addrs []netip.Addr, proto uint8, noVS, noCT string) *Attributor {
	a := &Attributor{noVS: noVS, noCT: noCT, LB: lb, Interval: DefaultInterval, cur: map[pairKey]*cached{}, old: map[pairKey]*cached{}, maxKeys: MaxCacheKeys,
		progress: make(chan struct{}), errs: map[string]string{}, read: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	if len(addrs) > 0 {
		// A set: the services of a big LB have thousands of addresses,
		// and every flow of a dump is looked up.
		set := make(map[netip.Addr]bool, len(addrs))
		for _, x := range addrs {
			set[x] = true
		}
		a.keep = func(x netip.Addr) bool { return set[x] }
	}
	switch {
	case len(addrs) == 0 || len(addrs) > 2:
		// One dump of the whole table beats 4 kernel-side walks per address.
		a.filters = []conntrack.Filter{{}}
	default:
		for _, x := range addrs {
			a.filters = append(a.filters, conntrack.Touching(x, 0, proto)...)
		}
	}
	started := make(chan struct{})
	go a.refresher(started)
	<-started // subscribed before the window opens: no flow confirmed in it is missed
	return a
}

// WaitRead waits until the attributor's first read of the tables is done
// (or could not be: its errors say why), or ctx ends (its error). Whoever
// watches packets through it (the drop tracer, a capture) starts once this
// returns nil: a flow there was at any instant since is known, one that
// ends in the watch's first instants too; a packet of a flow that ended
// before the read could still be asked about only with time left to wait.
func (a *Attributor) WaitRead(ctx context.Context) error {
	select {
	case <-a.read:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the readers and closes what they opened in the namespace.
func (a *Attributor) Close() {
	a.stopped.Do(func() { close(a.stop) })
}

// Counts says how many drops were attributed and how many were not (no
// flow in the tables, or none known by the time the window closed).
func (a *Attributor) Counts() (attributed, notAttributed uint64) {
	return a.attributed.Load(), a.notAttributed.Load()
}

// Batches is how many times a table was read whole (dumps and IPVS reads).
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
// waits for the tables to be read past at while ctx is live, and gives up
// when ctx ends. weight is how many drops p stands for (an aggregate's count).
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
	key := pairOf(p.Src, p.Dst, p.Proto)
	for {
		a.mu.Lock()
		if f := a.lookupLocked(key, p.Src, p.Dst); f != nil {
			a.mu.Unlock()
			return f
		}
		// Not to be dumped (noCT), conntrack is read when its events are:
		// what they lost stays unknown, and said.
		ctDone := a.dumpAt > at || a.subscribed && a.drainedAt > at && (a.dumpAt > max(a.lostAt, a.evictedAt) || a.noCT != "") || !a.subscribed && a.noCT != ""
		vsDone := a.vs == nil || a.vsAt > at
		if ctDone && vsDone || ctx.Err() != nil {
			// The tables were read past this drop and the flow was not in
			// them, or the window is over.
			a.mu.Unlock()
			return nil
		}
		wake := false
		// Without events, conntrack is read by dumps (the first one is under
		// way from the start); with them, the reader asks for a dump itself
		// when events were lost.
		if !ctDone && a.noCT == "" && (!a.subscribed || a.dumpAt <= max(a.lostAt, a.evictedAt)) && a.dumpAt != 0 {
			a.wantDump, wake = true, true
		}
		if !vsDone {
			a.wantVS, wake = true, true
		}
		readEvents := !ctDone && a.subscribed && a.drainedAt <= at
		progress := a.progress
		a.mu.Unlock()
		if wake {
			a.kick()
		}
		// Read here, not by the follower: handing each wait over to it and
		// back parked two goroutines per batch of drops under a flood (half
		// of the process's parks). Read to the end, the events are read past
		// at, or were lost (a dump is asked for): the next look decides.
		// Without a subscription any more, the wait is for a dump.
		if readEvents && a.drainEvents() {
			continue
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return nil
		case <-a.stop:
			return nil
		}
	}
}

// lookupLocked is the cached flow of the packet s → d (key is their
// pair), or nil.
func (a *Attributor) lookupLocked(key pairKey, s, d netip.AddrPort) *Flow {
	c, ok := a.cur[key]
	if !ok {
		if c, ok = a.old[key]; ok {
			a.putLocked(key, c) // still dropping: keep it
		}
	}
	if !ok {
		return nil
	}
	return c.name(s, d)
}

func (a *Attributor) kick() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// putLocked caches a flow under one of its keys; a full generation becomes
// the old one. Conntrack names a place before IPVS does: it knows the NAT
// after IPVS (SNAT), IPVS only its own.
func (a *Attributor) putLocked(k pairKey, c *cached) {
	if c.ipvs() {
		if e, ok := a.cur[k]; ok && !e.ipvs() {
			return
		}
		if e, ok := a.old[k]; ok && !e.ipvs() {
			return
		}
	}
	if len(a.cur) >= a.maxKeys {
		if len(a.old) > 0 && !a.dumping {
			// Flows only events named may go: the events no longer
			// prove a miss absent, a dump must (the reader asks for one).
			a.evictedAt, a.wantDump = monotonicNow(), true
			a.kick()
		}
		a.old, a.cur = a.cur, make(map[pairKey]*cached, len(a.cur))
	}
	a.cur[k] = c
}

// replacingLocked notes in c the real of the flow of its client–VIP pair k
// that c replaces, when that flow went to another real (the same one read
// again, from a dump or from IPVS, is no replacement).
func (a *Attributor) replacingLocked(k pairKey, c *cached) {
	e, ok := a.cur[k]
	if !ok {
		if e, ok = a.old[k]; !ok {
			return
		}
	}
	switch {
	case e.r.Src != c.r.Src:
		c.earlier = e.r.Src
	case e.earlier.IsValid():
		c.earlier = e.earlier
	}
}

// ipvs says whether c is an IPVS connection (else a conntrack flow).
func (c *cached) ipvs() bool { return c.places[0].source == "ipvs" }

// advanceLocked wakes whoever waits for the tables to be read further.
func (a *Attributor) advanceLocked() {
	close(a.progress)
	a.progress = make(chan struct{})
}

// Prefetch reads the IPVS table now (rate limited) and makes sure conntrack
// is caught up, so that later lookups find the tables of about this moment.
func (a *Attributor) Prefetch() {
	a.mu.Lock()
	a.wantVS = a.vs != nil
	if !a.subscribed || max(a.lostAt, a.evictedAt) >= a.dumpAt {
		a.wantDump = true
	}
	a.mu.Unlock()
	a.kick()
}

// refresher subscribes to conntrack's new flows, dumps the table once, and
// then does the batched reads asked for, at most once per Interval.
func (a *Attributor) refresher(started chan<- struct{}) {
	firstRead := func() { a.readOnce.Do(func() { close(a.read) }) }
	defer func() {
		firstRead()
		if a.ct != nil {
			a.ct.Close()
		}
		if a.vs != nil {
			a.vs.Close()
		}
	}()
	errs := map[string]string{}
	sub, err := conntrack.SubscribeNew(a.LB) // reads never wait: follow paces them
	if err != nil {
		errs["conntrack events"] = err.Error()
	}
	if a.ct, err = conntrack.NewDumper(a.LB); err != nil {
		errs["conntrack"] = err.Error()
	}
	if a.noCT != "" {
		errs["conntrack"] = a.noCT
	}
	if a.noVS != "" {
		errs["ipvs"] = a.noVS
	} else {
		a.vs, _ = ipvs.OpenConns(a.LB) // without ip_vs there is no IPVS connection to attribute to
	}
	a.mu.Lock()
	a.subscribed, a.wantDump, a.wantVS = sub != nil, true, a.vs != nil
	maps.Copy(a.errs, errs)
	a.mu.Unlock()
	if sub != nil {
		a.ev.sub, a.ev.add = sub, a.adder()
		go a.follow()
	}
	close(started)
	var last time.Time
	for {
		a.mu.Lock()
		dump, vs := a.wantDump, a.wantVS
		a.wantDump, a.wantVS = false, false
		a.mu.Unlock()
		if dump || vs {
			last = time.Now()
			a.batch(dump, vs)
			continue
		}
		firstRead()
		select {
		case <-a.wake:
		case <-a.stop:
			return
		}
		a.mu.Lock()
		interval := a.Interval
		a.mu.Unlock()
		if d := time.Until(last.Add(interval)); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-a.stop:
				t.Stop()
				return
			}
		}
	}
}

// events is the conntrack subscription's reading: by the follower every
// eventPeriod, and by a drop that waits for it (drainEvents).
type events struct {
	mu  sync.Mutex
	sub *conntrack.NewFlows // nil once closed
	add func(proto uint8, o, r conntrack.Tuple)
	// After ENOBUFS the kernel drops events without saying so again until
	// the queue has been emptied (netlink's congested state): until then
	// every read is lossy.
	congested bool
	got       []event // one read's flows, cached under a.mu at once
}

type event struct {
	proto uint8
	o, r  conntrack.Tuple
}

// follow reads the conntrack events every eventPeriod until the attributor
// stops, and then closes the subscription (closed under ev.mu: a drop
// reading it meanwhile finds it closed). A drop that waits for the events
// reads them itself: the follower is not woken by each event, nor by each
// wait.
func (a *Attributor) follow() {
	defer func() {
		a.ev.mu.Lock()
		defer a.ev.mu.Unlock()
		if a.ev.sub != nil {
			a.ev.sub.Close()
			a.ev.sub = nil
		}
	}()
	tick := time.NewTicker(eventPeriod)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		default:
		}
		if !a.drainEvents() {
			return
		}
		select {
		case <-tick.C:
		case <-a.stop:
			return
		}
	}
}

// drainEvents reads what is queued on the subscription to the end and
// caches its flows; the lock of the attributor is taken once per read (a
// read is a batch of flows). It returns false once the subscription is
// gone (closed, or failed: then events no longer prove a flow absent, and
// a dump is asked for).
func (a *Attributor) drainEvents() bool {
	e := &a.ev
	e.mu.Lock()
	defer e.mu.Unlock()
	collect := func(proto uint8, o, r conntrack.Tuple) { e.got = append(e.got, event{proto, o, r}) }
	for e.sub != nil {
		e.got = e.got[:0]
		// An empty read proves read every event queued before it started,
		// not before it returned (a drop may come between the two): the
		// time is taken first.
		before := monotonicNow()
		drained, err := e.sub.Read(collect)
		now := monotonicNow()
		dump := false
		a.mu.Lock()
		for _, ev := range e.got {
			e.add(ev.proto, ev.o, ev.r)
		}
		switch {
		case errors.Is(err, conntrack.ErrEventsLost):
			a.lostAt, a.wantDump, e.congested, dump = now, true, true, true
		case err != nil:
			a.subscribed, a.wantDump = false, true
			a.errs["conntrack events"] = err.Error()
		case drained:
			if e.congested {
				// Lossy until now: a dump from now on covers it.
				a.lostAt, a.wantDump, e.congested, dump = before, true, false, true
			}
			a.drainedAt = before
			a.advanceLocked()
		case e.congested:
			a.lostAt = now
		}
		a.mu.Unlock()
		if err != nil || dump {
			a.kick()
			if err != nil && !errors.Is(err, conntrack.ErrEventsLost) {
				e.sub.Close()
				e.sub = nil
				return false
			}
		}
		if drained {
			return true
		}
	}
	return false
}

// adder returns the function that caches a conntrack flow's places; the
// caller holds a.mu.
func (a *Attributor) adder() func(proto uint8, o, r conntrack.Tuple) {
	return func(proto uint8, o, r conntrack.Tuple) {
		if a.keep != nil && !a.keep(o.Src.Addr()) && !a.keep(o.Dst.Addr()) && !a.keep(r.Src.Addr()) && !a.keep(r.Dst.Addr()) {
			return
		}
		a.addPlacesLocked(proto, conntrack.Flow{Orig: o, Reply: r})
	}
}

func (a *Attributor) addPlacesLocked(proto uint8, fl conntrack.Flow) {
	if !loadBalanced(fl) {
		return
	}
	// Its places' pairs: client–VIP, client–real, and the pair SNAT made
	// (the LB's address–real) unless the reply goes back to the client.
	c := &cached{o: fl.Orig, r: fl.Reply, places: conntrackPlaces}
	vip := pairOf(fl.Orig.Src, fl.Orig.Dst, proto)
	a.replacingLocked(vip, c)
	a.putLocked(vip, c)
	a.putLocked(pairOf(fl.Orig.Src, fl.Reply.Src, proto), c)
	if fl.Reply.Dst != fl.Orig.Src {
		a.putLocked(pairOf(fl.Reply.Dst, fl.Reply.Src, proto), c)
	}
}

// addConnLocked caches an IPVS connection under its pairs: client–VIP and
// client–real.
func (a *Attributor) addConnLocked(proto uint8, c ipvs.Conn) {
	o, r := ipvsTuples(c)
	e := &cached{o: o, r: r, places: ipvsPlaces}
	vip := pairOf(o.Src, o.Dst, proto)
	a.replacingLocked(vip, e)
	a.putLocked(vip, e)
	a.putLocked(pairOf(o.Src, r.Src, proto), e)
}

// batch reads the conntrack table whole (dump) and/or the IPVS table.
func (a *Attributor) batch(dump, vs bool) {
	start := monotonicNow()
	type entry struct {
		proto uint8
		o, r  conntrack.Tuple
	}
	var flows []entry
	var conns []ipvs.Conn
	errs := map[string]string{}
	if dump && a.ct == nil {
		var err error
		if a.ct, err = conntrack.NewDumper(a.LB); err != nil {
			errs["conntrack"] = err.Error()
		}
	}
	a.mu.Lock()
	maxFlows := a.maxKeys / 3
	a.mu.Unlock()
	if dump && a.noCT != "" {
		// Not dumped: the flows conntrack confirms from now on still
		// come as events; a miss waits for no dump.
		errs["conntrack"] = a.noCT
	} else if dump && a.ct != nil {
		for _, flt := range a.filters {
			_, err := a.ct.Tuples(flt, func(proto uint8, o, r conntrack.Tuple) {
				if len(flows) < maxFlows {
					flows = append(flows, entry{proto, o, r})
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
	if vs && a.vs != nil {
		if err := a.vs.Read(func(c ipvs.Conn) { conns = append(conns, c) }); err != nil {
			errs["ipvs"] = err.Error()
		}
	}
	a.batches.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	add := a.adder()
	a.dumping = dump
	for _, e := range flows {
		add(e.proto, e.o, e.r)
	}
	a.dumping = false
	for _, c := range conns {
		p, ok := proto.Parse(c.Proto)
		if !ok {
			continue
		}
		a.addConnLocked(p, c)
	}
	if dump && a.noCT == "" {
		// Read, or known unreadable (the error is shown): a drop waits no
		// longer for this table either way.
		a.dumpAt = start
		delete(a.errs, "conntrack")
	}
	if vs {
		a.vsAt = start
		delete(a.errs, "ipvs")
	}
	maps.Copy(a.errs, errs)
	a.advanceLocked()
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// A place is one point of the NAT path: the packet a flow has there (from
// its original and reply tuples), and what it is called.
type place struct {
	direction, stage, source string
	pkt                      func(o, r conntrack.Tuple) (s, d netip.AddrPort)
}

// flow is the flow of o and r at this place.
func (pl place) flow(o, r conntrack.Tuple) Flow {
	return Flow{Client: o.Src, VIP: o.Dst, Real: r.Src, Direction: pl.direction, Stage: pl.stage, Source: pl.source}
}

// conntrackPlaces are the places of a conntrack flow; the first that fits
// names a packet: without SNAT some coincide, and "as the client sent it"
// is the truth.
var conntrackPlaces = []place{
	{"request", "as the client sent it, before NAT", "conntrack", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Src, o.Dst }},
	{"request", "after DNAT to the real server", "conntrack", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Src, r.Src }},
	{"request", "after DNAT and SNAT", "conntrack", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Dst, r.Src }},
	{"reply", "as the real server sent it, before de-NAT", "conntrack", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Src, r.Dst }},
	{"reply", "after SNAT reverse, before the VIP is restored", "conntrack", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Src, o.Src }},
	{"reply", "after full de-NAT, back to the client", "conntrack", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Dst, o.Src }},
}

// ipvsPlaces are the places of an IPVS connection, as tuples (ipvsTuples):
// client → VIP, and real → client (IPVS does no SNAT).
var ipvsPlaces = []place{
	{"request", "as the client sent it, before IPVS", "ipvs", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Src, o.Dst }},
	{"request", "after IPVS DNAT to the real server", "ipvs", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Src, r.Src }},
	{"reply", "straight from the real server, never de-NATed by IPVS", "ipvs", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return r.Src, o.Src }},
	{"reply", "after IPVS de-NAT, back to the client", "ipvs", func(o, r conntrack.Tuple) (netip.AddrPort, netip.AddrPort) { return o.Dst, o.Src }},
}

// ipvsTuples are an IPVS connection's tuples as ipvsPlaces take them.
func ipvsTuples(c ipvs.Conn) (o, r conntrack.Tuple) {
	return conntrack.Tuple{Src: c.Client, Dst: c.VIP}, conntrack.Tuple{Src: c.Dest, Dst: c.Client}
}

// loadBalanced says whether a conntrack flow is a load-balanced one: its
// destination was rewritten (DNAT, by nft or iptables, or IPVS updating the
// conntrack entry). A flow answered from the address it was sent to — a
// plain local or routed flow, SNAT or not — has no VIP and no real server:
// naming it "VIP … via real …" would invent a service, so a drop of it is
// not attributed.
func loadBalanced(fl conntrack.Flow) bool { return fl.Reply.Src != fl.Orig.Dst }

// MatchConntrack places a packet s → d on conntrack flow fl (original o,
// reply r), or returns nil (also when fl is not load-balanced).
func MatchConntrack(s, d netip.AddrPort, fl conntrack.Flow) *Flow {
	if !loadBalanced(fl) {
		return nil
	}
	return (&cached{o: fl.Orig, r: fl.Reply, places: conntrackPlaces}).name(s, d)
}

// MatchIPVS places a packet s → d on an IPVS connection, or returns nil.
func MatchIPVS(s, d netip.AddrPort, c ipvs.Conn) *Flow {
	o, r := ipvsTuples(c)
	return (&cached{o: o, r: r, places: ipvsPlaces}).name(s, d)
}
