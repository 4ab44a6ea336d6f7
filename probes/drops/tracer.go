// Package drops traces the packets the kernel drops (skb:kfree_skb) with a
// BPF program filtered in the kernel by namespace, addresses, ports,
// protocol and reason — the dropwatch equivalent — and names each drop:
// reason from the kernel's BTF, location from /proc/kallsyms, and the VIP
// flow it belonged to from conntrack and the IPVS connection table.
//
// Two modes: aggregate (counted per netns, reason, location and flow in the
// kernel, read periodically; costs almost nothing) and events (one record
// per drop through a ring buffer). Lost records are counted in the kernel
// and always reported.
package drops

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// Attach points, in the order they are tried.
const (
	AttachTPBTF      = "tp_btf"
	AttachRawTP      = "raw_tp"
	AttachTracepoint = "tracepoint"
)

// Config says what to trace. Zero values mean "everything".
type Config struct {
	NetnsInode uint32       // only drops in this namespace
	Addrs      []netip.Addr // a drop matches if its source or destination is one of these
	// Select are addresses the caller selects drops by in user space, when
	// there are more than the kernel's filter takes (MaxFilter): the
	// attributor reads only the flows that touch them (or Addrs).
	Select []netip.Addr
	// NoIPVSTable, when set, says why the attributor never reads the IPVS
	// connection table (one too big to read in a window: its /proc file
	// costs the square of its size); drops are then attributed through
	// conntrack alone, and the sample's attribution errors say why.
	NoIPVSTable string
	// NoConntrackDump, when set, says why the attributor never dumps
	// conntrack (a table bigger than a window's reads): drops are then
	// attributed to the flows conntrack confirms while the tracer runs
	// (its events) alone, and the sample's attribution errors say why.
	NoConntrackDump string
	Ports           []uint16 // … and its source or destination port is one of these
	Proto           uint8    // … and its protocol is this
	IgnoreReasons   []string // reason names to leave out (e.g. NOT_SPECIFIED)
	Events          bool     // send each drop to user space (else: aggregate only)
	Stack           bool     // record the kernel stack of each event
	Attach          string   // force an attach point; "" picks the best available
	// FlowMapSize is how many (netns, reason, location, flow) keys the
	// aggregate map holds (0: DefaultFlowMapSize). Drops of flows past it
	// are still counted exactly by place, only not itemised per flow.
	FlowMapSize uint32
	// LB is the namespace whose conntrack and IPVS tables name the drops'
	// flows (the tracer's Namer); the zero Target is lbdoctor's own.
	LB netns.Target
}

// DefaultFlowMapSize is the aggregate map's size: 16,384 flows take 2.4 MB
// of kernel memory on 2 CPUs (a key of 56 bytes and 8 bytes per CPU, plus
// the kernel's per-entry overhead, all allocated at load; memlock in the
// map's fdinfo). A flood of
// more distinct flows is summed up by place anyway, which a second map
// counts exactly; so a bigger map would buy only per-flow detail.
const DefaultFlowMapSize = 16384

// Tracer is a loaded and attached drop tracer. Close detaches it; its
// links are bound to file descriptors, so a killed process leaves nothing
// attached.
type Tracer struct {
	Attach     string            // the attach point in use
	AttachTime time.Duration     // from load start to attached
	Reasons    map[uint32]string // reason names from BTF; nil without BTF or reasons
	// NoReasons says why drops carry no reason on this kernel (kfree_skb
	// passes none before 5.17): only their locations are known. Empty when
	// they do.
	NoReasons string

	// NoHooks says why netfilter drops carry no hook (no kallsyms, no
	// drop reasons, event mode); empty when they do.
	NoHooks string

	cfg    Config
	events bool
	coll   *ebpf.Collection // what is left of the loaded collection: the program
	maps   dropsMaps        // bpf2go's: one field per map of bpf/
	vars   dropsVariables
	prog   *ebpf.Program
	mu     sync.Mutex // guards lnk (Read's watcher and Close may both stop) and closed
	lnk    link.Link
	closed bool // the ring is being closed: not to be looked at
	ring   *ringbuf.Reader
	// ringFile is the ring's map, waited for by Go's netpoller: the ring
	// reader's own wait is an epoll_wait that holds a thread and its P,
	// which the runtime takes back (waking its monitor every 20 µs) while
	// events flow.
	ringFile *os.File
	ringConn syscall.RawConn
	ending   atomic.Bool // the window is over: the reader reads what is left and returns
	// symbols is the read of kallsyms Prepared.ReadSymbols started beside
	// the loading (nil: the Namer reads them).
	symbols *symbolsRead
	// namer names what the tracer counts. It is made with the tracer and
	// its first read of the tables is done before the attach (again
	// before SetFilter switches to what it reads), so a flow that exists
	// at any instant of a window is known to it.
	namer *Namer
	// attached is when Load attached the tracer: it counts from then.
	attached time.Time
	// filters and filterGen mirror the kernel side's two filter copies
	// and the one in use (SetFilter).
	filters   [2]dropsFilter
	filterGen uint32
}

// symbolsRead is a read of /proc/kallsyms under way: syms and err are set
// when done is closed.
type symbolsRead struct {
	modules string // the kernel's modules when the read began (loadedModules)
	done    chan struct{}
	syms    *Symbols
	err     error
}

// loadSymbols returns the kernel's symbols: the read started beside the
// loading, once done, or a read now, kept for the tracer's next windows
// (a tracer kept across windows reads kallsyms once).
func (t *Tracer) loadSymbols() (*Symbols, error) {
	if t.symbols == nil {
		r := &symbolsRead{done: make(chan struct{}), modules: loadedModules()}
		r.syms, r.err = LoadSymbols()
		close(r.done)
		t.symbols = r
	}
	<-t.symbols.done
	return t.symbols.syms, t.symbols.err
}

// symbolsStale reports whether a module was loaded or unloaded since the
// kernel's symbols were read (a tracer kept for hours: ip_vs loaded after
// it started), and forgets them then: the next Namer reads them again. One
// read of /proc/modules.
func (t *Tracer) symbolsStale() bool {
	if t.symbols == nil {
		return false
	}
	<-t.symbols.done
	if loadedModules() == t.symbols.modules {
		return false
	}
	t.symbols = nil
	return true
}

// loadedModules names the kernel's modules and where each is loaded
// (/proc/modules' first and sixth fields: not its use counts, which
// move), "" when it cannot be read.
func loadedModules() string {
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		return ""
	}
	return modulesOf(b)
}

// modulesOf is loadedModules of the text of /proc/modules. Pure.
func modulesOf(b []byte) string {
	var out strings.Builder
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) >= 6 {
			out.WriteString(f[0] + " " + f[5] + "\n")
		}
	}
	return out.String()
}

// Counters are what the kernel side counted.
type Counters struct {
	Matched  uint64 `json:"matched"`   // drops that passed the filters
	RingLost uint64 `json:"ring_lost"` // events the ring buffer had no room for
	AggLost  uint64 `json:"agg_lost"`  // drops neither aggregate map (flows, places) had room for
	// NotItemised counts the drops of flows the aggregate map had no room
	// for: counted by place (netns, reason, location) alone, exactly, in
	// aggregates marked NotItemised.
	NotItemised uint64 `json:"not_itemised"`
	// Missed counts kfree_skb calls the kernel did not run the tracer for
	// (a drop while the tracer was already running on that CPU): unseen
	// drops of any kind, so they cannot be filtered, only counted.
	Missed uint64 `json:"missed"`
}

// Lost is every drop that matched but could not be reported in detail.
func (c Counters) Lost() uint64 { return c.RingLost + c.AggLost }

// since is what the running counters c counted after the earlier read
// prev (0 for a counter read short of it).
func (c Counters) since(prev Counters) Counters {
	sub := func(a, b uint64) uint64 {
		if a > b {
			return a - b
		}
		return 0
	}
	return Counters{Matched: sub(c.Matched, prev.Matched), RingLost: sub(c.RingLost, prev.RingLost), AggLost: sub(c.AggLost, prev.AggLost),
		NotItemised: sub(c.NotItemised, prev.NotItemised), Missed: sub(c.Missed, prev.Missed)}
}

// atLeast is c with each counter raised to prev's where it was read short.
func (c Counters) atLeast(prev Counters) Counters {
	return Counters{Matched: max(c.Matched, prev.Matched), RingLost: max(c.RingLost, prev.RingLost), AggLost: max(c.AggLost, prev.AggLost),
		NotItemised: max(c.NotItemised, prev.NotItemised), Missed: max(c.Missed, prev.Missed)}
}

// MaxFilter is how many addresses, and how many ports, the kernel-side
// filter takes (MAX_ADDRS, MAX_PORTS in bpf/lbdoctor.h).
const MaxFilter = 16

// Sizes of bpf/'s arrays that bpf2go names no constant for (Go needs
// them as constants: array lengths): the words of the ignore_reasons
// bitmap and the frames of a stacks value. TestSizesMatchTheProgram holds
// them, and MaxFilter, to the program's own.
const (
	ignoreWords = 4
	stackFrames = 127
)

// kernelReasonField is kernel.KfreeSkbReasonField; tests replace it to run
// the tracer as on a kernel older than 5.17.
var kernelReasonField = kernel.KfreeSkbReasonField

// ErrBadFilter reports a filter the tracer cannot take: too many entries,
// or a reason this kernel does not have.
var ErrBadFilter = errors.New("bad drop filter")

// NewContext is New that gives up when ctx ends first (loading takes
// hundreds of milliseconds on a busy machine and cannot be cancelled): it
// returns context.Cause(ctx), and the tracer, once loaded, is closed.
// It reads the kernel's symbols for the tracer's Namer beside the loading
// and attaches the tracer once they are read (Prepared.ReadSymbols): a
// window that opens at the attach is not shortened by them (tens of
// milliseconds here, seconds when /proc/kallsyms is slow to read).
func NewContext(ctx context.Context, cfg Config) (*Tracer, error) {
	return loadContext(ctx, func() (*Tracer, error) {
		p, err := Prepare(cfg.Attach)
		if err != nil {
			return nil, err
		}
		p.ReadSymbols()
		return p.Load(cfg)
	})
}

// LoadContext is Load that gives up when ctx ends first, as NewContext.
func (p *Prepared) LoadContext(ctx context.Context, cfg Config) (*Tracer, error) {
	return loadContext(ctx, func() (*Tracer, error) { return p.Load(cfg) })
}

func loadContext(ctx context.Context, load func() (*Tracer, error)) (*Tracer, error) {
	type loaded struct {
		t   *Tracer
		err error
	}
	ch := make(chan loaded, 1)
	go func() {
		t, err := load()
		ch <- loaded{t, err}
	}()
	select {
	case l := <-ch:
		return l.t, l.err
	case <-ctx.Done():
		go func() {
			if l := <-ch; l.t != nil {
				l.t.Close()
			}
		}()
		return nil, context.Cause(ctx)
	}
}

// Prepared is the part of loading a tracer that no filter changes: the
// kernel's drop reasons (BTF, shared with the load: kernel.BTFCache), the
// program's spec, the attach point and, from ReadSymbols, the kernel's
// symbols. On a slow machine (the TCG guest) it takes seconds, so a window
// prepares it while it reads the namespace and loads the tracer (Load) once
// that read gave it its filter. A Prepared serves one Load.
type Prepared struct {
	reasons   map[uint32]string
	noReasons string
	hasReason uint8
	spec      *ebpf.CollectionSpec
	specs     dropsSpecs // spec's maps, variables and programs, typed
	attach    string
	symbols   *symbolsRead // nil until ReadSymbols
	took      time.Duration
}

// Prepare does what loading a tracer needs before its filter is known;
// attach forces an attach point as Config.Attach does ("" picks the best).
func Prepare(attach string) (*Prepared, error) {
	start := time.Now()
	p := &Prepared{hasReason: 1}
	reasons, err := kernel.DropReasons()
	if err != nil && !errors.Is(err, kernel.ErrNotSupported) {
		return nil, err
	}
	p.reasons = reasons
	if err := kernelReasonField(); err != nil {
		if !errors.Is(err, kernel.ErrNotSupported) {
			return nil, err
		}
		p.reasons, p.noReasons, p.hasReason = nil, err.Error(), 0
	}
	if p.spec, err = loadDrops(); err != nil {
		return nil, fmt.Errorf("load drop tracer spec: %w", err)
	}
	if err := p.spec.Assign(&p.specs); err != nil {
		return nil, fmt.Errorf("load drop tracer spec: %w", err)
	}
	if p.attach, err = chooseAttach(attach, &p.specs.dropsVariableSpecs); err != nil {
		return nil, err
	}
	p.took = time.Since(start)
	return p, nil
}

// ReadSymbols starts reading /proc/kallsyms in the background for the
// tracer's Namer (seconds on the TCG guest), beside the rest of the
// loading; Load attaches the tracer once they are read, so that naming
// what it counted never waits for them. Without kallsyms the Namer says
// why, as it does reading them itself.
func (p *Prepared) ReadSymbols() {
	r := &symbolsRead{done: make(chan struct{}), modules: loadedModules()}
	p.symbols = r
	go func() {
		defer close(r.done)
		r.syms, r.err = LoadSymbols()
	}()
}

// New loads the tracer with cfg's filters compiled in and attaches it.
func New(cfg Config) (*Tracer, error) {
	p, err := Prepare(cfg.Attach)
	if err != nil {
		return nil, err
	}
	return p.Load(cfg)
}

// Load loads the tracer prepared by p with cfg's filters compiled in
// (cfg.Attach is p's) and attaches it.
func (p *Prepared) Load(cfg Config) (*Tracer, error) {
	start := time.Now()
	if len(cfg.Addrs) > MaxFilter || len(cfg.Ports) > MaxFilter {
		return nil, fmt.Errorf("%w: at most %d addresses and %d ports", ErrBadFilter, MaxFilter, MaxFilter)
	}
	cfg.Attach = p.attach
	t := &Tracer{events: cfg.Events, cfg: cfg, Reasons: p.reasons, NoReasons: p.noReasons, Attach: p.attach, symbols: p.symbols}
	hasReason := p.hasReason
	spec, specs := p.spec, p.specs
	p.spec = nil // one Load: the spec is changed below
	if spec == nil {
		return nil, errors.New("load drop tracer: this preparation was loaded already")
	}
	if len(cfg.IgnoreReasons) > 0 && t.Reasons == nil {
		why := t.NoReasons
		if why == "" {
			why = "reason names need the kernel's BTF: " + kernel.BTF().Error()
		}
		return nil, &kernel.NotSupportedError{Feature: "ignoring drop reasons", Reason: why}
	}
	if err := setFilters(&specs.dropsVariableSpecs, cfg, t.Reasons); err != nil {
		return nil, err
	}
	if err := specs.HasReason.Set(hasReason); err != nil {
		return nil, fmt.Errorf("set has_reason: %w", err)
	}
	if err := t.setHook(&specs.dropsVariableSpecs); err != nil {
		return nil, err
	}
	var err error
	progName := map[string]string{AttachTPBTF: dropsProgDropTpBtf, AttachRawTP: dropsProgDropRawTp, AttachTracepoint: dropsProgDropTracepoint}[t.Attach]
	for name := range spec.Programs {
		if name != progName {
			delete(spec.Programs, name)
		}
	}
	// The kernel's name for the program says whose it is (bpftool prog).
	spec.Programs[progName].Name = ProgramName(os.Getpid())
	if !cfg.Events {
		// Aggregate mode never writes the ring: keep it tiny.
		specs.Events.MaxEntries = uint32(os.Getpagesize())
	}
	if !cfg.Stack {
		specs.Stacks.MaxEntries = 1
	}
	specs.Agg.MaxEntries = DefaultFlowMapSize
	if cfg.FlowMapSize > 0 {
		specs.Agg.MaxEntries = cfg.FlowMapSize
	}
	if cfg.Events {
		// Event mode never counts in the aggregate maps: 2.8 MB saved.
		specs.Agg.MaxEntries, specs.AggPlace.MaxEntries = 1, 1
	}
	t.filters[0] = filterOf(cfg)
	// The Namer subscribes to conntrack's new flows now, and reads the
	// tables beside the loading: the tracer attaches once that read is
	// done, so a window that opens at the attach knows every flow there
	// was at any instant of it (one that ends in its first instants too).
	t.namer = newNamer(t, cfg)
	t.coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Cache: kernel.BTFCache()})
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("load drop tracer (%s): %w", t.Attach, err)
	}
	t.prog = t.coll.Programs[progName]
	if err := errors.Join(t.coll.Assign(&t.maps), t.coll.Assign(&t.vars)); err != nil {
		t.Close()
		return nil, fmt.Errorf("load drop tracer (%s): %w", t.Attach, err)
	}
	t.namer.readSymbols() // read beside the loading (ReadSymbols), else now
	// Load is not cancelled: LoadContext gives up around it.
	t.namer.attr.WaitRead(context.Background())
	if err := t.Start(); err != nil {
		t.Close()
		return nil, err
	}
	if cfg.Events {
		if t.ring, err = ringbuf.NewReader(t.maps.Events); err != nil {
			t.Close()
			return nil, fmt.Errorf("open drop ring buffer: %w", err)
		}
		if err := t.pollRing(); err != nil {
			t.Close()
			return nil, fmt.Errorf("open drop ring buffer: %w", err)
		}
	}
	t.attached = time.Now()
	t.AttachTime = p.took + t.attached.Sub(start)
	return t, nil
}

// setHook turns on the search for a netfilter drop's hook (aggregate mode
// only: an event carries its whole stack with --stack) when the kernel
// names NETFILTER_DROP. The stack is walked once SetHookRange told the
// program where nf_hook_slow is (from kallsyms, read after the tracer is
// attached: reading it takes long).
func (t *Tracer) setHook(vars *dropsVariableSpecs) error {
	if t.cfg.Events {
		t.NoHooks = "event mode: the hook is found in aggregate mode (or read the stack with --stack)"
		return nil
	}
	var code uint32
	found := false
	for c, n := range t.Reasons {
		if n == "NETFILTER_DROP" {
			code, found = c, true
		}
	}
	if !found {
		t.NoHooks = "the kernel names no NETFILTER_DROP reason"
		if t.NoReasons != "" {
			t.NoHooks = "drops carry no reason on this kernel"
		}
		return nil
	}
	t.NoHooks = "kernel symbols not read yet"
	if err := vars.FindHook.Set(uint8(1)); err != nil {
		return fmt.Errorf("set %s: %w", dropsVarFindHook, err)
	}
	if err := vars.NetfilterDrop.Set(code); err != nil {
		return fmt.Errorf("set %s: %w", dropsVarNetfilterDrop, err)
	}
	return nil
}

// SetHookRange tells the running program where nf_hook_slow is in syms:
// from then on netfilter drops carry their hook. Without it (no kallsyms,
// hidden addresses) NoHooks says why.
func (t *Tracer) SetHookRange(syms *Symbols, symErr error) {
	if t.NoHooks != "kernel symbols not read yet" {
		return // event mode, or no reasons: NoHooks says why
	}
	start, end, ok := syms.Range("nf_hook_slow")
	switch {
	case symErr != nil:
		t.NoHooks = "no kernel symbols: " + symErr.Error()
		return
	case syms.Hidden():
		t.NoHooks = "/proc/kallsyms hides the kernel's addresses (kernel.kptr_restrict)"
		return
	case !ok:
		t.NoHooks = "/proc/kallsyms has no nf_hook_slow"
		return
	}
	// The start first: a program that sees the end set sees a range.
	if err := t.vars.HookFnStart.Set(start); err != nil {
		t.NoHooks = "set the hook's range: " + err.Error()
		return
	}
	if err := t.vars.HookFnEnd.Set(end); err != nil {
		t.NoHooks = "set the hook's range: " + err.Error()
		return
	}
	t.NoHooks = ""
}

func chooseAttach(force string, vars *dropsVariableSpecs) (string, error) {
	probes := []struct {
		name  string
		probe func() error
	}{{AttachTPBTF, kernel.TPBTF}, {AttachRawTP, kernel.RawTracepoint}, {AttachTracepoint, kernel.Tracepoint}}
	var reasons []string
	for _, p := range probes {
		if force != "" && force != p.name {
			continue
		}
		err := p.probe()
		if err == nil {
			if p.name == AttachTracepoint {
				if err := setTracepointOffsets(vars); err != nil {
					return "", err
				}
			}
			return p.name, nil
		}
		if !errors.Is(err, kernel.ErrNotSupported) {
			return "", err
		}
		reasons = append(reasons, p.name+": "+err.Error())
	}
	if force != "" && len(reasons) == 0 {
		return "", fmt.Errorf("unknown attach point %q (want %s, %s or %s)", force, AttachTPBTF, AttachRawTP, AttachTracepoint)
	}
	return "", &kernel.NotSupportedError{Feature: "drop tracing", Reason: "cannot attach to kfree_skb: " + strings.Join(reasons, "; ")}
}

var tpField = regexp.MustCompile(`field:[^;]*\b(skbaddr|location|reason);\s*offset:(\d+);`)

// setTracepointOffsets reads where the classic tracepoint puts its fields:
// the layout changed between kernels (rx_sk came in 6.11).
func setTracepointOffsets(vars *dropsVariableSpecs) error {
	dir, err := kernel.TracefsDir()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(dir + "/events/skb/kfree_skb/format")
	if err != nil {
		return fmt.Errorf("read kfree_skb tracepoint format: %w", err)
	}
	off := map[string]uint32{}
	for _, m := range tpField.FindAllStringSubmatch(string(data), -1) {
		v, _ := strconv.Atoi(m[2])
		off[m[1]] = uint32(v)
	}
	if _, ok := off["skbaddr"]; !ok {
		return fmt.Errorf("kfree_skb tracepoint format has no skbaddr field")
	}
	for _, f := range []struct {
		v    *ebpf.VariableSpec
		name string
	}{{vars.TpOffSkb, "skbaddr"}, {vars.TpOffLocation, "location"}, {vars.TpOffReason, "reason"}} {
		if err := f.v.Set(off[f.name]); err != nil {
			return fmt.Errorf("set %s: %w", f.v.Name, err)
		}
	}
	return nil
}

// filterOf is the kernel's form of cfg's namespace, protocol, address and
// port filters (at most MaxFilter of each: checked by the callers).
func filterOf(cfg Config) dropsFilter {
	f := dropsFilter{Netns: cfg.NetnsInode, Proto: cfg.Proto, N_addrs: uint32(len(cfg.Addrs)), N_ports: uint32(len(cfg.Ports))}
	for i, a := range cfg.Addrs {
		f.Addrs[i].B = a.As16() // IPv4 becomes IPv4-mapped, as the kernel side stores it
	}
	copy(f.Ports[:], cfg.Ports)
	return f
}

func setFilters(vars *dropsVariableSpecs, cfg Config, reasons map[uint32]string) error {
	var ignore [ignoreWords]uint64
	byName := map[string]uint32{}
	for v, n := range reasons {
		byName[n] = v
	}
	for _, name := range cfg.IgnoreReasons {
		v, ok := byName[strings.ToUpper(name)]
		if !ok {
			return fmt.Errorf("%w: unknown drop reason %q on kernel %s", ErrBadFilter, name, kernel.Release())
		}
		if v < 256 {
			ignore[v/64] |= 1 << (v % 64)
		}
	}
	sendEvents := uint8(0)
	if cfg.Events {
		sendEvents = 1
	}
	for _, f := range []struct {
		v   *ebpf.VariableSpec
		val any
	}{
		{vars.Filters, [2]dropsFilter{filterOf(cfg)}}, {vars.FilterGen, uint32(0)},
		{vars.IgnoreReasons, ignore}, {vars.AnyIgnored, boolByte(len(cfg.IgnoreReasons) > 0)},
		{vars.SendEvents, sendEvents}, {vars.WantStack, boolByte(cfg.Stack)},
	} {
		if err := f.v.Set(f.val); err != nil {
			return fmt.Errorf("set %s: %w", f.v.Name, err)
		}
	}
	return nil
}

// SetFilter changes the running tracer's filters of namespace, protocol,
// addresses and ports, and what its Namer reads (LB, Select, NoIPVSTable,
// NoConntrackDump), to cfg's, in place (a watcher's services changed
// between windows): no load, no verifier, no drop missed. cfg's Events,
// Stack, Attach, IgnoreReasons and FlowMapSize are the loaded program's and
// stay. The kernel side switches to the whole new filter at once (two
// copies, filter_gen picks one) and forgets what its CPUs remembered of the
// old one's verdicts. When what the Namer reads changed, a new Namer
// replaces it once its first read of the tables is done (its attributed
// counts start over). One SetFilter at a time, between windows.
func (t *Tracer) SetFilter(cfg Config) error {
	if len(cfg.Addrs) > MaxFilter || len(cfg.Ports) > MaxFilter {
		return fmt.Errorf("%w: at most %d addresses and %d ports", ErrBadFilter, MaxFilter, MaxFilter)
	}
	cfg.Events, cfg.Stack, cfg.Attach, cfg.IgnoreReasons, cfg.FlowMapSize = t.cfg.Events, t.cfg.Stack, t.cfg.Attach, t.cfg.IgnoreReasons, t.cfg.FlowMapSize
	var n *Namer
	if !sameNaming(t.cfg, cfg) {
		// Its first read done before the switch, as at the attach.
		n = newNamer(t, cfg)
		n.syms, n.RawLocations = t.namer.syms, t.namer.RawLocations
		n.attr.WaitRead(context.Background())
	}
	if err := t.setKernelFilter(cfg); err != nil {
		if n != nil {
			n.close()
		}
		return err
	}
	if n != nil {
		t.namer.close()
		t.namer = n
	}
	t.cfg = cfg
	return nil
}

// setKernelFilter switches the kernel side to cfg's filter (SetFilter).
func (t *Tracer) setKernelFilter(cfg Config) error {
	if filterOf(cfg) == filterOf(t.cfg) {
		return nil // the same kernel filter: nothing to switch
	}
	gen := t.filterGen + 1
	filters := t.filters
	filters[gen&1] = filterOf(cfg)
	// The copy in use is written with the bytes it holds: only the other
	// one changes, then filter_gen moves the program to it.
	if err := t.vars.Filters.Set(filters); err != nil {
		return fmt.Errorf("set the drop filter: %w", err)
	}
	if err := t.vars.FilterGen.Set(gen); err != nil {
		return fmt.Errorf("set the drop filter: %w", err)
	}
	t.filters, t.filterGen = filters, gen
	return nil
}

// sameNaming says whether a Namer for a reads what one for b would: the
// same namespace, addresses, protocol and bounds. The bounds' texts name
// the sizes of the tables, which move: only whether there is one counts.
func sameNaming(a, b Config) bool {
	return a.LB == b.LB && slices.Equal(a.Addrs, b.Addrs) && slices.Equal(a.Select, b.Select) && a.Proto == b.Proto &&
		(a.NoIPVSTable == "") == (b.NoIPVSTable == "") && (a.NoConntrackDump == "") == (b.NoConntrackDump == "")
}

// ProgramID is the kernel's id of the loaded program (bpftool prog show
// id N): it stays the same while the tracer is loaded.
func (t *Tracer) ProgramID() (ebpf.ProgramID, error) {
	info, err := t.prog.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("the kernel gives no program id")
	}
	return id, nil
}

// ProgramStats are the kernel's run statistics of the tracer program (run
// time needs kernel.bpf_stats_enabled=1).
func (t *Tracer) ProgramStats() (*ebpf.ProgramStats, error) { return t.prog.Stats() }

// Attached is when the tracer was attached: it counts from then, and a
// window over it opens then.
func (t *Tracer) Attached() time.Time { return t.attached }

// ProgramName is the name the tracer of process pid has in the kernel.
func ProgramName(pid int) string { return fmt.Sprintf("lbdrop_%d", pid) }

// Start attaches the tracer again after Stop; counting goes on from where
// it stopped. (New attaches it the first time.)
func (t *Tracer) Start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lnk != nil {
		return nil
	}
	var err error
	switch t.Attach {
	case AttachTPBTF:
		t.lnk, err = link.AttachTracing(link.TracingOptions{Program: t.prog})
	case AttachRawTP:
		t.lnk, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "kfree_skb", Program: t.prog})
	case AttachTracepoint:
		t.lnk, err = link.Tracepoint("skb", "kfree_skb", t.prog, nil)
	}
	if err != nil {
		return fmt.Errorf("attach drop tracer to kfree_skb (%s): %w", t.Attach, err)
	}
	return nil
}

// Stop detaches the tracer but keeps what it counted, so that counters and
// aggregates read afterwards agree with each other.
func (t *Tracer) Stop() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lnk == nil {
		return nil
	}
	err := t.lnk.Close()
	t.lnk = nil
	return err
}

// Close detaches and unloads the tracer, and stops its Namer's table
// reads (its Follow's ctx must be done).
func (t *Tracer) Close() error {
	if t.namer != nil {
		t.namer.close() // it reads the maps: before they are closed
	}
	var errs []error
	errs = append(errs, t.Stop())
	// The ring first: a reader its file's closing wakes finds it closed.
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	if t.ring != nil {
		errs = append(errs, t.ring.Close())
	}
	if t.ringFile != nil {
		errs = append(errs, t.ringFile.Close())
	}
	errs = append(errs, t.maps.Close())
	if t.coll != nil {
		t.coll.Close()
	}
	return errors.Join(errs...)
}

// Counters sums the kernel side's per-CPU counters. In aggregate mode the
// kernel keeps no separate total: matched is what the aggregates hold plus
// what did not fit.
func (t *Tracer) Counters() (Counters, error) {
	if t.events {
		return t.counters(nil)
	}
	aggs, err := t.Aggregates()
	if err != nil {
		return Counters{}, err
	}
	return t.counters(aggs)
}

// counters reads the counters; in aggregate mode, Matched is summed from
// aggs (the aggregates already read).
func (t *Tracer) counters(aggs []Aggregate) (Counters, error) {
	var c Counters
	for idx, dst := range map[dropsCounter]*uint64{dropsCounterCOUNTER_MATCHED: &c.Matched, dropsCounterCOUNTER_RING_LOST: &c.RingLost, dropsCounterCOUNTER_AGG_LOST: &c.AggLost} {
		var per []uint64
		if err := t.maps.Counters.Lookup(idx, &per); err != nil {
			return c, fmt.Errorf("read drop counters: %w", err)
		}
		*dst = sumCPUs(per)
	}
	if st, err := t.prog.Stats(); err == nil {
		c.Missed = st.RecursionMisses
	}
	if !t.events {
		c.Matched = c.AggLost
		for _, a := range aggs {
			c.Matched += a.Count
			if a.NotItemised {
				c.NotItemised += a.Count
			}
		}
	}
	return c, nil
}

// Aggregates returns the drops counted in the kernel since the tracer
// started: one per flow, and one per place for the drops of flows the map
// had no room for (NotItemised). Read while the tracer runs, a flow that moves between a CPU's
// last-flow slot and the map may be off by its count for that moment; after
// Stop the totals are exact.
func (t *Tracer) Aggregates() ([]Aggregate, error) {
	out, _, _, err := t.aggregates(false)
	return out, err
}

// aggregates is Aggregates; with keys, it also returns the flow map's keys
// (keys[i] is out[i]'s, for the flows the map holds: they come first) and
// the packets the CPUs' last-flow slots hold.
func (t *Tracer) aggregates(withKeys bool) (out []Aggregate, keys []dropsAggKey, inSlots map[Packet]bool, err error) {
	var kp *[]dropsAggKey
	if withKeys {
		kp = &keys
	}
	out, err = t.batchAggregates(kp)
	if errors.Is(err, ebpf.ErrNotSupported) {
		keys = keys[:0]
		out, err = t.iterateAggregates(kp)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read drop aggregates: %w", err)
	}
	// Each CPU's last flow is counted apart until the next flow flushes it.
	var last []dropsLastFlow
	if err := t.maps.LastFlow.Lookup(uint32(0), &last); err != nil {
		return nil, nil, nil, fmt.Errorf("read drop aggregates: %w", err)
	}
	if withKeys {
		inSlots = map[Packet]bool{}
	}
	for _, l := range last {
		if l.Count == 0 {
			continue
		}
		p := aggPacket(l.Key)
		if inSlots != nil {
			inSlots[p] = true
		}
		merged := false
		for i := range out {
			if out[i].Packet == p {
				out[i].Count += l.Count
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, Aggregate{Packet: p, Count: l.Count})
		}
	}
	// The drops of flows the map had no room for, by place.
	var pk dropsPlaceKey
	var per []uint64
	it := t.maps.AggPlace.Iterate()
	for it.Next(&pk, &per) {
		out = append(out, Aggregate{Packet: Packet{Netns: pk.Netns, Reason: pk.Reason, Location: pk.Location, Caller: pk.Caller}, Count: sumCPUs(per), NotItemised: true})
	}
	if err := it.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("read drop aggregates by place: %w", err)
	}
	return out, keys, inSlots, nil
}

// pollInterval is how often the reader looks at the ring without being
// woken: a safety net, since the kernel side wakes it for the first record
// after it caught up.
var pollInterval = 50 * time.Millisecond

// batchAggregates reads the aggregate map a thousand entries a syscall
// (Linux 5.6+): a flood of distinct flows is read in milliseconds, where
// one lookup per entry takes a syscall pair each.
func (t *Tracer) batchAggregates(keysOut *[]dropsAggKey) ([]Aggregate, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	const chunk = 1024
	keys := make([]dropsAggKey, chunk)
	vals := make([]uint64, chunk*ncpu)
	var out []Aggregate
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.maps.Agg.BatchLookup(&cursor, keys, vals, nil)
		for i, k := range keys[:n] {
			out = append(out, Aggregate{Packet: aggPacket(k), Count: sumCPUs(vals[i*ncpu : (i+1)*ncpu])})
		}
		if keysOut != nil {
			*keysOut = append(*keysOut, keys[:n]...)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// iterateAggregates reads the aggregate map one entry at a time, for
// kernels without batch lookups.
func (t *Tracer) iterateAggregates(keysOut *[]dropsAggKey) ([]Aggregate, error) {
	var out []Aggregate
	var k dropsAggKey
	var per []uint64
	it := t.maps.Agg.Iterate()
	for it.Next(&k, &per) {
		out = append(out, Aggregate{Packet: aggPacket(k), Count: sumCPUs(per)})
		if keysOut != nil {
			*keysOut = append(*keysOut, k)
		}
	}
	return out, it.Err()
}

// aggPacket is the packet of an aggregate key.
func aggPacket(k dropsAggKey) Packet {
	p := packetOf(k.Netns, k.Reason, k.Location, k.Family, k.Proto, k.Saddr.B, k.Daddr.B, k.Sport, k.Dport)
	p.Caller = k.Caller
	p.ICMPType, p.ICMPCode = k.IcmpType, k.IcmpCode
	return p
}

// sumCPUs adds up one entry of a per-CPU map.
func sumCPUs(per []uint64) uint64 {
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// pollRing registers (a duplicate of) the ring's map with Go's netpoller:
// the kernel wakes it as it wakes the ring reader's epoll.
func (t *Tracer) pollRing() error {
	fd, err := unix.FcntlInt(uintptr(t.maps.Events.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return err
	}
	t.ringFile = os.NewFile(uintptr(fd), "drop ring")
	if t.ringConn, err = t.ringFile.SyscallConn(); err != nil {
		return err
	}
	// Fails when the netpoller did not take the map: no wait would end.
	return t.ringFile.SetReadDeadline(time.Time{})
}

// Read delivers events until ctx ends, then what is still in the ring, so
// that delivered + lost adds up to what the kernel matched. It returns nil
// when ctx ends.
func (t *Tracer) Read(ctx context.Context, fn func(Packet, RawEvent)) error {
	if t.ring == nil {
		return errors.New("drop tracer was not started in event mode")
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			t.Stop() // nothing new after this, so the counters will add up
			t.ending.Store(true)
			t.ringFile.SetReadDeadline(time.Now()) // ends a wait
		case <-stop:
		}
	}()
	// The ring reader never waits itself: it reads what is there, and the
	// netpoller waits for more.
	t.ring.SetDeadline(time.Unix(1, 0))
	var rec ringbuf.Record
	var ev dropsEvent
	var waitErr error
	// A flood's drops come from few interfaces: each name is made once.
	ifnames := map[[len(ev.Ifname)]int8]string{}
	for {
		// Read before looking: what the kernel wrote before Stop is
		// read after ending is seen.
		ending := t.ending.Load()
		for {
			err := t.ring.ReadInto(&rec)
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ringbuf.ErrFlushed) {
				break // read to the end
			}
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read drop events: %w", err)
			}
			// The record is the C struct, laid out as dropsEvent (HostLayout, no
			// implicit padding): a copy, not encoding/binary's reflection walk
			// over each field per event.
			if len(rec.RawSample) < int(unsafe.Sizeof(ev)) {
				return fmt.Errorf("decode drop event: %d bytes, want %d", len(rec.RawSample), unsafe.Sizeof(ev))
			}
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&ev)), unsafe.Sizeof(ev)), rec.RawSample)
			ifname, ok := ifnames[ev.Ifname]
			if !ok {
				if len(ifnames) >= 1024 {
					clear(ifnames) // bounded, whatever comes and goes
				}
				ifname = cstring(ev.Ifname[:])
				ifnames[ev.Ifname] = ifname
			}
			p := packetOf(ev.Netns, ev.Reason, ev.Location, ev.Family, ev.Proto, ev.Saddr.B, ev.Daddr.B, ev.Sport, ev.Dport)
			p.ICMPType, p.ICMPCode = ev.IcmpType, ev.IcmpCode
			fn(p, RawEvent{TimeNs: ev.TsNs, Ifindex: ev.Ifindex, Ifname: ifname, Len: ev.Len, CPU: ev.Cpu, TCPFlags: ev.TcpFlags, Stack: t.stack(ev.StackId)})
		}
		if ending {
			return nil
		}
		if waitErr != nil {
			return fmt.Errorf("wait for drop events: %w", waitErr)
		}
		// The kernel side wakes us for the first record after we caught up
		// and then per batch; the deadline is a safety net.
		t.ringFile.SetReadDeadline(time.Now().Add(pollInterval))
		err := t.ringConn.Read(t.readable)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			waitErr = err // Close wakes the wait: the ring, closed, says so first
		}
	}
}

// readable says whether the reader has something to do: records, the
// window's end, or a ring being closed.
func (t *Tracer) readable(uintptr) bool {
	if t.ending.Load() {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed || t.ring.AvailableBytes() > 0
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// stack reads and frees a recorded kernel stack.
func (t *Tracer) stack(id int32) []uint64 {
	if id < 0 {
		return nil
	}
	var frames [stackFrames]uint64
	m := t.maps.Stacks
	if err := m.Lookup(uint32(id), &frames); err != nil {
		return nil
	}
	m.Delete(uint32(id))
	var out []uint64
	for _, f := range frames {
		if f == 0 {
			break
		}
		out = append(out, f)
	}
	return out
}

func cstring(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
