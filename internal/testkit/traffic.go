package testkit

import (
	"net"
	"net/netip"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Serve starts the lab's TCP server on addr inside ns until the test ends.
func Serve(t testing.TB, ns netns.Target, addr string) {
	t.Helper()
	srv, err := lab.Serve(ns, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
}

// SendUDP sends n one-byte datagrams from ns to dst from an unconnected
// socket (so ICMP errors cannot stop it), optionally from src.
func SendUDP(t testing.TB, ns netns.Target, src netip.Addr, dst netip.AddrPort, n int) {
	t.Helper()
	err := ns.Do(func() error {
		laddr := &net.UDPAddr{}
		if src.IsValid() {
			laddr.IP = src.AsSlice()
		}
		c, err := net.ListenUDP("udp4", laddr)
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < n; i++ {
			// A local drop rule makes the write fail with EPERM; the packet
			// was still counted, which is what the tests look at.
			c.WriteToUDPAddrPort([]byte("x"), dst)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send UDP from %s to %s: %v", ns, dst, err)
	}
}

// Traffic is live client traffic from a goroutine: probe after probe until
// Stop. It is what a window (check --drops) watches.
type Traffic struct {
	stop, done chan struct{}
	ok, failed int
	firstErr   error
}

// StartTraffic calls probe in a loop until Stop.
func StartTraffic(probe func() lab.ProbeResult) *Traffic {
	tr := &Traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			if res := probe(); res.OK {
				tr.ok++
			} else {
				tr.failed++
				if tr.firstErr == nil {
					tr.firstErr = res.Err
				}
			}
		}
	}()
	return tr
}

// Stop ends the traffic after the probe under way and says how many
// probes were answered, how many were not, and the first one's error.
func (tr *Traffic) Stop() (ok, failed int, firstErr error) {
	close(tr.stop)
	<-tr.done
	return tr.ok, tr.failed, tr.firstErr
}
