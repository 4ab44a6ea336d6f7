// Package exporter turns the doctor's windows into Prometheus metrics
// (`lbdoctor serve`): each window's snapshot and findings, per watched
// network namespace, become the gauges and counters README.md's serve
// section lists, and the last report is kept for /findings. Observe is pure
// bookkeeping (no I/O); the loop that runs the windows is in run.go.
package exporter

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// MaxDropSeries bounds the drop counters of one namespace: the kernel's drop
// reasons are a fixed enum (about 120 on 6.x kernels) and the functions that
// drop are the kernel's own, so a real LB stays far below it; a kernel that
// drops at more places folds the rest into function "other" of their reason
// (the count is kept, only the function is lost).
const MaxDropSeries = 512

// OtherFunction is the function label of the drops past MaxDropSeries.
const OtherFunction = "other"

// MaxServiceDropSeries bounds the per-service drop counters of one
// namespace, (service, reason) pairs: a service's drops mostly have one or
// two reasons, so 1,024 covers a 1,000-service node where hundreds of
// services drop at once. Past it, a new pair counts under
// local_address="other" of its reason (OtherService). A service IPVS no
// longer has loses its series at the next interval that reads IPVS: the
// bound is of the services there now, not of every service that ever was.
const MaxServiceDropSeries = 1024

// OtherService is the local_address of the drops of services past
// MaxServiceDropSeries (their other service labels are empty).
const OtherService = "other"

// MaxFindingServiceSeries bounds the per-service finding series of one
// namespace: a finding that did not pass and names some of the selected
// services (checks.Finding.Services) gets a series for each, failures
// first, in the catalog's order; past the bound the rest are counted in
// lbdoctor_finding_services_omitted. A healthy node has none: a finding
// about every selected service, or passing, is the selection-level series
// alone. 100 is what a broken rollout on a 1,000-service node may show at
// once and still be read on a dashboard.
const MaxFindingServiceSeries = 100

// Probe names of lbdoctor_probe_errors_total beside probes.Probe*: the
// namespace that could not be resolved or entered, and a window that failed
// as a whole.
const (
	ProbeNetns  = "netns"
	ProbeWindow = "window"
)

// Result is one interval of one namespace: what the window saw, what the
// checks found and the report /findings serves; Err is set instead when
// the window could not run at all (the namespace is gone).
type Result struct {
	Snapshot *probes.Snapshot
	Findings []checks.Finding
	Report   *report.Report
	Duration time.Duration // the window and the checks
	Err      error
	// ErrProbe is the probe Err is counted under (ProbeNetns, ProbeWindow).
	ErrProbe string
	Time     time.Time // when the interval ended
}

type dropKey struct{ reason, function string }

// serviceDropKey is a per-service drop counter: service is
// ipvs.Service.Key's form ("" for drops no flow was known for,
// OtherService past the bound).
type serviceDropKey struct{ service, reason string }

// serviceDrops is one per-service drop counter and whether its service
// was an IPVS service when last seen (those go when IPVS drops them).
type serviceDrops struct {
	count uint64
	ipvs  bool
}

// serviceFinding is one per-service finding series.
type serviceFinding struct {
	id, service string
	status      checks.Status
}

// nsState is what the exporter keeps of one namespace: the last interval's
// snapshot and findings (gauges) and running totals (counters).
type nsState struct {
	label    string
	drops    map[dropKey]uint64
	svcDrops map[serviceDropKey]*serviceDrops
	// namedSvcDrops is how many of svcDrops name a service (not the
	// drops without a flow, nor the overflow): the bound's count.
	namedSvcDrops int
	// ipvsKeys are the IPVS services of the last interval that read IPVS:
	// the drops of one removed since are still an IPVS service's.
	ipvsKeys map[string]bool
	// perService are the last interval's per-service finding series and
	// omitted, by id, the services past MaxFindingServiceSeries.
	perService  []serviceFinding
	omitted     map[string]int
	lost        uint64
	tracerUp    bool
	runs        uint64
	probeErrors map[string]uint64
	last        *Result // last interval that ran (nil: none yet)
	lastErr     error   // the last interval's error, nil when it ran
	lastTime    time.Time
}

// Exporter holds the metrics of every watched namespace. It is a
// prometheus.Collector: a scrape reads what the last intervals left.
type Exporter struct {
	vip string // the --vip label of every finding ("" for every service)
	mu  sync.Mutex
	ns  []*nsState
}

// New returns an exporter for the namespaces labelled as given (the
// --netns values; "" is lbdoctor's own) and the selected VIP.
func New(netnsLabels []string, vip string) *Exporter {
	e := &Exporter{vip: vip}
	for _, l := range netnsLabels {
		e.ns = append(e.ns, &nsState{label: l, drops: map[dropKey]uint64{}, svcDrops: map[serviceDropKey]*serviceDrops{}, probeErrors: map[string]uint64{}})
	}
	return e
}

func (e *Exporter) state(label string) *nsState {
	for _, s := range e.ns {
		if s.label == label {
			return s
		}
	}
	return nil
}

// Observe records one interval of the namespace labelled ns.
func (e *Exporter) Observe(ns string, r Result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.state(ns)
	if s == nil {
		return
	}
	s.lastTime = r.Time
	if r.Err != nil {
		s.lastErr = r.Err
		s.probeErrors[cmpOr(r.ErrProbe, ProbeWindow)]++
		// A namespace that is gone has no findings, no IPVS table: its
		// gauges go with it (stale values would read as current), the
		// counters stay, and lbdoctor_last_check_timestamp_seconds stops.
		s.last = nil
		s.tracerUp = false
		s.perService, s.omitted = nil, nil
		return
	}
	s.lastErr = nil
	s.runs++
	snap := r.Snapshot
	for probe := range snap.Errors {
		s.probeErrors[probe]++
	}
	// "kept": a watcher's tracer attached in an earlier window.
	s.tracerUp = snap.Window != nil && (snap.Window.Tracer == "attached" || snap.Window.Tracer == "kept")
	ipvsKeys := ipvsServices(snap)
	if ipvsKeys != nil {
		// A service IPVS no longer has: its counters go (a service
		// made again starts from 0, which rate() reads as a reset).
		for k, v := range s.svcDrops {
			if v.ipvs && !ipvsKeys[k.service] {
				delete(s.svcDrops, k)
				s.namedSvcDrops--
			}
		}
	}
	wasIPVS := s.ipvsKeys
	if ipvsKeys != nil {
		s.ipvsKeys = ipvsKeys
	}
	if d := snap.Drops; d != nil {
		s.lost += d.Counters.Lost() + d.Counters.Missed
		for _, c := range d.Drops {
			k := dropKey{c.ReasonName, c.Function()}
			if _, ok := s.drops[k]; !ok && len(s.drops) >= MaxDropSeries {
				k.function = OtherFunction
			}
			s.drops[k] += c.Count
			s.countServiceDrop(c, ipvsKeys, wasIPVS)
		}
	}
	s.perService, s.omitted = perService(r.Findings)
	last := r
	s.last = &last
}

// countServiceDrop adds c to its service's counter of its reason. A
// service of IPVS now or at the last read (removed during the window) is
// marked to go with it; a VIP IPVS does not serve (nft DNAT) stays.
func (s *nsState) countServiceDrop(c drops.Counted, ipvsKeys, wasIPVS map[string]bool) {
	k := serviceDropKey{c.Service(), c.ReasonName}
	v := s.svcDrops[k]
	if v == nil {
		if k.service != "" && s.namedSvcDrops >= MaxServiceDropSeries {
			k.service = OtherService
			v = s.svcDrops[k]
		}
		if v == nil {
			v = &serviceDrops{}
			s.svcDrops[k] = v
			if k.service != "" && k.service != OtherService {
				s.namedSvcDrops++
			}
		}
	}
	v.count += c.Count
	if ipvsKeys[k.service] || wasIPVS[k.service] {
		v.ipvs = true
	}
}

// ipvsServices are the keys of the snapshot's IPVS services; nil when
// IPVS was not read (what it holds is not known: nothing is pruned).
func ipvsServices(snap *probes.Snapshot) map[string]bool {
	if _, bad := snap.Errors[probes.ProbeIPVS]; bad || !snap.IPVS.Available {
		return nil
	}
	keys := make(map[string]bool, len(snap.IPVS.Services))
	for _, svc := range snap.IPVS.Services {
		keys[svc.Key()] = true
	}
	return keys
}

// perService picks the per-service finding series of fs: failures first,
// then warnings and skips, each in the catalog's order, at most
// MaxFindingServiceSeries; omitted counts the rest by id, and holds every
// id that names services (0 when none was left out).
func perService(fs []checks.Finding) ([]serviceFinding, map[string]int) {
	var out []serviceFinding
	omitted := map[string]int{}
	for _, st := range []checks.Status{checks.Fail, checks.Warn, checks.Skip} {
		for _, f := range fs {
			if f.Status != st || len(f.Services) == 0 {
				continue
			}
			room := max(MaxFindingServiceSeries-len(out), 0)
			n := min(room, len(f.Services))
			for _, svc := range f.Services[:n] {
				out = append(out, serviceFinding{f.ID, svc, f.Status})
			}
			omitted[f.ID] = len(f.Services) - n
		}
	}
	return out, omitted
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Health is one namespace's state for /healthz.
type Health struct {
	Netns string
	Last  time.Time // end of the last interval (zero: none yet)
	Err   error     // why the last interval did not run
	Ran   bool      // the last interval ran
	Fail  int       // failing findings of the last interval
}

// Health returns the state of every namespace, in --netns order.
func (e *Exporter) Health() []Health {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Health, 0, len(e.ns))
	for _, s := range e.ns {
		h := Health{Netns: s.label, Last: s.lastTime, Err: s.lastErr, Ran: s.last != nil}
		if s.last != nil && s.last.Report != nil {
			h.Fail = s.last.Report.Summary[string(checks.Fail)]
		}
		out = append(out, h)
	}
	return out
}

// Reports returns the last report of each namespace that has one, in
// --netns order, with its label.
func (e *Exporter) Reports() (labels []string, reports []*report.Report) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.ns {
		if s.last != nil && s.last.Report != nil {
			labels = append(labels, s.label)
			reports = append(reports, s.last.Report)
		}
	}
	return labels, reports
}

// Metric descriptions: README.md's serve section documents each.
var (
	ipvsServiceLabels = []string{"netns", "local_address", "local_port", "proto", "local_mark"}
	findingLabels     = []string{"netns", "id", "vip", "local_address", "local_port", "proto", "local_mark"}
	serviceDropLabels = []string{"netns", "local_address", "local_port", "proto", "local_mark", "reason"}
	ipvsBackendLabels = []string{"netns", "local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark"}

	descDrops = prometheus.NewDesc("lbdoctor_drops_total",
		"Drops of the watched services' flows the kernel reported (kfree_skb), by drop reason and kernel function.",
		[]string{"netns", "reason", "function"}, nil)
	descLost = prometheus.NewDesc("lbdoctor_tracer_lost_events_total",
		"Drops the tracer could not count in detail (ring buffer or aggregate map full) or did not see (tracepoint missed).",
		[]string{"netns"}, nil)
	descTracerUp = prometheus.NewDesc("lbdoctor_tracer_up",
		"1 when the drop tracer was attached during the last interval, 0 when not.", []string{"netns"}, nil)
	descServiceDrops = prometheus.NewDesc("lbdoctor_service_drops_total",
		"Drops of the watched services' flows by the service of the dropped packet's flow and drop reason (service labels empty: no flow known; local_address=\"other\": past the bound).",
		serviceDropLabels, nil)
	descFinding = prometheus.NewDesc("lbdoctor_finding_status",
		"Status of each check of the last interval: 0 pass, 1 warn, 2 fail, 3 skip; for the selection (service labels empty), and for each service a finding that did not pass names.",
		findingLabels, nil)
	descFindingOmitted = prometheus.NewDesc("lbdoctor_finding_services_omitted",
		"Services a finding that did not pass names but that got no lbdoctor_finding_status series of their own (past the bound).",
		[]string{"netns", "id"}, nil)
	descDuration = prometheus.NewDesc("lbdoctor_check_duration_seconds",
		"How long the last interval's check took, its window included.", []string{"netns"}, nil)
	descRuns = prometheus.NewDesc("lbdoctor_check_runs_total",
		"Intervals whose check ran.", []string{"netns"}, nil)
	descProbeErrors = prometheus.NewDesc("lbdoctor_probe_errors_total",
		"Intervals in which a layer could not be read, by probe.", []string{"netns", "probe"}, nil)
	descLastCheck = prometheus.NewDesc("lbdoctor_last_check_timestamp_seconds",
		"When the last check ran to its end (Unix time).", []string{"netns"}, nil)

	descIPVSConns     = prometheus.NewDesc("lbdoctor_ipvs_connections_total", "Connections IPVS scheduled for the service.", ipvsServiceLabels, nil)
	descIPVSPktsIn    = prometheus.NewDesc("lbdoctor_ipvs_incoming_packets_total", "Packets IPVS received for the service.", ipvsServiceLabels, nil)
	descIPVSPktsOut   = prometheus.NewDesc("lbdoctor_ipvs_outgoing_packets_total", "Packets IPVS sent for the service.", ipvsServiceLabels, nil)
	descIPVSBytesIn   = prometheus.NewDesc("lbdoctor_ipvs_incoming_bytes_total", "Bytes IPVS received for the service.", ipvsServiceLabels, nil)
	descIPVSBytesOut  = prometheus.NewDesc("lbdoctor_ipvs_outgoing_bytes_total", "Bytes IPVS sent for the service.", ipvsServiceLabels, nil)
	descBackendActive = prometheus.NewDesc("lbdoctor_ipvs_backend_connections_active",
		"Active (established) connections of the real server.", ipvsBackendLabels, nil)
	descBackendInactive = prometheus.NewDesc("lbdoctor_ipvs_backend_connections_inactive",
		"Inactive connections of the real server.", ipvsBackendLabels, nil)
	descBackendWeight = prometheus.NewDesc("lbdoctor_ipvs_backend_weight", "Weight of the real server.", ipvsBackendLabels, nil)

	descInAddrErrors = prometheus.NewDesc("lbdoctor_ip_in_addr_errors_total",
		"Ip InAddrErrors of the namespace (/proc/net/snmp): packets with a destination it would not take, forward off among them.", []string{"netns"}, nil)
	descRPFilter = prometheus.NewDesc("lbdoctor_ip_reverse_path_filter_total",
		"TcpExt IPReversePathFilter of the namespace (/proc/net/netstat): packets reverse-path filtering dropped.", []string{"netns"}, nil)
	descCTDrops = prometheus.NewDesc("lbdoctor_conntrack_drops_total",
		"Conntrack statistics drop: packets conntrack dropped (table full, helper).", []string{"netns"}, nil)
	descCTInsertFailed = prometheus.NewDesc("lbdoctor_conntrack_insert_failed_total",
		"Conntrack statistics insert_failed: entries that could not be inserted (a clash).", []string{"netns"}, nil)

	allDescs = []*prometheus.Desc{descDrops, descServiceDrops, descLost, descTracerUp, descFinding, descFindingOmitted, descDuration, descRuns, descProbeErrors, descLastCheck,
		descIPVSConns, descIPVSPktsIn, descIPVSPktsOut, descIPVSBytesIn, descIPVSBytesOut, descBackendActive, descBackendInactive, descBackendWeight,
		descInAddrErrors, descRPFilter, descCTDrops, descCTInsertFailed}
)

// StatusValue is a finding's status as lbdoctor_finding_status holds it.
func StatusValue(s checks.Status) float64 {
	switch s {
	case checks.Pass:
		return 0
	case checks.Warn:
		return 1
	case checks.Fail:
		return 2
	default:
		return 3
	}
}

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.ns {
		e.collect(ch, s)
	}
}

func (e *Exporter) collect(ch chan<- prometheus.Metric, s *nsState) {
	ns := s.label
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{ns}, labels...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{ns}, labels...)...)
	}
	for k, v := range s.drops {
		counter(descDrops, float64(v), k.reason, k.function)
	}
	for k, v := range s.svcDrops {
		var l []string
		switch k.service {
		case "":
			l = []string{"", "", "", ""}
		case OtherService:
			l = []string{OtherService, "", "", ""}
		default:
			l = keyLabels(k.service)
		}
		counter(descServiceDrops, float64(v.count), append(l, k.reason)...)
	}
	counter(descLost, float64(s.lost))
	gauge(descTracerUp, b2f(s.tracerUp))
	counter(descRuns, float64(s.runs))
	for probe, n := range s.probeErrors {
		counter(descProbeErrors, float64(n), probe)
	}
	r := s.last
	if r == nil {
		return
	}
	gauge(descDuration, r.Duration.Seconds())
	gauge(descLastCheck, float64(r.Time.UnixNano())/1e9)
	for _, f := range r.Findings {
		gauge(descFinding, StatusValue(f.Status), f.ID, e.vip, "", "", "", "")
	}
	for _, f := range s.perService {
		gauge(descFinding, StatusValue(f.status), append([]string{f.id, e.vip}, keyLabels(f.service)...)...)
	}
	for id, n := range s.omitted {
		gauge(descFindingOmitted, float64(n), id)
	}
	snap := r.Snapshot
	if _, bad := snap.Errors[probes.ProbeIPVS]; !bad && snap.IPVS.Available {
		seen := map[string]bool{} // the kernel lists a service once; a guard all the same
		for _, svc := range snap.IPVS.Services {
			l := serviceLabels(svc)
			key := strings.Join(l, " ")
			if seen[key] {
				continue
			}
			seen[key] = true
			counter(descIPVSConns, float64(svc.Stats.Conns), l...)
			counter(descIPVSPktsIn, float64(svc.Stats.PacketsIn), l...)
			counter(descIPVSPktsOut, float64(svc.Stats.PacketsOut), l...)
			counter(descIPVSBytesIn, float64(svc.Stats.BytesIn), l...)
			counter(descIPVSBytesOut, float64(svc.Stats.BytesOut), l...)
			for _, real := range svc.Reals {
				bl := backendLabels(l, real)
				gauge(descBackendActive, float64(real.ActiveConns), bl...)
				gauge(descBackendInactive, float64(real.InactiveConns), bl...)
				gauge(descBackendWeight, float64(real.Weight), bl...)
			}
		}
	}
	if _, bad := snap.Errors[probes.ProbeSNMP]; !bad {
		if v, ok := snap.SNMP["IpInAddrErrors"]; ok {
			counter(descInAddrErrors, float64(v))
		}
		if v, ok := snap.SNMP["TcpExtIPReversePathFilter"]; ok {
			counter(descRPFilter, float64(v))
		}
	}
	if _, bad := snap.Errors[probes.ProbeConntrack]; !bad {
		counter(descCTDrops, float64(snap.Conntrack.Stats.Drop))
		counter(descCTInsertFailed, float64(snap.Conntrack.Stats.InsertFailed))
	}
}

// serviceLabels are node_exporter's ipvs collector's, less netns: proto
// upper case (TCP, UDP, SCTP), and a fwmark service as FWM with no address,
// port 0 and its mark in local_mark.
func serviceLabels(svc ipvs.Service) []string { return keyLabels(svc.Key()) }

// keyLabels are serviceLabels of a service named as ipvs.Service.Key
// names it ("TCP 10.1.0.6:8085", "FWM 16"): checks.Finding.Services and
// drops.Counted.Service name services so.
func keyLabels(key string) []string {
	proto, rest, _ := strings.Cut(key, " ")
	if proto == "FWM" {
		return []string{"", "0", proto, rest}
	}
	if a, err := netip.ParseAddrPort(rest); err == nil {
		return []string{a.Addr().String(), strconv.Itoa(int(a.Port())), proto, ""}
	}
	return []string{rest, "", proto, ""} // no key lbdoctor makes
}

func backendLabels(svc []string, r ipvs.Real) []string {
	l := slices.Clone(svc[:2])
	return append(l, r.Addr.Addr().String(), strconv.Itoa(int(r.Addr.Port())), svc[2], svc[3])
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
