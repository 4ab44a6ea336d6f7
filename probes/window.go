package probes

import (
	"net/netip"
	"time"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/health"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// Window is what the doctor saw while it watched a namespace for a while:
// the evidence the checks judge beside the snapshot read at the window's
// end (Snapshot.Window). The window package builds it.
type Window struct {
	Length  time.Duration `json:"length_ns"`  // asked for
	Elapsed time.Duration `json:"elapsed_ns"` // between the first and the last read
	// FirstRead is how long the first read took, and TracerWait how long
	// the window then waited for the drop tracer to be attached (prepared
	// beside the first read, loaded with the filter it gave): the window
	// opens once both are done (and the capture is open), so the counters
	// span FirstRead, the capture's opening, TracerWait and the window,
	// and the drops the whole window.
	FirstRead  time.Duration `json:"first_read_ns"`
	TracerWait time.Duration `json:"tracer_wait_ns,omitempty"`
	// FirstTook is the first read's time per probe (Snapshot.Took): the
	// snapshot returned is the last read's, and LBDOCTOR_TIMINGS says
	// where both went. Not part of the report.
	FirstTook map[string]time.Duration `json:"-"`
	// TracerTook is TracerWait by stage (the wait for the preparation
	// done beside the first read, then drops.Tracer.LoadTook's), for
	// LBDOCTOR_TIMINGS. Not part of the report.
	TracerTook map[string]time.Duration `json:"-"`
	// LastRead is how long the last read took from the window's end: the
	// window returns when it is done (the tracer hands over meanwhile).
	LastRead time.Duration `json:"last_read_ns"`
	// Tracer is how the drop tracer stood when the window opened:
	// "attached", or "failed" (Skipped["drops"] says why); empty when no
	// drop was to be traced (not asked for, no CAP_BPF: Skipped says so).
	Tracer   string `json:"tracer,omitempty"`
	CutShort bool   `json:"cut_short,omitempty"`
	// DropsVIPOnly says why the tracer followed only the packets still
	// addressed to the selected VIP (DropTrace.VIPOnly: a DNAT VIP whose
	// backends were not known at the window's first read); "" when it
	// followed its flows.
	DropsVIPOnly string `json:"drops_vip_only,omitempty"`
	// Deltas are the counters that moved between the two reads: rules
	// (and chain policies), IPVS per service and real, conntrack, SNMP.
	Deltas Deltas `json:"deltas"`
	// Health is what probing each selected real found (nil: not probed,
	// Skipped says why).
	Health []health.Result `json:"health,omitempty"`
	// HealthLeftOut is the number of reals not probed because a window
	// probes at most health.MaxTargets.
	HealthLeftOut int `json:"health_left_out,omitempty"`
	// ProbeDrops counts the drops of the health probes' own connections
	// (from the LB's address and port to a real: a late packet of a
	// connection the probe closed): not the services' flows, so left out
	// of Snapshot.Drops, and counted here.
	ProbeDrops uint64 `json:"probe_drops,omitempty"`
	// OwnRedirects are the drops of ICMP redirects the LB sent itself: a
	// one-arm LB forwards packets back out of the interface they came in
	// on, and with send_redirects on the kernel tells their sender of the
	// shorter way (ip_forward → ip_rt_send_redirect). Messages about the
	// services' flows, not packets of them: left out of Snapshot.Drops
	// (and its attribution counts), and kept here, for drops.vip_flows to
	// show. Where the namespace has a nat table, netfilter's NAT hook
	// drops every redirect the LB sends, in output (measured on 6.1 and
	// 6.18; on 6.18 also about a flow it does not translate).
	OwnRedirects []drops.Counted `json:"own_redirects,omitempty"`
	// LocalSocketFrees are the packets a socket of the LB's own let go
	// with no reason the kernel names (NOT_SPECIFIED in the TCP or UDP
	// receive path or a socket's teardown, to a local address that is no
	// selected service: a receive queue purged unread at close, a late
	// segment to a TIME_WAIT socket, as 6.1 frees them). Delivered to a
	// local end — a real server on the LB itself, or the LB's own
	// connection —, not lost on the path: a remote real frees the same in
	// its own namespace, out of the tracer's view. Left out of
	// Snapshot.Drops (and its attribution counts) and kept here, for
	// drops.vip_flows to show.
	LocalSocketFrees []drops.Counted `json:"local_socket_frees,omitempty"`
	// DropPoints are the window's drops joined to what explains them: the
	// hook and rule or policy of a netfilter drop, the neighbour of a
	// NEIGH_FAILED, the interface and route of an IP_RPFILTER.
	DropPoints []DropPoint `json:"drop_points,omitempty"`
	// Neighbours are the neighbour entries of the selected reals' next
	// hops at the window's end. (The IPVS connections by state are
	// Snapshot.IPVS.ConnCounts, conntrack's flows by state
	// Snapshot.Conntrack.Counts, both read at the window's end.)
	Neighbours []RealNeighbour `json:"neighbours,omitempty"`
	// Paths are the selected services' flows, leg by leg, per real.
	Paths []flowpath.Path `json:"paths"`
	// PathsOmitted is the number of paths left out (over MaxListed; the
	// paths that stop are kept first).
	PathsOmitted int `json:"paths_omitted,omitempty"`
	// RoutesBack are the routes from the LB back to the sources of the
	// packets reverse-path filtering dropped (IP_RPFILTER), looked up after
	// the window: the route that made each source a martian.
	RoutesBack []netstate.Decision `json:"routes_back,omitempty"`
	// Capture is what a capture on the LB's interfaces saw of the selected
	// services' flows, leg by leg per service path (check --capture; nil:
	// not asked for, or Skipped says why).
	Capture *capture.Summary `json:"capture,omitempty"`
	// Skipped names, by layer, what the window could not watch and why
	// (drops without CAP_BPF, probes off with --no-probe).
	Skipped map[string]string `json:"skipped,omitempty"`
	// First is the window's first read (no flow tables, no Window): the
	// sysctls, rules, IPVS and addresses at the window's start. Check
	// judges on it only the drops the last read explains not, to tell a
	// drop whose cause was fixed during the window. Not in JSON: the last
	// read is the report. nil: no first read (a snapshot from a file).
	First *Snapshot `json:"-"`
}

// Window layers, the keys of Window.Skipped.
const (
	LayerDrops  = "drops"
	LayerHealth = "health"
	// LayerCapture is the packets of the flows, leg by leg (check --capture).
	LayerCapture = "capture"
)

// RealNeighbour is the ARP/NDP entry of a real server's next hop.
type RealNeighbour struct {
	Real    netip.AddrPort `json:"real"`
	NextHop netip.Addr     `json:"next_hop"` // the real, or the gateway to it
	Dev     string         `json:"dev,omitempty"`
	// State as the kernel names it (REACHABLE, STALE, DELAY, FAILED,
	// INCOMPLETE, PERMANENT …), "none" when there is no entry, "no route"
	// when the LB has no route to the real.
	State string `json:"state"`
}

// DropPoint is drops of one kind at one place, whatever their flows, with
// what explains them.
type DropPoint struct {
	Reason   string   `json:"reason"`   // kernel drop reason
	Function string   `json:"function"` // symbol of the drop location, without offset
	Count    uint64   `json:"count"`
	Flows    int      `json:"flows"`              // distinct flows attributed
	Services []string `json:"services,omitempty"` // services whose flows these were, as ipvs.Service.Key names them
	// Reals are the reals (an nft or iptables DNAT's backends) of the
	// flows attributed, at most MaxPointReals: where a filter rule's fix
	// lets a VIP's flows through when IPVS does not name them.
	Reals []netip.AddrPort `json:"reals,omitempty"`
	// Leg is where on the service's path the drops happened (request or
	// reply side), when the flow says so.
	Leg flowpath.LegKind `json:"leg,omitempty"`
	// Hook is the netfilter hook of a NETFILTER_DROP (prerouting, input,
	// forward, output, postrouting), from the drop's call path.
	Hook string `json:"hook,omitempty"`
	// Cause is what explains the drops, in words: the rule or chain policy
	// whose counter moved by as much, the neighbour that never answered, the
	// interface and route that made a source a martian.
	Cause  string `json:"cause,omitempty"`
	Source string `json:"source,omitempty"` // where Cause was read
	// Rule or Policy is the filter rule or base chain policy a
	// NETFILTER_DROP is joined to, and Delta what its counter moved in the
	// window (0 and Uncounted for one that keeps no counter).
	Rule      *rules.Rule  `json:"rule,omitempty"`
	Policy    *rules.Chain `json:"policy,omitempty"`
	Delta     uint64       `json:"delta,omitempty"`
	Uncounted bool         `json:"uncounted,omitempty"`
	// Gone and Changed say that Rule or Policy dropped at the window's
	// start and no longer at its end, which lbdoctor can tell only by
	// comparing its first and last reads: Gone, the rule (or the policy's
	// chain) was deleted during the window; Changed, the policy was set to
	// ACCEPT. Rule or Policy is then as the first read had it, and
	// Uncounted is set: a deleted rule counts no more, and a policy's
	// counter starts again from 0 when it is set (iptables-legacy and
	// iptables-nft alike), so what either dropped in the window is
	// unknown. Joined only when no rule or policy of the last read counted
	// the drops.
	Gone    bool `json:"gone,omitempty"`
	Changed bool `json:"changed,omitempty"`
	// Examples are up to three flows of the drops, "tcp 10.1.0.3:40000 →
	// 10.1.0.6:8085", for the evidence line.
	Examples []string `json:"examples,omitempty"`
	// Attributed is how many of Count were attributed to a load-balanced flow.
	Attributed uint64 `json:"attributed"`
	// RealsGone are the reals, no longer in their services, of the flows
	// IPVS itself dropped here (RealGoneOf), and RealGoneDrops how
	// many of Count those were.
	RealsGone     []GoneReal `json:"reals_gone,omitempty"`
	RealGoneDrops uint64     `json:"real_gone_drops,omitempty"`
}

// MaxPointReals caps DropPoint.Reals.
const MaxPointReals = 16

// GoneReal is a real server that is no longer one of its service's reals.
type GoneReal struct {
	Real    netip.AddrPort `json:"real"`
	Service string         `json:"service"` // as ipvs.Service.Key names it
}

// RealGoneOf is the real, no longer in its service, that IPVS itself
// dropped c for; the zero AddrPort when IPVS did not. Such a drop is a
// netfilter drop in the input hook (IPVS's LOCAL_IN, ip_vs_in) of a flow
// whose real is no longer one of its service's reals: IPVS drops a packet
// of a connection whose real was removed — every one until the connection
// times out with net.ipv4.vs.expire_nodest_conn=0, and with =1 still the
// first one of a connection whose conntrack entry is old
// (ip_vs_conn_uses_old_conntrack): a retransmission or a reused client
// port right after `ipvsadm -d`. No rule counts it. The real is the flow's,
// or that of the earlier flow of the same client and VIP that it replaced
// in the window (the stale connection IPVS expired as it dropped the
// packet, the client's retransmission getting a new real). The hook may
// be unknown (the stack did not show nf_hook_slow's caller); never
// another hook.
func RealGoneOf(s *Snapshot, c drops.Counted) netip.AddrPort {
	if c.ReasonName != "NETFILTER_DROP" || c.Hook != "input" && c.Hook != "" || c.Flow == nil || c.Flow.Direction != "request" {
		return netip.AddrPort{}
	}
	for _, r := range []netip.AddrPort{c.Flow.Real, c.Flow.EarlierReal} {
		if r.IsValid() && s.IPVS.RealLeft(proto.Name(c.Proto), c.Flow.VIP, r) {
			return r
		}
	}
	return netip.AddrPort{}
}
