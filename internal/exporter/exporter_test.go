package exporter

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// fixture is a fixture interval: one IPVS service with one real, SNMP and
// conntrack counters, drops by place, one failing finding.
func fixture(dropped ...drops.Counted) Result {
	vip := netip.MustParseAddrPort("10.1.0.6:8085")
	snap := &probes.Snapshot{
		IPVS: ipvs.Snapshot{Available: true, Services: []ipvs.Service{
			{Proto: "tcp", Addr: vip, Stats: ipvs.Stats{Conns: 7, PacketsIn: 30, PacketsOut: 20, BytesIn: 3000, BytesOut: 2000},
				Reals: []ipvs.Real{{Addr: netip.MustParseAddrPort("10.1.0.50:8085"), Weight: 1, ActiveConns: 2, InactiveConns: 5}}},
			{Proto: "fwmark", FWMark: 16, Reals: []ipvs.Real{{Addr: netip.MustParseAddrPort("10.1.0.51:80"), Weight: 3}}},
		}},
		SNMP:      map[string]uint64{"IpInAddrErrors": 4, "TcpExtIPReversePathFilter": 1},
		Conntrack: probes.Conntrack{Stats: conntrack.Stats{Drop: 2, InsertFailed: 3}},
		Drops:     &drops.Sample{Counters: drops.Counters{RingLost: 1, AggLost: 2, Missed: 3}, Drops: dropped},
		Window:    &probes.Window{Tracer: "attached"},
		Errors:    map[string]string{"rules": "no tool"},
	}
	fs := []checks.Finding{{ID: "sysctl.ip_forward", Status: checks.Fail}, {ID: "kernel.ipvs", Status: checks.Pass}, {ID: "nat.return_path", Status: checks.Skip},
		{ID: "ipvs.real_health", Status: checks.Warn, Services: []string{"FWM 16"}}}
	return Result{Snapshot: snap, Findings: fs, Report: report.New(report.Target{}, fs, snap.Errors), Duration: 1500 * time.Millisecond, Time: time.Unix(1700000000, 0)}
}

func dropAt(reason, symbol string, n uint64) drops.Counted {
	return drops.Counted{Aggregate: drops.Aggregate{Count: n}, ReasonName: reason, Symbol: symbol}
}

// dropOf is n drops of a TCP flow to vip.
func dropOf(reason, symbol string, n uint64, vip string) drops.Counted {
	c := dropAt(reason, symbol, n)
	c.Proto = 6
	c.Flow = &drops.Flow{VIP: netip.MustParseAddrPort(vip)}
	return c
}

const wantFirst = `
# HELP lbdoctor_drops_total Drops of the watched services' flows the kernel reported (kfree_skb), by drop reason and kernel function.
# TYPE lbdoctor_drops_total counter
lbdoctor_drops_total{function="ip_error",netns="lb",reason="IP_INADDRERRORS"} 5
lbdoctor_drops_total{function="nft_do_chain",netns="lb",reason="NETFILTER_DROP"} 2
# HELP lbdoctor_finding_status Status of each check of the last interval: 0 pass, 1 warn, 2 fail, 3 skip; for the selection (service labels empty), and for each service a finding that did not pass names.
# TYPE lbdoctor_finding_status gauge
lbdoctor_finding_status{id="ipvs.real_health",local_address="",local_mark="",local_port="",netns="lb",proto="",vip="10.1.0.6:8085"} 1
lbdoctor_finding_status{id="ipvs.real_health",local_address="",local_mark="16",local_port="0",netns="lb",proto="FWM",vip="10.1.0.6:8085"} 1
lbdoctor_finding_status{id="kernel.ipvs",local_address="",local_mark="",local_port="",netns="lb",proto="",vip="10.1.0.6:8085"} 0
lbdoctor_finding_status{id="nat.return_path",local_address="",local_mark="",local_port="",netns="lb",proto="",vip="10.1.0.6:8085"} 3
lbdoctor_finding_status{id="sysctl.ip_forward",local_address="",local_mark="",local_port="",netns="lb",proto="",vip="10.1.0.6:8085"} 2
# HELP lbdoctor_finding_services_omitted Services a finding that did not pass names but that got no lbdoctor_finding_status series of their own (past the bound).
# TYPE lbdoctor_finding_services_omitted gauge
lbdoctor_finding_services_omitted{id="ipvs.real_health",netns="lb"} 0
# HELP lbdoctor_service_drops_total Drops of the watched services' flows by the service of the dropped packet's flow and drop reason (service labels empty: no flow known; local_address="other": past the bound).
# TYPE lbdoctor_service_drops_total counter
lbdoctor_service_drops_total{local_address="",local_mark="",local_port="",netns="lb",proto="",reason="IP_INADDRERRORS"} 5
lbdoctor_service_drops_total{local_address="10.1.0.6",local_mark="",local_port="8085",netns="lb",proto="TCP",reason="NETFILTER_DROP"} 2
# HELP lbdoctor_ipvs_backend_weight Weight of the real server.
# TYPE lbdoctor_ipvs_backend_weight gauge
lbdoctor_ipvs_backend_weight{local_address="",local_mark="16",local_port="0",netns="lb",proto="FWM",remote_address="10.1.0.51",remote_port="80"} 3
lbdoctor_ipvs_backend_weight{local_address="10.1.0.6",local_mark="",local_port="8085",netns="lb",proto="TCP",remote_address="10.1.0.50",remote_port="8085"} 1
# HELP lbdoctor_ipvs_connections_total Connections IPVS scheduled for the service.
# TYPE lbdoctor_ipvs_connections_total counter
lbdoctor_ipvs_connections_total{local_address="",local_mark="16",local_port="0",netns="lb",proto="FWM"} 0
lbdoctor_ipvs_connections_total{local_address="10.1.0.6",local_mark="",local_port="8085",netns="lb",proto="TCP"} 7
# HELP lbdoctor_probe_errors_total Intervals in which a layer could not be read, by probe.
# TYPE lbdoctor_probe_errors_total counter
lbdoctor_probe_errors_total{netns="lb",probe="rules"} 1
# HELP lbdoctor_tracer_lost_events_total Drops the tracer could not count in detail (ring buffer or aggregate map full) or did not see (tracepoint missed).
# TYPE lbdoctor_tracer_lost_events_total counter
lbdoctor_tracer_lost_events_total{netns="lb"} 6
# HELP lbdoctor_tracer_up 1 when the drop tracer was attached during the last interval, 0 when not.
# TYPE lbdoctor_tracer_up gauge
lbdoctor_tracer_up{netns="lb"} 1
# HELP lbdoctor_check_runs_total Intervals whose check ran.
# TYPE lbdoctor_check_runs_total counter
lbdoctor_check_runs_total{netns="lb"} 1
# HELP lbdoctor_ip_in_addr_errors_total Ip InAddrErrors of the namespace (/proc/net/snmp): packets with a destination it would not take, forward off among them.
# TYPE lbdoctor_ip_in_addr_errors_total counter
lbdoctor_ip_in_addr_errors_total{netns="lb"} 4
# HELP lbdoctor_conntrack_insert_failed_total Conntrack statistics insert_failed: entries that could not be inserted (a clash).
# TYPE lbdoctor_conntrack_insert_failed_total counter
lbdoctor_conntrack_insert_failed_total{netns="lb"} 3
`

var compared = []string{"lbdoctor_drops_total", "lbdoctor_finding_status", "lbdoctor_finding_services_omitted", "lbdoctor_service_drops_total", "lbdoctor_ipvs_backend_weight", "lbdoctor_ipvs_connections_total",
	"lbdoctor_probe_errors_total", "lbdoctor_tracer_lost_events_total", "lbdoctor_tracer_up", "lbdoctor_check_runs_total",
	"lbdoctor_ip_in_addr_errors_total", "lbdoctor_conntrack_insert_failed_total"}

// One interval's snapshot and findings, as metrics: drops by reason and
// function (offset cut) and by service and reason (those without a flow
// under empty service labels), the lost and missed counts, a gauge per
// finding and one per service a finding that did not pass names,
// IPVS per service and real with node_exporter's labels (a fwmark service
// too), the SNMP and conntrack counters, and the probe that could not read.
func TestObserve(t *testing.T) {
	e := New([]string{"lb"}, "10.1.0.6:8085")
	e.Observe("lb", fixture(dropAt("IP_INADDRERRORS", "ip_error+0x6f/0x1e0", 5), dropOf("NETFILTER_DROP", "nft_do_chain+0x4a0", 2, "10.1.0.6:8085")))
	if err := testutil.CollectAndCompare(e, strings.NewReader(wantFirst), compared...); err != nil {
		t.Error(err)
	}
}

// The counters add up over intervals, the gauges are the last interval's;
// an interval that did not run (the namespace is gone) takes the gauges
// away, keeps the counters and counts the probe that failed.
func TestObserveOverIntervals(t *testing.T) {
	tests := []struct {
		name   string
		second Result
		want   map[string]float64 // metric (all its samples summed) → value
		absent []string
	}{
		{"two intervals", fixture(dropAt("IP_INADDRERRORS", "ip_error+0x10", 3)), map[string]float64{
			"lbdoctor_drops_total": 10, "lbdoctor_check_runs_total": 2, "lbdoctor_tracer_lost_events_total": 12, "lbdoctor_probe_errors_total": 2,
			"lbdoctor_finding_status": 7, "lbdoctor_tracer_up": 1,
		}, nil},
		{"namespace gone", Result{Err: errors.New("resolve lb: no such network namespace"), ErrProbe: ProbeNetns, Time: time.Unix(1700000015, 0)}, map[string]float64{
			"lbdoctor_drops_total": 7, "lbdoctor_check_runs_total": 1, "lbdoctor_tracer_lost_events_total": 6, "lbdoctor_probe_errors_total": 2,
			"lbdoctor_tracer_up": 0,
		}, []string{"lbdoctor_finding_status", "lbdoctor_ipvs_connections_total", "lbdoctor_last_check_timestamp_seconds", "lbdoctor_ip_in_addr_errors_total"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := New([]string{"lb"}, "")
			e.Observe("lb", fixture(dropAt("IP_INADDRERRORS", "ip_error+0x6f/0x1e0", 5), dropAt("NETFILTER_DROP", "nft_do_chain+0x4a0", 2)))
			e.Observe("lb", tt.second)
			got := sums(t, e)
			for name, want := range tt.want {
				if got[name] != want {
					t.Errorf("%s after %s = %v, want %v", name, tt.name, got[name], want)
				}
			}
			for _, name := range tt.absent {
				if _, ok := got[name]; ok {
					t.Errorf("%s after %s is still served; want it gone with the namespace", name, tt.name)
				}
			}
		})
	}
}

// Past MaxDropSeries places in one namespace, the drops of new places are
// counted under function "other" of their reason: the count is kept, the
// series are bounded.
func TestDropSeriesBounded(t *testing.T) {
	e := New([]string{"lb"}, "")
	var many []drops.Counted
	for i := 0; i < MaxDropSeries+100; i++ {
		many = append(many, dropAt("NETFILTER_DROP", fmt.Sprintf("f%d+0x1", i), 1))
	}
	e.Observe("lb", fixture(many...))
	n := testutil.CollectAndCount(e, "lbdoctor_drops_total")
	if got := sums(t, e)["lbdoctor_drops_total"]; n != MaxDropSeries+1 || got != MaxDropSeries+100 {
		t.Errorf("drops at %d places = %d series, %v drops; want %d series (one of them %q) and every drop counted", MaxDropSeries+100, n, got, MaxDropSeries+1, OtherFunction)
	}
}

// Past MaxServiceDropSeries (service, reason) pairs in one namespace,
// the drops of new services count under local_address="other" of their
// reason: the series are bounded, every drop is counted, and the
// per-service counters add up to lbdoctor_drops_total.
func TestServiceDropSeriesBounded(t *testing.T) {
	e := New([]string{"lb"}, "")
	var many []drops.Counted
	for i := 0; i < MaxServiceDropSeries+100; i++ {
		many = append(many, dropOf("NETFILTER_DROP", "nft_do_chain+0x1", 1, fmt.Sprintf("10.2.%d.%d:80", i/200, i%200+1)))
	}
	e.Observe("lb", fixture(append(many, dropAt("IP_INADDRERRORS", "ip_error+0x1", 3))...))
	n := testutil.CollectAndCount(e, "lbdoctor_service_drops_total")
	other := sumOf(t, e, "lbdoctor_service_drops_total", "local_address", OtherService)
	got := sums(t, e)
	if n != MaxServiceDropSeries+2 || other != 100 || got["lbdoctor_service_drops_total"] != got["lbdoctor_drops_total"] {
		t.Errorf("drops of %d services = %d series, %v under %q, %v in all; want %d series (one %q, one without a flow), 100 there, and %v (lbdoctor_drops_total)",
			MaxServiceDropSeries+100, n, other, OtherService, got["lbdoctor_service_drops_total"], MaxServiceDropSeries+2, OtherService, got["lbdoctor_drops_total"])
	}
}

// A service IPVS no longer has loses its drop series at the next interval
// that reads IPVS; an interval that could not read IPVS keeps it, and so
// is a VIP IPVS never served (nft DNAT) kept. The drops of a service's
// flows in the window it was removed in are counted, then go with it.
func TestServiceDropsOfAServiceGone(t *testing.T) {
	ipvsGone := func(r Result) Result { r.Snapshot.IPVS.Services = r.Snapshot.IPVS.Services[1:]; return r }
	unread := func(r Result) Result { r.Snapshot.Errors = map[string]string{"ipvs": "netlink: EPERM"}; return r }
	droppedAgain := func() Result { return fixture(dropOf("NETFILTER_DROP", "nft_do_chain+0x1", 3, "10.1.0.6:8085")) }
	tests := []struct {
		name  string
		after []Result
		want  map[string]float64 // local_address → drops
	}{
		{"the service still there", []Result{fixture()}, map[string]float64{"10.1.0.6": 2, "10.9.0.1": 4}},
		{"the service removed", []Result{ipvsGone(fixture())}, map[string]float64{"10.1.0.6": 0, "10.9.0.1": 4}},
		{"IPVS not read", []Result{unread(ipvsGone(fixture()))}, map[string]float64{"10.1.0.6": 2, "10.9.0.1": 4}},
		{"removed while its flows dropped", []Result{ipvsGone(droppedAgain())}, map[string]float64{"10.1.0.6": 3, "10.9.0.1": 4}},
		{"removed while its flows dropped, an interval later", []Result{ipvsGone(droppedAgain()), ipvsGone(fixture())}, map[string]float64{"10.1.0.6": 0, "10.9.0.1": 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := New([]string{"lb"}, "")
			e.Observe("lb", fixture(dropOf("NETFILTER_DROP", "nft_do_chain+0x1", 2, "10.1.0.6:8085"), dropOf("NETFILTER_DROP", "nft_do_chain+0x1", 4, "10.9.0.1:80")))
			for _, r := range tt.after {
				e.Observe("lb", r)
			}
			for addr, want := range tt.want {
				if got := sumOf(t, e, "lbdoctor_service_drops_total", "local_address", addr); got != want {
					t.Errorf("lbdoctor_service_drops_total{local_address=%q} after %s = %v, want %v", addr, tt.name, got, want)
				}
			}
		})
	}
}

// A finding that did not pass gets a series for each service it names, at
// most MaxFindingServiceSeries in a namespace, failures first; the
// services left out are counted by id.
func TestFindingServiceSeriesBounded(t *testing.T) {
	svcs := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("TCP 10.2.%d.%d:80", i/200, i%200+1))
		}
		return out
	}
	r := fixture()
	r.Findings = []checks.Finding{
		{ID: "ipvs.real_health", Status: checks.Warn, Services: svcs(5)},
		{ID: "ipvs.reals_available", Status: checks.Fail, Services: svcs(MaxFindingServiceSeries + 50)},
		{ID: "kernel.ipvs", Status: checks.Pass},
	}
	e := New([]string{"lb"}, "")
	e.Observe("lb", r)
	tests := []struct {
		metric, id string
		want       float64
	}{
		{"lbdoctor_finding_status", "ipvs.reals_available", 2 * (MaxFindingServiceSeries + 1)},
		{"lbdoctor_finding_status", "ipvs.real_health", 1},
		{"lbdoctor_finding_status", "kernel.ipvs", 0},
		{"lbdoctor_finding_services_omitted", "ipvs.reals_available", 50},
		{"lbdoctor_finding_services_omitted", "ipvs.real_health", 5},
	}
	for _, tt := range tests {
		if got := sumOf(t, e, tt.metric, "id", tt.id); got != tt.want {
			t.Errorf("sum of %s{id=%q} = %v, want %v", tt.metric, tt.id, got, tt.want)
		}
	}
	if n := testutil.CollectAndCount(e, "lbdoctor_finding_status"); n != 3+MaxFindingServiceSeries {
		t.Errorf("lbdoctor_finding_status has %d series, want %d (one per id, %d per service)", n, 3+MaxFindingServiceSeries, MaxFindingServiceSeries)
	}
}

// sums gathers e and sums each metric's samples; with label, those whose
// label label[0] is label[1].
func sums(t *testing.T, e *Exporter, label ...string) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.Metric {
			if len(label) == 2 && !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == label[0] && l.GetValue() == label[1] }) {
				continue
			}
			out[f.GetName()] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// sumOf is sums of one metric.
func sumOf(t *testing.T, e *Exporter, metric, k, v string) float64 {
	t.Helper()
	return sums(t, e, k, v)[metric]
}

// /healthz: 200 while every namespace's last interval ran and is recent,
// 503 naming the namespace otherwise.
func TestHealthz(t *testing.T) {
	now := time.Unix(1700000100, 0)
	tests := []struct {
		name     string
		hs       []Health
		wantCode int
		want     string
	}{
		{"none yet", []Health{{Netns: "lb"}}, 503, "netns lb: no interval has ended yet"},
		{"ran", []Health{{Netns: "lb", Last: now.Add(-5 * time.Second), Ran: true, Fail: 1}}, 200, "netns lb: ok, last interval ended 2023-11-14T22:14:55Z (1 failing)"},
		{"own netns ran", []Health{{Netns: "", Last: now, Ran: true}}, 200, "own netns: ok"},
		{"stale", []Health{{Netns: "lb", Last: now.Add(-time.Hour), Ran: true}}, 503, "netns lb: last interval ended 1h0m0s ago, over 1m0s"},
		{"gone", []Health{{Netns: "a", Last: now, Ran: true}, {Netns: "lb", Last: now, Err: errors.New("no such network namespace")}}, 503, "netns lb: last interval (2023-11-14T22:15:00Z) did not run: no such network namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := healthz(tt.hs, now, time.Minute)
			if code != tt.wantCode || !strings.Contains(body, tt.want) {
				t.Errorf("healthz(%+v) = %d, %q; want %d, %q", tt.hs, code, body, tt.wantCode, tt.want)
			}
		})
	}
}

// /findings is check's JSON document: the namespace's, or the one asked
// for with ?netns=, or all of them.
func TestFindings(t *testing.T) {
	e := New([]string{"a", "b"}, "")
	h := Handler(e, time.Minute)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/findings"); code != 503 {
		t.Errorf("GET /findings before any interval = %d, want 503", code)
	}
	e.Observe("b", fixture())
	var want strings.Builder
	report.JSON(&want, fixture().Report)
	tests := []struct {
		path     string
		wantCode int
		want     string
	}{
		{"/findings?netns=b", 200, want.String()},
		{"/findings?netns=a", 404, "no report for that netns"},
		{"/findings", 200, "[\n  {\n    \"schema\": 1"},
	}
	for _, tt := range tests {
		code, body := get(tt.path)
		if code != tt.wantCode || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s = %d, %q; want %d, %q", tt.path, code, body, tt.wantCode, tt.want)
		}
	}
}
