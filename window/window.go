// Package window watches one load balancer's namespace for a while and joins
// what every layer saw of the selected services' flows — drops (eBPF), rule
// and chain policy counters, IPVS stats and connections, conntrack, SNMP,
// neighbours, active probes of the reals — into the evidence and the path
// model (flowpath) the checks judge. `check`, `inspect --watch`, the TUI and
// the exporter are thin loops over it; none of them probes on its own.
package window

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// DefaultLength is check's window when none is asked for: long enough for a
// few retransmitted SYNs and two IPVS estimator ticks (2 s), short enough
// for an incident.
const DefaultLength = 3 * time.Second

// DefaultProbeTimeout bounds each active probe of a real server.
const DefaultProbeTimeout = 500 * time.Millisecond

// lastReadBudget is what the last read may take once the window was cut
// short by a signal: the interrupt rule gives a command 200 ms in all.
const lastReadBudget = 120 * time.Millisecond

// ErrInterrupted is returned when ctx ended before the first read finished:
// nothing was measured.
var ErrInterrupted = errors.New("interrupted before anything was measured")

// Options choose what the window watches.
type Options struct {
	// Length is how long to watch from the first read; 0 is one read and
	// nothing watched (a static snapshot).
	Length time.Duration
	// Drops traces the kernel's drops of the selected flows (eBPF,
	// aggregate mode); without CAP_BPF the window runs and says why not.
	Drops bool
	// Probe checks each selected real server from the LB's namespace the
	// way a health checker would; ProbeTimeout bounds each (default
	// DefaultProbeTimeout).
	Probe        bool
	ProbeTimeout time.Duration
	// Features runs the kernel feature probes with the first read.
	Features bool
	// Opened, when not nil, is called once the first read is done and the
	// window opens, with what it watches: a caller says "watching…" only
	// when something watches.
	Opened func(length time.Duration)
}

// Run reads ns, watches it for opt.Length and returns the snapshot of the
// window's end with the window's evidence in Snapshot.Window (and the drop
// sample in Snapshot.Drops). Cut short by ctx after the first read, it
// returns what was measured with Window.CutShort set; before, ErrInterrupted.
// Layers that could not be read are in Snapshot.Errors and Window.Skipped.
func Run(ctx context.Context, ns netns.Target, sel probes.Selector, opt Options) (*probes.Snapshot, error) {
	var before *probes.Snapshot
	// A window's first read is for its counters: the last read lists the
	// flow tables (read twice, they are most of a busy LB's cost).
	first := probes.Options{Features: opt.Features, NoFlowTables: opt.Length > 0}
	if !Measure(ctx, func() { before = probes.Gather(ns, sel, first) }) {
		return nil, ErrInterrupted
	}
	if opt.Length <= 0 {
		return before, nil
	}
	w := &probes.Window{Length: opt.Length, Skipped: map[string]string{}}
	if !sel.VIP.IsValid() && len(before.IPVS.Services) == 0 {
		// Nothing selects a flow: a window would watch nothing for its
		// length. Said, not hidden.
		w.Skipped["window"] = "nothing to watch: no IPVS service and no --vip"
		w.Paths = []flowpath.Path{}
		before.Window = w
		return before, nil
	}
	if opt.Opened != nil {
		opt.Opened(opt.Length)
	}
	wctx, cancel := context.WithDeadline(ctx, before.Time.Add(opt.Length))
	defer cancel()

	var wg sync.WaitGroup
	if opt.Drops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The tracer's own window starts when it is attached and ends
			// with ours; only an interrupt (ctx) cuts it short.
			probes.WatchDrops(ctx, ns, sel, before, before.Time.Add(opt.Length), nil)
		}()
	} else {
		w.Skipped[probes.LayerDrops] = "drop tracing was not asked for"
	}
	if opt.Probe {
		timeout := opt.ProbeTimeout
		if timeout <= 0 {
			timeout = DefaultProbeTimeout
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Health = health.Probe(wctx, ns, healthTargets(before, sel), timeout)
		}()
	} else {
		w.Skipped[probes.LayerHealth] = "the reals were not probed (--no-probe)"
	}
	<-wctx.Done()
	wg.Wait()
	if e, ok := before.Errors[probes.ProbeDrops]; ok {
		w.Skipped[probes.LayerDrops] = e
	}

	// The last read: cut short, it gets what is left of the interrupt's
	// budget; if it cannot finish, the first read is what was measured.
	rctx := context.Background()
	if ctx.Err() != nil {
		w.CutShort = true
		var c context.CancelFunc
		rctx, c = context.WithTimeout(rctx, lastReadBudget)
		defer c()
	}
	after := before
	if Measure(rctx, func() { after = probes.Gather(ns, sel, probes.Options{}) }) {
		after.Features = before.Features
		after.Drops = before.Drops
		for k, v := range before.Errors {
			if _, ok := after.Errors[k]; !ok {
				after.Errors[k] = v
			}
		}
		w.Deltas = probes.Delta(before, after)
	} else {
		after = before
		w.Skipped["counters"] = "no second read in time: the counters are the first read's"
		for _, p := range []string{probes.ProbeIPVSConns, probes.ProbeConntrack} {
			if _, ok := after.Errors[p]; !ok && first.NoFlowTables {
				after.Errors[p] = "not read: the window was cut short before its last read, which lists the flows"
			}
		}
	}
	w.Elapsed = after.Time.Sub(before.Time)
	if ctx.Err() == nil {
		w.RoutesBack = routesBack(ns, after)
	}
	w.DropPoints = Join(before, after, w)
	w.Paths = Paths(after, w)
	after.Window = w
	return after, nil
}

// maxRoutesBack bounds the route lookups after a window.
const maxRoutesBack = 16

// routesBack looks up the route back to the source of each packet
// reverse-path filtering dropped (IP_RPFILTER): the evidence Join names.
func routesBack(ns netns.Target, s *probes.Snapshot) []netstate.Decision {
	if s.Drops == nil {
		return nil
	}
	var out []netstate.Decision
	seen := map[netip.Addr]bool{}
	for _, c := range s.Drops.Drops {
		if c.ReasonName != "IP_RPFILTER" || c.Family == 0 || seen[c.Src.Addr()] || len(seen) == maxRoutesBack {
			continue
		}
		seen[c.Src.Addr()] = true
		if d, err := netstate.Lookup(ns, c.Src.Addr(), netip.Addr{}); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// healthTargets lists the selected services' real servers.
func healthTargets(s *probes.Snapshot, sel probes.Selector) []health.Target {
	var ts []health.Target
	for _, svc := range s.IPVS.Services {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		for _, r := range svc.Reals {
			ts = append(ts, health.Target{Service: svc.Key(), Proto: svc.Proto, Real: r.Addr})
		}
	}
	return ts
}

// Measure runs read (a probe, which cannot be cancelled) and reports
// whether it finished before ctx ended; if not, read goes on in the
// background and its result must be thrown away.
func Measure(ctx context.Context, read func()) bool {
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		read()
	}()
	select {
	case p := <-done:
		if p != nil {
			panic(p)
		}
		return true
	case <-ctx.Done():
		return false
	}
}
