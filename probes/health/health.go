// Package health checks each real server from the LB's namespace the way a
// health checker would — a TCP connect with a short timeout, the neighbour
// entry it leaves, the route to it — so that a real that refuses, does not
// answer ARP/NDP or is unroutable is named even without client traffic.
// It sends only to the real servers IPVS already sends clients to, from an
// address the LB owns, straight to the real (never to a VIP: IPVS is not
// crossed, its counters and connection table are not touched).
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// MaxTargets caps the reals probed in one window: a probe is cheap, but an
// LB with ten thousand reals must not be sent ten thousand SYNs because
// someone ran check. The rest are left out, and the caller says how many.
const MaxTargets = 256

// workers bounds the probes in flight: each holds a thread inside the
// namespace for up to the timeout.
const workers = 16

// Connect outcomes.
const (
	OK          = "ok"
	Refused     = "refused"     // an RST: nothing listens on the real's port
	Timeout     = "timeout"     // no answer within the timeout
	Unreachable = "unreachable" // no route, or an ICMP unreachable came back
	Error       = "error"       // anything else (Error says what)
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
	// Skipped says why this real was not probed (the window ended first);
	// the fields below are then empty.
	Skipped string `json:"skipped,omitempty"`
	// Connect is the TCP connect's outcome: ok, refused, timeout,
	// unreachable, error; "" when not probed (UDP: Note says so).
	Connect string        `json:"connect,omitempty"`
	Error   string        `json:"error,omitempty"`
	RTT     time.Duration `json:"rtt_ns,omitempty"`
	// Source is the LB's address the connect came from (the route's
	// preferred source).
	Source netip.Addr `json:"source,omitzero"`
	// SourcePort is the LB's port of the probe's (last) connection: what
	// the probe's own packets carry (the window leaves their drops out of
	// the services'), also of a connect the window's end cut short.
	SourcePort uint16 `json:"source_port,omitempty"`
	// FirstSourcePort is the port of a first connect that timed out when
	// a second was tried (finished or cut short): the real's late answer
	// to it is the probe's too.
	FirstSourcePort uint16 `json:"first_source_port,omitempty"`
	// Neighbour is the state of the next hop's ARP/NDP entry after the
	// probe (REACHABLE, STALE, FAILED, INCOMPLETE …; "" when none).
	Neighbour string     `json:"neighbour,omitempty"`
	NextHop   netip.Addr `json:"next_hop,omitzero"`
	Dev       string     `json:"dev,omitempty"`
	// Local is true when the real is an address of the LB itself.
	Local bool `json:"local,omitempty"`
	// Route is "" when a route was found, else why not.
	Route string `json:"route,omitempty"`
	// Note says what was not tried, and why (UDP: no connect).
	Note string `json:"note,omitempty"`
}

// Probed reports whether the real was probed at all.
func (r Result) Probed() bool { return r.Skipped == "" }

// NoARP reports whether the next hop's neighbour entry shows that it did
// not answer ARP/NDP: FAILED, or still INCOMPLETE after the probe.
func (r Result) NoARP() bool { return r.Neighbour == "FAILED" || r.Neighbour == "INCOMPLETE" }

// UDPNote is the Note of a UDP real: a datagram proves nothing without the
// service's own protocol, and an empty one may be taken as a request.
const UDPNote = "UDP: route and neighbour only, no datagram sent (an answer needs the service's own protocol)"

// Probe checks the first MaxTargets targets from ns within timeout each,
// concurrently, and returns one result per target probed, in order. It ends
// when ctx does: a target not probed by then says so (Skipped). A real
// that several services share is probed once.
func Probe(ctx context.Context, ns netns.Target, targets []Target, timeout time.Duration) []Result {
	if len(targets) > MaxTargets {
		targets = targets[:MaxTargets]
	}
	out := make([]Result, len(targets))
	// One probe per real and protocol; services that share it share the
	// result.
	type job struct {
		t   Target
		idx []int
	}
	var jobs []*job
	byReal := map[string]*job{}
	for i, t := range targets {
		k := t.Proto + " " + t.Real.String()
		j, ok := byReal[k]
		if !ok {
			j = &job{t: t}
			byReal[k] = j
			jobs = append(jobs, j)
		}
		j.idx = append(j.idx, i)
	}
	ch := make(chan *job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	put := func(j *job, r Result) {
		mu.Lock()
		defer mu.Unlock()
		for _, i := range j.idx {
			r.Service = targets[i].Service
			out[i] = r
		}
	}
	for w := 0; w < min(workers, len(jobs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One thread inside the namespace per worker: a socket and a
			// netlink socket opened there belong to it.
			err := ns.Do(func() error {
				for j := range ch {
					put(j, probeOne(ctx, j.t, timeout))
				}
				return nil
			})
			if err != nil {
				for j := range ch { // drain: nothing else will
					put(j, Result{Proto: j.t.Proto, Real: j.t.Real, Skipped: "could not enter " + ns.String() + ": " + err.Error()})
				}
			}
		}()
	}
	for _, j := range jobs {
		if ctx.Err() != nil {
			put(j, Result{Proto: j.t.Proto, Real: j.t.Real, Skipped: "the window ended before it was probed"})
			continue
		}
		select {
		case ch <- j:
		case <-ctx.Done():
			put(j, Result{Proto: j.t.Proto, Real: j.t.Real, Skipped: "the window ended before it was probed"})
		}
	}
	close(ch)
	wg.Wait()
	return out
}

// probeOne probes one real from the calling thread's namespace.
func probeOne(ctx context.Context, t Target, timeout time.Duration) Result {
	r := Result{Proto: t.Proto, Real: t.Real}
	if ctx.Err() != nil {
		r.Skipped = "the window ended before it was probed"
		return r
	}
	d, err := netstate.LookupHere(t.Real.Addr(), netip.Addr{})
	if err != nil {
		r.Route = routeError(err)
		r.Connect = Unreachable
		if t.Proto != "tcp" {
			r.Connect = ""
		}
		return r
	}
	r.Dev, r.NextHop, r.Source, r.Local = d.Dev, d.NextHop, d.Src, d.Local
	if t.Proto == "tcp" {
		r.Connect, r.Error, r.RTT, r.SourcePort = connect(ctx, t.Real, d.Src, timeout)
		if r.Connect == "" { // the window ended during the connect
			r.Skipped = "the window ended during the probe"
			return r
		}
	} else {
		r.Note = UDPNote
	}
	r.Neighbour, r.Error = neighbour(d, r.Error)
	if r.Connect == Timeout && answered(r.Neighbour) && ctx.Err() == nil {
		// The next hop answers ARP and the real did not answer in time:
		// one more try, as a health checker's retry would, before a
		// slow moment is called a silent real.
		first := r.SourcePort
		c, msg, rtt, port := connect(ctx, t.Real, d.Src, timeout)
		if port != 0 {
			// Its SYN left whether or not the window let it finish: its
			// packets (a drop of that SYN, a late answer) are the probe's.
			r.SourcePort, r.FirstSourcePort = port, first
		}
		if c == "" {
			r.Note = "the window ended during a second connect (the first timed out)"
		} else {
			r.Connect, r.Error, r.RTT = c, msg, rtt
			r.Note = "answered the second connect (the first timed out)"
			if c == Timeout {
				r.Note = "two connects timed out"
			}
			r.Neighbour, r.Error = neighbour(d, r.Error)
		}
	}
	return r
}

// neighbour reads the state of a route's next hop, adding a read error to msg.
func neighbour(d netstate.Decision, msg string) (state, errMsg string) {
	if d.Local || d.Dev == "" {
		return "", msg
	}
	n, ok, err := netstate.NeighbourHere(d.NextHop, d.Dev)
	switch {
	case err != nil:
		return "", join(msg, "neighbour: "+err.Error())
	case !ok:
		return "", msg
	}
	return n.State, msg
}

// answered reports whether a neighbour state shows the next hop answered.
func answered(state string) bool {
	switch state {
	case "REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP":
		return true
	}
	return false
}

// connect opens and closes one TCP connection to real from src (an address
// the LB owns), within timeout; "" outcome when ctx ended first. port is
// the connection's local port when it connected.
func connect(ctx context.Context, real netip.AddrPort, src netip.Addr, timeout time.Duration) (outcome, msg string, rtt time.Duration, port uint16) {
	// The socket is bound here, before the connect, so its port is known
	// also when the connect times out: the real's late answer to it is
	// still the probe's own packet, not a service's.
	dialer := net.Dialer{Timeout: timeout, Control: func(network, address string, c syscall.RawConn) error {
		var berr error
		err := c.Control(func(fd uintptr) {
			port, berr = bindAny(int(fd), src, real.Addr().Is6() && !real.Addr().Is4In6())
		})
		return errors.Join(err, berr)
	}}
	start := time.Now()
	c, err := dialer.DialContext(ctx, "tcp", real.String())
	rtt = time.Since(start)
	if err == nil {
		c.Close()
		return OK, "", rtt, port
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused, "connection refused", rtt, port
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return Unreachable, sysMsg(err), rtt, port
	case ctx.Err() != nil && rtt < timeout:
		return "", "", rtt, port
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Timeout, fmt.Sprintf("no answer within %s", timeout), rtt, port
	}
	return Error, sysMsg(err), rtt, port
}

// bindAny binds a socket to src (any address of the family when src is
// not valid) and an ephemeral port, and returns the port.
func bindAny(fd int, src netip.Addr, v6 bool) (uint16, error) {
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if v6 {
		sa = &unix.SockaddrInet6{}
	}
	if src.IsValid() {
		if v6 {
			sa = &unix.SockaddrInet6{Addr: src.As16()}
		} else {
			sa = &unix.SockaddrInet4{Addr: src.Unmap().As4()}
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return 0, fmt.Errorf("bind the probe's socket to %s: %w", src, err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port), nil
	case *unix.SockaddrInet6:
		return uint16(a.Port), nil
	}
	return 0, nil
}

// sysMsg is the innermost error text ("no route to host"), not Go's "dial
// tcp …: connect: …" wrapping around it.
func sysMsg(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

func routeError(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "no route: " + errno.Error()
	}
	return "no route: " + err.Error()
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
