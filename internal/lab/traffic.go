package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Server is a TCP server inside a namespace that answers every connection
// with one line naming the peer address it saw, so a client can tell whether
// the real server saw it or the LB (SNAT).
type Server struct {
	ln net.Listener
}

// Serve listens on addr inside ns: IPv4 unless addr names an IPv6 host
// ("[fd00:2::50]:8085"). The socket belongs to ns; it is served from an
// ordinary goroutine.
func Serve(ns netns.Target, addr string) (*Server, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(networkOf("tcp", addr), addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "peer=%s\n", c.RemoteAddr())
			}()
		}
	}()
	return &Server{ln: ln}, nil
}

// Close stops the server.
func (s *Server) Close() error { return s.ln.Close() }

// ProbeResult is what the client saw.
type ProbeResult struct {
	OK   bool
	Peer netip.AddrPort // the client address as the real server saw it
	Err  error          // why it failed: timeout, refused, reset…
}

// Probe connects from ns to target over TCP and reads the server's line.
func Probe(ctx context.Context, ns netns.Target, target netip.AddrPort, timeout time.Duration) ProbeResult {
	return probe(ctx, ns, networkOf("tcp", target.String()), target, timeout)
}

// ProbeUDP sends one datagram from ns to target and waits for the answer.
func ProbeUDP(ctx context.Context, ns netns.Target, target netip.AddrPort, timeout time.Duration) ProbeResult {
	return probe(ctx, ns, networkOf("udp", target.String()), target, timeout)
}

// networkOf is proto with the address family of addr's host: proto+"6" for an
// IPv6 address, else proto+"4" (also for a host left out, ":8085").
func networkOf(proto, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if a, perr := netip.ParseAddr(host); err == nil && perr == nil && a.Is6() && !a.Is4In6() {
		return proto + "6"
	}
	return proto + "4"
}

// probe dials from ns (the socket belongs to ns), says hello (UDP needs a
// datagram to be answered; the TCP server ignores it) and parses the
// server's "peer=ADDR:PORT" line.
func probe(ctx context.Context, ns netns.Target, network string, target netip.AddrPort, timeout time.Duration) ProbeResult {
	var res ProbeResult
	var conn net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		conn, err = d.DialContext(ctx, network, target.String())
		return err
	})
	if err != nil {
		res.Err = err
		return res
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if strings.HasPrefix(network, "udp") {
		if _, err := conn.Write([]byte("hello\n")); err != nil {
			res.Err = err
			return res
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		res.Err = fmt.Errorf("read answer: %w", err)
		return res
	}
	peer, ok := strings.CutPrefix(strings.TrimSpace(line), "peer=")
	if !ok {
		res.Err = errors.New("unexpected answer " + line)
		return res
	}
	res.Peer, res.Err = netip.ParseAddrPort(peer)
	res.OK = res.Err == nil
	return res
}

// ServeUDP answers every datagram to addr inside ns with "peer=ADDR:PORT"
// (IPv4 unless addr names an IPv6 host, as Serve).
func ServeUDP(ns netns.Target, addr string) (*UDPServer, error) {
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket(networkOf("udp", addr), addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in %s: %w", addr, ns, err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("peer="+from.String()+"\n"), from)
		}
	}()
	return &UDPServer{pc: pc}, nil
}

// UDPServer is a running ServeUDP.
type UDPServer struct{ pc net.PacketConn }

// Close stops the server.
func (s *UDPServer) Close() error { return s.pc.Close() }
