package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

type dropsFlags struct {
	vip, proto, attach string
	hosts              []string
	ports              portsValue
	ignore             []string
	duration           time.Duration
	summary, stack     bool
	top                int
}

func newDropsCmd(g *globalFlags) *cobra.Command {
	f := &dropsFlags{}
	cmd := &cobra.Command{
		Use:   "drops",
		Short: "Trace where the kernel drops packets, with reasons and the VIP flow they belonged to",
		Long: `drops attaches a BPF program to skb:kfree_skb and reports every packet the
kernel drops: the reason (named from this kernel's BTF), the function and
offset where it happened, the namespace and interface, the addresses and TCP
flags — and the load-balanced flow it belonged to, traced back through DNAT
and SNAT with the load balancer's conntrack and IPVS tables. Filters run in
the kernel. Without --netns it watches every namespace; --vip adds the
service's real servers to the address filter.

--summary counts drops in the kernel (almost free, for long watches) and
prints a dropwatch-style table at the end. Lost events are always reported.`,
		Example: `  sudo lbdoctor drops --netns lb --vip 10.1.0.6:8085
  sudo lbdoctor drops --summary --duration 10s
  sudo lbdoctor drops --host 10.1.0.3 --proto tcp -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDrops(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.vip, "vip", "", "only drops of this virtual service's flows: `ADDR[:PORT]` ([ADDR]:PORT for IPv6; adds its real servers)")
	fl.StringSliceVar(&f.hosts, "host", nil, "only drops to or from this `ADDR` (repeatable)")
	fl.Var(&f.ports, "port", "only drops to or from this `PORT` 1-65535 (repeatable)")
	fl.StringVar(&f.proto, "proto", "", "only this protocol, a `NAME|N`: tcp, udp, icmp, icmpv6, sctp, vrrp, gre, … or a number (any case)")
	fl.StringSliceVar(&f.ignore, "ignore-reason", nil, "leave out drops with this `REASON`, e.g. NOT_SPECIFIED (any case; repeatable)")
	fl.DurationVar(&f.duration, "duration", 0, "stop after this `WINDOW` (> 0; default: until Ctrl-C)")
	fl.BoolVar(&f.summary, "summary", false, "count in the kernel and print a summary at the end")
	fl.IntVar(&f.top, "top", 20, "with --summary: show `N` flows, sum up the rest by place (0: all)")
	fl.StringVar(&f.attach, "attach", "", "force the attach `POINT`: tp_btf, raw_tp or tracepoint")
	fl.BoolVar(&f.stack, "stack", false, "print the kernel stack of each drop")
	return cmd
}

func runDrops(cmd *cobra.Command, g *globalFlags, f *dropsFlags) error {
	cfg := drops.Config{Events: !f.summary, Attach: f.attach, Stack: f.stack}
	filter := report.DropsFilter{Mode: "events", Netns: "every namespace"}
	if f.summary {
		filter.Mode = "summary"
	}
	if f.stack && f.summary {
		return usageErrorf("--stack needs events: it cannot go with --summary")
	}
	if cmd.Flags().Changed("top") && !f.summary {
		return usageErrorf("--top caps the --summary table: it needs --summary")
	}
	if f.proto != "" {
		p, ok := proto.Parse(strings.ToLower(f.proto))
		if !ok {
			return usageErrorf("--proto %q: want a protocol name (tcp, udp, icmp, icmpv6, sctp, vrrp, gre, …) or number 1-255", f.proto)
		}
		cfg.Proto = p
		filter.Proto = proto.Name(p)
	}
	// Reason names are upper case in the kernel's BTF: any case is accepted,
	// with or without the enum's prefix, and echoed as the kernel names it.
	for _, r := range f.ignore {
		r = strings.TrimPrefix(strings.ToUpper(r), "SKB_DROP_REASON_")
		cfg.IgnoreReasons = append(cfg.IgnoreReasons, r)
	}
	filter.IgnoreReasons = cfg.IgnoreReasons
	if f.top < 0 {
		return usageErrorf("--top %d: want 0 (all) or more", f.top)
	}
	if err := positiveWindow(cmd, "duration", f.duration, "until Ctrl-C"); err != nil {
		return err
	}
	if f.attach != "" && f.attach != drops.AttachTPBTF && f.attach != drops.AttachRawTP && f.attach != drops.AttachTracepoint {
		return usageErrorf("--attach %q: want tp_btf, raw_tp or tracepoint", f.attach)
	}
	for _, h := range f.hosts {
		a, err := netip.ParseAddr(h)
		if err != nil {
			return usageErrorf("--host %q: want an IP address", h)
		}
		cfg.Addrs = append(cfg.Addrs, a)
		filter.Addrs = append(filter.Addrs, a.String())
	}
	cfg.Ports = append(cfg.Ports, f.ports...)
	filter.Ports = cfg.Ports
	sel, err := selector(f.vip, "", false)
	if err != nil {
		return err
	}
	lb, err := netns.Resolve(g.netns)
	if err != nil {
		return err
	}
	if !kernel.HasCapability(unix.CAP_BPF) && !kernel.HasCapability(unix.CAP_SYS_ADMIN) {
		return fmt.Errorf("%w: loading the drop tracer needs CAP_BPF (run as root)", errPrivilege)
	}
	cfg.LB = lb
	if g.netns != "" {
		cfg.NetnsInode = uint32(lb.Inode)
		filter.Netns = lb.String()
	}
	if sel.VIP.IsValid() {
		// The rules are read by save tools (seconds on a large rule
		// set): Ctrl-C does not wait for them.
		var vt vipTargets
		if !measure(cmd.Context(), func() { vt = vipTargetsOf(lb, sel) }) {
			return notMeasured(cmd.Context())
		}
		na, np := len(cfg.Addrs), len(cfg.Ports)
		cfg.Addrs, cfg.Ports = append(cfg.Addrs, vt.addrs...), append(cfg.Ports, vt.ports...)
		for _, a := range cfg.Addrs[na:] {
			filter.VIPAddrs = append(filter.VIPAddrs, a.String())
		}
		filter.VIPPorts = cfg.Ports[np:]
		if !vt.ipvs {
			for _, e := range []struct {
				what string
				err  error
			}{{"conntrack", vt.learnErr}, {"the rules", vt.rulesErr}} {
				if e.err != nil {
					printf(cmd.ErrOrStderr(), "! %s is not an IPVS service and %s could not be read (%v): the backends it shows are not traced\n", sel.VIPString(), e.what, e.err)
				}
			}
			if len(vt.backends) == 0 {
				printf(cmd.ErrOrStderr(), "! %s is not an IPVS service and no conntrack flow to it and no DNAT rule shows a backend: only packets still addressed to it are traced\n", sel.VIPString())
			} else {
				printf(cmd.ErrOrStderr(), "%s is not an IPVS service: tracing too the backends its conntrack flows and DNAT rules show: %s\n", sel.VIPString(), probes.JoinBackends(vt.backends))
				if len(vt.unread) > 0 {
					r := vt.unread[0]
					printf(cmd.ErrOrStderr(), "! its DNAT rule %s %q chooses backends from a map or an expression lbdoctor does not read: those no conntrack flow showed are traced only while packets are still addressed to the VIP\n", r.Place(), r.Spec)
				}
			}
		}
	}

	// What lbdoctor keeps while tracing is bounded (the ring, the caches);
	// collecting garbage less often saves a good part of a flood's CPU.
	debug.SetGCPercent(400)
	ctx := cmd.Context()
	tr, err := drops.NewContext(ctx, cfg)
	if ctx.Err() != nil {
		return notMeasured(ctx) // interrupted while the tracer loaded
	}
	if errors.Is(err, drops.ErrBadFilter) {
		return usageErrorf("%v", err)
	}
	if err != nil {
		return err
	}
	defer tr.Close()
	namer := tr.Namer()
	tags := netns.NewTags() // namespaces without a /run/netns name: say whose they are
	toDrop := func(c drops.Counted) report.Drop { return report.DropOf(c, tags.Of(c.Netns)) }

	// The window: --duration, Ctrl-C or SIGTERM, or the namespace going away.
	// It opened when the tracer was attached, which counts from then (the
	// attributor's first read of the tables was done before).
	start := tr.Attached()
	window, endWindow := context.WithCancelCause(ctx)
	defer endWindow(nil)
	if f.duration > 0 {
		var cancel context.CancelFunc
		window, cancel = context.WithDeadline(window, start.Add(f.duration))
		defer cancel()
	}
	if g.netns != "" {
		go watchNetns(window, lb, endWindow)
	}
	out := cmd.OutOrStdout()
	jsonOut := g.output == "json"
	if !jsonOut {
		until := "Ctrl-C to stop"
		if f.duration > 0 {
			until = fmt.Sprintf("for %s (Ctrl-C stops earlier)", f.duration)
		}
		printf(cmd.ErrOrStderr(), "tracing drops (%s, attached in %d ms): %s; %s\n", tr.Attach, tr.AttachTime.Milliseconds(), filter, until)
		if tr.NoReasons != "" {
			printf(cmd.ErrOrStderr(), "! %s\n", tr.NoReasons)
		}
		if namer.RawLocations != "" {
			printf(cmd.ErrOrStderr(), "! %s\n", namer.RawLocations)
		}
	}
	// One P for the window. Its goroutines — the ring's reader, the
	// conntrack follower, the line writer — hand work to each other; with
	// more Ps each handoff wakes another thread to look for work (on a
	// flood of 10,000 drops, one P made about a fifth fewer context
	// switches and system calls).
	runtime.GOMAXPROCS(1)
	var delivered uint64
	sum := report.DropsSummary{Type: "summary", Attach: tr.Attach, AttachMs: float64(tr.AttachTime.Microseconds()) / 1000, NoReasons: tr.NoReasons,
		RawLocations: namer.RawLocations, Filter: filter, Top: f.top, Length: f.duration}
	if f.summary {
		namer.Follow(window, drops.FollowPeriod)
		<-window.Done()
		windowOver()
		smp, err := tr.Sample(namer, time.Since(start))
		if err != nil {
			return err
		}
		sum.Aggregates, sum.Counters, sum.Window = make([]report.Drop, 0, len(smp.Drops)), smp.Counters, smp.Window
		for _, c := range smp.Drops {
			delivered += c.Count
			sum.Aggregates = append(sum.Aggregates, toDrop(c))
		}
	} else {
		mono := monotonicOffset()
		// A write per event would cost more than the rest of the event:
		// lines are queued and written every 50 ms, by a goroutine of
		// their own: a stdout nobody reads holds neither the window nor a
		// signal (what does not fit is counted, and said).
		lq := newLineQueue(out, 50*time.Millisecond, 8<<20)
		out = lq
		lines := report.DropLines{W: lq}
		// One RawEvent for every line: each is written before the next.
		var rawLine drops.RawEvent
		onDrop := func(p drops.Packet, raw drops.RawEvent) {
			delivered++
			c, stack := namer.NameEvent(window, p, raw)
			d := report.DropEventOf(c, tags.Of(c.Netns))
			d.Time = time.Unix(0, int64(raw.TimeNs)+mono)
			d.Ifname, d.Len, d.Stack = raw.Ifname, raw.Len, stack
			if p.Proto == unix.IPPROTO_TCP {
				d.TCPFlags = drops.TCPFlags(raw.TCPFlags)
			}
			rawLine = raw
			d.Raw = &rawLine
			if jsonOut {
				lines.Write(&d)
			} else {
				fmt.Fprintln(out, report.DropLine(d))
			}
		}
		// The ring is read by a goroutine of its own, not this one: the
		// main goroutine is locked to the main thread (internal/netns), so
		// each wait of the reader — for the ring, for the conntrack events
		// a drop's flow is in — would put its thread to sleep and wake it
		// again (a futex each way, and the runtime handing its P over),
		// where an unlocked reader waits on the thread that runs the rest.
		read := make(chan error, 1)
		go func() { read <- tr.Read(window, onDrop) }()
		err := <-read
		windowOver()
		// The window is over: what is queued is written while the reader
		// takes it, and so is every write after it.
		setOutputStall(cmd.OutOrStdout(), stallBound)
		setOutputStall(cmd.ErrOrStderr(), stallBound)
		sum.NotWritten, _ = lq.Close()
		out = cmd.OutOrStdout()
		if err != nil {
			return err
		}
	}
	if !f.summary {
		if sum.Counters, err = tr.Counters(); err != nil {
			return err
		}
	}
	if sum.Window == 0 {
		sum.Window = time.Since(start)
	}
	sum.Delivered, sum.Lost = delivered, sum.Counters.Lost()
	sum.Attribution = namer.Attribution()
	if sig := interruptedBy(ctx); sig != "" {
		sum.Interrupted, sum.CutShort = true, "interrupted by "+sig
	} else if cause := context.Cause(window); errors.Is(cause, errNetnsGone) {
		sum.CutShort = cause.Error()
	}
	if f.summary {
		setOutputStall(cmd.OutOrStdout(), stallBound)
		setOutputStall(cmd.ErrOrStderr(), stallBound)
	}
	if jsonOut {
		if f.summary {
			err = report.DropsSummaryJSON(out, sum)
		} else {
			err = report.DropsJSONLine(out, sum)
		}
		var blocked error
		if errors.Is(err, errOutputBlocked) {
			// Said where it can be read: the summary is the run's result,
			// and a reader that got part of it must not take it for whole.
			blocked = &exitError{code: exitFailed, msg: "the JSON summary was not written whole: " + err.Error()}
		} else if err != nil {
			return err
		}
		if sum.NotWritten > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "! %d of the %d drops reported were not written: the output blocked (nobody read it) and the window does not wait for it\n", sum.NotWritten, sum.Delivered)
		}
		return blocked
	}
	// Text: the table is data (stdout); the closing lines are status and go
	// to stderr in both modes, like the start line.
	var blocked error
	if f.summary {
		if err := report.DropsTable(out, sum); errors.Is(err, errOutputBlocked) {
			blocked = &exitError{code: exitFailed, msg: "the summary table was not written whole: " + err.Error()}
		} else if err != nil {
			return err
		}
	}
	// stderr blocked too: nothing more can be said, and nothing waits.
	report.DropsClosing(cmd.ErrOrStderr(), sum)
	return blocked
}

// windowOver is called when a drops window ends. What is left to do is
// bounded — naming the rows the kernel's maps hold, writing the lines
// queued — and then the process ends: a collection now would mark all the
// window cached (the flows, the symbols) to free memory nobody needs. A
// goal of a million percent, not -1 (off): turning collection off waits for
// a collection under way to finish its marking.
func windowOver() { debug.SetGCPercent(1 << 20) }

// stallBound is how long, once a drops window is over, a write may go with
// nothing taken by its reader before it is given up: the process ends soon
// after the window when nobody reads stdout, and never cuts the output of
// a reader that is merely slow.
const stallBound = 150 * time.Millisecond

// errNetnsGone ends a drops window whose namespace was deleted.
var errNetnsGone = errors.New("deleted")

// watchNetns ends the window (cause wrapping errNetnsGone) when lb's path no
// longer leads to the namespace being traced: `ip netns del` unmounts it.
// Polled: a deleted namespace has no event to wait for.
func watchNetns(ctx context.Context, lb netns.Target, end context.CancelCauseFunc) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var st unix.Stat_t
		if err := unix.Stat(lb.Path, &st); err != nil || st.Ino != lb.Inode {
			end(fmt.Errorf("%s was %w", lb, errNetnsGone))
			return
		}
	}
}

// monotonicOffset converts CLOCK_MONOTONIC (BPF's clock) to wall time.
func monotonicOffset() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now().UnixNano() - ts.Nano()
}

// vipTargets is what a window on the selected VIP must match: the VIP, its
// real servers and their ports when IPVS serves it; for a VIP IPVS does not
// serve (nft or iptables DNAT), after the DNAT its packets carry a
// backend's address: the backends its conntrack flows and DNAT rules show
// are added (probes.VIPBackends, as check's window does), with the errors
// that left a source unread.
type vipTargets struct {
	addrs    []netip.Addr
	ports    []uint16
	reals    []netip.AddrPort // the services' real servers, or the backends
	ipvs     bool
	vs       ipvs.Snapshot // the read they come from: its services, and its counters' connections
	backends []probes.VIPBackend
	unread   []rules.Rule // DNAT rules of the VIP whose backends are not read (a named map)
	learnErr error        // conntrack not read
	rulesErr error        // the rules not read
}

func vipTargetsOf(lb netns.Target, sel probes.Selector) vipTargets {
	var svcs []ipvs.Service
	var t vipTargets
	if snap, err := ipvs.Read(lb); err == nil {
		svcs, t.vs = snap.Services, snap
	}
	t.addrs, t.ports = probes.DropFilter(sel, svcs)
	t.ipvs = probes.ServesVIP(sel, svcs)
	for _, svc := range svcs {
		if svc.FWMark == 0 && sel.Matches(svc.Addr, svc.Proto) {
			for _, r := range svc.Reals {
				t.reals = append(t.reals, r.Addr)
			}
		}
	}
	if !t.ipvs {
		var learned []netip.AddrPort
		learned, t.learnErr = probes.LearnBackends(lb, sel)
		var rs rules.Snapshot
		rs, t.rulesErr = rules.Read(lb)
		t.backends = probes.VIPBackends(sel, learned, rs.Rules)
		t.unread = probes.UnreadDNATs(rs.Rules, sel)
		t.addrs, t.ports = probes.AddBackends(sel, t.addrs, t.ports, probes.BackendAddrs(t.backends))
		t.reals = append(t.reals, probes.BackendAddrs(t.backends)...)
	}
	return t
}
