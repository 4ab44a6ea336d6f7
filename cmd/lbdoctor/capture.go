package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// joinSnaplen is the bytes of a frame the join reads at most: Ethernet and
// a VLAN tag (18), IPv4 with options (60; IPv6's fixed header is 40), TCP
// with options (60).
const joinSnaplen = 18 + 60 + 60

type captureFlags struct {
	vip, proto, write string
	duration          time.Duration
	count, snaplen    int
}

func newCaptureCmd(g *globalFlags) *cobra.Command {
	f := &captureFlags{}
	cmd := &cobra.Command{
		Use:   "capture",
		Short: "Capture a VIP's flows on the load balancer, leg by leg, joined across the NAT",
		Long: `capture reads the packets of one virtual service's flows on the load
balancer (AF_PACKET sockets in its namespace, filtered in the kernel) and
places each on its flow and leg — client→VIP, LB→real, real→LB, LB→client —
through the LB's conntrack and IPVS tables, whatever NAT rewrote. At the end
it prints one line per flow with its four legs and where it stops; -w also
writes the packets as pcapng, each commented with its flow and leg. The
kernel's ring drops and the packets no flow claimed are always said.`,
		Example: `  sudo lbdoctor capture --netns lb --vip 10.1.0.6:8085 --duration 5s
  sudo lbdoctor capture --vip 10.1.0.6:8085 --count 100 -w vip.pcapng -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCapture(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.vip, "vip", "", "the virtual service: `ADDR:PORT` ([ADDR]:PORT for IPv6; required)")
	fl.StringVar(&f.proto, "proto", "", "its protocol, `tcp|udp` (default: the service's, or both)")
	fl.DurationVar(&f.duration, "duration", 0, "stop after this `WINDOW` (> 0; default: until Ctrl-C or --count)")
	fl.IntVar(&f.count, "count", 0, "stop after `N` packets (> 0)")
	fl.StringVarP(&f.write, "write", "w", "", "also write the packets to `FILE.pcapng` (mode 0600)")
	fl.IntVar(&f.snaplen, "snaplen", capture.DefaultSnaplen, fmt.Sprintf("keep the first `N` bytes of each packet (1-%d)", capture.MaxSnaplen))
	return cmd
}

// captureDoc is `capture -o json` (schema 1, README "JSON output of capture").
type captureDoc struct {
	Schema int `json:"schema"`
	Target struct {
		Netns string `json:"netns"`
		VIP   string `json:"vip"`
		Proto string `json:"proto,omitempty"`
	} `json:"target"`
	Filter struct {
		Addrs []netip.Addr `json:"addrs"`
		Ports []uint16     `json:"ports"`
		// Widened: the kernel's filter took the ports alone (too many
		// addresses for it); the addresses were selected in user space.
		Widened string `json:"widened,omitempty"`
	} `json:"filter"`
	Interfaces   []capture.Stats     `json:"interfaces"`
	Skipped      []capture.Skip      `json:"skipped,omitempty"`
	Length       time.Duration       `json:"length_ns,omitempty"`
	Elapsed      time.Duration       `json:"elapsed_ns"`
	Interrupted  bool                `json:"interrupted"`
	CutShort     string              `json:"cut_short,omitempty"`
	Packets      uint64              `json:"packets"`
	KernelDrops  uint64              `json:"kernel_drops"`
	NotProcessed uint64              `json:"not_processed"`
	Unclaimed    uint64              `json:"unclaimed"`
	Own          uint64              `json:"own"`
	Unlisted     uint64              `json:"unlisted"`
	Flows        []*capture.FlowLegs `json:"flows"`
	File         *captureFile        `json:"file,omitempty"`
	Errors       map[string]string   `json:"errors,omitempty"`
	Unread       map[string]string   `json:"unread,omitempty"`
}

type captureFile struct {
	Path    string `json:"path"`
	Packets uint64 `json:"packets"`
	Error   string `json:"error,omitempty"`
}

func runCapture(cmd *cobra.Command, g *globalFlags, f *captureFlags) error {
	if f.vip == "" {
		return usageErrorf("capture needs --vip ADDR:PORT: the service whose flows to capture")
	}
	sel, err := selector(f.vip, f.proto, true)
	if err != nil {
		return err
	}
	if err := positiveWindow(cmd, "duration", f.duration, "until Ctrl-C"); err != nil {
		return err
	}
	if f.count < 0 || f.count == 0 && cmd.Flags().Changed("count") {
		return usageErrorf("--count %d: want a number of packets > 0 (leave the flag out for no bound)", f.count)
	}
	if f.snaplen < 1 || f.snaplen > capture.MaxSnaplen {
		return usageErrorf("--snaplen %d: want 1 to %d bytes", f.snaplen, capture.MaxSnaplen)
	}
	if f.write == "-" {
		// tcpdump's `-w -` is stdout; lbdoctor's stdout is the flows or
		// the JSON document, and a file named "-" is never what was meant.
		return usageErrorf("-w -: stdout carries the flows or the document; name a file")
	}
	if f.write != "" {
		if err := writable(f.write); err != nil {
			return usageErrorf("-w %s: %v", f.write, err)
		}
	}
	lb, err := target(g)
	if err != nil {
		return err
	}
	if !kernel.HasCapability(unix.CAP_NET_RAW) {
		return fmt.Errorf("%w: capturing packets needs CAP_NET_RAW (run as root)", errPrivilege)
	}
	ctx := cmd.Context()
	// The reads before the capture opens cannot be cancelled (the rules
	// are read by save tools, which on a node with a large rule set take
	// seconds): Ctrl-C does not wait for them.
	var vt vipTargets
	if !measure(ctx, func() { vt = vipTargetsOf(lb, sel) }) {
		return notMeasured(ctx)
	}
	// The sockets keep at least the headers the join reads (a short
	// --snaplen cuts the file's packets, not the legs); the file keeps
	// --snaplen.
	opt := capture.Options{Snaplen: max(f.snaplen, joinSnaplen), Match: capture.Match{Addrs: vt.addrs, Ports: vt.ports}}
	if p, ok := proto.Parse(sel.Proto); ok && sel.Proto != "" {
		opt.Match.Proto = p
	}
	stderr := cmd.ErrOrStderr()
	if !vt.ipvs {
		// nft or iptables DNAT: after it, packets carry a backend's
		// address (vipTargetsOf added those its conntrack flows and DNAT
		// rules show).
		switch {
		case len(vt.backends) > 0:
			printf(stderr, "%s is not an IPVS service: capturing too the backends its conntrack flows and DNAT rules show: %s\n", sel.VIPString(), probes.JoinBackends(vt.backends))
		default:
			// No backend known: a masqueraded flow still carries the
			// LB's own address after SNAT.
			own, err := ownAddrs(lb)
			if err != nil {
				return err
			}
			for _, a := range own {
				if !slices.Contains(opt.Match.Addrs, a) { // the VIP is one of them
					opt.Match.Addrs = append(opt.Match.Addrs, a)
				}
			}
			opt.Match.Ports = nil
			printf(stderr, "! %s is not an IPVS service and neither conntrack nor a DNAT rule shows a backend: capturing every port of it and of this namespace's own addresses (SNAT)\n", sel.VIPString())
		}
	}
	opt.Interfaces, err = capture.FlowInterfaces(lb, []netip.Addr{sel.VIP.Addr()}, vt.reals)
	if err != nil {
		return err
	}

	// The join reads a big LB's tables as check's window does (one rule:
	// probes.AttributorBounds), so the capture opens promptly; the closing
	// lines say what it left unread. Conntrack's size is its statistics
	// (no dump); unread, it is taken as small.
	var tables probes.Snapshot
	tables.IPVS = vt.vs
	if !measure(ctx, func() { tables.Conntrack.Stats, _ = conntrack.ReadStats(lb) }) {
		return notMeasured(ctx)
	}
	j, err := capture.NewServiceJoiner(ctx, lb, opt.Match, []netip.AddrPort{sel.VIP}, probes.AttributorBounds(&tables, sel, vt.vs.Services))
	if err != nil {
		return notMeasured(ctx)
	}
	defer j.Close()
	c, err := capture.Open(lb, opt)
	if ctx.Err() != nil {
		if c != nil {
			c.Close()
		}
		return notMeasured(ctx)
	}
	switch {
	case errors.Is(err, capture.ErrBadOptions), errors.Is(err, capture.ErrNoInterface):
		return usageErrorf("%v", err)
	case err != nil:
		return fmt.Errorf("open the capture in %s: %w", lb, err)
	}
	defer c.Close()

	var doc captureDoc
	doc.Schema = 1
	doc.Target.Netns, doc.Target.VIP, doc.Target.Proto = lb.String(), sel.VIP.String(), sel.Proto
	doc.Filter.Addrs, doc.Filter.Ports, doc.Filter.Widened = opt.Match.Addrs, opt.Match.Ports, c.Widened()
	doc.Skipped, doc.Length = c.Skipped(), f.duration
	if doc.Filter.Ports == nil {
		doc.Filter.Ports = []uint16{}
	}

	var file *capture.Writer
	if f.write != "" {
		if file, err = capture.CreateFile(f.write, f.snaplen, c.SocketInterfaces()); errors.Is(err, capture.ErrNotRegular) {
			return usageErrorf("-w %s: %v", f.write, err)
		} else if err != nil {
			return err
		}
		doc.File = &captureFile{Path: f.write}
	}
	// The window: --duration, Ctrl-C or SIGTERM, or the namespace going
	// away (its sockets would keep it alive, capturing nothing, silent).
	window, endWindow := context.WithCancelCause(ctx)
	defer endWindow(nil)
	if g.netns != "" {
		go watchNetns(window, lb, endWindow)
	}
	{
		// The start line goes to stderr whatever the output: the document
		// is stdout's, and whoever waits for the capture knows it started.
		until := "until Ctrl-C"
		if f.duration > 0 {
			until = fmt.Sprintf("for %s (Ctrl-C stops earlier)", f.duration)
		}
		if f.count > 0 {
			until += fmt.Sprintf(", at most %d packets", f.count)
		}
		printf(stderr, "capturing %s in %s on %s: addresses %s, ports %s; %s\n", sel.VIPString(), lb, interfaceList(c.Stats()),
			joinAddrs(opt.Match.Addrs), joinPorts(opt.Match.Ports), until)
		if w := c.Widened(); w != "" {
			printf(stderr, "! %s\n", w)
		}
	}
	wopt := capture.WatchOptions{Count: f.count, Stop: ctx}
	var sorter *capture.Sorter
	if file != nil {
		// Each packet's comment names its flow and leg (Wireshark shows it);
		// the file is in time order across the interfaces' rings.
		sorter = capture.NewSorter(file)
		wopt.Sink = func(p capture.Packet, leg capture.LegOf, ok bool) error {
			if len(p.Data) > f.snaplen {
				p.Data = p.Data[:f.snaplen] // Length keeps the packet's own
			}
			return sorter.Add(p, p.Socket, packetComment(leg, ok))
		}
	}
	if f.duration > 0 {
		// --duration counts from here: what comes before (the start
		// line, a slow terminal) must not eat the capture's time.
		var cancel context.CancelFunc
		window, cancel = context.WithTimeout(window, f.duration)
		defer cancel()
	}
	started := time.Now()
	w, runErr := capture.Watch(window, c, j, wopt)
	doc.Interfaces = c.Close()
	doc.Elapsed, doc.Packets, doc.NotProcessed = w.Elapsed, w.Packets, w.NotProcessed
	for _, s := range doc.Interfaces {
		doc.KernelDrops += s.Drops
	}
	doc.Flows, doc.Unclaimed, doc.Own, doc.Unlisted = j.Table.Flows(), j.Table.Unclaimed, j.Table.Own, j.Table.Unlisted
	if doc.Flows == nil {
		doc.Flows = []*capture.FlowLegs{}
	}
	if errs := j.Errors(); len(errs) > 0 {
		doc.Errors = errs
	}
	if unread := j.Unread(); len(unread) > 0 {
		doc.Unread = unread
	}
	if sig := interruptedBy(ctx); sig != "" {
		doc.Interrupted, doc.CutShort = true, "interrupted by "+sig
	} else if cause := context.Cause(window); errors.Is(cause, errNetnsGone) {
		doc.CutShort = cause.Error()
	}
	if file != nil {
		drainErr := sorter.Drain()
		doc.File.Packets = file.Packets()
		// A write that failed fails every later one (the statistics, the
		// flush) with the same error: the first says it, on one line.
		err := file.Close(capture.FileStatsOf(doc.Interfaces, started, time.Now()))
		if drainErr != nil && w.SinkErr == nil {
			err = fmt.Errorf("write packet: %w", drainErr)
		}
		if w.SinkErr != nil {
			err = w.SinkErr
		}
		if err != nil {
			doc.File.Error = err.Error()
		}
	}
	if runErr != nil && !doc.Interrupted {
		// Every interface went away: what was captured (even nothing) is
		// the result, cut short, as drops says of a namespace deleted
		// under it; the kernel's counts say what the rings still held.
		doc.CutShort = runErr.Error()
	}
	// The closing lines are stderr's in every output, as the start line:
	// whoever watches a document being written sees what was captured and
	// lost. Before the document: a reader that stops reading it (`| head
	// -c 100`: SIGPIPE) does not take them with it.
	out := cmd.OutOrStdout()
	if g.output == "json" {
		captureClosing(stderr, &doc, runErr)
		if err := report.JSONDocument(out, doc); err != nil {
			return err
		}
	} else {
		end := started.Add(w.Elapsed)
		for _, fl := range doc.Flows {
			printf(out, "%s%s\n", fl, cutByEnd(fl, end))
		}
		captureClosing(stderr, &doc, runErr)
	}
	if doc.File != nil && doc.File.Error != "" {
		return &exitError{code: exitFailed, msg: fmt.Sprintf("-w %s: %s", f.write, doc.File.Error)}
	}
	return nil
}

// cutBound is how close to the capture's end a stopped flow's last packet
// may come and the stop be only the end: the packet of its next leg (a
// real's SYN-ACK, a reply relayed) was not yet due. A flow that truly
// stops shows it longer: TCP retransmits after 1 s (its first SYN) or at
// least 200 ms.
const cutBound = 500 * time.Millisecond

// cutByEnd is what a flow's line adds when the capture's end (--count,
// --duration, Ctrl-C) may be what stopped it: its last packet came within
// cutBound of the end.
func cutByEnd(fl *capture.FlowLegs, end time.Time) string {
	if fl.Stop() == "" {
		return ""
	}
	var last time.Time
	for _, l := range fl.Legs {
		if l.Last.After(last) {
			last = l.Last
		}
	}
	if before := end.Sub(last); !last.IsZero() && before < cutBound {
		return fmt.Sprintf(" (its last packet came %s before the capture ended: it may be cut, not stopped)", max(before, 0).Round(time.Millisecond))
	}
	return ""
}

// packetComment names a packet's flow and leg in the pcapng file.
func packetComment(leg capture.LegOf, ok bool) string {
	if !ok {
		return "lbdoctor: claimed by no flow of the VIP"
	}
	return fmt.Sprintf("lbdoctor: leg %s (%s) of %s → VIP %s via real %s", capture.LegName(leg.Kind), leg.Kind, leg.Client, leg.VIP, leg.Real)
}

// captureClosing is the text closing lines (stderr, like drops'): what was
// captured, what was lost and where, what no flow claimed.
func captureClosing(w interface{ Write([]byte) (int, error) }, d *captureDoc, runErr error) {
	var legs [len(capture.LegKinds)]uint64
	for _, fl := range d.Flows {
		for i, l := range fl.Legs {
			legs[i] += l.Packets
		}
	}
	var parts []string
	for i, k := range capture.LegKinds {
		parts = append(parts, fmt.Sprintf("%s %d", capture.LegName(k), legs[i]))
	}
	printf(w, "%d packets captured in %s: %d flows (%s); %d claimed by no flow (%d of them the LB's own traffic)\n", d.Packets, d.Elapsed.Round(time.Millisecond), len(d.Flows), strings.Join(parts, ", "), d.Unclaimed, d.Own)
	var drops []string
	var unread uint64
	for _, s := range d.Interfaces {
		drops = append(drops, fmt.Sprintf("%s %d", s.Interface, s.Drops))
		unread += s.Unread
	}
	mark := ""
	if d.KernelDrops > 0 || unread > 0 {
		mark = "! "
	}
	// Unread: what the kernel put in the rings and the capture, ended,
	// never read (packets = captured + drops + unread): loss too.
	printf(w, "%skernel ring drops: %d (%s); left unread in the rings at the end: %d\n", mark, d.KernelDrops, strings.Join(drops, ", "), unread)
	for _, s := range d.Interfaces {
		if s.Ended != "" {
			printf(w, "! %s stopped before the capture: %s\n", s.Interface, s.Ended)
		}
	}
	if runErr != nil {
		printf(w, "! %v\n", runErr)
	}
	if d.NotProcessed > 0 {
		printf(w, "! %d packets were counted but not joined nor written: lbdoctor's queue was full\n", d.NotProcessed)
	}
	if d.Unlisted > 0 {
		printf(w, "! %d packets of flows past the first %d are not listed\n", d.Unlisted, capture.MaxFlows)
	}
	for _, k := range slices.Sorted(maps.Keys(d.Errors)) {
		printf(w, "! %s could not be read: %s (packets of its flows are claimed by no flow)\n", k, d.Errors[k])
	}
	for _, k := range slices.Sorted(maps.Keys(d.Unread)) {
		printf(w, "! %s (packets of the flows left unread are claimed by no flow)\n", d.Unread[k])
	}
	for _, s := range d.Skipped {
		printf(w, "not captured: %s (%s)\n", s.Interface, s.Reason)
	}
	if d.File != nil {
		if d.File.Error != "" {
			printf(w, "! %s: %s\n", d.File.Path, d.File.Error)
		} else {
			printf(w, "wrote %d packets to %s\n", d.File.Packets, d.File.Path)
		}
	}
	switch {
	case d.Interrupted:
		sig := strings.TrimPrefix(d.CutShort, "interrupted by ")
		printf(w, "%s\n", cutShortLine(sig, d.Elapsed, d.Length))
	case d.CutShort != "" && runErr == nil:
		printf(w, "! cut short (%s) after %s\n", d.CutShort, d.Elapsed.Round(time.Millisecond))
	}
}

// writable says why path cannot be written as a new capture file, without
// creating it: nothing is left behind by a command that then fails.
func writable(path string) error {
	// Lstat: CreateFile never follows a link (O_NOFOLLOW), so a link is
	// refused here, with the rest of the bad input, not after the capture
	// was opened and announced.
	st, err := os.Lstat(path)
	switch {
	case err == nil && st.Mode()&os.ModeSymlink != 0:
		return errors.New("a symbolic link: not a regular file (lbdoctor does not write through links)")
	case err == nil && !st.Mode().IsRegular():
		return errors.New("not a regular file")
	case err == nil:
		if err := unix.Access(path, unix.W_OK); err != nil {
			return fmt.Errorf("cannot be written: %w", err)
		}
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("no such directory %s", dir)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("directory %s cannot be written: %w", dir, err)
	}
	return nil
}

// ownAddrs are lb's own addresses (not loopback's): the SNAT addresses a
// masquerade can give a flow.
func ownAddrs(lb netns.Target) ([]netip.Addr, error) {
	st, err := netstate.Read(lb)
	if err != nil {
		return nil, fmt.Errorf("read the addresses of %s: %w", lb, err)
	}
	var out []netip.Addr
	for _, l := range st.Links {
		for _, p := range l.Addrs {
			if a := p.Addr(); !a.IsLoopback() && !a.IsLinkLocalUnicast() && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

func interfaceList(st []capture.Stats) string {
	var names []string
	for _, s := range st {
		if !slices.Contains(names, s.Interface) {
			names = append(names, s.Interface)
		}
	}
	return strings.Join(names, ", ") + " (received and sent)"
}

func joinAddrs(l []netip.Addr) string {
	s := make([]string, len(l))
	for i, a := range l {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func joinPorts(l []uint16) string {
	if len(l) == 0 {
		return "any"
	}
	s := make([]string, len(l))
	for i, p := range l {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ", ")
}
