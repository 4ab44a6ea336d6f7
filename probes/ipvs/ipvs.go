// Package ipvs reads the IPVS virtual services and their real servers in a
// network namespace (IPVS's generic netlink dumps, as ipvsadm -Ln reads
// them) as plain snapshot data.
package ipvs

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/sirupsen/logrus"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

func init() {
	// moby/ipvs (internal/apply's writer of IPVS) logs through logrus;
	// lbdoctor's output must stay its own.
	logrus.SetOutput(io.Discard)
}

// Forwarding methods, as ipvsadm names them.
const (
	Masq   = "masq"
	Local  = "local"
	Tunnel = "tunnel"
	Route  = "route"
)

// Snapshot is the IPVS state of one namespace.
type Snapshot struct {
	// Available is false when the kernel has no usable IPVS; Reason says why.
	Available bool      `json:"available"`
	Reason    string    `json:"reason,omitempty"`
	Services  []Service `json:"services"`
	Timeouts  Timeouts  `json:"timeouts"`
	// Conns is the IPVS connection table (/proc/net/ip_vs_conn); filled by
	// ReadConns, since it can be large.
	Conns        []Conn `json:"conns,omitempty"`
	ConnsOmitted int    `json:"conns_omitted,omitempty"` // entries not listed
	// ConnCounts tallies every connection read, listed or not, by
	// service, real server and state: a capped list must not decide a count.
	ConnCounts []ConnCount `json:"conn_counts,omitempty"`
}

// ConnCount is the number of IPVS connections of one service to one real
// server in one state (SYN_RECV, ESTABLISHED, … as ip_vs_conn names it).
type ConnCount struct {
	Proto string         `json:"proto"`
	VIP   netip.AddrPort `json:"vip"`
	Dest  netip.AddrPort `json:"dest"`
	State string         `json:"state"`
	// Template marks persistence templates (ipvsadm -p): the entries,
	// client port 0, that pin a client to a real server.
	Template bool `json:"template,omitempty"`
	Count    int  `json:"count"`
}

// CountConns tallies conns by service, real server and state, ordered by
// VIP, real and state.
func CountConns(conns []Conn) []ConnCount {
	var c ConnCounter
	for _, x := range conns {
		c.Add(x)
	}
	return c.Counts()
}

// ConnCounter tallies connections as a table is read, so that a table of
// 100,000 is counted without being kept. The zero value is ready.
type ConnCounter struct {
	idx map[ConnCount]int
	out []ConnCount
}

// Add counts one connection.
func (c *ConnCounter) Add(x Conn) {
	if c.idx == nil {
		c.idx = map[ConnCount]int{}
	}
	k := ConnCount{Proto: x.Proto, VIP: x.VIP, Dest: x.Dest, State: x.State, Template: x.Template()}
	i, ok := c.idx[k]
	if !ok {
		i = len(c.out)
		c.idx[k] = i
		c.out = append(c.out, k)
	}
	c.out[i].Count++
}

// Counts returns the tallies, ordered by VIP, protocol, real and state.
func (c *ConnCounter) Counts() []ConnCount {
	slices.SortFunc(c.out, func(a, b ConnCount) int {
		return cmp.Or(a.VIP.Compare(b.VIP), strings.Compare(a.Proto, b.Proto), a.Dest.Compare(b.Dest), strings.Compare(a.State, b.State))
	})
	return c.out
}

// DestConns is the number of connections IPVS's reals hold by its own
// counters (ActiveConn + InActConn of every real, from the netlink dump):
// the size of the connection table, without reading it. Persistence
// templates and connections whose real was removed are not counted.
func (s Snapshot) DestConns() int {
	n := 0
	for _, svc := range s.Services {
		for _, r := range svc.Reals {
			n += r.ActiveConns + r.InactiveConns
		}
	}
	return n
}

// RealLeft reports whether real is no longer a real server of the proto
// (tcp, udp, sctp) service at vip: a service is there and real is not one
// of its reals (removed, as `ipvsadm -d` does). False when no such service
// is there: nothing is known of it then. A TCP and a UDP service on one VIP
// and port (DNS) have reals of their own.
func (s Snapshot) RealLeft(proto string, vip, real netip.AddrPort) bool {
	for _, svc := range s.Services {
		if svc.FWMark != 0 || svc.Addr != vip || svc.Proto != proto {
			continue
		}
		return !slices.ContainsFunc(svc.Reals, func(r Real) bool { return r.Addr == real })
	}
	return false
}

// Timeouts are IPVS's idle timeouts (ipvsadm --set), in seconds.
type Timeouts struct {
	TCP    int `json:"tcp"`
	TCPFin int `json:"tcp_fin"`
	UDP    int `json:"udp"`
}

// Service is one virtual service.
type Service struct {
	Proto     string         `json:"proto"` // tcp, udp, sctp, or fwmark
	Addr      netip.AddrPort `json:"addr"`
	FWMark    uint32         `json:"fwmark,omitempty"`
	Scheduler string         `json:"scheduler"`
	Flags     []string       `json:"flags"` // persistent, hashed, ops, sched-flag-1…3
	Timeout   uint32         `json:"persistence_timeout,omitempty"`
	Stats     Stats          `json:"stats"`
	Reals     []Real         `json:"reals"`
}

// Key names a service the way ipvsadm prints it: "TCP 10.1.0.6:8085".
// Without fmt: the checks name services this way in every evidence line,
// millions of times on a 1,000-service LB.
func (s Service) Key() string {
	if s.FWMark != 0 {
		return "FWM " + strconv.FormatUint(uint64(s.FWMark), 10)
	}
	return strings.ToUpper(s.Proto) + " " + s.Addr.String()
}

// Real is one destination (real server) of a service.
type Real struct {
	Addr          netip.AddrPort `json:"addr"`
	Method        string         `json:"method"`
	Weight        int            `json:"weight"`
	ActiveConns   int            `json:"active_conns"`
	InactiveConns int            `json:"inactive_conns"`
	UpperThresh   uint32         `json:"upper_threshold,omitempty"`
	LowerThresh   uint32         `json:"lower_threshold,omitempty"`
	Stats         Stats          `json:"stats"`
}

// Stats are IPVS counters and rates. The kernel folds its per-CPU counters
// into these every 2 s (its rate estimator), so they lag traffic by up to 2 s.
type Stats struct {
	Conns      uint32 `json:"conns"`
	PacketsIn  uint32 `json:"packets_in"`
	PacketsOut uint32 `json:"packets_out"`
	BytesIn    uint64 `json:"bytes_in"`
	BytesOut   uint64 `json:"bytes_out"`
	CPS        uint32 `json:"cps"`
	PPSIn      uint32 `json:"pps_in"`
	PPSOut     uint32 `json:"pps_out"`
	BPSIn      uint32 `json:"bps_in"`
	BPSOut     uint32 `json:"bps_out"`
}

// Read returns the IPVS state of ns. A kernel without IPVS is not an error:
// the snapshot says Available=false with the reason.
func Read(ns netns.Target) (Snapshot, error) {
	snap := Snapshot{Services: []Service{}}
	if err := kernel.IPVS(); err != nil {
		var nse *kernel.NotSupportedError
		if errors.As(err, &nse) {
			snap.Reason = nse.Error()
			return snap, nil
		}
		return snap, err
	}
	snap.Available = true
	g, err := dialIPVS(ns)
	if err != nil {
		return snap, fmt.Errorf("open IPVS in %s: %w", ns, permissionHint(err))
	}
	defer g.Close()
	if t, err := g.config(); err == nil {
		snap.Timeouts = t
	}
	svcs, err := g.services()
	if err != nil {
		return snap, fmt.Errorf("list IPVS services in %s: %w", ns, permissionHint(err))
	}
	snap.Services = make([]Service, 0, len(svcs))
	for _, s := range svcs {
		if s.Reals, err = g.dests(s); err != nil {
			return snap, fmt.Errorf("list real servers of %s in %s: %w", s.Key(), ns, permissionHint(err))
		}
		snap.Services = append(snap.Services, s.Service)
	}
	return snap, nil
}

func permissionHint(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("needs CAP_NET_ADMIN: %w", err)
	}
	return err
}

func protoName(p uint16, fwmark uint32) string {
	if fwmark != 0 {
		return "fwmark"
	}
	return proto.Name(uint8(p))
}

func methodName(flags uint32) string {
	switch flags & mobyipvs.ConnectionFlagFwdMask {
	case mobyipvs.ConnectionFlagMasq:
		return Masq
	case mobyipvs.ConnectionFlagLocalNode:
		return Local
	case mobyipvs.ConnectionFlagTunnel:
		return Tunnel
	case mobyipvs.ConnectionFlagDirectRoute:
		return Route
	}
	return fmt.Sprintf("method-%d", flags&mobyipvs.ConnectionFlagFwdMask)
}

var serviceFlags = []string{"persistent", "hashed", "ops", "sched-flag-1", "sched-flag-2", "sched-flag-3"}

func flagNames(f uint32) []string {
	out := []string{}
	for i, n := range serviceFlags {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}
