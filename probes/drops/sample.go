package drops

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Sample is what an aggregate-mode window counted, named and attributed:
// the drop probe's snapshot, for the doctor and for `drops --summary`.
type Sample struct {
	Window    time.Duration `json:"window_ns"`
	Attach    string        `json:"attach"`
	Counters  Counters      `json:"counters"`
	Drops     []Counted     `json:"drops"`                // most first
	NoReasons string        `json:"no_reasons,omitempty"` // why drops carry no reason on this kernel
}

// Counted is one (netns, reason, location, flow) the kernel counted.
type Counted struct {
	Aggregate
	ReasonName string `json:"reason"`
	Symbol     string `json:"location_symbol"` // symbol+offset
	Flow       *Flow  `json:"flow,omitempty"`  // the load-balanced flow, when one is known
}

// Watch traces drops in aggregate mode for window from the moment the
// tracer is attached (or until ctx ends), then names and attributes what was
// counted against lb's conntrack and IPVS tables.
func Watch(ctx context.Context, lb netns.Target, cfg Config, window time.Duration) (*Sample, error) {
	cfg.Events = false
	tr, err := New(cfg)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	start := time.Now()
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
	return tr.Sample(tr.Namer(lb), time.Since(start))
}

// Sample stops the tracer and returns what it counted over window, named
// by n.
func (t *Tracer) Sample(n *Namer, window time.Duration) (*Sample, error) {
	t.Stop()
	aggs, err := t.Aggregates()
	if err != nil {
		return nil, err
	}
	c, err := t.Counters()
	if err != nil {
		return nil, err
	}
	s := &Sample{Window: window, Attach: t.Attach, Counters: c, Drops: []Counted{}, NoReasons: t.NoReasons}
	for _, a := range aggs {
		s.Drops = append(s.Drops, n.Name(a))
	}
	sort.SliceStable(s.Drops, func(i, j int) bool { return s.Drops[i].Count > s.Drops[j].Count })
	return s, nil
}

// Namer names what a tracer saw: the reason, the location as symbol+offset,
// the load-balanced flow from lb's tables.
type Namer struct {
	tr   *Tracer
	syms *Symbols
	attr *Attributor
}

// Namer returns a Namer for t's drops, attributing against lb.
func (t *Tracer) Namer(lb netns.Target) *Namer {
	syms, _ := LoadSymbols() // without kallsyms a location stays an address
	return &Namer{tr: t, syms: syms, attr: NewAttributor(lb)}
}

// Name names one aggregate (or, with Count 0, one event's packet).
func (n *Namer) Name(a Aggregate) Counted {
	return Counted{Aggregate: a, ReasonName: n.tr.ReasonName(a.Reason), Symbol: n.syms.Lookup(a.Location), Flow: n.attr.Attribute(a.Packet)}
}

// Symbol names a kernel address as symbol+offset.
func (n *Namer) Symbol(addr uint64) string { return n.syms.Lookup(addr) }

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
