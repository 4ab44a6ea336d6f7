package testkit

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

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

// Traffic is live client traffic from a goroutine: a probe every so often
// until Stop. It is what check's window watches.
type Traffic struct {
	stopOnce   sync.Once
	stop, done chan struct{}
	ok, failed int
	firstErr   error
}

// StartTraffic calls probe every interval (or right after the last one,
// when it took longer) until Stop. Paced, not a tight loop: on a one-CPU
// guest a tight loop would starve what watches it.
// It stops when the test ends at the latest, whatever ended it.
func StartTraffic(t testing.TB, interval time.Duration, probe func() lab.ProbeResult) *Traffic {
	tr := &Traffic{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { tr.Stop() })
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
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
	tr.stopOnce.Do(func() { close(tr.stop) })
	<-tr.done
	return tr.ok, tr.failed, tr.firstErr
}
