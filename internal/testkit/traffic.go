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
