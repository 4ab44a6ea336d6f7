// Package health checks each real server from the LB's namespace the way a
// health checker would — a TCP connect with a short timeout, the neighbour
// entry it leaves, the route to it — so that a real that refuses, does not
// answer ARP/NDP or is unroutable is named even without client traffic.
// It sends only to the real servers IPVS already sends clients to.
package health

import (
	"context"
	"net/netip"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Target is one real server of one service.
type Target struct {
	Service string         // "tcp 10.1.0.6:8085"
	Proto   string         // tcp or udp
	Real    netip.AddrPort // the real server
}

// Result is what probing one real found.
type Result struct {
	Service string         `json:"service"`
	Proto   string         `json:"proto"`
	Real    netip.AddrPort `json:"real"`
	// Connect is the TCP connect's outcome: ok, refused, timeout,
	// unreachable, error; "" when not probed (UDP).
	Connect string        `json:"connect,omitempty"`
	Error   string        `json:"error,omitempty"`
	RTT     time.Duration `json:"rtt_ns,omitempty"`
	// Neighbour is the state of the next hop's ARP/NDP entry after the
	// probe (REACHABLE, STALE, FAILED, INCOMPLETE …; "" when none).
	Neighbour string     `json:"neighbour,omitempty"`
	NextHop   netip.Addr `json:"next_hop,omitzero"`
	Dev       string     `json:"dev,omitempty"`
	// Route is "" when a route was found, else why not.
	Route string `json:"route,omitempty"`
}

// Probe checks every target from ns within timeout each, concurrently, and
// returns one result per target in order. It ends when ctx does.
func Probe(ctx context.Context, ns netns.Target, targets []Target, timeout time.Duration) []Result {
	return nil // the health part implements it
}
