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
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/snmp"
)

// DefaultLength is check's window when none is asked for: long enough for a
// few retransmitted SYNs and two IPVS estimator ticks (2 s), short enough
// for an incident.
const DefaultLength = 3 * time.Second

// DefaultProbeTimeout bounds each active probe of a real server.
const DefaultProbeTimeout = 500 * time.Millisecond

// lastReadBudget is what the last read may take once the window was cut
// short by a signal: the interrupt rule gives a command 200 ms in all.
const lastReadBudget = 90 * time.Millisecond

// tracerLoadBudget bounds how long the window waits, once the first read
// is done, for the drop tracer to be loaded and attached: past it, the
// window opens without drops, saying why. Generous: the TCG guest of a
// loaded host took 14 s (kallsyms, BTF, the verifier), a host 0.1 s; it
// is there for a load that never ends.
var tracerLoadBudget = time.Minute

// tracerHandover bounds how long, after the last read is done, the tracer
// may still take to hand over what it counted (it stops, reads its maps
// and names its drops while the last read runs): past it, the drop layer
// is a skip saying so, and the window does not wait.
const tracerHandover = 500 * time.Millisecond

// ErrInterrupted is returned when ctx ended before the first read finished:
// nothing was measured.
var ErrInterrupted = errors.New("interrupted before anything was measured")

// Options choose what the window watches.
type Options struct {
	// Length is how long to watch once the first read is done; 0 is one
	// read and nothing watched (a static snapshot).
	Length time.Duration
	// Drops traces the kernel's drops of the selected flows (eBPF,
	// aggregate mode); without CAP_BPF the window runs and says why not.
	Drops bool
	// Probe checks each selected real server from the LB's namespace the
	// way a health checker would; ProbeTimeout bounds each (default
	// DefaultProbeTimeout).
	Probe        bool
	ProbeTimeout time.Duration
	// Capture reads the selected services' packets on the LB's interfaces
	// (AF_PACKET, filtered in the kernel) and joins each to its flow's
	// leg: the paths' legs get the packets seen on the wire (Source
	// "capture"), and the TCP segments seen. Without CAP_NET_RAW the
	// window runs and says why not.
	Capture bool
	// Features runs the kernel feature probes with the first read.
	Features bool
	// Counters watches the namespace's counters (SNMP, rules, conntrack)
	// for the whole window even when no IPVS service and no VIP selects a
	// flow (inspect --watch); without it such a window ends at once,
	// saying there was nothing to watch.
	Counters bool
	// Opened, when not nil, is called once the first read is done and the
	// window opens, with what it watches: a caller says "watching…" only
	// when something watches.
	Opened func(length time.Duration)
	// Progress, when not nil and Every > 0, is given what the window has
	// seen so far every Every while it runs (a TUI's or an exporter's
	// frame). It is called from a goroutine of its own, one call at a time:
	// a slow Progress misses frames (the next one carries the newer
	// totals), never holds the window, and is not waited for when the
	// window ends.
	Every    time.Duration
	Progress func(Progress)
}

// Progress is a frame of a running window: the counters since the first
// read, from a light read of IPVS and SNMP (rules and conntrack are read
// again only at the window's end), and the drops counted so far.
type Progress struct {
	Elapsed time.Duration
	// Deltas holds the IPVS stats per service and real and the SNMP
	// counters that moved since the first read; its Rules and Conntrack
	// are left empty until the window's end.
	Deltas probes.Deltas
	// Drops is what the tracer counted so far (nil: drops not traced, or
	// not read yet for a frame); one map read per frame.
	Drops *drops.Counters
}

// Run reads ns, watches it for opt.Length and returns the snapshot of the
// window's end with the window's evidence in Snapshot.Window (and the drop
// sample in Snapshot.Drops). Cut short by ctx after the first read, it
// returns what was measured with Window.CutShort set; before, ErrInterrupted.
// Layers that could not be read are in Snapshot.Errors and Window.Skipped.
// It is one window of a fresh Watcher (its tracer is detached on return).
func Run(ctx context.Context, ns netns.Target, sel probes.Selector, opt Options) (*probes.Snapshot, error) {
	w := NewWatcher(ns, sel, opt)
	w.single = true
	defer w.Close()
	return w.Next(ctx, opt.Length)
}

// next runs one window of the watcher (its mutex held), with opt.Length.
func (wt *Watcher) next(ctx context.Context, opt Options) (*probes.Snapshot, error) {
	// Capabilities are the calling thread's: asked before any goroutine.
	bpfCapable := kernel.HasCapability(unix.CAP_BPF) || kernel.HasCapability(unix.CAP_SYS_ADMIN)
	rawCapable := kernel.HasCapability(unix.CAP_NET_RAW)
	replaced := wt.follow()
	ns, sel := wt.ns, wt.sel
	var before *probes.Snapshot
	static := opt.Length <= 0
	// What loading the drop tracer needs before its filter is known (BTF,
	// the program, the attach point, kallsyms: seconds on a slow machine)
	// is done beside the first read, which gives the filter. A tracer kept
	// from the last window needs none of it.
	var prepared chan prepResult
	if opt.Drops && bpfCapable && !static && wt.tr == nil {
		prepared = make(chan prepResult, 1)
		prepare := prepareTracer
		go func() {
			p, err := prepare()
			prepared <- prepResult{p, err}
		}()
	}
	// A window's first read is for its counters: the last read lists the
	// flow tables (read twice, they are most of a busy LB's cost).
	first := probes.Options{Features: opt.Features && static, NoFlowTables: !static}
	if !Measure(ctx, func() { before = probes.Gather(ns, sel, first) }) {
		return nil, ErrInterrupted
	}
	if static {
		return before, nil
	}
	read := time.Now()
	// The capture is opened before the window opens (its sockets queue
	// packets from then on): opening takes a drain of each socket, and
	// seconds on a slow machine, which must not eat the window.
	var session *capture.Session
	var capErr error
	switch {
	case !opt.Capture:
	case !rawCapable:
		capErr = errors.New("capturing packets needs CAP_NET_RAW: run as root")
	default:
		if !Measure(ctx, func() { session, capErr = openCapture(ctx, ns, before, sel) }) {
			return nil, ErrInterrupted
		}
	}
	defer func() {
		if session != nil {
			session.Close() // a window that ended before reading it
		}
	}()
	// The feature probes belong to the first read (interrupted before
	// they are done, nothing was measured) but count nothing: they run
	// inside the window, beside it, and never delay the last read.
	var feats *kernel.Features
	featuresDone := make(chan struct{})
	if opt.Features {
		go func() {
			defer close(featuresDone)
			f := kernel.ReadFeatures()
			feats = &f
		}()
	} else {
		close(featuresDone)
	}
	w := &probes.Window{Length: opt.Length, FirstRead: read.Sub(before.Time), FirstTook: before.Took, Skipped: map[string]string{}}
	if replaced != "" {
		w.Skipped["netns.replaced"] = replaced
	}
	if !sel.VIP.IsValid() && len(before.IPVS.Services) == 0 && !opt.Counters {
		// Nothing selects a flow: a window would watch nothing for its
		// length. Said, not hidden.
		w.Skipped["window"] = "nothing to watch: no IPVS service and no --vip"
		w.Paths = []flowpath.Path{}
		select {
		case <-featuresDone:
			before.Features = feats
		case <-ctx.Done():
			return nil, ErrInterrupted
		}
		before.Window = w
		return before, nil
	}
	// The window opens once the first read is done and the drop tracer is
	// attached (or could not be): a read or a load that takes seconds (a
	// big rule set, a slow machine) must not eat the window the drops and
	// probes watch in, and the drops must be counted over all of it.
	var kt *keptTracer
	switch {
	case !opt.Drops:
		w.Skipped[probes.LayerDrops] = "drop tracing was not asked for"
	case !bpfCapable:
		// The window runs without it: the other layers still watch.
		before.Errors[probes.ProbeDrops] = "tracing drops needs CAP_BPF (or CAP_SYS_ADMIN): run as root"
	case wt.tr != nil:
		// Kept from the last window: its filter follows this first read.
		w.Tracer = "failed"
		if err := wt.tr.dt.Refilter(ns, sel, before); err != nil {
			before.Errors[probes.ProbeDrops] = err.Error()
			wt.dropTracer()
		} else {
			kt, w.Tracer = wt.tr, "kept"
			w.DropsVIPOnly = kt.dt.VIPOnly()
		}
	default:
		w.Tracer = "failed"
		start := time.Now()
		dt, preparedWait, err := startDrops(ctx, ns, sel, before, prepared)
		w.TracerTook = map[string]time.Duration{"prepare": preparedWait}
		if err != nil {
			before.Errors[probes.ProbeDrops] = err.Error()
			if wt.failed != "" {
				before.Errors[probes.ProbeDrops] += "; the tracer before it had failed: " + wt.failed
			}
		} else {
			wt.loads++
			maps.Copy(w.TracerTook, dt.Tracer().LoadTook)
			kt = &keptTracer{dt: dt, base: dt.Tracer().NewBaseline()}
			wt.tr, w.Tracer = kt, "attached"
			w.DropsVIPOnly = dt.VIPOnly()
			if wt.failed != "" {
				// Said once, in the window that loaded it again.
				w.Skipped["drops.reload"] = "the drop tracer was loaded again: the one before failed (" + wt.failed + ")"
				wt.failed = ""
			}
		}
		w.TracerWait = time.Since(start)
	}
	opened := time.Now()
	end := opened.Add(opt.Length)
	if opt.Opened != nil && ctx.Err() == nil {
		opt.Opened(opt.Length)
	}
	wctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()

	var wg sync.WaitGroup
	var dropCounters atomic.Pointer[drops.Counters]
	var traced chan tracedResult // nil: no tracer
	if kt != nil {
		traced = make(chan tracedResult, 1)
		single := wt.single
		if single {
			wt.tr = nil // the window's own: closed by its reader below
		}
		go func() {
			// The tracer counts from its attach (just before the window
			// opened), or a kept one from the last window's read, to the
			// window's end; only an interrupt (ctx) cuts it short.
			hooks := drops.Hooks{Every: opt.Every, Progress: func(c drops.Counters) { dropCounters.Store(&c) }}
			var r tracedResult
			if single {
				// The only window of its watcher (Run): the tracer is
				// stopped and read whole, and detached while the last
				// read runs, not after it.
				r.smp, r.err = kt.dt.Watch(ctx, end, hooks)
			} else {
				r.smp, r.err = kt.dt.WatchFrom(ctx, end, hooks, kt.base)
			}
			traced <- r
		}()
	}
	if opt.Probe {
		timeout := opt.ProbeTimeout
		if timeout <= 0 {
			timeout = DefaultProbeTimeout
		}
		targets := healthTargets(before, sel)
		w.HealthLeftOut = max(0, len(targets)-health.MaxTargets)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Health = health.Probe(wctx, ns, targets, timeout)
		}()
	} else {
		w.Skipped[probes.LayerHealth] = "the reals were not probed (check --no-probe; inspect never probes)"
	}
	var captured chan struct{} // nil: no capture
	var capSum *capture.Summary
	if capErr != nil {
		w.Skipped[probes.LayerCapture] = capErr.Error()
	}
	if session != nil {
		captured = make(chan struct{})
		s := session
		session = nil // read here, closed by Summarize
		go func() {
			defer close(captured)
			// The capture's window is the window's; only an interrupt
			// (ctx) shortens the time its last packets get to be joined.
			capSum, capErr = s.Summarize(wctx, ctx)
		}()
	}
	if opt.Progress != nil && opt.Every > 0 {
		go stream(wctx, ns, before, opt, &dropCounters)
	}
	<-wctx.Done()
	if ctx.Err() != nil {
		select {
		case <-featuresDone:
		default:
			if traced != nil {
				// Its read is still under way: the next window loads
				// a tracer of its own.
				wt.failTracer("interrupted before the first read was done", traced)
			}
			return nil, ErrInterrupted // the first read was not done
		}
	}

	// The last read starts as the window ends, while the tracer names
	// what it counted: the counters' window is the one asked for. Cut
	// short, it gets what is left of the interrupt's budget; if it cannot
	// finish, the first read is what was measured.
	rctx := context.Background()
	if ctx.Err() != nil {
		w.CutShort = true
		var c context.CancelFunc
		rctx, c = context.WithTimeout(rctx, lastReadBudget)
		defer c()
	}
	var last *probes.Snapshot
	var lastOK bool
	lastDone := make(chan struct{})
	go func() {
		lastOK = Measure(rctx, func() { last = probes.Gather(ns, sel, probes.Options{}) })
		w.LastRead = time.Since(end)
		close(lastDone)
	}()
	wg.Wait()
	if captured != nil {
		// Its readers end within 50 ms of the window, and its queued
		// packets get 100 ms (30 once interrupted) to be joined.
		select {
		case <-captured:
			w.Capture = capSum
			if capErr != nil {
				w.Skipped[probes.LayerCapture] = capErr.Error()
			}
			if capSum != nil {
				// Said where every output says a layer not read (text,
				// JSON errors, JUnit system-err): a path's legs miss the
				// packets of flows only these tables hold.
				for k, v := range capSum.Unread {
					before.Errors[probes.LayerCapture+"."+k] = v
				}
				for k, v := range capSum.Errors {
					before.Errors[probes.LayerCapture+"."+k] = v
				}
			}
		case <-rctx.Done():
			w.Skipped[probes.LayerCapture] = "interrupted while the capture was being read: no packet counted"
		}
	}
	if traced != nil {
		// The tracer hands over while the last read runs; a stuck one
		// (a map read or a table dump that does not end) is a skip.
		late := make(chan struct{})
		go func() {
			<-lastDone
			time.Sleep(tracerHandover)
			close(late)
		}()
		select {
		case r := <-traced:
			if r.smp != nil {
				w.ProbeDrops, w.OwnRedirects, w.LocalSocketFrees = splitOwn(r.smp, w.Health, before)
			}
			before.Drops = r.smp
			if r.err != nil {
				before.Errors[probes.ProbeDrops] = r.err.Error()
				wt.failTracer(r.err.Error(), nil)
			}
		case <-late:
			before.Errors[probes.ProbeDrops] = fmt.Sprintf("the drop tracer did not hand over its count within %s of the window's last read: no drop counted", tracerHandover)
			wt.failTracer(before.Errors[probes.ProbeDrops], traced)
		case <-rctx.Done():
			before.Errors[probes.ProbeDrops] = "interrupted while the tracer was being read: no drop counted"
			wt.failTracer(before.Errors[probes.ProbeDrops], traced)
		}
	}
	if e, ok := before.Errors[probes.ProbeDrops]; ok {
		w.Skipped[probes.LayerDrops] = e
	}
	if e, ok := w.Skipped[probes.LayerCapture]; ok {
		// check shows Errors, not the window's skips: a capture asked
		// for and not made is named there too.
		before.Errors[probes.LayerCapture] = e
	}
	<-featuresDone // done by now unless the machine is very slow
	before.Features = feats
	after := before
	<-lastDone
	if lastOK {
		after = last
		after.Features = before.Features
		after.Drops = before.Drops
		// The window's drops name sources no table holds (a packet the
		// reverse-path filter dropped never reaches conntrack's confirm):
		// their routes are asked too — not once interrupted.
		if ctx.Err() == nil {
			probes.AskRoutes(ns, after, sel)
		}
		for k, v := range before.Errors {
			if _, ok := after.Errors[k]; !ok {
				after.Errors[k] = v
			}
		}
		w.Deltas = probes.Delta(before, after)
	} else {
		w.Skipped["counters"] = "no second read in time: the counters are the first read's"
		for _, p := range []string{probes.ProbeIPVSConns, probes.ProbeConntrack} {
			if _, ok := after.Errors[p]; !ok && first.NoFlowTables {
				after.Errors[p] = "not read: the window was cut short before its last read, which lists the flows"
			}
		}
	}
	w.Elapsed = after.Time.Sub(before.Time)
	w.Neighbours = RealNeighbours(after, sel)
	w.RoutesBack = RoutesBack(after)
	w.DropPoints = Join(before, after, w)
	w.Paths = Paths(after, w, sel)
	w.First = before
	after.Window = w
	return after, nil
}

// prepareTracer does what loading the drop tracer needs before its filter
// is known, and starts reading kallsyms (tests make it fail or stall).
var prepareTracer = func() (*drops.Prepared, error) {
	p, err := drops.Prepare("")
	if err == nil {
		p.ReadSymbols()
	}
	return p, err
}

type prepResult struct {
	p   *drops.Prepared
	err error
}

type tracedResult struct {
	smp *drops.Sample
	err error
}

// startDrops waits for the tracer's preparation and attaches it with the
// filter of the first read before, within tracerLoadBudget or until ctx
// ends; the error says why the window traces nothing. waited is how long
// the preparation was waited for.
func startDrops(ctx context.Context, ns netns.Target, sel probes.Selector, before *probes.Snapshot, prepared <-chan prepResult) (dt *probes.DropTrace, waited time.Duration, err error) {
	lctx, cancel := context.WithTimeoutCause(ctx, tracerLoadBudget, fmt.Errorf("the drop tracer was not ready %s after the first read (BTF, kallsyms, the verifier)", tracerLoadBudget))
	defer cancel()
	start := time.Now()
	dt, err = probes.StartDrops(lctx, ns, sel, before, func(lctx context.Context) (*drops.Prepared, error) {
		defer func() { waited = time.Since(start) }()
		select {
		case r := <-prepared:
			return r.p, r.err
		case <-lctx.Done():
			return nil, fmt.Errorf("nothing traced: %w", context.Cause(lctx))
		}
	})
	if err != nil && ctx.Err() != nil {
		return nil, waited, errors.New("interrupted before the tracer was attached: nothing traced")
	}
	return dt, waited, err
}

// openCapture opens a capture of the selected services' packets in ns: the
// VIPs, their reals and ports, on the interfaces their flows cross.
func openCapture(ctx context.Context, ns netns.Target, before *probes.Snapshot, sel probes.Selector) (*capture.Session, error) {
	addrs, ports := probes.DropFilter(sel, before.IPVS.Services)
	var vips []netip.Addr
	var reals, services []netip.AddrPort
	for _, svc := range before.IPVS.Services {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		vips = append(vips, svc.Addr.Addr())
		services = append(services, svc.Addr)
		for _, r := range svc.Reals {
			reals = append(reals, r.Addr)
		}
	}
	if len(vips) == 0 {
		if sel.VIP.IsValid() && sel.VIP.Port() != 0 {
			// The capture makes legs of IPVS paths; a DNAT VIP has none,
			// and the capture verb follows it through its backends.
			return nil, fmt.Errorf("no IPVS service selected: no flow to capture (%s is no IPVS service: `lbdoctor capture --vip %s` captures a VIP that nft or iptables DNATs)", sel.VIPString(), sel.VIP)
		}
		return nil, errors.New("no IPVS service selected: no flow to capture")
	}
	ifaces, err := capture.FlowInterfaces(ns, vips, reals)
	if err != nil {
		return nil, err
	}
	m := capture.Match{Addrs: addrs, Ports: ports}
	if p, ok := proto.Parse(sel.Proto); ok && sel.Proto != "" {
		m.Proto = p
	}
	// A big LB's tables are read as the drop tracer's attributor reads
	// them (the same bounds): the capture opens promptly, and says what
	// it left unread.
	b := probes.AttributorBounds(before, sel, before.IPVS.Services)
	s, err := capture.OpenSession(ctx, ns, capture.Options{Interfaces: ifaces, Match: m}, services, b)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return s, nil
}

// stream gives opt.Progress a frame every opt.Every until ctx ends. The
// frames are built here (a light read of IPVS and SNMP) and handed to a
// sender goroutine through a one-slot mailbox: a slow Progress gets the
// newest frame when it is ready, and neither the reads nor the window wait
// for it.
func stream(ctx context.Context, ns netns.Target, before *probes.Snapshot, opt Options, dc *atomic.Pointer[drops.Counters]) {
	box := make(chan Progress, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-box:
				opt.Progress(p)
			}
		}
	}()
	tick := time.NewTicker(opt.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := &probes.Snapshot{Time: time.Now(), Rules: before.Rules, Conntrack: before.Conntrack, IPVS: before.IPVS, SNMP: before.SNMP}
		if v, err := ipvs.Read(ns); err == nil {
			now.IPVS = v
		}
		if c, err := snmp.Read(ns); err == nil {
			now.SNMP = c
		}
		p := Progress{Elapsed: now.Time.Sub(before.Time), Deltas: probes.Delta(before, now), Drops: dc.Load()}
		p.Deltas.Rules = nil
		p.Deltas.Conntrack = probes.CounterDelta{}
		select { // replace a frame the sender has not taken yet
		case <-box:
		default:
		}
		box <- p
	}
}

// RealNeighbours is the neighbour entry of each selected real server's
// next hop (the real itself on a connected segment, else the gateway of
// the LB's route to it) as the snapshot read it. Pure.
func RealNeighbours(s *probes.Snapshot, sel probes.Selector) []probes.RealNeighbour {
	out := []probes.RealNeighbour{}
	seen := map[netip.AddrPort]bool{}
	for _, svc := range s.IPVS.Services {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		for _, r := range svc.Reals {
			if seen[r.Addr] {
				continue
			}
			seen[r.Addr] = true
			n := probes.RealNeighbour{Real: r.Addr, NextHop: r.Addr.Addr(), State: "none"}
			if rt, ok := s.Net.RouteTo(r.Addr.Addr()); ok {
				n.Dev = rt.Dev
				if rt.Gw.IsValid() {
					n.NextHop = rt.Gw
				}
			} else {
				n.State = "no route"
			}
			for _, nb := range s.Net.Neighbours {
				if nb.IP == n.NextHop && (n.Dev == "" || nb.Dev == n.Dev) {
					n.State, n.Dev = nb.State, nb.Dev
				}
			}
			out = append(out, n)
		}
	}
	return out
}

// RoutesBack are the routes back to the sources of the packets
// reverse-path filtering dropped (IP_RPFILTER) as the snapshot's lookups
// answered them (probes.AskRoutes asks them after the window): the
// evidence Join names. Pure.
func RoutesBack(s *probes.Snapshot) []netstate.Decision {
	if s.Drops == nil {
		return nil
	}
	var out []netstate.Decision
	seen := map[netip.Addr]bool{}
	for _, c := range s.Drops.Drops {
		if c.ReasonName != "IP_RPFILTER" || c.Family == 0 || seen[c.Src.Addr()] {
			continue
		}
		seen[c.Src.Addr()] = true
		if d, ok := s.Net.LookedUp(c.Src.Addr()); ok {
			out = append(out, d)
		}
	}
	return out
}

// splitOwn takes out of smp the drops of the LB's own packets that are no
// packet of the services' flows: the health probes' connections (their
// count returned), the ICMP redirects the LB sent itself and what its own
// sockets let go (both returned). smp's attribution counts follow
// (drops.Sample.Split).
func splitOwn(smp *drops.Sample, hs []health.Result, s *probes.Snapshot) (probeDrops uint64, redirects, socketFrees []drops.Counted) {
	for _, c := range smp.Split(probesOwn(hs)) {
		probeDrops += c.Count
	}
	redirects = smp.Split(ownRedirect(s.Net))
	if smp.NoReasons != "" {
		// Every drop is NOT_SPECIFIED on a kernel without reasons: a
		// packet nothing listens for (NO_SOCKET) would be among them.
		return probeDrops, redirects, nil
	}
	return probeDrops, redirects, smp.Split(localSocketFree(s))
}

// socketLayer are the functions where a packet delivered to a local
// socket is freed without a reason named: TCP's and UDP's receive paths
// (a segment to a TIME_WAIT socket, tcp_v4_rcv's discard_it) and a
// socket's teardown (its unread receive queue purged).
var socketLayer = map[string]bool{
	"sk_stream_kill_queues": true, "inet_sock_destruct": true, "__sk_destruct": true,
	"tcp_v4_rcv": true, "tcp_v6_rcv": true, "tcp_v4_do_rcv": true, "tcp_v6_do_rcv": true,
	"tcp_rcv_state_process": true, "tcp_rcv_established": true, "tcp_data_queue": true,
	"udp_queue_rcv_one_skb": true, "udpv6_queue_rcv_one_skb": true,
}

// localSocketFree tells the packets a local socket of the LB let go
// (see probes.Window.LocalSocketFrees): NOT_SPECIFIED in socketLayer, to
// a local address of s, not to a selected service's VIP and port (a
// packet IPVS did not take is the flows' own drop). Pure.
func localSocketFree(s *probes.Snapshot) func(drops.Counted) bool {
	local := s.Net.LocalSet()
	vips := map[netip.AddrPort]bool{}
	for _, svc := range s.IPVS.Services {
		if svc.FWMark == 0 {
			vips[svc.Addr] = true
		}
	}
	return func(c drops.Counted) bool {
		fn, _, _ := strings.Cut(c.Symbol, "+")
		if c.ReasonName != "NOT_SPECIFIED" || !socketLayer[fn] || c.Family == 0 || vips[c.Dst] {
			return false
		}
		isLocal, ok := local.Holds(c.Dst.Addr())
		return isLocal || !ok && s.Net.HasAddr(c.Dst.Addr())
	}
}

// probesOwn tells the drops of the health probes' own connections (the
// LB's address and port ↔ the real, the first connect's too). Pure.
func probesOwn(hs []health.Result) func(drops.Counted) bool {
	own := map[[2]netip.AddrPort]bool{}
	for _, h := range hs {
		for _, port := range []uint16{h.SourcePort, h.FirstSourcePort} {
			if port != 0 {
				lb := netip.AddrPortFrom(h.Source, port)
				own[[2]netip.AddrPort{lb, h.Real}] = true
				own[[2]netip.AddrPort{h.Real, lb}] = true
			}
		}
	}
	return func(c drops.Counted) bool {
		return len(own) > 0 && c.Family != 0 && own[[2]netip.AddrPort{c.Src, c.Dst}]
	}
}

// ownRedirect tells the drops of the ICMP redirects the LB sent itself
// (see probes.Window.OwnRedirects): a redirect dropped in output, the
// hook of the packets a host makes, or from an address of the LB's own
// where the hook is not known. Pure.
func ownRedirect(net netstate.Snapshot) func(drops.Counted) bool {
	return func(c drops.Counted) bool {
		return c.Redirect() && (c.Hook == drops.HookOutput || net.HasAddr(c.Src.Addr()))
	}
}

// healthTargets lists the selected services' real servers.
func healthTargets(s *probes.Snapshot, sel probes.Selector) []health.Target {
	var ts []health.Target
	for _, svc := range s.IPVS.Services {
		if svc.FWMark != 0 || !sel.Matches(svc.Addr, svc.Proto) {
			continue
		}
		key := svc.Key()
		for _, r := range svc.Reals {
			ts = append(ts, health.Target{Service: key, Proto: svc.Proto, Real: r.Addr})
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
