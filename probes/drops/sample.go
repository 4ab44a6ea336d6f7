package drops

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sample is what an aggregate-mode window counted, named and attributed:
// the drop probe's snapshot, for the doctor and for `drops --summary`.
type Sample struct {
	Window      time.Duration `json:"window_ns"`
	CutShort    bool          `json:"cut_short,omitempty"` // the window ended before its length (interrupted)
	Attach      string        `json:"attach"`
	Counters    Counters      `json:"counters"`
	Attribution Attribution   `json:"attribution"`
	Drops       []Counted     `json:"drops"`                // most first
	NoReasons   string        `json:"no_reasons,omitempty"` // why drops carry no reason on this kernel
	NoHooks     string        `json:"no_hooks,omitempty"`   // why netfilter drops carry no hook
}

// Attribution says how many drops were traced back to a load-balanced flow
// and how many were not — no flow in the tables, or none known in time.
type Attribution struct {
	Attributed    uint64            `json:"attributed"`
	NotAttributed uint64            `json:"not_attributed"`
	Batches       uint64            `json:"table_reads"`      // batched reads of the conntrack and IPVS tables
	Errors        map[string]string `json:"errors,omitempty"` // tables that could not be read, with why
}

// Counted is one (netns, reason, location, flow) the kernel counted.
type Counted struct {
	Aggregate
	ReasonName string `json:"reason"`
	Symbol     string `json:"location_symbol"` // symbol+offset
	Flow       *Flow  `json:"flow,omitempty"`  // the load-balanced flow, when one is known
	// Hook is the netfilter hook a NETFILTER_DROP happened in (prerouting,
	// input, forward, output, postrouting; see HookOf), told by
	// CallerSymbol, the function that ran it. Empty when not known.
	Hook         string `json:"hook,omitempty"`
	CallerSymbol string `json:"hook_caller,omitempty"`
}

// Split takes out of s.Drops the drops out says are not the window's
// (the health probes' own packets, the LB's own redirects, drops outside
// the selection) and their counts out of s.Attribution, so that the
// attributed and not attributed counts stay those of the drops s lists.
// It returns the drops taken out, in s's order; s.Drops is a new slice.
func (s *Sample) Split(out func(Counted) bool) []Counted {
	if !slices.ContainsFunc(s.Drops, out) {
		return nil
	}
	var taken []Counted
	rest := s.Drops[:0:0]
	for _, c := range s.Drops {
		if !out(c) {
			rest = append(rest, c)
			continue
		}
		taken = append(taken, c)
		a := &s.Attribution.NotAttributed
		if c.Flow != nil {
			a = &s.Attribution.Attributed
		}
		*a -= min(*a, c.Count)
	}
	s.Drops = rest
	return taken
}

// AttributionBudget is how long naming an aggregate window may wait, once
// the window is over, for one batched read of the tables. What is not
// attributed by then is counted as not attributed.
const AttributionBudget = 50 * time.Millisecond

// Hooks are what a caller of Watch hears while its window runs.
type Hooks struct {
	// Started, when not nil, is called once the tracer is attached and the
	// window opens: a caller says "tracing…" only when something traces.
	Started func()
	// Progress, when not nil, is given the tracer's counters every Every
	// while the window is open (one map read per period, whatever the
	// drop rate). It is called from the window's own goroutine: it must
	// return at once.
	Every    time.Duration
	Progress func(Counters)
}

// Watch counts t's drops (an aggregate-mode tracer, attached) from now
// until the deadline (or until ctx ends: the sample says it was cut short;
// a deadline already past gives an empty window), then names and
// attributes what was counted against the tables of the tracer's
// Config.LB, and closes t.
func (tr *Tracer) Watch(ctx context.Context, until time.Time, h Hooks) (*Sample, error) {
	defer tr.Close()
	return tr.watch(ctx, until, h, nil)
}

// Baseline is what a tracer that stays attached had counted when its last
// window was read (WatchFrom): the next window's drops are what it counted
// since. A Baseline belongs to one tracer, and moves on with each window.
type Baseline struct {
	at     time.Time // the last read; the tracer's attach at first
	counts map[aggID]uint64
	c      Counters
	// namer is the tracer's Namer at the last read, and attr what it had
	// attributed then: a new one (SetFilter) counts from 0.
	namer *Namer
	attr  Attribution
}

// namerOf is t's Namer for the next window, its symbols read again when a
// module was loaded or unloaded since they were; attributed counts start
// over with a new one.
func (b *Baseline) namerOf(t *Tracer) *Namer {
	if t.symbolsStale() {
		t.namer.readSymbols()
	}
	if b.namer != t.namer {
		b.namer, b.attr = t.namer, Attribution{}
	}
	return t.namer
}

// aggID tells aggregates apart: a flow's, or a place's (NotItemised).
type aggID struct {
	Packet
	notItemised bool
}

// NewBaseline is a baseline of nothing counted, at t's attach: the first
// window counts from there.
func (t *Tracer) NewBaseline() *Baseline {
	return &Baseline{at: t.attached, counts: map[aggID]uint64{}}
}

// WatchFrom is Watch for a tracer that stays attached across windows: it
// counts t's drops from b's last read (its first: from the attach) until
// the deadline or ctx's end, reads the kernel's running counts without
// stopping the tracer, and returns the difference from b, named and
// attributed; b moves on to this read. The counts of a drop the kernel
// was moving from a CPU's last-flow slot into the flow map while they were
// read may be missed by this window and are then in the next one: no drop
// is counted in two windows, and none is left out of the sum — but for one
// case: while the flow map is full, the drops a CPU held in its last-flow
// slot at a read (counted as their flow's) are counted again by place when
// the slot is flushed (at most one run of one flow per CPU and window; the
// map is pruned of idle flows to keep it from filling, see prune).
func (tr *Tracer) WatchFrom(ctx context.Context, until time.Time, h Hooks, b *Baseline) (*Sample, error) {
	return tr.watch(ctx, until, h, b)
}

// watch is Watch (b nil: the tracer is stopped and read whole) and
// WatchFrom (the difference from b, the tracer left running).
func (tr *Tracer) watch(ctx context.Context, until time.Time, h Hooks, b *Baseline) (*Sample, error) {
	// The tracer counts from its attach (just before), by when kallsyms
	// and the tables were read (seconds on a slow guest); a kept one from
	// its last read.
	start := tr.attached
	n := tr.namer
	if b != nil {
		start, n = b.at, b.namerOf(tr)
	}
	if h.Started != nil {
		h.Started()
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.Follow(wctx, FollowPeriod)
	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	var tick <-chan time.Time
	if h.Progress != nil && h.Every > 0 {
		t := time.NewTicker(h.Every)
		defer t.Stop()
		tick = t.C
	}
	cut := false
wait:
	for {
		select {
		case <-ctx.Done():
			cut = true
			break wait
		case <-timer.C:
			break wait
		case <-tick:
			if c, err := tr.Counters(); err == nil {
				if b != nil {
					c = c.since(b.c)
				}
				h.Progress(c)
			}
		}
	}
	var s *Sample
	var err error
	if b != nil {
		s, err = tr.sampleSince(n, b)
	} else {
		s, err = tr.Sample(n, time.Since(start))
	}
	if s != nil {
		s.CutShort = cut
	}
	return s, err
}

// Sample stops the tracer and returns what it counted over window, named
// by n. Attribution waits at most AttributionBudget for the tables.
func (t *Tracer) Sample(n *Namer, window time.Duration) (*Sample, error) {
	t.Stop()
	end := monotonicNow()
	// Nothing counted, nothing to attribute: a quiet window reads no table
	// at its end (a busy LB's tables take seconds to read).
	var k dropsAggKey
	if t.maps.Agg.NextKey(nil, &k) == nil {
		n.attr.Prefetch() // the dump runs while the map is read
	}
	aggs, err := t.Aggregates()
	if err != nil {
		return nil, err
	}
	c, err := t.counters(aggs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), AttributionBudget)
	defer cancel()
	s := &Sample{Window: window, Attach: t.Attach, Counters: c, Drops: make([]Counted, 0, len(aggs)), NoReasons: t.NoReasons, NoHooks: t.NoHooks}
	for _, a := range aggs {
		s.Drops = append(s.Drops, n.Name(ctx, a, end))
	}
	s.Attribution = n.Attribution()
	sort.SliceStable(s.Drops, func(i, j int) bool { return s.Drops[i].Count > s.Drops[j].Count })
	return s, nil
}

// sampleSince reads what t counted since b without stopping it, names it
// by n, and moves b on to this read.
func (t *Tracer) sampleSince(n *Namer, b *Baseline) (*Sample, error) {
	end := monotonicNow()
	var k dropsAggKey
	if t.maps.Agg.NextKey(nil, &k) == nil {
		n.attr.Prefetch() // the dump runs while the map is read
	}
	// The flow map before the CPUs' last-flow slots (Aggregates' order):
	// a count moved from a slot into the map between the two reads is
	// missed now and read next time, never read twice.
	aggs, keys, inSlots, err := t.aggregates(true)
	if err != nil {
		return nil, err
	}
	total, err := t.counters(aggs)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	// What the flow map held before this window, to tell idle flows.
	before := b.counts
	counts := make(map[aggID]uint64, max(len(b.counts), len(aggs)))
	for id, v := range b.counts {
		counts[id] = v // an aggregate in transit now is read next time
	}
	var delta []Aggregate
	for _, a := range aggs {
		id := aggID{a.Packet, a.NotItemised}
		prev := b.counts[id]
		// A running count read short (in transit) is not a drop taken
		// back: the baseline keeps the higher read.
		cum := max(a.Count, prev)
		counts[id] = cum
		if cum > prev {
			a.Count = cum - prev
			delta = append(delta, a)
		}
	}
	c := total.since(b.c)
	if !t.events {
		// As counters does: matched is what the aggregates hold plus what
		// did not fit, here the window's.
		c.Matched, c.NotItemised = c.AggLost, 0
		for _, a := range delta {
			c.Matched += a.Count
			if a.NotItemised {
				c.NotItemised += a.Count
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), AttributionBudget)
	defer cancel()
	s := &Sample{Window: now.Sub(b.at), Attach: t.Attach, Counters: c, Drops: make([]Counted, 0, len(delta)), NoReasons: t.NoReasons, NoHooks: t.NoHooks}
	for _, a := range delta {
		s.Drops = append(s.Drops, n.Name(ctx, a, end))
	}
	// The Namer is kept across windows: its counts are the window's.
	all := n.Attribution()
	s.Attribution = all
	s.Attribution.Attributed -= min(all.Attributed, b.attr.Attributed)
	s.Attribution.NotAttributed -= min(all.NotAttributed, b.attr.NotAttributed)
	s.Attribution.Batches -= min(all.Batches, b.attr.Batches)
	b.attr = all
	sort.SliceStable(s.Drops, func(i, j int) bool { return s.Drops[i].Count > s.Drops[j].Count })
	b.at, b.counts, b.c = now, counts, total.atLeast(b.c)
	t.prune(b, before, aggs, keys, inSlots)
	return s, nil
}

// prune makes room in the flow map of a tracer kept across windows, which
// only grows while it runs: once it is half full, the flows that had no
// drop in the window just read (their count is the one before it) and no
// CPU counts in its last-flow slot are deleted from it and from b, and the
// program may insert again (agg_full). A flow pruned is counted from 0
// again, as new. A drop of a pruned flow in the microseconds of its
// delete may be lost: a flow idle for a whole window. Errors leave the
// map as it is (its new flows are then counted by place, as when full).
func (t *Tracer) prune(b *Baseline, before map[aggID]uint64, aggs []Aggregate, keys []dropsAggKey, inSlots map[Packet]bool) {
	size := t.maps.Agg.MaxEntries()
	if uint32(len(keys))*2 < size {
		return
	}
	pruned := 0
	for i, k := range keys {
		a := aggs[i]
		id := aggID{a.Packet, false}
		if prev, ok := before[id]; !ok || a.Count != prev || inSlots[a.Packet] {
			continue // new or dropped in the window, or being counted
		}
		if err := t.maps.Agg.Delete(&k); err != nil {
			continue
		}
		delete(b.counts, id)
		pruned++
	}
	if pruned > 0 {
		t.vars.AggFull.Set(uint8(0))
	}
}

// Namer names what a tracer saw: the reason, the location as symbol+offset,
// the load-balanced flow from lb's tables.
// A Namer is for one goroutine at a time.
type Namer struct {
	tr    *Tracer
	syms  *Symbols
	attr  *Attributor
	where map[uint64]string // location → symbol+offset: a flood has few places
	// RawLocations says why locations are raw addresses ("" when they are
	// symbol+offset), for the start line and the summary.
	RawLocations string
	following    sync.WaitGroup // Follow's reader: Close waits for it
	last         lastPlace      // the place named last: a flood's drops come from few
}

// lastPlace is a drop's reason and location, named.
type lastPlace struct {
	named              bool
	reason             uint32
	location           uint64
	reasonName, symbol string
}

// newNamer is a Namer for t's drops as cfg says: its attributor has
// subscribed to conntrack's new flows in cfg.LB when it returns, and reads
// the tables (those of the tracer's addresses, when it has some) in the
// background: its first read is done when n.attr.WaitRead returns. Its
// symbols are read by readSymbols.
func newNamer(t *Tracer, cfg Config) *Namer {
	return &Namer{tr: t, attr: newAttributor(cfg.LB, slices.Concat(cfg.Addrs, cfg.Select), cfg.Proto, cfg.NoIPVSTable, cfg.NoConntrackDump), where: map[uint64]string{}}
}

// readSymbols reads the kernel's symbols for n (the read Prepared.ReadSymbols
// started, once done; or a read now) and tells the program where the
// netfilter hooks are.
func (n *Namer) readSymbols() {
	syms, err := n.tr.loadSymbols() // without kallsyms a location stays an address
	n.tr.SetHookRange(syms, err)
	n.RawLocations = ""
	switch {
	case err != nil:
		n.RawLocations = "locations are raw addresses: " + err.Error()
	case syms.Hidden():
		kr, _ := os.ReadFile("/proc/sys/kernel/kptr_restrict")
		n.RawLocations = fmt.Sprintf("locations are raw addresses: /proc/kallsyms shows every address as 0 to lbdoctor "+
			"(kernel.kptr_restrict=%s: 0 shows them to CAP_SYSLOG or with perf_event_paranoid<=1, 1 to CAP_SYSLOG only, 2 to no one)", strings.TrimSpace(string(kr)))
	}
	n.syms = syms
	clear(n.where)
}

// Namer is the tracer's Namer, made with it: its first read of the tables
// was done before the tracer attached. It names drops against the tables
// of Config.LB, and is closed with the tracer.
func (t *Tracer) Namer() *Namer { return t.namer }

// Follow reads the tables every period while ctx is live and the tracer has
// counted a drop (aggregate mode), so that the flows of a window are known
// at its end even when they left the tables meanwhile or the last read is
// slow. One read per period at most, whatever the drop rate.
func (n *Namer) Follow(ctx context.Context, period time.Duration) {
	n.following.Add(1)
	go func() {
		defer n.following.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var k dropsAggKey
			if n.tr.maps.Agg.NextKey(nil, &k) == nil {
				n.attr.Prefetch()
			}
		}
	}()
}

// FollowPeriod is how often Follow reads the tables.
const FollowPeriod = 500 * time.Millisecond

// close stops the attributor's table reads, and waits for Follow's reader
// to end (its ctx must be done): the tracer's maps it reads may be closed
// after. The tracer closes its Namer.
func (n *Namer) close() {
	n.following.Wait()
	n.attr.Close()
}

// Name names one aggregate (or, with Count 0, one event's packet) dropped
// at at (CLOCK_MONOTONIC ns, as events carry it). Attribution waits for the
// tables only while ctx is live.
func (n *Namer) Name(ctx context.Context, a Aggregate, at int64) Counted {
	if p := &n.last; !p.named || p.reason != a.Reason || p.location != a.Location {
		*p = lastPlace{named: true, reason: a.Reason, location: a.Location, reasonName: n.tr.ReasonName(a.Reason), symbol: n.Symbol(a.Location)}
	}
	c := Counted{Aggregate: a, ReasonName: n.last.reasonName, Symbol: n.last.symbol, Flow: n.attr.Attribute(ctx, a.Packet, at, a.Count)}
	if a.Caller != 0 {
		c.CallerSymbol = n.Symbol(a.Caller)
		c.Hook = HookOf(c.CallerSymbol)
	}
	return c
}

// Attribution is what the namer attributed so far.
func (n *Namer) Attribution() Attribution {
	at, not := n.attr.Counts()
	return Attribution{Attributed: at, NotAttributed: not, Batches: n.attr.Batches(), Errors: n.attr.Errors()}
}

// Symbol names a kernel address as symbol+offset.
func (n *Namer) Symbol(addr uint64) string {
	s, ok := n.where[addr]
	if !ok {
		if len(n.where) >= 1<<16 {
			clear(n.where) // stacks: many addresses; the cache stays bounded
		}
		s = n.syms.Lookup(addr)
		n.where[addr] = s
	}
	return s
}

// ReasonName names a reason code of this kernel: "-" where kfree_skb passes
// no reason, "reason N" where the kernel's BTF does not name it.
func (t *Tracer) ReasonName(code uint32) string {
	if t.NoReasons != "" {
		return "-"
	}
	if n, ok := t.Reasons[code]; ok {
		return n
	}
	if t.Reasons == nil {
		return "reason " + strconv.Itoa(int(code)) + " (no BTF)"
	}
	return "reason " + strconv.Itoa(int(code))
}
